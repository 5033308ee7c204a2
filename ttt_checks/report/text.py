"""The text report: one section per TTT layer, measured vs threshold per rule, in the spirit of
the user's ttt_diagnostic_report.txt, then the model-level checks and the gating sweep.

It renders metrics.json (what a run measured), so a merged report of parallel workers is
rendered exactly like a serial one.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from ttt_checks.diagnosis import diagnosis_dict
from ttt_checks.diagnosis import render_text as render_diagnosis
from ttt_checks.report.files import write_text_atomic
from ttt_checks.verdict import fmt, verdict_line


def render(metrics: dict[str, Any]) -> str:
    lines = ["=" * 78, "TTT DIAGNOSTIC REPORT (ttt-checks)", "=" * 78]
    lines.append(f"checkpoint : {metrics.get('checkpoint') or 'embedded default'} (adapter: {metrics.get('adapter')})")
    inputs = metrics.get("inputs")
    if inputs:  # what the model was fed, and every conversion made to feed it
        lines.append(f"input      : {inputs.get('description')}")
        lines += [f"input note : {note}" for note in inputs.get("notes", [])]
    lines.append(f"written    : {_dt.datetime.now().isoformat(timespec='seconds')}")
    if not metrics.get("complete", True):
        lines.append("STATUS     : INCOMPLETE (the run was interrupted; the checks below are those that finished)")
    verdicts = [v for vs in metrics.get("verdicts", {}).values() for v in vs]
    failed = [v for v in verdicts if not v["ok"]]
    lines.append(f"verdict    : {'UNHEALTHY' if failed else 'HEALTHY' if verdicts else 'NO CHECK RAN'}"
                 f" ({len(verdicts) - len(failed)} passed, {len(failed)} failed)")
    diagnosis = metrics.get("diagnosis") or diagnosis_dict(metrics)
    lines += ["", "-" * 78, *render_diagnosis(diagnosis)]
    figure5 = metrics.get("figure5", {})
    layers = [l["name"] for l in metrics.get("layers", [])]
    per_gate = lambda v: str(v.get("layer") or "").startswith("gate ")  # noqa: E731  (sweep verdicts)
    layers += sorted({v["layer"] for v in verdicts if v.get("layer") and not per_gate(v) and v["layer"] not in layers})
    for layer in layers:
        lines += ["", "-" * 78, f"Layer {layer}"]
        s = figure5.get(layer)
        if s:
            lines.append(f"  Data coverage: {s['positions']} / {s['expected_positions']} positions")
            lines.append(f"  mean l0 {fmt(s['mean_l0'])}   mean lprev {fmt(s['mean_lprev'])}   mean lafter {fmt(s['mean_lafter'])}"
                         f"   mean lmean {fmt(s.get('mean_lmean'), 'not measured')} (l0 / lmean {fmt(s.get('l0_to_lmean'), '-')})")
            lines.append(f"  smoothed positions with l0>lprev {fmt(s['frac_l0_gt_lprev'])}, lprev>lafter {fmt(s['frac_lprev_gt_lafter'])}")
            lines.append(f"  avg per-step improvement (lprev-lafter) {fmt(s['improvement_abs'])} (relative {fmt(s['improvement_rel'])})")
            lines.append(f"  first -> last quarter: lprev {fmt(s['lprev_first_quarter'])} -> {fmt(s['lprev_last_quarter'])}, "
                         f"log(l0/lprev) {fmt(s.get('benefit_first_quarter'))} -> {fmt(s.get('benefit_last_quarter'))}, "
                         f"gap l0-lafter {fmt(s['gap_first_quarter'])} -> {fmt(s['gap_last_quarter'])}")
        elif layer in layers:
            lines.append("  NO DATA COLLECTED")
        lines += ["  " + verdict_line(v) for v in verdicts if v.get("layer") == layer]
    model_level = [v for v in verdicts if not v.get("layer") or per_gate(v)]
    if model_level:
        lines += ["", "-" * 78, "Model-level checks"] + ["  " + verdict_line(v) for v in model_level]
    sweep = metrics.get("sweep")
    if sweep:
        lines += ["", "-" * 78, "Gating sweep: raw alpha -> tanh(alpha), words Whisper heard (speech guard on)"]
        for row in sweep:
            lines.append(f"  {row['label']:>8} -> {row['gate_tanh']:.3f}: {row['words']:>4} words  transcript {row['transcript']!r}")
            if row.get("model_text") is not None:
                lines.append(f"  {'':>8}    model text {row['model_text']!r}")
    lines += ["", "-" * 78, f"Artifacts: {metrics.get('report_dir', '')}"]
    return "\n".join(lines) + "\n"


def write_text_report(metrics: dict[str, Any], path: Path) -> Path:
    return write_text_atomic(path, render(metrics))
