"""``ttt-checks trend RUN_DIR``: a run's gated checkpoints over the training step (``runs/trend.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path



def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("run_dir", type=Path, help="training run directory (checkpoints/checkpoint_<step>/...)")
    parser.add_argument("--out", type=Path, help="where trend.html, trend.json and the PNGs go (default: the watch "
                                                 "report folder of the run, reports/watch-<run name>)")
    parser.add_argument("--reports", type=Path, action="append", default=[],
                        help="folder to search for gated checkpoints' metrics.json (repeatable; default reports/ and --out)")
    parser.add_argument("--run", action="store_true", help="gate the checkpoints that have no report yet (as watch --once)")
    parser.add_argument("--device", default="auto", help="--run: auto | cpu | cuda | cuda:N")
    parser.add_argument("--gates", help="--run: gating sweep values (default 0,learned,0.3,0.5,1)")
    parser.add_argument("--max-positions", type=int, help="--run: cut the teacher-forced input to this many positions")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE", help="--run: override a threshold")
    parser.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                        help="--run: extra argument for each gate's pytest run (e.g. --input=PATH, -k=...)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Exit code: 0 the newest gated checkpoint is healthy, 1 it is not (constant failures count:
    the newest still fails them), 4 usage error, 5 no checkpoint of the run has a report."""
    from ttt_checks.runs.discovery import find_checkpoints
    from ttt_checks.runs.trend import TREND_HTML, TREND_JSON, default_roots, find_reports, write_trend
    from ttt_checks.runs.watch import Watcher, default_report_dir, subprocess_gate

    run_dir: Path = args.run_dir
    try:
        checkpoints = find_checkpoints(run_dir)
    except FileNotFoundError as exc:
        print(f"ttt-checks trend: {exc}", file=sys.stderr)
        return 4
    if not checkpoints:
        print(f"ttt-checks trend: {run_dir} holds no checkpoint", file=sys.stderr)
        return 5
    out = args.out or default_report_dir(run_dir)
    roots = [*(args.reports or default_roots(run_dir)), out]
    if args.run:
        have = find_reports(run_dir, roots)
        missing = [c for c in checkpoints if str(c.absolute()) not in have]
        if missing:
            print(f"trend: gating {len(missing)} checkpoint(s) without a report into {out}", flush=True)
            Watcher(run_dir, out, subprocess_gate(args), settle_s=0.0).gate_checkpoints(missing)
    data = write_trend(run_dir, out, roots)
    summary = data["summary"]
    print(f"trend: {summary['sentence']}")
    keep, cause = summary.get("keep"), summary.get("cause") or {}
    if keep:
        print(f"trend: keep {keep['name']}: {keep['why']}")
    if cause.get("kind"):
        print(f"trend: cause (step {cause['step']} vs {cause['from_step']}): {cause['cause']}")
        print(f"trend: fix: {cause['fix']}")
    if summary.get("constant_failures"):
        print(f"trend: constant over the run, still to fix separately (the kept checkpoint fails them too): "
              f"{', '.join(summary['constant_failures'])}")
    print(f"trend: {out / TREND_HTML}  ({len(data['points'])} checkpoint(s); json {out / TREND_JSON})")
    if not data["points"]:
        return 5
    return 0 if summary["newest_healthy"] else 1
