"""Audio in and out: WAV files, mono 16 kHz conversion (said, never silent), espeak-ng speech.

Public face: :func:`load_audio` (any WAV -> mono float32 at 16 kHz, with notes of what was
converted), :func:`read_wav` / :func:`write_wav`, :func:`resample`, and
:func:`ttt_checks.audio.espeak.synthesize` for speech with a known text.
"""

from ttt_checks.audio.wav import (
    ASR_SAMPLE_RATE,
    Audio,
    AudioError,
    load_audio,
    read_wav,
    resample,
    to_mono,
    write_wav,
)

__all__ = [
    "ASR_SAMPLE_RATE",
    "Audio",
    "AudioError",
    "load_audio",
    "read_wav",
    "resample",
    "to_mono",
    "write_wav",
]
