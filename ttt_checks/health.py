"""Health rules: measurements + thresholds -> verdicts with explanations.

Each rule reads like one symptom the user wrote down and returns :class:`Verdict` objects that
carry the measured value next to the threshold. A rule that cannot measure (no data, a missing
layer, NaN) returns a failing verdict that says so: it never passes.

Thresholds have one home: the defaults below, which the ``[tool.ttt_checks]`` table of a
project's pyproject.toml (ours lists them all) and ``--threshold NAME=VALUE`` override.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ttt_checks.metrics.figure5 import Figure5Stats


@dataclass(frozen=True)
class Threshold:
    name: str
    default: float
    doc: str


THRESHOLDS: dict[str, Threshold] = {
    t.name: t
    for t in [
        Threshold("figure5_min_coverage", 1.0, "fraction of the expected positions that must have Figure-5 data, per TTT layer"),
        Threshold("loss_ceiling", 10.0, "no smoothed Figure-5 loss may exceed this (the user's 'HUGE LOSSES' rule, l0 > 10)"),
        Threshold("loss_mean_min", 1e-3, "mean l0 below this is abnormal (a target that is trivially reproduced)"),
        Threshold("loss_mean_max", 5.0, "mean l0 above this is abnormal (the user's expected range was 0.01-1)"),
        Threshold("ordering_min_fraction", 0.9, "fraction of positions where the smoothed curves obey l0 > lprev and lprev > lafter"),
        Threshold("improvement_min_abs", 1e-3, "mean lprev - lafter (one inner step) must be at least this"),
        Threshold("improvement_min_rel", 0.01, "mean (lprev - lafter) / mean lprev must be at least this"),
        Threshold("adaptation_min_gap_growth", 0.0, "gap l0 - lafter must grow from the first to the last quarter by more than this"),
        Threshold("adaptation_max_rise", 0.0, "lprev and lafter may rise from the first to the last quarter by at most this (relative)"),
        Threshold("gate_min_mean_tanh", 0.1, "mean tanh(alpha) per layer below this is a collapsed gate (TTT switched off)"),
        Threshold("help_max_loss_increase", 0.01, "outer loss at the learned gate may exceed gate 0 by at most this (relative)"),
        Threshold("persistence_min_fraction", 0.5, "fraction of streamed positions after the first mini-batch where lprev departs from l0"),
        Threshold("leak_max_loss_gap", 0.01, "outer loss fed one token per call (inference) may exceed the teacher-forced pass by at most this (relative): more means the TTT layer reads ahead in training"),
        Threshold("dead_max_fraction", 0.0, "fraction of trainable TTT tensors still at their initial value"),
        Threshold("talk_min_base_words", 3.0, "words Whisper must hear at gate 0 (the base model) for the sweep to mean anything"),
        Threshold("talk_min_learned_ratio", 0.5, "words at the learned gate / words at gate 0"),
        Threshold("talk_max_repeat_rate", 0.5, "repeated 4-gram rate of a reply above this is a repetition collapse"),
        Threshold("talk_fail_above_learned", 0.0, "1: a collapse at a gate forced above the learned one fails; 0: it is reported as a warning (the TTT branch was never trained at that strength)"),
        Threshold("talk_collapsed_share", 0.5, "a gate has collapsed when at least this share of its replies collapse (silence, repetition, gibberish)"),
        Threshold("baseline_rel_tolerance", 0.1, "relative change of a metric vs the baseline that counts as a regression"),
    ]
}


class ThresholdError(ValueError):
    """An unknown threshold name or a value that is not a number."""


def parse_threshold_overrides(items: Iterable[str]) -> dict[str, float]:
    """``NAME=VALUE`` strings from the command line -> {name: value}."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ThresholdError(f"--threshold {item!r}: expected NAME=VALUE, e.g. --threshold ordering_min_fraction=0.8")
        out[name.strip()] = _number(name.strip(), value.strip(), "--threshold")
    return out


