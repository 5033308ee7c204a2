"""The pytest health suite (``tests_gpu/``) run on one checkpoint: its command line and the
one-screen summary read back from the report it writes. ``ttt-checks gate`` runs it in-process,
``watch`` in a fresh process per checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ttt_checks.diagnosis import diagnosis_dict, one_line
from ttt_checks.paths import HEALTH_TESTS, REPO_ROOT
from ttt_checks.verdict import fmt

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
    if getattr(args, "base_reference", None):
        argv += ["--base-reference", args.base_reference]
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
    lines.append(one_line(metrics.get("diagnosis") or diagnosis_dict(metrics)))
    for v in verdicts:
        where = f" [{v['layer']}]" if v.get("layer") else ""
        lines.append(f"  {'ok  ' if v['ok'] else 'FAIL'} {v['name']}{where}: {fmt(v['measured'])} vs {fmt(v['threshold'])}"
                     + ("" if v["ok"] else f"  {v['explanation']}"))
    lines.append(f"  {len(verdicts) - len(failed)} passed, {len(failed)} failed")
    lines.append(f"report: {out / 'report.txt'}")
    lines.append(f"html:   {out / 'index.html'}")
    lines.append(f"junit:  {out / 'junit.xml'}")
    lines.append(f"files:  {out}")
    return "\n".join(lines)
