"""The ``ttt-checks`` command.

Each subcommand is a module of this package with ``register(subparsers, name, help)`` and a
handler; the handler imports what it drives (``runs/``, ``run.py``, the zoo) when it runs, so
``ttt-checks --help`` stays cheap. This module only lists them.
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Sequence

# name -> (module, one-line help). The module defines register(subparsers) -> None and a
# handler stored with ``parser.set_defaults(func=...)`` that returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ttt_checks.cli.gate", "run the full health suite on the embedded default model (CPU, offline)"),
    "gate": ("ttt_checks.cli.gate", "run the health suite on a checkpoint; exit 0 healthy, 1 unhealthy"),
    "matrix": ("ttt_checks.cli.matrix", "regenerate docs/detection-matrix.md from the zoo (runs the suite on each)"),
    "figure5": ("ttt_checks.cli.figure5", "inspect a saved Figure-5 record (.npz)"),
    "zoo": ("ttt_checks.cli.zoo", "list or rebuild the reference checkpoint zoo"),
    "transcribe": ("ttt_checks.cli.transcribe", "transcribe WAV files with Whisper: text, guarded word count, duration, speech seconds"),
    "watch": ("ttt_checks.cli.watch", "gate each new checkpoint of a training run as it appears"),
    "trend": ("ttt_checks.cli.trend", "a run's gated checkpoints over the training step: what broke when, which checkpoint to keep"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttt-checks",
        description="Validation and regression checks for models with Test-Time-Training layers.",
    )
    from ttt_checks import __version__

    parser.add_argument("--version", action="version", version=f"ttt-checks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        mod.register(sub, name, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Must precede any moshi import: moshi reads NO_TORCH_COMPILE when it is imported (docs/moshi.md).
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ttt_checks import restore_sigint

    restore_sigint()  # Ctrl-C / kill -INT stop watch and gate even when started with SIGINT ignored
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)

