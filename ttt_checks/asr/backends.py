"""Whisper transcribers: faster-whisper (CTranslate2) and openai-whisper (PyTorch).

Both decode greedily at temperature 0 (a scalar: a list would fall back to *sampling* when a
window looks bad, and runs would differ), without conditioning on the previous window (which
lets one bad window loop into the next), with the language fixed to English, and with the same
rejection thresholds, so the two backends are comparable and each is repeatable.
Neither ever downloads: a model that is not on disk is an :class:`AsrError` naming the fix.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ttt_checks.asr.transcript import AsrError, Segment, Transcript
from ttt_checks.audio.wav import ASR_SAMPLE_RATE, resample

#: Decoding options shared by both backends (Whisper's own defaults for the thresholds).
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4


def _prepare(pcm: np.ndarray, sample_rate: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Validate and bring input to mono float32 at 16 kHz, saying what was changed."""
    arr = np.asarray(pcm)
    if arr.ndim != 1:
        raise AsrError(
            f"transcribe expects mono samples of shape (n,), got {arr.shape}; "
            "downmix first (ttt_checks.audio.to_mono)"
        )
    if sample_rate <= 0:
        raise AsrError(f"transcribe: sample_rate must be positive, got {sample_rate}")
    arr = arr.astype(np.float32, copy=False)
    if arr.size and not np.all(np.isfinite(arr)):
        raise AsrError("transcribe: the audio contains NaN or Inf samples; the model that made it is broken")
    notes: tuple[str, ...] = ()
    if sample_rate != ASR_SAMPLE_RATE:
        arr = resample(arr, sample_rate, ASR_SAMPLE_RATE)
        notes = (f"resampled {sample_rate} Hz -> {ASR_SAMPLE_RATE} Hz for Whisper",)
    return np.ascontiguousarray(arr), notes


def default_cpu_threads() -> int:
    """Threads for CPU transcription: OMP_NUM_THREADS where the job set it (a Slurm task's
    cpus-per-task, a pytest-xdist worker's share), else one per core up to 4 (tiny.en gains
    little beyond that). More threads than cores are paid for in spinning, not speed."""
    try:
        requested = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        requested = 0
    return requested if requested > 0 else min(4, os.cpu_count() or 1)


def _join(segments: tuple[Segment, ...]) -> str:
    return " ".join(s.text.strip() for s in segments if s.text.strip())


class FasterWhisperTranscriber:
    """faster-whisper on CPU with int8 weights (about 4x faster than openai-whisper fp32).

    ``model`` is a CTranslate2 model directory (it must hold ``tokenizer.json``, or
    faster-whisper would fetch one from the Hub) or a model name already in the local
    Hugging Face cache (looked up with ``local_files_only``).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        compute_type: str = "int8",
        cpu_threads: int | None = None,
        beam_size: int = 1,
    ) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise AsrError("faster-whisper is not installed; install it with `pip install 'ttt-checks[asr]'`") from exc
        path = Path(model)
        threads = cpu_threads if cpu_threads is not None else default_cpu_threads()
        if path.is_dir():
            if not (path / "model.bin").is_file():
                raise AsrError(f"{path}: not a CTranslate2 model directory (no model.bin)")
            if not (path / "tokenizer.json").is_file():
                raise AsrError(
                    f"{path}: no tokenizer.json; faster-whisper would download one. Copy it in "
                    "(ct2-transformers-converter --copy_files tokenizer.json)"
                )
            source = str(path)
        elif os.sep in str(model) or str(model).startswith("."):
            raise AsrError(f"faster-whisper model directory {model} does not exist; check the path")
        else:
            source = str(model)
        try:
            self._model = WhisperModel(
                source, device="cpu", compute_type=compute_type, cpu_threads=threads, local_files_only=True
            )
        except Exception as exc:  # noqa: BLE001 - the hub and CTranslate2 raise many types
            raise AsrError(
                f"faster-whisper could not load {source!r} ({type(exc).__name__}: {exc}); offline, only local "
                "CTranslate2 directories and names already in the Hugging Face cache work: use "
                "`--asr faster-whisper:/path/to/ct2-dir` or `--asr default`"
            ) from exc
        self.name = f"faster-whisper:{source}"
        self.beam_size = beam_size

    def transcribe(self, pcm: np.ndarray, sample_rate: int) -> Transcript:
        """Transcribe mono samples; see :class:`~ttt_checks.asr.transcript.Transcriber`."""
        audio, notes = _prepare(pcm, sample_rate)
        duration = len(audio) / ASR_SAMPLE_RATE
        if audio.size == 0:
            return Transcript("", (), "en", 0.0, self.name, notes + ("empty audio: nothing transcribed",))
        started = time.perf_counter()
        gen, info = self._model.transcribe(
            audio,
            language="en",
            task="transcribe",
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            log_prob_threshold=LOGPROB_THRESHOLD,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            vad_filter=False,
            word_timestamps=False,
        )
        segments = tuple(
            Segment(
                start=float(s.start),
                end=float(s.end),
                text=s.text.strip(),
                no_speech_prob=float(s.no_speech_prob),
                avg_logprob=float(s.avg_logprob),
                compression_ratio=float(s.compression_ratio),
            )
            for s in list(gen)  # the generator is lazy: decoding happens here
        )
        self.last_seconds = time.perf_counter() - started
        return Transcript(_join(segments), segments, info.language or "en", duration, self.name, notes)


def whisper_cache_dir() -> Path:
    """Where openai-whisper keeps named checkpoints: ``$XDG_CACHE_HOME/whisper`` or ``~/.cache/whisper``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper"


