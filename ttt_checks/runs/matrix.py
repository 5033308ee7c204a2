"""The detection matrix: which health check fails on which zoo checkpoint, measured, never typed.

``ttt-checks matrix`` runs the health suite on every checkpoint of the reference zoo and writes
``docs/detection-matrix.md`` (checkpoint x check, with each checkpoint's intended failures next
to what was measured). The meta-tests assert the same expectations; this file is the readable
record of one run of them.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
import sys
from pathlib import Path

from ttt_checks.diagnosis import diagnosis_dict, expected_diagnosis
from ttt_checks.models.reference.zoo import zoo_entries
from ttt_checks.paths import DOCS
from ttt_checks.verdict import fmt

DEFAULT_OUT = DOCS / "detection-matrix.md"


def zoo_checkpoints() -> list[tuple[str, Path, list[str]]]:
    """(name, path, intended failing checks) for every checkpoint of the committed zoo."""
    return [(e.name, e.path, list(e.expected_failures)) for e in zoo_entries()]


def zoo_expected_diagnoses() -> dict[str, str | None]:
    """{entry name: the diagnosis rule its construction implies} (None: healthy or not stated).

    Read from the entry's ``expected_diagnosis`` (the ZooEntry field, or ``expected.expected_diagnosis``
    in its committed config.json), else derived from its ``built_to_fail`` checks
    (:func:`ttt_checks.diagnosis.expected_diagnosis`), so a new zoo entry needs no edit here."""
    out = {}
    for e in zoo_entries():
        expected = dict(e.expected())
        config = Path(e.path) / "config.json"
        if config.is_file():
            try:
                expected = {**(json.loads(config.read_text()).get("expected") or {}), **expected}
            except (OSError, json.JSONDecodeError):
                pass
        stated = getattr(e, "expected_diagnosis", None) or expected.get("expected_diagnosis")
        out[e.name] = expected_diagnosis({**expected, "expected_diagnosis": stated})
    return out


def read_top_finding(report_dir: Path) -> tuple[str | None, str]:
    """(rule of the top finding or None when healthy, its one line) from a run's metrics.json."""
    metrics = json.loads((Path(report_dir) / "metrics.json").read_text())
    diagnosis = diagnosis_dict(metrics)  # the current rules on the measurements (a stored one may be older)
    findings = diagnosis.get("findings") or []
    if not findings:
        return None, str(diagnosis.get("summary", ""))
    top = findings[0]
    change = (f"{top.get('config_key')} = {fmt(top.get('value'))}" if top.get("config_key") and top.get("value") is not None
              else top.get("fix", ""))
    return str(top["rule"]), f"{top.get('title')} -> {change}"


def render_diagnoses(rows: list[tuple[str, str | None, str | None, str]]) -> str:
    """The table of top findings: (checkpoint, expected rule, measured top rule, its line)."""
    lines = ["", "## Top finding of the diagnosis", "",
             "The first finding of `ttt_checks.diagnosis` on each checkpoint (docs/diagnosis.md) against the cause its",
             "construction implies (`expected_diagnosis` of the zoo entry, or derived from its `built_to_fail`).", "",
             "| checkpoint | expected top finding | top finding (measured) | what to change | as intended |", "|---|---|---|---|---|"]
    for name, expected, got, text in rows:
        ok = "yes" if expected == got else "NO"
        lines.append(f"| {name} | {expected or '(healthy)'} | {got or '(healthy)'} | {text.replace('|', chr(92) + '|')} | {ok} |")
    return "\n".join(lines) + "\n"


