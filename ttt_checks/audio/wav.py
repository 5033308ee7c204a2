"""WAV files in and out, through libsndfile (the ``soundfile`` package).

The suite reads model output and fixture speech, which are WAV files: PCM (8/16/24/32-bit) or
IEEE float (32/64-bit), possibly WAVE_FORMAT_EXTENSIBLE or RF64. libsndfile decodes them (and
the other encodings a WAV can hold: mu-law, A-law, ADPCM), copes with the odd headers real
writers leave (a streamed 'data' size of 0xFFFFFFFF, a truncated 'data' chunk, odd sizes), and
comes bundled in the ``soundfile`` wheel, so no system package is needed. The stdlib ``wave``
module rejects float WAVs and ``torchaudio.load`` needs TorchCodec; neither is used here.

What is still done here: only the WAV container is accepted (a RIFF or RF64 header with WAVE,
looked at before libsndfile opens the file), so a FLAC, MP3 or text file is refused with the sox
command that converts it, as docs/bad-inputs.md says; integer PCM is read as float32 in [-1, 1)
with libsndfile's scaling, which is the WAV definition (x / 2^(bits-1), 8-bit unsigned with an
offset of 128); PCM is written with our own rounding (``round(clip(x) * 32767)``); files are
written atomically; every failure is an :class:`AudioError` that names the file, what was wrong
and what to do, with libsndfile's reason in the message and as ``__cause__``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

log = logging.getLogger(__name__)

#: Whisper and Silero VAD both work at 16 kHz; every model-facing path converts to this.
ASR_SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A file could not be used as audio; the message says why and what to do."""


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples in [-1, 1] plus what was done to get them.

    ``notes`` records every conversion (downmix, resampling) so that callers can show it:
    a transcript of a silently resampled or downmixed file would hide a wrong input.
    """

    pcm: np.ndarray
    sample_rate: int
    path: str = ""
    source_channels: int = 1
    source_rate: int = 0
    notes: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return float(len(self.pcm)) / float(self.sample_rate)


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a WAV file as float32 samples of shape (frames, channels) and its sample rate.

    Integer PCM is scaled to [-1, 1) (8-bit is unsigned with an offset of 128, as the WAV
    format defines). Raises :class:`AudioError` for a missing, empty or non-WAV file, a damaged
    or undecodable one, a file without samples, or float samples that are NaN or Inf.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file; check the path (relative paths are from {os.getcwd()})")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not a WAV file; pass the .wav files inside it")
    with p.open("rb") as f:
        head = f.read(16)
    if not head:
        raise AudioError(f"{p}: the file is empty (0 bytes); it holds no audio; regenerate or re-record it")
    if head[0:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise AudioError(
            f"{p}: not a WAV file (expected a RIFF/WAVE header, found {head!r}); only WAV is read "
            "(no ffmpeg here): convert it first, e.g. `sox IN -r 16000 -c 1 -b 16 OUT.wav`"
        )
    try:
        with soundfile.SoundFile(str(p)) as f:
            rate = f.samplerate
            pcm = f.read(dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as exc:
        raise AudioError(
            f"{p}: a damaged or unsupported WAV file (libsndfile: {exc.error_string}); "
            "regenerate it, or re-encode it with `sox IN -b 16 OUT.wav`"
        ) from exc
    if pcm.shape[0] == 0:
        raise AudioError(f"{p}: WAV file with no samples (0 frames); it holds no audio, regenerate it")
    if not np.all(np.isfinite(pcm)):
        raise AudioError(f"{p}: float WAV contains NaN or Inf samples; the producer is broken")
    return pcm, int(rate)


def write_wav(
    path: str | os.PathLike[str], pcm: np.ndarray, sample_rate: int, *, float32: bool = False
) -> Path:
    """Write samples (frames,) or (frames, channels) as 16-bit PCM (default) or float32 WAV.

    Samples are clipped to [-1, 1] and rounded to ``round(x * 32767)`` for PCM (here, not by
    libsndfile, whose float-to-int scale depends on its clipping mode); float32 is written as
    given. The file is written to a temporary name and renamed, so a reader (or a parallel
    worker) never sees half a file.
    """
    arr = np.asarray(pcm, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise AudioError(f"write_wav: expected samples of shape (frames,) or (frames, channels), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise AudioError(f"write_wav: samples for {path} contain NaN or Inf; refusing to write them")
    if float32:
        data, subtype = arr.astype(np.float32), "FLOAT"
    else:
        data, subtype = np.round(np.clip(arr, -1.0, 1.0) * 32767.0).astype(np.int16), "PCM_16"
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        try:
            soundfile.write(tmp, data, int(sample_rate), subtype=subtype, format="WAV")
        except soundfile.LibsndfileError as exc:
            raise AudioError(
                f"write_wav: cannot write {out} as a {subtype} WAV of {data.shape[1]} channels at {sample_rate} Hz "
                f"(libsndfile: {exc.error_string}); pass samples of shape (frames, channels) and a positive rate"
            ) from exc
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; a wav is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling of mono float samples (torchaudio's sinc interpolation).

    A no-op when the rates are equal, so callers can always call it.
    """
    if from_rate == to_rate:
        return np.asarray(pcm, dtype=np.float32)
    if from_rate <= 0 or to_rate <= 0:
        raise AudioError(f"resample: sample rates must be positive, got {from_rate} -> {to_rate}")
    import torch
    import torchaudio.functional as AF

    x = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))
    return AF.resample(x, int(from_rate), int(to_rate)).numpy().astype(np.float32, copy=False)


def to_mono(pcm: np.ndarray) -> np.ndarray:
    """Average the channels of (frames, channels) samples; 1-D input is returned unchanged."""
    arr = np.asarray(pcm, dtype=np.float32)
    if arr.ndim == 1:
        return arr
    return arr.mean(axis=1, dtype=np.float64).astype(np.float32)


def load_audio(path: str | os.PathLike[str], sample_rate: int = ASR_SAMPLE_RATE) -> Audio:
    """Read a WAV file as mono float32 at ``sample_rate``, saying what was converted.

    Stereo is averaged to mono and other rates are resampled; each conversion is logged at
    INFO and listed in ``Audio.notes`` so the CLI and reports can show it.
    """
    frames, rate = read_wav(path)
    notes: list[str] = []
    channels = frames.shape[1]
    mono = to_mono(frames) if channels > 1 else frames[:, 0]
    if channels > 1:
        notes.append(f"downmixed {channels} channels to mono (channel average)")
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
        notes.append(f"resampled {rate} Hz -> {sample_rate} Hz")
        if len(mono) == 0:
            raise AudioError(f"{path}: too short to resample ({frames.shape[0]} frames at {rate} Hz)")
    for note in notes:
        log.info("%s: %s", path, note)
    return Audio(
        pcm=np.ascontiguousarray(mono, dtype=np.float32),
        sample_rate=int(sample_rate),
        path=str(path),
        source_channels=int(channels),
        source_rate=int(rate),
        notes=tuple(notes),
    )
