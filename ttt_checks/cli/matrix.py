"""``ttt-checks matrix``: regenerate docs/detection-matrix.md from the zoo (``runs/matrix.py``)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ttt_checks.paths import DOCS

DEFAULT_MATRIX = DOCS / "detection-matrix.md"


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--out", default=str(DEFAULT_MATRIX), help=f"markdown file to write (default {DEFAULT_MATRIX})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--from-reports", metavar="DIR",
                        help="read DIR/<checkpoint>/metrics.json of earlier `ttt-checks gate` runs instead of running the suite")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from ttt_checks.checks.catalogue import CHECKS
    from ttt_checks.runs.matrix import (measure, read_margins, read_top_finding, read_verdicts, render, render_diagnoses,
                                        render_margins, zoo_checkpoints, zoo_expected_diagnoses)

    rows, diagnoses, margin_rows = [], [], []
    checks = list(CHECKS)
    expected_rules = zoo_expected_diagnoses()
    with tempfile.TemporaryDirectory(prefix="ttt-matrix-") as tmp:
        for name, path, expected in zoo_checkpoints():
            print(f"matrix: {name} ...", flush=True)
            report = Path(args.from_reports) / name if args.from_reports else Path(tmp) / name
            if args.from_reports:
                passed = read_verdicts(report)
            else:
                passed = measure(path, args.device, report)
            checks += [c for c in passed if c not in checks]
            rows.append((name, expected, passed))
            margin_rows.append((name, not expected, passed, read_margins(report)))
            diagnoses.append((name, expected_rules.get(name), *read_top_finding(report)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(rows, checks) + render_diagnoses(diagnoses) + render_margins(margin_rows))
    print(f"matrix: wrote {out}")
    return 0
