"""Text to speech with the espeak-ng command-line program.

Used for the committed speech fixtures and by the reference model to speak its replies. It is
formant synthesis: robotic but fully deterministic, offline and small (one Debian package),
and Whisper transcribes it well, which is all a known-text round trip needs.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ttt_checks.audio.wav import AudioError, read_wav, resample, to_mono

_INSTALL_HINT = (
    "install it with `sudo apt-get install -y espeak-ng` (Debian/Ubuntu), "
    "or run `bash .ci/system-deps` from the repository root"
)


class EspeakError(RuntimeError):
    """espeak-ng is missing or refused the request; the message says what to do."""


def espeak_binary() -> str:
    """Path of the espeak-ng executable, or an :class:`EspeakError` naming the install command."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakError(f"the espeak-ng program is not on PATH; {_INSTALL_HINT}")
    return exe


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 160, sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text`` and return float32 mono samples at ``sample_rate``.

    ``voice`` is an espeak-ng voice name, optionally with a variant (``"en-us"``, ``"en-gb"``,
    ``"en-us+f3"``); ``rate_wpm`` is the speaking rate in words per minute (espeak-ng ``-s``).
    Text that is empty or only whitespace gives an empty array: nothing said is no audio.
    The same inputs always give the same samples. Text is passed on stdin, so a reply that
    starts with ``-`` is spoken rather than read as an option.
    """
    if not isinstance(text, str):
        raise TypeError(f"synthesize: text must be a str, got {type(text).__name__}")
    if sample_rate <= 0:
        raise ValueError(f"synthesize: sample_rate must be positive, got {sample_rate}")
    if not 80 <= int(rate_wpm) <= 450:
        raise ValueError(f"synthesize: rate_wpm={rate_wpm} is outside espeak-ng's range 80..450 words per minute")
    if not text.strip():
        return np.zeros(0, dtype=np.float32)
    exe = espeak_binary()
    with tempfile.TemporaryDirectory(prefix="ttt-espeak-") as tmp:
        out = Path(tmp) / "speech.wav"
        proc = subprocess.run(
            [exe, "-v", voice, "-s", str(int(rate_wpm)), "-w", str(out), "--stdin"],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=120,
            check=False,
        )
        err = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not out.exists():
            hint = " (list voices with `espeak-ng --voices=en`)" if "voice" in err.lower() else ""
            raise EspeakError(
                f"espeak-ng failed for voice {voice!r} (exit {proc.returncode}): {err or 'no message'}{hint}"
            )
        try:
            frames, rate = read_wav(out)
        except AudioError as exc:
            raise EspeakError(f"espeak-ng produced no usable audio for {text[:60]!r}: {exc}") from exc
    return resample(to_mono(frames), rate, sample_rate)
