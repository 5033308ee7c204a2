"""WAV files in and out, without ffmpeg or soundfile.

The suite reads model output and fixture speech, which are WAV files: PCM (8/16/24/32-bit) or
IEEE float (32/64-bit), possibly WAVE_FORMAT_EXTENSIBLE. The stdlib ``wave`` module of the
Python versions we support rejects float WAVs, and ``torchaudio.load`` needs TorchCodec, so
the RIFF container is parsed here directly: it is a header and a list of tagged chunks.

Every failure is an :class:`AudioError` that names the file, what was wrong and what to do.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Whisper and Silero VAD both work at 16 kHz; every model-facing path converts to this.
ASR_SAMPLE_RATE = 16000

_FORMAT_PCM = 0x0001
_FORMAT_FLOAT = 0x0003
_FORMAT_EXTENSIBLE = 0xFFFE


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
    format defines). Raises :class:`AudioError` for a missing, empty or non-WAV file, an
    unsupported encoding, or a file without samples.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file; check the path (relative paths are from {os.getcwd()})")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not a WAV file; pass the .wav files inside it")
    data = p.read_bytes()
    if len(data) == 0:
        raise AudioError(f"{p}: the file is empty (0 bytes); it holds no audio; regenerate or re-record it")
    if len(data) < 12 or data[0:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        head = data[:16]
        raise AudioError(
            f"{p}: not a WAV file (expected a RIFF/WAVE header, found {head!r}); only WAV is read "
            "(no ffmpeg here): convert it first, e.g. `sox IN -r 16000 -c 1 -b 16 OUT.wav`"
        )
    fmt: tuple[int, int, int, int] | None = None
    samples: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        tag = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        if tag == b"fmt ":
            if len(body) < 16:
                raise AudioError(f"{p}: truncated 'fmt ' chunk ({len(body)} bytes); the file is damaged")
            tag_id, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", body[:16])
            if tag_id == _FORMAT_EXTENSIBLE and len(body) >= 26:
                (tag_id,) = struct.unpack("<H", body[24:26])  # first two bytes of the sub-format GUID
            fmt = (tag_id, channels, rate, bits)
        elif tag == b"data":
            # Writers that stream sometimes leave size 0 or 0xFFFFFFFF: take what is there.
            samples = data[pos + 8 :] if size in (0, 0xFFFFFFFF) else body
            if size not in (0, 0xFFFFFFFF) and len(body) < size:
                log.warning("%s: data chunk is truncated (%d of %d bytes); reading what is there", p, len(body), size)
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
        if samples is not None and fmt is not None:
            break
    if fmt is None:
        raise AudioError(f"{p}: WAV file without a 'fmt ' chunk; the file is damaged, regenerate it")
    if samples is None:
        raise AudioError(f"{p}: WAV file without a 'data' chunk; it holds no audio, regenerate it")
    tag_id, channels, rate, bits = fmt
    if channels < 1 or rate < 1:
        raise AudioError(f"{p}: WAV header says {channels} channels at {rate} Hz; the file is damaged")
    pcm = _decode(samples, tag_id, bits, p)
    frames = len(pcm) // channels
    if frames == 0:
        raise AudioError(f"{p}: WAV file with no samples (0 frames); it holds no audio, regenerate it")
    pcm = pcm[: frames * channels].reshape(frames, channels)
    return pcm, int(rate)


def _decode(raw: bytes, tag_id: int, bits: int, p: Path) -> np.ndarray:
    """Turn the data chunk into float32 according to the format tag and bit depth."""
    width = bits // 8
    if width:
        raw = raw[: len(raw) - len(raw) % width]
    if tag_id == _FORMAT_FLOAT and bits in (32, 64):
        out = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise AudioError(f"{p}: float WAV contains NaN or Inf samples; the producer is broken")
        return out
    if tag_id == _FORMAT_PCM:
        if bits == 8:
            return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        if bits == 16:
            return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        if bits == 24:
            b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            v = np.where(v >= 1 << 23, v - (1 << 24), v)
            return v.astype(np.float32) / float(1 << 23)
        if bits == 32:
            return (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    raise AudioError(
        f"{p}: unsupported WAV encoding (format tag {tag_id:#06x}, {bits} bits); "
        "supported: PCM 8/16/24/32-bit and IEEE float 32/64-bit; convert with `sox IN -b 16 OUT.wav`"
    )


def write_wav(
    path: str | os.PathLike[str], pcm: np.ndarray, sample_rate: int, *, float32: bool = False
) -> Path:
    """Write samples (frames,) or (frames, channels) as 16-bit PCM (default) or float32 WAV.

    Samples are clipped to [-1, 1] for PCM, and the file is written to a temporary name and
    renamed, so a reader (or a parallel worker) never sees half a file.
    """
    arr = np.asarray(pcm, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise AudioError(f"write_wav: expected samples of shape (frames,) or (frames, channels), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise AudioError(f"write_wav: samples for {path} contain NaN or Inf; refusing to write them")
    channels = arr.shape[1]
    if float32:
        payload = arr.astype("<f4").tobytes()
        tag_id, bits = _FORMAT_FLOAT, 32
    else:
        payload = np.round(np.clip(arr, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        tag_id, bits = _FORMAT_PCM, 16
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag_id, channels, int(sample_rate), int(sample_rate) * align, align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    if len(payload) & 1:
        body += b"\0"
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"RIFF" + struct.pack("<I", len(body)) + body)
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
