"""Regression against a baseline: one checkpoint's metrics.json is the reference of the next.

The baseline is only ever written on request (``--update-baseline``). Each metric has a
direction (a loss going up is worse; words or the inner-step improvement going down is worse)
and a relative tolerance: ``baseline_rel_tolerance`` by default, per-metric patterns in a
``[tool.ttt_checks.baseline_tolerances]`` table (``"figure5.*.mean_l0" = 0.2``). A failure
lists every regressed metric with its old and new value.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Mapping

from ttt_checks.verdict import Verdict, cannot_measure

# Higher is better (+1), lower is better (-1).
DIRECTIONS: dict[str, int] = {
    "figure5.*.mean_l0": -1,
    "figure5.*.mean_lprev": -1,
    "figure5.*.mean_lafter": -1,
    "figure5.*.improvement_abs": +1,
    "figure5.*.improvement_rel": +1,
    "figure5.*.frac_l0_gt_lprev": +1,
    "figure5.*.frac_lprev_gt_lafter": +1,
    "figure5.*.context_gain_abs": +1,
    "outer_loss.learned": -1,
    "gate.*.mean_tanh": +1,
    "sweep.*.words": +1,
}


class BaselineError(RuntimeError):
    """A baseline file that cannot be read."""


def flatten(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The comparable numbers of a metrics.json, by dotted name."""
    out: dict[str, float] = {}
    for layer, stats in metrics.get("figure5", {}).items():
        for key in ("mean_l0", "mean_lprev", "mean_lafter", "improvement_abs", "improvement_rel",
                    "frac_l0_gt_lprev", "frac_lprev_gt_lafter", "context_gain_abs"):
            if isinstance(stats.get(key), (int, float)):
                out[f"figure5.{layer}.{key}"] = float(stats[key])
    for key, value in metrics.get("outer_loss", {}).items():
        if isinstance(value, (int, float)):
            out[f"outer_loss.{key}"] = float(value)
    for layer in metrics.get("layers", []):
        out[f"gate.{layer['name']}.mean_tanh"] = float(layer["gate_mean_tanh"])
    for row in metrics.get("sweep", []) or []:
        out[f"sweep.{row['label']}.words"] = float(row["words"])
    return out


def direction(name: str) -> int:
    for pattern, sign in DIRECTIONS.items():
        if fnmatch.fnmatchcase(name, pattern):
            return sign
    return 0


def tolerance(name: str, default: float, per_metric: Mapping[str, float]) -> float:
    for pattern, value in per_metric.items():
        if fnmatch.fnmatchcase(name, pattern):
            return float(value)
    return default


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BaselineError(f"--baseline {path}: no such file; create it from a good run with --update-baseline") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"--baseline {path}: not a readable metrics.json ({exc})") from exc
    if not isinstance(data, dict) or "verdicts" not in data:
        raise BaselineError(f"--baseline {path}: not a ttt-checks metrics.json (no 'verdicts')")
    return data


def compare(current: Mapping[str, Any], baseline: Mapping[str, Any], default_tol: float,
            per_metric: Mapping[str, float] | None = None) -> Verdict:
    """One verdict: which directional metrics got worse than their tolerance allows."""
    now, before = flatten(current), flatten(baseline)
    shared = sorted(set(now) & set(before))
    if not shared:
        return cannot_measure("baseline_regression", "the baseline and this run share no metric (different model or checks?)")
    regressions, compared = [], 0
    for name in shared:
        sign = direction(name)
        if sign == 0:
            continue
        compared += 1
        old, new = before[name], now[name]
        change = (new - old) / max(abs(old), 1e-8)
        tol = tolerance(name, default_tol, per_metric or {})
        if -sign * change > tol:
            regressions.append({"metric": name, "old": old, "new": new, "change": change, "tolerance": tol})
    missing = sorted(set(before) - set(now))
    text = "; ".join(f"{r['metric']}: {r['old']:.4g} -> {r['new']:.4g} ({r['change']:+.1%}, tolerance {r['tolerance']:.0%})"
                     for r in regressions)
    return Verdict("baseline_regression", not regressions, len(regressions), 0,
                   f"REGRESSION: {text}" if regressions else f"{compared} metrics within tolerance of the baseline",
                   details={"regressions": regressions, "compared": compared, "missing_now": missing})
