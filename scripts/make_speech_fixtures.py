#!/usr/bin/env python3
"""Regenerate ``fixtures/speech/``: espeak-ng sentences with known texts, plus non-speech clips.

Why these clips: the ASR and talk-metric tests need speech whose words are known (to bound
word counts and WER across voices and speaking rates) and clips where the only right answer
is "no words" (digital silence, white noise, a pure tone), which are exactly the inputs on
which Whisper hallucinates "Thank you." and the hallucination guard must hold.

Everything is deterministic (espeak-ng is; the noise uses a fixed seed), 16 kHz mono 16-bit,
and small (about 25 s of audio, well under 2 MB). The manifest lists, per file, its kind,
text (empty for non-speech), word count, voice, rate and duration.

Usage: python scripts/make_speech_fixtures.py [--out fixtures/speech]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ttt_checks.audio import write_wav  # noqa: E402
from ttt_checks.audio.espeak import synthesize  # noqa: E402

SAMPLE_RATE = 16000

#: (file stem, text, espeak-ng voice, words per minute). Plain words only: no digits, names or
#: British/American spelling pairs, so a correct transcript matches the text after case and
#: punctuation normalisation.
SENTENCES: list[tuple[str, str, str, int]] = [
    ("fox_us_160", "The quick brown fox jumps over the lazy dog.", "en-us", 160),
    ("call_gb_150", "Please call me back when you have a moment this afternoon.", "en-gb", 150),
    ("weather_usf3_175", "We checked the weather every morning for a whole week.", "en-us+f3", 175),
    ("window_usm3_140", "Open the window and let the fresh air into the room.", "en-us+m3", 140),
    ("train_rp_190", "The train to the city leaves from the end of the platform.", "en-gb-x-rp", 190),
    ("language_us_210", "Learning a new language takes patience and daily practice.", "en-us", 210),
]

#: Leading and trailing silence around each sentence, as a model's reply would have.
PAD_S = 0.3
NON_SPEECH_S = 2.0


def non_speech_clips() -> dict[str, tuple[np.ndarray, str]]:
    """Silence, white noise and a pure tone: clips on which the right transcript is empty."""
    n = int(NON_SPEECH_S * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(20240505)
    return {
        "silence": (np.zeros(n, dtype=np.float32), "digital silence"),
        "noise": ((0.1 * rng.standard_normal(n)).clip(-1, 1).astype(np.float32), "white noise, RMS 0.1"),
        "tone": ((0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), "440 Hz sine, amplitude 0.3"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "fixtures" / "speech")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), dtype=np.float32)
    entries = []
    for stem, text, voice, wpm in SENTENCES:
        speech = synthesize(text, voice=voice, rate_wpm=wpm, sample_rate=SAMPLE_RATE)
        pcm = np.concatenate([pad, speech, pad])
        write_wav(out / f"{stem}.wav", pcm, SAMPLE_RATE)
        entries.append(
            {
                "file": f"{stem}.wav",
                "kind": "speech",
                "text": text,
                "words": len(text.split()),
                "voice": voice,
                "rate_wpm": wpm,
                "duration_s": round(len(pcm) / SAMPLE_RATE, 3),
            }
        )
    for stem, (pcm, what) in non_speech_clips().items():
        write_wav(out / f"{stem}.wav", pcm, SAMPLE_RATE)
        entries.append(
            {
                "file": f"{stem}.wav",
                "kind": stem,
                "text": "",
                "words": 0,
                "description": what,
                "duration_s": round(len(pcm) / SAMPLE_RATE, 3),
            }
        )
    manifest = {
        "sample_rate": SAMPLE_RATE,
        "generator": "scripts/make_speech_fixtures.py (espeak-ng)",
        "clips": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.glob("*.wav"))
    print(f"wrote {len(entries)} clips to {out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
