"""``ttt-checks demo`` and ``ttt-checks gate``: the health suite as one command with an exit code.

Both run the pytest health checks (``tests_gpu/``) in-process with a JUnit file and a report
directory, then print a one-screen summary read from the run's metrics.json: each check,
measured vs threshold, and where the artifacts are. Exit codes: 0 healthy, 1 unhealthy,
2 or more for usage or internal errors (pytest's own codes, passed through).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ttt_checks.paths import HEALTH_TESTS, REPORTS


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    if name == "gate":
        parser.add_argument("ckpt", help="checkpoint directory to gate")
        parser.add_argument("--baseline", help="metrics.json of an earlier checkpoint to compare against")
        parser.add_argument("--update-baseline", action="store_true", help="write this run's metrics to --baseline")
        parser.add_argument("--base-reference", help="metrics.json of a known-good checkpoint on the same base and input "
                                                     "(its gate-0 loss is the base model's reference)")
    parser.add_argument("--out", help="report directory (default reports/<run-id>)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow pickle weights (pickle can run code; loaded with torch.load(weights_only=True))")
    parser.add_argument("--gates", help="gating sweep values (default 0,learned,0.3,0.5,1)")
    parser.add_argument("--input", help="input for the teacher-forced pass and the sweep (a wav for speech models, "
                                        "UTF-8 dialogue text for the reference model)")
    parser.add_argument("--max-positions", type=int, help="cut the teacher-forced input to this many positions")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE", help="override a threshold")
    parser.add_argument("-k", dest="keyword", help="only checks whose test name matches (pytest -k)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    import pytest

    from ttt_checks.run import new_run_id
    from ttt_checks.runs.suite import pytest_args, summary

    if not HEALTH_TESTS.is_dir():
        print(f"ttt-checks: the health checks ({HEALTH_TESTS}) ship with a clone of ttt-checks; run from one", file=sys.stderr)
        return 4
    ckpt = getattr(args, "ckpt", None)
    out = Path(args.out) if args.out else REPORTS / new_run_id(Path(ckpt) if ckpt else None)
    out = out.resolve()
    t0 = time.perf_counter()
    code = int(pytest.main(pytest_args(ckpt, out, args)))
    elapsed = time.perf_counter() - t0
    print(summary(out, code, elapsed))
    return code