def _number(name: str, value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ThresholdError(f"{where}: threshold {name!r} must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ThresholdError(f"{where}: threshold {name!r} is NaN")
    return number


def _check_names(values: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(THRESHOLDS))
    if unknown:
        raise ThresholdError(f"{where}: unknown threshold name(s) {unknown}; known names: {sorted(THRESHOLDS)}")


def load_thresholds(pyproject: Path | None = None, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Defaults, then ``[tool.ttt_checks]`` of ``pyproject`` (when it has one), then overrides."""
    values = {name: t.default for name, t in THRESHOLDS.items()}
    if pyproject is not None and Path(pyproject).is_file():
        table = read_pyproject_table(Path(pyproject))
        table = {k: v for k, v in table.items() if not isinstance(v, dict)}
        _check_names(table, f"{pyproject} [tool.ttt_checks]")
        values.update({k: _number(k, v, f"{pyproject} [tool.ttt_checks]") for k, v in table.items()})
    if overrides:
        _check_names(overrides, "--threshold")
        values.update(overrides)
    return values


def read_pyproject_table(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ThresholdError(f"{path}: not valid TOML ({exc})") from exc
    return dict(data.get("tool", {}).get("ttt_checks", {}))


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """One rule's outcome: measured vs threshold, and why it passed or failed."""

    name: str
    ok: bool
    measured: float | str | None
    threshold: float | str | None
    explanation: str
    layer: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    @property
    def warning(self) -> bool:
        """A passing verdict that still reports a problem worth reading (e.g. a size of a leak)."""
        return self.ok and self.details.get("severity") == "warning"

    def line(self) -> str:
        where = f" [{self.layer}]" if self.layer else ""
        status = "FAIL" if not self.ok else "WARN" if self.warning else "PASS"
        return f"{status} {self.name}{where}: measured {_fmt(self.measured)} vs threshold {_fmt(self.threshold)}. {self.explanation}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def cannot_measure(name: str, why: str, layer: str | None = None) -> Verdict:
    return Verdict(name, False, None, None, f"cannot measure: {why}", layer)


# ---------------------------------------------------------------------------------------------
# Figure-5 rules (one verdict per TTT layer)
# ---------------------------------------------------------------------------------------------


def figure5_collected(stats: Mapping[str, Figure5Stats], expected_layers: Sequence[str], missing: Mapping[str, str], th: Mapping[str, float]) -> list[Verdict]:
    """Every TTT layer the checkpoint declares reported Figure-5 data over the expected positions."""
    if not expected_layers:
        return [cannot_measure("figure5_collected", "the model reports no TTT layers, so there is nothing to capture")]
    out = []
    for layer in expected_layers:
        if layer not in stats:
            out.append(Verdict("figure5_collected", False, 0.0, th["figure5_min_coverage"],
                               f"NO DATA COLLECTED: {missing.get(layer, 'the layer reported no token')}", layer))
            continue
        s = stats[layer]
        ok = s.coverage >= th["figure5_min_coverage"]
        out.append(Verdict("figure5_collected", ok, s.coverage, th["figure5_min_coverage"],
                           f"{s.positions} of {s.expected_positions} positions have data"
                           + ("" if ok else "; positions are missing (dropped silently somewhere)"), layer))
    return out


def figure5_finite(stats: Mapping[str, Figure5Stats]) -> list[Verdict]:
    out = []
    for layer, s in stats.items():
        bad = s.nonfinite > 0 or not _finite(s.mean_l0, s.mean_lprev, s.mean_lafter)
        out.append(Verdict("figure5_finite", not bad, s.nonfinite, 0,
                           "NaN/Inf in the inner-loop losses: the inner loop diverged or its inputs are not finite" if bad
                           else "all inner-loop losses are finite", layer))
    return out


def figure5_bounded(stats: Mapping[str, Figure5Stats], th: Mapping[str, float]) -> list[Verdict]:
    out = []
    for layer, s in stats.items():
        if not _finite(s.max_smoothed_loss, s.mean_l0):
            out.append(cannot_measure("figure5_bounded", "losses are not finite (see figure5_finite)", layer))
            continue
        problems = []
        if s.max_smoothed_loss > th["loss_ceiling"]:
            problems.append(f"HUGE LOSSES: a smoothed loss reaches {s.max_smoothed_loss:.4g} > ceiling {th['loss_ceiling']:g}")
        if not th["loss_mean_min"] <= s.mean_l0 <= th["loss_mean_max"]:
            problems.append(f"ABNORMAL mean l0 {s.mean_l0:.4g} outside [{th['loss_mean_min']:g}, {th['loss_mean_max']:g}]")
        out.append(Verdict("figure5_bounded", not problems, s.max_smoothed_loss, th["loss_ceiling"],
                           "; ".join(problems) or f"losses within bounds (mean l0 {s.mean_l0:.4g})", layer,
                           {"mean_l0": s.mean_l0, "loss_mean_range": [th["loss_mean_min"], th["loss_mean_max"]]}))
    return out


def figure5_ordering(stats: Mapping[str, Figure5Stats], th: Mapping[str, float]) -> list[Verdict]:
    """l0 > lprev > lafter as means and at most positions of the smoothed curves."""
    out = []
    for layer, s in stats.items():
        if not _finite(s.frac_l0_gt_lprev, s.frac_lprev_gt_lafter):
            out.append(cannot_measure("figure5_ordering", "losses are not finite (see figure5_finite)", layer))
            continue
        means_ok = s.mean_l0 > s.mean_lprev > s.mean_lafter
        worst = min(s.frac_l0_gt_lprev, s.frac_lprev_gt_lafter)
        ok = means_ok and worst >= th["ordering_min_fraction"]
        why = []
        if not means_ok:
            why.append(f"means are not ordered: l0 {s.mean_l0:.4g}, lprev {s.mean_lprev:.4g}, lafter {s.mean_lafter:.4g}")
        if s.frac_l0_gt_lprev < th["ordering_min_fraction"]:
            why.append(f"l0 > lprev at only {s.frac_l0_gt_lprev:.0%} of positions (the context does not help the inner model)")
        if s.frac_lprev_gt_lafter < th["ordering_min_fraction"]:
            why.append(f"lprev > lafter at only {s.frac_lprev_gt_lafter:.0%} of positions (inner steps do not reduce the loss: step too large?)")
        out.append(Verdict("figure5_ordering", ok, worst, th["ordering_min_fraction"],
                           "; ".join(why) or f"l0 > lprev > lafter (means and {s.frac_ordered:.0%} of smoothed positions)", layer,
                           {"frac_l0_gt_lprev": s.frac_l0_gt_lprev, "frac_lprev_gt_lafter": s.frac_lprev_gt_lafter,
                            "mean_l0": s.mean_l0, "mean_lprev": s.mean_lprev, "mean_lafter": s.mean_lafter}))
    return out


def figure5_improvement(stats: Mapping[str, Figure5Stats], th: Mapping[str, float]) -> list[Verdict]:
    """One inner step buys a visible reduction, absolute and relative."""
    out = []
    for layer, s in stats.items():
        if not _finite(s.improvement_abs, s.improvement_rel):
            out.append(cannot_measure("figure5_improvement", "losses are not finite (see figure5_finite)", layer))
            continue
        ok = s.improvement_abs >= th["improvement_min_abs"] and s.improvement_rel >= th["improvement_min_rel"]
        if s.improvement_abs < 0:
            why = f"NEGATIVE: inner steps make the loss worse by {-s.improvement_abs:.4g} on average"
        elif not ok:
            why = (f"MINIMAL: one inner step improves the loss by {s.improvement_abs:.3g} ({s.improvement_rel:.2%}); "
                   f"floors {th['improvement_min_abs']:g} and {th['improvement_min_rel']:.0%} (inner learning rate near 0?)")
        else:
            why = f"one inner step improves the loss by {s.improvement_abs:.4g} ({s.improvement_rel:.1%})"
        out.append(Verdict("figure5_improvement", ok, s.improvement_abs, th["improvement_min_abs"], why, layer,
                           {"improvement_rel": s.improvement_rel, "improvement_min_rel": th["improvement_min_rel"]}))
    return out


def figure5_adaptation(stats: Mapping[str, Figure5Stats], th: Mapping[str, float]) -> list[Verdict]:
    """Later in the context the inner model does better: lprev and lafter fall, the gap grows."""
    out = []
    for layer, s in stats.items():
        values = (s.lprev_first_quarter, s.lprev_last_quarter, s.lafter_first_quarter, s.lafter_last_quarter, s.gap_growth)
        if not _finite(*values):
            out.append(cannot_measure("figure5_adaptation", "losses are not finite (see figure5_finite)", layer))
            continue
        rise = th["adaptation_max_rise"]
        why = []
        if s.lprev_last_quarter > s.lprev_first_quarter * (1 + rise):
            why.append(f"lprev rises from {s.lprev_first_quarter:.4g} to {s.lprev_last_quarter:.4g} (NOT adapting)")
        if s.lafter_last_quarter > s.lafter_first_quarter * (1 + rise):
            why.append(f"lafter rises from {s.lafter_first_quarter:.4g} to {s.lafter_last_quarter:.4g}")
        if s.gap_growth <= th["adaptation_min_gap_growth"]:
            why.append(f"gap l0 - lafter does not grow ({s.gap_first_quarter:.4g} -> {s.gap_last_quarter:.4g})")
        out.append(Verdict("figure5_adaptation", not why, s.gap_growth, th["adaptation_min_gap_growth"],
                           "; ".join(why) or f"gap l0 - lafter grows {s.gap_first_quarter:.4g} -> {s.gap_last_quarter:.4g}; lprev {s.lprev_first_quarter:.4g} -> {s.lprev_last_quarter:.4g}",
                           layer, {k: getattr(s, k) for k in ("lprev_first_quarter", "lprev_last_quarter", "lafter_first_quarter", "lafter_last_quarter", "gap_first_quarter", "gap_last_quarter")}))
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoint, gate, outer loss, persistence rules
# ---------------------------------------------------------------------------------------------


def checkpoint_keys(expected: Sequence[str], present: Iterable[str], unexpected: Sequence[str] = ()) -> Verdict:
    """Every TTT tensor the config implies is in the file, and no TTT tensor the config lacks."""
    present = set(present)
    missing = [k for k in expected if k not in present]
    if not expected:
        return cannot_measure("checkpoint_keys", "the adapter lists no expected TTT keys")

    def shown(keys: Sequence[str]) -> str:
        return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

    problems = []
    if missing:
        problems.append(f"missing TTT keys: {shown(missing)}")
    if unexpected:
        problems.append(f"unexpected TTT keys (no layer of the config takes them): {shown(list(unexpected))}")
    return Verdict("checkpoint_keys", not problems, len(missing) + len(unexpected), 0,
                   "; ".join(problems) or f"all {len(expected)} TTT keys present",
                   details={"missing": missing, "unexpected": list(unexpected)})


def checkpoint_finite(state: Mapping[str, Any]) -> Verdict:
    import torch

    if not state:
        return cannot_measure("checkpoint_finite", "the checkpoint holds no tensors")
    bad = [name for name, t in state.items() if torch.is_floating_point(t) and not torch.isfinite(t).all()]
    shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    return Verdict("checkpoint_finite", not bad, len(bad), 0,
                   f"NaN/Inf in {shown}" if bad else f"all {len(state)} tensors finite", details={"nonfinite": bad})


def gate_stats(gates: Mapping[str, np.ndarray], th: Mapping[str, float]) -> list[Verdict]:
    """tanh(clamp(alpha)) per layer: a collapsed gate means the outer loop switched TTT off."""
    if not gates:
        return [cannot_measure("gate_stats", "the model reports no TTT gates")]
    out = []
    for layer, alpha in gates.items():
        alpha = np.asarray(alpha, dtype=np.float64)
        gate = np.tanh(np.clip(alpha, -3.0, 3.0))
        if not np.isfinite(gate).all():
            out.append(Verdict("gate_stats", False, "nan", th["gate_min_mean_tanh"], "gate alpha holds NaN/Inf", layer))
            continue
        mean, peak = float(np.abs(gate).mean()), float(np.abs(gate).max())
        ok = mean >= th["gate_min_mean_tanh"]
        out.append(Verdict("gate_stats", ok, mean, th["gate_min_mean_tanh"],
                           f"mean |tanh(alpha)| {mean:.4g} ({mean:.1%} of TTT(x) reaches the residual), max {peak:.4g}"
                           + ("" if ok else f": GATING COLLAPSE in {layer}, TTT is effectively switched off"), layer,
                           {"mean_tanh": mean, "max_tanh": peak, "mean_alpha": float(alpha.mean())}))
    return out


def ttt_helps(loss_learned: np.ndarray, loss_gate0: np.ndarray, th: Mapping[str, float]) -> Verdict:
    a, b = float(np.mean(loss_learned)), float(np.mean(loss_gate0))
    if not _finite(a, b):
        return Verdict("ttt_helps", False, "nan", th["help_max_loss_increase"],
                       f"outer loss is not finite (learned gate {a}, gate 0 {b})")
    rel = (a - b) / abs(b) if b else float("inf")
    ok = rel <= th["help_max_loss_increase"]
    return Verdict("ttt_helps", ok, rel, th["help_max_loss_increase"],
                   f"teacher-forced outer loss {a:.4f} at the learned gate vs {b:.4f} at gate 0 ({rel:+.2%})"
                   + ("" if ok else ": TTT makes the model worse"), details={"loss_learned": a, "loss_gate0": b})


def dead_parameters(current: Mapping[str, Any], initial: Mapping[str, Any], used: Iterable[str] | None, th: Mapping[str, float]) -> Verdict:
    """Trainable TTT tensors still exactly at their initial value were never trained (or never used)."""
    import torch

    if not initial:
        return cannot_measure("dead_parameters", "the adapter knows no initial values of the TTT parameters")
    used = set(current) if used is None else set(used)
    unchanged, unused, compared = [], [], 0
    for name, init in initial.items():
        if name not in current:
            continue
        compared += 1
        if torch.equal(current[name].float(), init.float()):
            (unchanged if name in used else unused).append(name)
    if compared == 0:
        return cannot_measure("dead_parameters", "none of the known initial tensors is in the checkpoint")
    dead = unchanged + unused
    frac = len(dead) / compared
    ok = frac <= th["dead_max_fraction"]
    parts = []
    if unchanged:
        parts.append(f"still at init though used in the forward: {', '.join(unchanged[:6])}")
    if unused:
        parts.append(f"never used by the forward (so never trained): {', '.join(unused[:6])}")
    return Verdict("dead_parameters", ok, frac, th["dead_max_fraction"],
                   "; ".join(parts) or f"all {compared} TTT tensors moved from their initial values",
                   details={"unchanged": unchanged, "unused": unused, "compared": compared})


def state_persistence(stats_or_record: Mapping[str, Any], mini_batch_size: int, th: Mapping[str, float]) -> list[Verdict]:
    """In a streamed run lprev must depart from l0 after the first mini-batch (state carried)."""
    out = []
    for layer, rec in stats_or_record.items():
        positions = np.asarray(rec.positions)
        after = positions >= mini_batch_size
        if not after.any():
            out.append(cannot_measure("state_persistence", f"the streamed run has no position after the first mini-batch of {mini_batch_size}", layer))
            continue
        l0, lprev = np.asarray(rec.l0)[after], np.asarray(rec.lprev)[after]
        if not (np.isfinite(l0).all() and np.isfinite(lprev).all()):
            out.append(cannot_measure("state_persistence", "streamed losses are not finite", layer))
            continue
        departs = np.abs(lprev - l0) > 1e-6 * np.maximum(np.abs(l0), 1e-12)
        frac = float(departs.mean())
        ok = frac >= th["persistence_min_fraction"]
        out.append(Verdict("state_persistence", ok, frac, th["persistence_min_fraction"],
                           f"lprev differs from l0 at {frac:.0%} of streamed positions after the first mini-batch"
                           + ("" if ok else ": l0 == lprev, the TTT state is NOT carried across calls (weights reset every step)"), layer))
    return out


def streaming_consistency(loss_teacher_forced: np.ndarray, loss_streamed: np.ndarray, th: Mapping[str, float]) -> Verdict:
    """The outer loss the model gets token by token (as it runs at inference) vs the loss of the
    teacher-forced pass over the same positions. A causal TTT layer gives the same numbers; a
    non-causal one that reads up to b-1 tokens ahead inside its mini-batch scores better in the
    teacher-forced pass than it ever can at inference, and that gap is the leak's cost."""
    a, b = float(np.mean(loss_streamed)), float(np.mean(loss_teacher_forced))
    if not _finite(a, b):
        return Verdict("streaming_consistency", False, "nan", th["leak_max_loss_gap"],
                       f"outer loss is not finite (streamed {a}, teacher-forced {b})")
    gap = (a - b) / abs(b) if b else float("inf")
    ok = gap <= th["leak_max_loss_gap"]
    return Verdict("streaming_consistency", ok, gap, th["leak_max_loss_gap"],
                   f"outer loss {a:.4f} fed one token per call vs {b:.4f} teacher-forced ({gap:+.2%})"
                   + ("" if ok else ": the TTT layer uses future tokens of its mini-batch in the teacher-forced pass "
                      "(non-causal mini-batches), which inference cannot give it"),
                   details={"loss_streamed": a, "loss_teacher_forced": b})
