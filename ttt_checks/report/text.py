"""The text report: one section per TTT layer, measured vs threshold per rule, in the spirit of
the user's ttt_diagnostic_report.txt, then the model-level checks and the sweep."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def render(run, incomplete: bool = False) -> str:
    lines = ["=" * 78, "TTT DIAGNOSTIC REPORT (ttt-checks)", "=" * 78]
    lines.append(f"checkpoint : {run.adapter.checkpoint or 'embedded default'} (adapter: {run.adapter.name})")
    lines.append(f"written    : {_dt.datetime.now().isoformat(timespec='seconds')}")
    if incomplete:
        lines.append("STATUS     : INCOMPLETE (the run was interrupted; checks below are those that finished)")
    verdicts = [v for vs in run.verdicts.values() for v in vs]
    failed = [v for v in verdicts if not v.ok]
    lines.append(f"verdict    : {'UNHEALTHY' if failed else 'HEALTHY' if verdicts else 'NO CHECK RAN'}"
                 f" ({len(verdicts) - len(failed)} passed, {len(failed)} failed)")
    lines.append("")
    layer_names = sorted({v.layer for v in verdicts if v.layer}, key=str)
    for layer in layer_names:
        lines.append("-" * 78)
        lines.append(f"Layer {layer}")
        stats = getattr(run, "__dict__", {}).get("figure5", {}).get(layer)
        if stats is not None:
            lines.append(f"  Data coverage: {stats.positions} / {stats.expected_positions} positions")
            lines.append(f"  mean l0 {stats.mean_l0:.4g}   mean lprev {stats.mean_lprev:.4g}   mean lafter {stats.mean_lafter:.4g}")
            lines.append(f"  l0>lprev at {stats.frac_l0_gt_lprev:.0%}, lprev>lafter at {stats.frac_lprev_gt_lafter:.0%} of smoothed positions")
            lines.append(f"  avg per-step improvement (lprev-lafter) {stats.improvement_abs:.4g} ({stats.improvement_rel:.1%})")
            lines.append(f"  trend first->last quarter: lprev {stats.lprev_first_quarter:.4g} -> {stats.lprev_last_quarter:.4g}, "
                         f"gap l0-lafter {stats.gap_first_quarter:.4g} -> {stats.gap_last_quarter:.4g}")
        for v in verdicts:
            if v.layer == layer:
                lines.append("  " + v.line())
    model_level = [v for v in verdicts if not v.layer]
    if model_level:
        lines.append("-" * 78)
        lines.append("Model-level checks")
        lines.extend("  " + v.line() for v in model_level)
    sweep = getattr(run, "__dict__", {}).get("sweep")
    if sweep:
        lines.append("-" * 78)
        lines.append("Gating sweep (raw alpha -> tanh(alpha)): words heard by Whisper")
        for row in sweep:
            lines.append(f"  {row['label']:>8} -> {row['gate_tanh']:.3f}: {row['words']:>4} words  "
                         f"transcript {row['transcript']!r}  model text {row.get('model_text')!r}")
    lines.append("-" * 78)
    lines.append("Artifacts: " + str(run.report_dir))
    return "\n".join(lines) + "\n"


def write_text_report(run, path: Path, incomplete: bool = False) -> Path:
    return _write_atomic(path, render(run, incomplete))