def measure(path: Path, device: str, out_dir: Path) -> dict[str, bool]:
    """Run the health suite on one checkpoint in a fresh process; {check: passed}."""
    cmd = [sys.executable, "-m", "ttt_checks.cli", "gate", str(path), "--out", str(out_dir), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not (out_dir / "metrics.json").is_file():
        raise RuntimeError(f"the health suite on {path} wrote no metrics.json (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return read_verdicts(out_dir)


def read_verdicts(report_dir: Path) -> dict[str, bool]:
    """{check: passed} from a health run's metrics.json."""
    metrics_path = report_dir / "metrics.json"
    try:
        verdicts = json.loads(metrics_path.read_text())["verdicts"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"{metrics_path}: not a readable metrics.json of a health run ({exc})") from exc
    return {check: all(v["ok"] for v in vs) for check, vs in verdicts.items() if vs}


# Checks decided by one measured number against one threshold, where |measured - threshold| is the
# margin. The others combine several conditions (figure5_improvement: an absolute and a relative floor;
# inner_step_size: a line search; talk_base: words and a loss ratio; ...), so one distance would mislead.
# The value is the side that passes: +1 at or above the threshold, -1 at or below it.
SCALAR_CHECKS = {"figure5_ordering": 1, "figure5_adaptation": 1, "gate_stats": 1, "ttt_helps": 1, "dead_parameters": -1,
                 "streaming_consistency": -1, "talk_learned": 1}


def read_margins(report_dir: Path) -> dict[str, tuple[float, bool, bool] | None]:
    """{check: smallest relative distance of its scalar verdicts from their thresholds} from a run's
    metrics.json: |measured - threshold| / |threshold| (the absolute distance where the threshold is 0);
    each as (distance, absolute?, on the passing side?); None when no verdict of the check has a numeric measurement and
    threshold (a composite rule)."""
    verdicts = json.loads((Path(report_dir) / "metrics.json").read_text())["verdicts"]
    out: dict[str, tuple[float, bool, bool] | None] = {}
    for check, vs in verdicts.items():
        if check not in SCALAR_CHECKS:
            continue
        distances = []
        for v in vs:
            measured, threshold = v.get("measured"), v.get("threshold")
            if isinstance(measured, (int, float)) and isinstance(threshold, (int, float)) and measured == measured:
                distance = abs(measured - threshold)
                passing_side = (measured - threshold) * SCALAR_CHECKS[check] >= 0
                distances.append((distance / abs(threshold) if threshold else distance, not threshold, passing_side))
        out[check] = min(distances) if distances else None
    return out


def render_margins(rows: list[tuple[str, bool, dict[str, bool], dict[str, tuple[float, bool, bool] | None]]]) -> str:
    """How far each healthy checkpoint passes each check, and each broken one fails the checks it fails.

    A healthy checkpoint close to a threshold is a false alarm waiting for the next seed; a broken one
    close to it is a miss waiting for a milder defect. Distances are relative to the threshold (absolute
    where the threshold is 0, marked "abs"); only the checks of ``SCALAR_CHECKS``."""
    lines = ["", "## Margins: distance from each threshold", "",
             "The checks decided by one number against one threshold (`runs.matrix.SCALAR_CHECKS`; the others "
             "combine several conditions, see docs/health-checks.md). Healthy rows: how far each check passes "
             "(smallest over layers); broken rows: how far each check it fails is past its threshold. Relative "
             "to the threshold, |measured - threshold| / |threshold|; `abs` marks an absolute distance where "
             "the threshold is 0; `other`: the measurement is on the passing side and the check fails on another "
             "of its conditions (a gate exactly at its init, a benefit the input cannot resolve); `-` no numeric "
             "measurement.", "",
             "| checkpoint | " + " | ".join(f"`{c}`" for c in SCALAR_CHECKS) + " |",
             "|" + "---|" * (len(SCALAR_CHECKS) + 1)]
    for name, healthy, passed, margins in rows:
        cells = []
        for c in SCALAR_CHECKS:
            m = margins.get(c)
            shown = healthy or (c in passed and not passed[c])
            if not shown:
                cells.append("")
            elif m is None:
                cells.append("-")
            else:
                distance, absolute, passing_side = m
                if not healthy and passing_side:
                    cells.append("other")  # it fails on another condition of the rule (e.g. a gate exactly at its init)
                else:
                    cells.append(f"{distance:.3g} abs" if absolute else f"{100 * distance:.0f}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(rows: list[tuple[str, list[str], dict[str, bool]]], checks: list[str]) -> str:
    head = "| checkpoint | expected to fail | " + " | ".join(f"`{c}`" for c in checks) + " | as intended |"
    sep = "|" + "---|" * (len(checks) + 3)
    lines = [
        "# Detection matrix",
        "",
        f"Generated by `ttt-checks matrix` on {_dt.date.today().isoformat()}; do not edit by hand.",
        "Each row is one checkpoint of the reference zoo (`ttt-checks zoo list`), each column one health check",
        "(`tests_gpu/`). FAIL marks a failing check; **FAIL** one its zoo entry expects to fail (the check its",
        "defect is aimed at, `built_to_fail`, and the measured consequences, see each EXPECTED.md).",
        "",
        head,
        sep,
    ]
    for name, expected, passed in rows:
        cells = []
        for c in checks:
            if c not in passed:
                cells.append("-")
            elif passed[c]:
                cells.append("pass")
            else:
                cells.append("**FAIL**" if c in expected else "FAIL")
        failing = {c for c, ok in passed.items() if not ok}
        as_intended = "yes" if failing == set(expected) else "NO"
        lines.append(f"| {name} | {', '.join(expected) or '(healthy)'} | " + " | ".join(cells) + f" | {as_intended} |")
    return "\n".join(lines) + "\n"
