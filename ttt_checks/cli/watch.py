"""``ttt-checks watch RUN_DIR``: gate each new checkpoint of a training run as it appears (``runs/watch.py``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path



def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="training run directory (or one checkpoint)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between looks at the run (default 60)")
    parser.add_argument("--once", action="store_true", help="gate what is there now, then exit with the verdict")
    parser.add_argument("--baseline-chain", action="store_true",
                        help="compare each checkpoint with the last healthy one before it (its metrics.json)")
    parser.add_argument("--baseline", type=Path, help="metrics.json the first checkpoint is compared with")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="a checkpoint is gated once nothing in it changed for this many seconds (default 30)")
    parser.add_argument("--out", type=Path, help="report root, one folder per checkpoint (default reports/watch-<run name>)")
    parser.add_argument("--list", action="store_true", help="print the run's checkpoints, one per line, and exit")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--gates", help="gating sweep values (default 0,learned,0.3,0.5,1)")
    parser.add_argument("--max-positions", type=int, help="cut the teacher-forced input to this many positions")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE", help="override a threshold")
    parser.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for the pytest run of each gate (repeatable)")
    parser.set_defaults(func=run_command)


_EPILOG = """\
checkpoints: RUN_DIR/checkpoints/checkpoint_<step>[/consolidated], RUN_DIR/checkpoint_<step>, or
folders holding config.json; each is gated once it has settled, reports in OUT/<checkpoint name>/,
what was gated in OUT/watch-state.json.
exit codes (--once, or Ctrl-C): 0 healthy or nothing new, 1 a checkpoint is unhealthy, 2 a gate
could not judge one, 4 usage error, 5 no checkpoint in RUN_DIR."""


def run_command(args: argparse.Namespace) -> int:
    from ttt_checks.runs.discovery import find_checkpoints
    from ttt_checks.runs.watch import GateRecord, Watcher, _refresh_trend, default_report_dir, describe, exit_code, subprocess_gate

    run_dir: Path = args.run_dir
    try:
        checkpoints = find_checkpoints(run_dir)
    except FileNotFoundError as exc:
        print(f"ttt-checks watch: {exc}", file=sys.stderr)
        return 4
    if args.list:
        for ckpt in checkpoints:  # absolute, not resolved: a linked checkpoint keeps its name in the run
            print(ckpt.absolute())
        return 0
    if args.interval <= 0 or args.settle < 0:
        print("ttt-checks watch: --interval must be positive and --settle not negative", file=sys.stderr)
        return 4
    if args.baseline is not None and not args.baseline.is_file():
        print(f"ttt-checks watch: --baseline {args.baseline}: no such file", file=sys.stderr)
        return 4
    out = args.out or default_report_dir(run_dir)
    try:
        watcher = Watcher(run_dir, out, subprocess_gate(args), settle_s=args.settle,
                          baseline_chain=args.baseline_chain, baseline=args.baseline)
    except RuntimeError as exc:
        print(f"ttt-checks watch: {exc}", file=sys.stderr)
        return 4
    gated: list[GateRecord] = []
    try:
        if args.once:
            if not checkpoints:
                print(f"ttt-checks watch: {run_dir} holds no checkpoint (checkpoint_* folders, or folders with "
                      "config.json)", file=sys.stderr)
                return 5
            gated = watcher.poll_once()
            _refresh_trend(run_dir, out, gated)
        else:
            print(f"watch: watching {run_dir} every {args.interval:g} s; reports in {out} (Ctrl-C stops)", flush=True)
            while True:
                new = watcher.poll_once()
                gated += new  # counted before the trend is drawn: Ctrl-C while drawing loses no verdict
                _refresh_trend(run_dir, out, new)
                time.sleep(args.interval)
    except KeyboardInterrupt:
        print("watch: stopped", flush=True)
    code = exit_code(gated)
    print(f"watch: {len(gated)} checkpoint(s) gated now, {len(watcher.records)} in total; "
          + ", ".join(f"{r.name} {describe(r.code)}" for r in gated) + f"; state in {watcher.state_path}")
    return code
