"""``ttt-checks transcribe``: what Whisper hears in WAV files, with guarded word counts.

A quick way to listen to a run's generated audio without opening it: per file the text, the
hallucination-guarded word count (see :mod:`ttt_checks.metrics.talk`), the duration and the
seconds of voice activity. ``--json`` prints a list of objects with exactly the keys
``file``, ``text``, ``words``, ``duration_s``, ``speech_s`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ttt_checks.asr import AsrError, get_transcriber, parse_asr_spec
from ttt_checks.audio import AudioError, load_audio


def register(subparsers: Any, name: str, help_text: str) -> None:
    """Add the ``transcribe`` subcommand to the ``ttt-checks`` parser."""
    p = subparsers.add_parser(name, help=help_text, description=__doc__.splitlines()[0])
    p.add_argument("wavs", nargs="+", metavar="WAV", help="WAV files (any rate, mono or stereo)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.add_argument(
        "--asr",
        default="default",
        metavar="SPEC",
        help="default | faster-whisper:PATH_OR_NAME | openai-whisper:NAME_OR_PATH (default: bundled tiny.en)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Transcribe every file; exit 1 if any file could not be read, 2 for a bad --asr."""
    from ttt_checks.metrics.talk import talk_metrics

    try:
        spec = parse_asr_spec(args.asr)
    except AsrError as exc:
        print(f"ttt-checks transcribe: {exc}", file=sys.stderr)
        return 2
    # Read every file first: a typo in the last path should not cost a model load.
    loaded = []
    failed = 0
    for path in args.wavs:
        try:
            audio = load_audio(path)
        except AudioError as exc:
            print(f"ttt-checks transcribe: {exc}", file=sys.stderr)
            failed += 1
            continue
        for note in audio.notes:
            print(f"ttt-checks transcribe: {path}: {note}", file=sys.stderr)
        loaded.append(audio)
    rows: list[dict[str, Any]] = []
    if loaded:
        try:
            transcriber = get_transcriber(spec)
        except AsrError as exc:
            print(f"ttt-checks transcribe: {exc}", file=sys.stderr)
            return 2
        for audio in loaded:
            transcript = transcriber.transcribe(audio.pcm, audio.sample_rate)
            m = talk_metrics(audio.pcm, audio.sample_rate, transcript)
            rows.append(
                {
                    "file": audio.path,
                    "text": m.text,
                    "words": m.words,
                    "duration_s": round(m.duration_s, 3),
                    "speech_s": round(m.speech_s, 3),
                }
            )
            if not args.json:
                print(f"{audio.path}: {m.words} words, {m.duration_s:.2f} s, {m.speech_s:.2f} s speech")
                print(f"  {m.text}" if m.text else "  (no words)")
                for why in m.dropped:
                    print(f"  not counted: {why}")
    if args.json:
        print(json.dumps(rows, indent=2))
    if failed:
        print(f"ttt-checks transcribe: {failed} of {len(args.wavs)} files could not be read", file=sys.stderr)
        return 1
    return 0
