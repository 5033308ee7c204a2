"""What every transcriber returns, and the interface it implements."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class AsrError(RuntimeError):
    """A transcriber could not be built or run; the message names the fix."""


@dataclass(frozen=True)
class Segment:
    """One Whisper decoding window's output with the per-segment confidence signals.

    ``no_speech_prob`` (probability of the no-speech token), ``avg_logprob`` (mean token
    log-probability) and ``compression_ratio`` (gzip ratio of the text, >2.4 means a loop) are
    what Whisper itself uses to reject a decode; the talk metrics reuse them to drop
    hallucinated words.
    """

    start: float
    end: float
    text: str
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float


@dataclass(frozen=True)
class Transcript:
    """The text of one audio clip, its segments, and where it came from."""

    text: str
    segments: tuple[Segment, ...]
    language: str
    duration_s: float
    backend: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def no_speech(self) -> float:
        """Largest no-speech probability over segments (1.0 for a transcript without any)."""
        return max((s.no_speech_prob for s in self.segments), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (segments as dicts)."""
        d = asdict(self)
        d["segments"] = [asdict(s) for s in self.segments]
        d["notes"] = list(self.notes)
        return d


@runtime_checkable
class Transcriber(Protocol):
    """Speech to text. ``pcm`` is mono float samples in [-1, 1] at ``sample_rate``.

    Implementations resample to 16 kHz themselves (and say so in ``Transcript.notes``), decode
    deterministically (temperature 0, fixed language), and return an empty transcript for an
    empty input rather than failing.
    """

    name: str

    def transcribe(self, pcm: np.ndarray, sample_rate: int) -> Transcript: ...