class OpenAIWhisperTranscriber:
    """openai-whisper on CPU in fp32 (fp16 is GPU-only there).

    ``model`` is a checkpoint path (``.pt``, e.g. one made by
    :func:`ttt_checks.asr.convert.cached_openai_checkpoint`) or an official name (``tiny.en``)
    whose file is already in ``download_root`` / the openai-whisper cache. Audio goes in as a
    numpy array, never a file path, because openai-whisper decodes paths with the ffmpeg CLI.
    """

    def __init__(self, model: str | os.PathLike[str], *, download_root: str | os.PathLike[str] | None = None) -> None:
        try:
            import whisper
        except ImportError as exc:
            raise AsrError("openai-whisper is not installed; install it with `pip install 'ttt-checks[asr]'`") from exc
        path = Path(model)
        heads: list[list[int]] = []
        if path.is_file():
            source = str(path)
            heads = _alignment_heads(path)
        elif str(model) in whisper.available_models():
            root = Path(download_root) if download_root else whisper_cache_dir()
            if not (root / f"{model}.pt").is_file():
                raise AsrError(
                    f"openai-whisper model {model!r} is not in {root} and nothing is downloaded here. "
                    f"Copy {model}.pt there from a machine with network (python -c \"import whisper; "
                    f"whisper.load_model('{model}')\" fills ~/.cache/whisper), pass a .pt path, or use "
                    "`--asr openai-whisper:default` (the bundled tiny.en, converted)"
                )
            source = str(model)
        else:
            raise AsrError(
                f"openai-whisper model {str(model)!r} is neither an existing .pt file nor a known name "
                f"({', '.join(whisper.available_models()[:6])}, ...); check the path"
            )
        try:
            self._model = whisper.load_model(
                source, device="cpu", download_root=str(download_root) if download_root else None
            )
        except Exception as exc:  # noqa: BLE001 - torch.load and the download path raise many types
            raise AsrError(f"openai-whisper could not load {source!r}: {type(exc).__name__}: {exc}") from exc
        if heads:
            import torch

            mask = torch.zeros(self._model.dims.n_text_layer, self._model.dims.n_text_head, dtype=torch.bool)
            for layer, head in heads:
                mask[layer, head] = True
            self._model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
        self.name = f"openai-whisper:{source}"

    def transcribe(self, pcm: np.ndarray, sample_rate: int) -> Transcript:
        """Transcribe mono samples; see :class:`~ttt_checks.asr.transcript.Transcriber`."""
        import whisper

        audio, notes = _prepare(pcm, sample_rate)
        duration = len(audio) / ASR_SAMPLE_RATE
        if audio.size == 0:
            return Transcript("", (), "en", 0.0, self.name, notes + ("empty audio: nothing transcribed",))
        started = time.perf_counter()
        result: dict[str, Any] = whisper.transcribe(
            self._model,
            audio,
            language="en",
            task="transcribe",
            temperature=0.0,
            beam_size=None,
            condition_on_previous_text=False,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            logprob_threshold=LOGPROB_THRESHOLD,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            fp16=False,
            verbose=None,
            word_timestamps=False,
        )
        segments = tuple(
            Segment(
                start=float(s["start"]),
                end=float(s["end"]),
                text=str(s["text"]).strip(),
                no_speech_prob=float(s["no_speech_prob"]),
                avg_logprob=float(s["avg_logprob"]),
                compression_ratio=float(s["compression_ratio"]),
            )
            for s in result["segments"]
        )
        self.last_seconds = time.perf_counter() - started
        return Transcript(_join(segments), segments, str(result.get("language") or "en"), duration, self.name, notes)


def _alignment_heads(path: Path) -> list[list[int]]:
    """Alignment heads recorded by our converter, if the checkpoint came from it (else [])."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - load_model will report a broken file with more context
        return []
    meta = ckpt.get("ttt_checks") if isinstance(ckpt, dict) else None
    return [list(map(int, h)) for h in (meta or {}).get("alignment_heads", [])]
