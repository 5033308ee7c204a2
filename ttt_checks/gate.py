"""``ttt-checks demo`` and ``ttt-checks gate``: the health suite as one command with an exit code.

Both run the pytest health checks (``tests_gpu/``) in-process with a JUnit file and a report
directory, then print a one-screen summary read from the run's metrics.json: each check,
measured vs threshold, and where the artifacts are. Exit codes: 0 healthy, 1 unhealthy,
2 or more for usage or internal errors (pytest's own codes, passed through).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HEALTH_TESTS = REPO_ROOT / "tests_gpu"


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    if name == "gate":
        parser.add_argument("ckpt", help="checkpoint directory to gate")
        parser.add_argument("--baseline", help="metrics.json of an earlier checkpoint to compare against")
        parser.add_argument("--update-baseline", action="store_true", help="write this run's metrics to --baseline")
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


def pytest_args(ckpt: str | None, out: Path, args: argparse.Namespace) -> list[str]:
    argv = ["-m", "gpu", str(HEALTH_TESTS), "--report-dir", str(out), f"--junitxml={out / 'junit.xml'}",
            "-p", "no:cacheprovider", "--device", args.device, "-o", "junit_family=xunit1",
            "-o", "junit_logging=system-out", "--rootdir", str(REPO_ROOT)]
    if ckpt:
        argv += ["--ckpt", ckpt]
    if getattr(args, "baseline", None):
        argv += ["--baseline", args.baseline]
    if getattr(args, "update_baseline", False):
        argv.append("--update-baseline")
    if getattr(args, "trust_pickle", False):
        argv.append("--trust-pickle")
    if args.gates:
        argv += ["--gates", args.gates]
    if getattr(args, "input", None):
        argv += ["--input", str(Path(args.input).resolve())]
    if getattr(args, "max_positions", None) is not None:
        argv += ["--max-positions", str(args.max_positions)]
    for item in args.threshold:
        argv += ["--threshold", item]
    if args.keyword:
        argv += ["-k", args.keyword]
    argv += ["-q", "-rN"] if not args.verbose else ["-v"]
    return argv


def run_command(args: argparse.Namespace) -> int:
    import pytest

    from ttt_checks.run import new_run_id

    if not HEALTH_TESTS.is_dir():
        print(f"ttt-checks: the health checks ({HEALTH_TESTS}) ship with a clone of ttt-checks; run from one", file=sys.stderr)
        return 4
    ckpt = getattr(args, "ckpt", None)
    out = Path(args.out) if args.out else REPO_ROOT / "reports" / new_run_id(Path(ckpt) if ckpt else None)
    out = out.resolve()
    t0 = time.perf_counter()
    code = int(pytest.main(pytest_args(ckpt, out, args)))
    elapsed = time.perf_counter() - t0
    print(summary(out, code, elapsed))
    return code


def summary(out: Path, code: int, elapsed: float) -> str:
    """One screen: each verdict, measured vs threshold, and where the evidence is."""
    metrics_path = out / "metrics.json"
    lines = []
    if code == 4:  # pytest.ExitCode.USAGE_ERROR: refused before anything ran
        return "ttt-checks: USAGE ERROR (exit 4): nothing was measured; the ERROR line above says what to fix"
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"ttt-checks: no readable metrics.json in {out} ({exc}); pytest exit code {code}"
    verdicts = [v for vs in metrics.get("verdicts", {}).values() for v in vs]
    failed = [v for v in verdicts if not v["ok"]]
    status = {0: "HEALTHY", 1: "UNHEALTHY"}.get(code, f"ERROR (pytest exit code {code})")
    if code == 2 or not metrics.get("complete", True):
        status = "INTERRUPTED (the report is incomplete: only the checks that finished)"
    lines.append("")
    lines.append(f"ttt-checks: {status}  checkpoint {metrics.get('checkpoint')}  ({elapsed:.1f} s)")
    from ttt_checks.diagnosis import diagnosis_dict, one_line

    lines.append(one_line(metrics.get("diagnosis") or diagnosis_dict(metrics)))
    for v in verdicts:
        where = f" [{v['layer']}]" if v.get("layer") else ""
        lines.append(f"  {'ok  ' if v['ok'] else 'FAIL'} {v['name']}{where}: {_fmt(v['measured'])} vs {_fmt(v['threshold'])}"
                     + ("" if v["ok"] else f"  {v['explanation']}"))
    lines.append(f"  {len(verdicts) - len(failed)} passed, {len(failed)} failed")
    lines.append(f"report: {out / 'report.txt'}")
    lines.append(f"html:   {out / 'index.html'}")
    lines.append(f"junit:  {out / 'junit.xml'}")
    lines.append(f"files:  {out}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
