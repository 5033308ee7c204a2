"""Health rules: measurements + thresholds -> verdicts with explanations.

Each rule reads like one symptom the user wrote down and returns :class:`Verdict` objects that
carry the measured value next to the threshold. A rule that cannot measure (no data, a missing
layer, NaN) returns a failing verdict that says so: it never passes.

Thresholds have one home: the defaults below, which the ``[tool.ttt_checks]`` table of a
project's pyproject.toml (ours lists them all) and ``--threshold NAME=VALUE`` override.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ttt_checks.metrics.figure5 import ORDERING_MIN_REL_GAP, Figure5Stats
from ttt_checks.ttt.layer import is_inner_initial_state
from ttt_checks.ttt.step_probe import StepSizeRecord


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
        Threshold("ordering_min_rel_gap", ORDERING_MIN_REL_GAP, "two Figure-5 losses closer than this fraction of the larger one are equal (overlapping, never ordered; lprev not departing from l0 in state_persistence); 100x fp32 rounding, 1/500 of the smallest healthy gap"),
        Threshold("improvement_min_abs", 1e-3, "mean lprev - lafter (one inner step) must be at least this"),
        Threshold("improvement_min_rel", 0.01, "mean (lprev - lafter) / mean lprev must be at least this"),
        Threshold("adaptation_min_benefit_growth", 0.0, "what the carried state buys, mean log(l0/lprev), must grow from the first to the last quarter of judged positions by more than this"),
        Threshold("gate_min_mean_tanh", 0.01, "absolute floor: mean |tanh(alpha)| per layer below this is a collapsed gate whatever its init (and the only test where the init is unknown)"),
        Threshold("gate_min_fraction_of_init", 0.5, "mean |tanh(alpha)| per layer below this fraction of |tanh(initial alpha)| is a collapsed gate (the user's run: init 0.3, learned 0.07-31 % of it)"),
        Threshold("help_min_loss_decrease", 0.001, "outer loss at the learned gate must be lower than at gate 0 by at least this (relative); as much higher is 'TTT hurts', in between 'TTT does nothing'"),
        Threshold("help_min_output_spread", 0.001, "spread of a TTT branch's output over positions (std / rms, metrics/branch_output.py) below this: the output ignores its input, a constant bias whatever the inner loop learns; fails ttt_helps whatever the gain (float rounding gives ~1e-8, healthy zoo 0.83-0.88)"),
        Threshold("persistence_min_fraction", 0.5, "fraction of streamed positions after the first mini-batch where lprev departs from l0"),
        Threshold("persistence_min_rel_change", 1e-5, "lprev 'departs' from l0 (and lafter from lprev) in state_persistence when they differ by more than this fraction of the larger: 10x fp32 rounding of a loss; a carried state at base_lr 1e-6 (zoo lr-near-zero) departs by more at every position"),
        Threshold("leak_max_loss_gap", 0.01, "outer loss fed one token per call (inference) may exceed the teacher-forced pass by at most this (relative): more means the TTT layer reads ahead in training"),
        Threshold("dead_max_fraction", 0.0, "fraction of trainable TTT tensors still at their initial value"),
        Threshold("talk_min_base_words", 3.0, "words Whisper must hear at gate 0 (the base model) for the sweep to mean anything"),
        Threshold("talk_max_base_loss_vs_chance", 0.6, "gate-0 outer loss / the loss of uniform guessing above this: the base predicts its own stream barely better than chance and cannot talk, whatever Whisper hears"),
        Threshold("talk_min_learned_ratio", 0.42, "words at the learned gate / words at gate 0; the geometric mean of the user's 'Well, So' (2 of 7 words, 0.29) and the least talkative healthy zoo checkpoint (healthy-b64, 0.60), >= 25% from both"),
        Threshold("talk_max_repeat_rate", 0.5, "repeated 4-gram rate of a reply above this is a repetition collapse"),
        Threshold("talk_fail_above_learned", 0.0, "1: a collapse at a gate forced above the learned one fails; 0: it is reported as a warning (the TTT branch was never trained at that strength)"),
        Threshold("talk_collapsed_share", 0.5, "a gate has collapsed when at least this share of its replies collapse (silence, repetition, gibberish)"),
        Threshold("baseline_rel_tolerance", 0.1, "relative change of a metric vs the baseline that counts as a regression"),
        Threshold("step_overshoot_margin", 0.25, "inner step overshoot: with the best step multiplier <= 0.5, the share of its gain the full step (m = 1) may give away"),
        Threshold("step_timid_gain_fraction", 0.35, "inner step far too timid: with the best multiplier at the grid's top (4), the full step must buy at least this share of its gain (1/4 = no curvature)"),
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
                           "NaN/Inf in the inner-loop losses: the inner loop diverged, or its weights (W_0, projections) or inputs are not finite" if bad
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
            problems.append(f"ABNORMAL mean l0 {s.mean_l0:.4g} outside [{th['loss_mean_min']:g}, {th['loss_mean_max']:g}]"
                            + (" (l0, lprev and lafter are exactly 0: the inner loss is identically 0)" if s.max_abs_loss == 0.0 else ""))
        out.append(Verdict("figure5_bounded", not problems, s.max_smoothed_loss, th["loss_ceiling"],
                           "; ".join(problems) or f"losses within bounds (mean l0 {s.mean_l0:.4g})", layer,
                           {"mean_l0": s.mean_l0, "loss_mean_range": [th["loss_mean_min"], th["loss_mean_max"]]}))
    return out


def _too_short(name: str, s: Figure5Stats, layer: str) -> Verdict | None:
    """Fewer than 2 judged mini-batches: the inner loop over the context cannot be judged; the
    fix (a longer input) is in the message."""
    if s.enough_context:
        return None
    return cannot_measure(name, f"only {s.judged_minibatches} complete mini-batch(es) with judged positions in {s.positions} "
                                f"positions ({s.exclusion_note}); give a longer --input: {s.positions_needed} positions (frames) needed "
                                f"at mini_batch_size {s.mini_batch_size} (and --max-positions at least {s.positions_needed})", layer)


def _pair_reason(upper: str, lower: str, ordered: float, overlap: float, margin: float, reversed_cause: str, overlap_cause: str) -> str:
    """Why ``upper > lower`` holds at too few positions: overlap within the margin or reversed."""
    rest = max(0.0, 1.0 - ordered - overlap)
    if overlap >= rest:
        return (f"{upper} > {lower} at only {ordered:.1%} of judged positions; they overlap within {margin:g} (relative) "
                f"at {overlap:.1%} ({overlap_cause})")
    return f"{upper} > {lower} at only {ordered:.1%} of judged positions; {lower} > {upper} at {rest:.1%} ({reversed_cause})"


def figure5_ordering(stats: Mapping[str, Figure5Stats], th: Mapping[str, float]) -> list[Verdict]:
    """l0 > lprev > lafter as means and at most judged positions of the smoothed curves, each
    gap above the margin ``ordering_min_rel_gap`` (equal curves overlap, they are never ordered).
    Positions equal by construction are not judged (``metrics/figure5.py``); the explanation says
    how many were."""
    out = []
    for layer, s in stats.items():
        # Too short before "not finite": with no judged position the l0-vs-lprev fractions are NaN
        # although every loss is finite (non-causal b = 64 fed 64 positions said "not finite").
        if s.nonfinite == 0 and _finite(s.mean_l0, s.mean_lprev, s.mean_lafter):
            short = _too_short("figure5_ordering", s, layer)
            if short is not None:
                out.append(short)
                continue
        if not _finite(s.frac_l0_gt_lprev, s.frac_lprev_gt_lafter, s.mean_gap_l0_lprev, s.improvement_abs):
            out.append(cannot_measure("figure5_ordering", "losses are not finite (see figure5_finite)", layer))
            continue
        margin, min_frac = s.ordering_min_rel_gap, th["ordering_min_fraction"]
        details = {"frac_l0_gt_lprev": s.frac_l0_gt_lprev, "frac_lprev_gt_lafter": s.frac_lprev_gt_lafter,
                   "frac_l0_lprev_overlap": s.frac_l0_lprev_overlap, "frac_lprev_lafter_overlap": s.frac_lprev_lafter_overlap,
                   "mean_l0": s.mean_l0, "mean_lprev": s.mean_lprev, "mean_lafter": s.mean_lafter, "ordering_min_rel_gap": margin,
                   "judged_l0_lprev": s.judged_l0_lprev, "positions": s.positions, "judged_minibatches": s.judged_minibatches}
        worst = min(s.frac_l0_gt_lprev, s.frac_lprev_gt_lafter)
        if s.max_abs_loss == 0.0:
            out.append(Verdict("figure5_ordering", False, worst, min_frac,
                               "l0, lprev and lafter are exactly 0 at every position: the inner loss is identically 0 (a target "
                               "the inner model reproduces trivially), so there is nothing to order", layer, details))
            continue
        scale01 = max(abs(s.mean_l0), abs(s.mean_l0 - s.mean_gap_l0_lprev))
        means01 = s.mean_gap_l0_lprev > margin * scale01
        means12 = s.improvement_abs > margin * max(abs(s.mean_lprev), abs(s.mean_lafter))
        pair01 = s.frac_l0_gt_lprev >= min_frac
        pair12 = s.frac_lprev_gt_lafter >= min_frac
        ok = means01 and means12 and pair01 and pair12
        why = []
        details["overlapping"] = not (pair01 or pair12) and s.frac_l0_lprev_overlap >= 0.5 and s.frac_lprev_lafter_overlap >= 0.5
        if details["overlapping"]:
            why.append(f"l0, lprev and lafter overlap within {margin:g} (relative) at {s.frac_l0_lprev_overlap:.0%} / "
                       f"{s.frac_lprev_lafter_overlap:.0%} of judged positions: the inner loop has no measurable effect")
        else:
            if not pair01:
                why.append(_pair_reason("l0", "lprev", s.frac_l0_gt_lprev, s.frac_l0_lprev_overlap, margin,
                                        "the context makes the inner model worse than W_0", "the context does not move the inner model"))
            if not pair12:
                why.append(_pair_reason("lprev", "lafter", s.frac_lprev_gt_lafter, s.frac_lprev_lafter_overlap, margin,
                                        "inner steps raise the loss: step too large?",
                                        "one inner step does not change the loss: a step ~0, or saturated inner weights where the gradient vanishes"))
        if not (means01 and means12) and (pair01 and pair12):
            why.append(f"means are not ordered by more than {margin:g} (relative): l0 {s.mean_l0:.4g}, lprev {s.mean_lprev:.4g} "
                       f"(judged positions: l0 - lprev {s.mean_gap_l0_lprev:.4g}), lafter {s.mean_lafter:.4g}")
        text = "; ".join(why) or (f"l0 > lprev > lafter (means {s.mean_l0:.4g} > {s.mean_lprev:.4g} > {s.mean_lafter:.4g}, "
                                  f"{s.frac_ordered:.0%} of smoothed positions, margin {margin:g})")
        out.append(Verdict("figure5_ordering", ok, worst, min_frac, f"{text}; {s.judged_note}", layer, details))
    return out


def figure5_improvement(stats: Mapping[str, Figure5Stats], th: Mapping[str, float]) -> list[Verdict]:
    """One inner step buys a visible reduction, absolute and relative."""
    out = []
    for layer, s in stats.items():
        if not _finite(s.mean_lprev, s.mean_lafter, s.improvement_abs):
            out.append(cannot_measure("figure5_improvement", "losses are not finite (see figure5_finite)", layer))
            continue
        details = {"improvement_rel": s.improvement_rel, "improvement_min_rel": th["improvement_min_rel"],
                   "mean_lprev": s.mean_lprev, "mean_lafter": s.mean_lafter}
        if s.mean_lprev == 0.0:
            # 0/0: no relative improvement exists. Exact zeros are a finding, not "not finite".
            why = ("lprev and lafter are exactly 0 (l0 too)" if s.max_abs_loss == 0.0 else
                   f"lprev is exactly 0 and lafter {s.mean_lafter:.4g}") + \
                  (": the inner loss is identically 0 (a target the inner model reproduces trivially), one step has nothing to improve"
                   if s.max_abs_loss == 0.0 else ": the step moves away from a perfect fit")
            out.append(Verdict("figure5_improvement", False, s.improvement_abs, th["improvement_min_abs"], why, layer, details))
            continue
        ok = s.improvement_abs >= th["improvement_min_abs"] and s.improvement_rel >= th["improvement_min_rel"]
        if s.improvement_abs < 0:
            why = f"NEGATIVE: inner steps make the loss worse by {-s.improvement_abs:.4g} on average (step too large?)"
        elif not ok:
            why = (f"MINIMAL: one inner step improves the loss by {s.improvement_abs:.3g} ({s.improvement_rel:.2%}); "
                   f"floors {th['improvement_min_abs']:g} and {th['improvement_min_rel']:.0%} (the inner step is ~0: "
                   "inner learning rate near 0, or inner weights where the gradient vanishes?)")
        else:
            why = f"one inner step improves the loss by {s.improvement_abs:.4g} ({s.improvement_rel:.1%})"
        out.append(Verdict("figure5_improvement", ok, s.improvement_abs, th["improvement_min_abs"], why, layer, details))
    return out


def _inverse_log(benefit: float) -> float:
    """lprev / l0 from log(l0 / lprev), clamped so a degenerate ratio (a zero loss) cannot overflow."""
    return math.exp(-min(max(benefit, -700.0), 700.0))


def figure5_adaptation(stats: Mapping[str, Figure5Stats], th: Mapping[str, float]) -> list[Verdict]:
    """Later in the context the carried state buys more: log(l0 / lprev) grows from the first to
    the last quarter of judged positions, and W_{t-1} beats W_0 by the end of the context.

    The statistic and why it is not ``l0 - lafter`` are in ``metrics/figure5.py``. The decision is
    on the measured change against ``adaptation_min_benefit_growth`` (0): the smallest healthy
    growth measured is +0.21 at 256 positions (z = 5), the declines of the untrained zoo entries
    -0.04 and -0.07 (docs/health-checks.md). Its standard error is reported, not used to excuse a
    decline: a memory that stops helping as the context grows is the finding this check exists for.
    """
    out = []
    for layer, s in stats.items():
        first, last, se = s.benefit_first_quarter, s.benefit_last_quarter, s.benefit_growth_se
        if s.nonfinite or not _finite(first, last, s.mean_l0, s.mean_lprev, s.mean_lafter):
            out.append(cannot_measure("figure5_adaptation", "losses are not finite (see figure5_finite)", layer))
            continue
        short = _too_short("figure5_adaptation", s, layer)
        if short is not None:
            out.append(short)
            continue
        growth = s.benefit_growth
        se_text = f" +- {se:.2g}" if math.isfinite(se) else ""
        numbers = (f"lprev/l0 {_inverse_log(first):.4g} -> {_inverse_log(last):.4g} from the first to the last quarter of "
                   f"{s.judged_l0_lprev} judged positions (log(l0/lprev) {first:+.4g} -> {last:+.4g}, change {growth:+.4g}{se_text})")
        why = []
        if growth <= th["adaptation_min_benefit_growth"]:
            why.append(f"NOT adapting: the carried state W_(t-1) helps less late in the context than early: {numbers}")
        if last <= 0:
            why.append(f"W_(t-1) is no better than W_0 at the end of the context (lprev >= l0 there): {numbers}"
                       if not why else "W_(t-1) is no better than W_0 at the end of the context (lprev >= l0 there)")
        out.append(Verdict("figure5_adaptation", not why, growth, th["adaptation_min_benefit_growth"],
                           "; ".join(why) or f"the carried state helps more later in the context: {numbers}",
                           layer, {k: getattr(s, k) for k in ("l0_first_quarter", "l0_last_quarter", "lprev_first_quarter",
                                                              "lprev_last_quarter", "benefit_first_quarter",
                                                              "benefit_last_quarter", "benefit_growth_se")}))
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoint, gate, outer loss, persistence rules
# ---------------------------------------------------------------------------------------------


def name_list(names: Sequence[str], limit: int) -> str:
    """The first ``limit`` names, comma-separated, and how many more there are."""
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def checkpoint_keys(expected: Sequence[str], present: Iterable[str], unexpected: Sequence[str] = ()) -> Verdict:
    """Every TTT tensor the config implies is in the file, and no TTT tensor the config lacks."""
    present = set(present)
    missing = [k for k in expected if k not in present]
    if not expected:
        return cannot_measure("checkpoint_keys", "the adapter lists no expected TTT keys")

    problems = []
    if missing:
        problems.append(f"missing TTT keys: {name_list(missing, 8)}")
    if unexpected:
        problems.append(f"unexpected TTT keys (no layer of the config takes them): {name_list(list(unexpected), 8)}")
    return Verdict("checkpoint_keys", not problems, len(missing) + len(unexpected), 0,
                   "; ".join(problems) or f"all {len(expected)} TTT keys present",
                   details={"missing": missing, "unexpected": list(unexpected)})


def checkpoint_finite(state: Mapping[str, Any]) -> Verdict:
    import torch

    if not state:
        return cannot_measure("checkpoint_finite", "the checkpoint holds no tensors")
    bad = [name for name, t in state.items() if torch.is_floating_point(t) and not torch.isfinite(t).all()]
    shown = name_list(bad, 8)
    return Verdict("checkpoint_finite", not bad, len(bad), 0,
                   f"NaN/Inf in {shown}" if bad else f"all {len(state)} tensors finite", details={"nonfinite": bad})


def _gate_tanh(alpha: Any) -> np.ndarray:
    return np.tanh(np.clip(np.asarray(alpha, dtype=np.float64), -3.0, 3.0))


# bf16 keeps 8 significant bits: a stored init is within 2^-8 (relative) of the configured one.
_STORED_ROUNDING = 2.0 ** -8


def _exactly_at_init(alpha: np.ndarray, init: float) -> bool:
    """Every channel holds the same value, the configured init up to its storage rounding: the
    outer loop never moved the gate (a trained gate spreads over channels)."""
    return alpha.size > 0 and float(np.ptp(alpha)) == 0.0 and abs(float(alpha.flat[0]) - init) <= _STORED_ROUNDING * max(abs(init), 1e-30)


def gate_stats(gates: Mapping[str, np.ndarray], th: Mapping[str, float],
               initial: Mapping[str, float | None] | None = None,
               disputed: Mapping[str, float | None] | None = None) -> list[Verdict]:
    """tanh(clamp(alpha)) per layer, judged against where the gate started.

    Collapse: mean |tanh(alpha)| fell below ``gate_min_fraction_of_init`` of |tanh(init)| (the
    user's run: init 0.3, learned 0.02-9 %, i.e. 0.07-31 % of it) or below the absolute floor
    ``gate_min_mean_tanh`` (which also judges a gate whose init is unknown). A gate still exactly
    at its init was never trained (its own message: a collapse it is not). A gate whose sign
    flipped from a positive init is reported (it went through zero: "off" on its way).

    ``disputed``: per layer, a second init the checkpoint states (its training record) that
    contradicts ``initial``. Which of the two was edited cannot be told, so the gate is judged
    against both, and a fall from only one of them is not called a collapse: a config edited from
    alpha_init 0.1 to 0.5 made a healthy gate at 0.108 read "23% of its init, GATING COLLAPSE"
    while the model still gained 0.21% from TTT. ``config_consistency`` fails on the contradiction.
    """
    if not gates:
        return [cannot_measure("gate_stats", "the model reports no TTT gates")]
    initial, disputed = initial or {}, disputed or {}
    out = []
    for layer, alpha in gates.items():
        alpha = np.asarray(alpha, dtype=np.float64)
        verdict = _gate_verdict(layer, alpha, initial.get(layer), th)
        other = disputed.get(layer)
        if other is not None and math.isfinite(other) and verdict.details.get("fraction_of_init") is not None:
            verdict = _judged_against_both(verdict, _gate_verdict(layer, alpha, other, th), initial[layer], other)
        out.append(verdict)
    return out


def _judged_against_both(loaded: Verdict, recorded: Verdict, init: float, other: float) -> Verdict:
    """Combine the verdicts of one gate against the init the loader reads (``init``) and the
    contradicting one of the training record (``other``): it collapsed only if it fell from both;
    alpha exactly at either init was never trained, whichever init is right."""
    def share(v: Verdict) -> str:
        fraction = v.details.get("fraction_of_init")
        return "an unknown share" if fraction is None else f"{fraction:.0%}"
    dispute = (f"the checkpoint states two inits (alpha {init:g}, which the loader reads, and {other:g} in its training "
               "record; see config_consistency)")
    untrained = [v for v in (loaded, recorded) if v.details.get("untrained")]
    if untrained:
        chosen, note = untrained[0], dispute
    elif loaded.ok == recorded.ok:
        chosen, note = loaded, f"{dispute}: against {other:g} it is at {share(recorded)} of its init"
    else:
        chosen = loaded if loaded.ok else recorded
        against, fell = (other, recorded) if loaded.ok else (init, loaded)
        note = (f"{dispute}: against {against:g} it would be at {share(fell)} of its init, so a collapse is not "
                "established: restore the config saved with the weights and run again")
    details = {**chosen.details, "alpha_init_disputed": other}
    if chosen.ok and loaded.ok != recorded.ok:
        details["severity"] = "warning"
    return replace(chosen, explanation=f"{chosen.explanation}; {note}", details=details)


def _gate_verdict(layer: str, alpha: np.ndarray, init: float | None, th: Mapping[str, float]) -> Verdict:
    """One layer's gate against one stated init (None: the absolute floor only)."""
    floor, min_frac = th["gate_min_mean_tanh"], th["gate_min_fraction_of_init"]
    gate = _gate_tanh(alpha)
    if alpha.size == 0 or not np.isfinite(gate).all():
        return Verdict("gate_stats", False, "nan", floor, "gate alpha holds NaN/Inf" if alpha.size else "gate alpha is empty", layer)
    mean, peak, signed = float(np.abs(gate).mean()), float(np.abs(gate).max()), float(gate.mean())
    details: dict[str, Any] = {"mean_tanh": mean, "max_tanh": peak, "signed_mean_tanh": signed, "mean_alpha": float(alpha.mean()),
                               "alpha_init": init, "min_fraction_of_init": min_frac, "floor": floor}
    head = f"mean |tanh(alpha)| {mean:.4g} ({mean:.1%} of TTT(x) reaches the residual), max {peak:.4g}"
    if init is None or not math.isfinite(init):
        ok = mean >= floor
        details["fraction_of_init"] = None
        return Verdict("gate_stats", ok, mean, floor,
                       f"{head}; the initial alpha is not stated by the checkpoint, so the gate is judged by the absolute floor "
                       f"{floor:g} only" + ("" if ok else f": GATING COLLAPSE in {layer}, TTT is effectively switched off"),
                       layer, details)
    init_tanh = abs(math.tanh(max(-3.0, min(3.0, init))))
    if init_tanh == 0.0 and not _exactly_at_init(alpha, init):
        # A zero-initialised gate (the zero-init trick: TTT starts switched off) cannot fall from its init;
        # only the absolute floor can say it never opened.
        ok = mean >= floor
        details.update(fraction_of_init=None, severity="info")
        return Verdict("gate_stats", ok, mean, floor,
                       f"{head}; the gate was initialised at alpha 0 (TTT off), so it is judged by the absolute floor "
                       f"{floor:g} only: " + (f"it opened to {mean:.4g}" if ok else
                                              f"GATING NEVER OPENED in {layer}, TTT is effectively switched off"),
                       layer, details)
    fraction = mean / init_tanh if init_tanh > 0 else float("inf")
    details["fraction_of_init"] = fraction
    flipped = float(np.mean(gate < 0)) if init > 0 else float(np.mean(gate > 0)) if init < 0 else 0.0
    details["fraction_sign_flipped"] = flipped
    flip = (f"; SIGN FLIPPED: tanh(alpha) has the opposite sign of the init in {flipped:.0%} of channels "
            f"(signed mean {signed:+.4g} vs init tanh {math.tanh(init):+.4g}): the outer loop drove the gate through zero") \
        if flipped > 0.5 else ""
    if _exactly_at_init(alpha, init):
        return Verdict("gate_stats", False, mean, floor,
                       f"gate alpha is exactly its initial value {init:g} in every channel: the gate was never trained "
                       f"(mean |tanh(alpha)| {mean:.4g} = tanh of the init)", layer, {**details, "untrained": True})
    collapsed_rel, collapsed_abs = fraction < min_frac, mean < floor
    ok = not (collapsed_rel or collapsed_abs)
    if ok:
        why = f"{head}: {fraction:.0%} of its initial |tanh({init:g})| = {init_tanh:.4g} (collapse below {min_frac:.0%})" + flip
    else:
        causes = []
        if collapsed_rel:
            causes.append(f"{fraction:.0%} of its initial |tanh({init:g})| = {init_tanh:.4g}, below {min_frac:.0%}")
        if collapsed_abs:
            causes.append(f"below the absolute floor {floor:g}")
        why = f"{head}: GATING COLLAPSE in {layer}, TTT is effectively switched off ({'; '.join(causes)})" + flip
    details["severity"] = "warning" if (ok and flip) else "info"
    return Verdict("gate_stats", ok, fraction, min_frac, why, layer, details)


def _block_mean_and_se(diff: np.ndarray, blocks: int = 16) -> tuple[float, float] | None:
    """Mean and standard error of a per-position difference, over ``blocks`` contiguous blocks
    (neighbouring positions are correlated, so single positions would overstate the evidence);
    None with fewer than 4 blocks. The blocks cover every position (lengths differ by at most one)
    and the mean is over all of them, so the t and the gain reported next to it describe the same
    positions (equal blocks of len // n dropped up to n - 1 positions: at 24 positions a third of
    them, and a gain of +0.195% was shown with a t of -0.54)."""
    diff = np.asarray(diff, dtype=np.float64)
    n = min(blocks, len(diff))
    if n < 4:
        return None
    means = np.array([part.mean() for part in np.array_split(diff, n)])
    return float(diff.mean()), float(means.std(ddof=1)) / math.sqrt(n)


def _paired_t(diff: np.ndarray, blocks: int = 16) -> float | None:
    """Mean / standard error of a per-position difference (see ``_block_mean_and_se``)."""
    stats = _block_mean_and_se(diff, blocks)
    if stats is None:
        return None
    mean, se = stats
    return math.copysign(float("inf"), mean) if se == 0 and mean != 0 else (0.0 if se == 0 else mean / se)


# A verdict that TTT does nothing or hurts is only given when the data exclude a benefit of the
# required size: the measured relative gain plus this many standard errors (over position blocks)
# must stay below ``help_min_loss_decrease``. Two standard errors: a ~2.5 % chance of calling a
# checkpoint whose true gain is just at the threshold "does nothing" on a given input.
HELP_RESOLUTION_SE = 2.0


def ttt_helps(loss_learned: np.ndarray, loss_gate0: np.ndarray, th: Mapping[str, float],
              nonfinite_ttt: Sequence[str] = (), loss_no_inner_step: np.ndarray | None = None,
              no_inner_step_unavailable: str | None = None,
              output_spread: Mapping[str, float] | None = None) -> Verdict:
    """TTT must earn its place: the teacher-forced outer loss at the learned gate is lower than
    at gate 0 by at least ``help_min_loss_decrease`` (relative). Within that band either way is
    "TTT does nothing"; above it "TTT hurts". The paired t over position blocks is reported (how
    far the difference stands out of the position-to-position noise), not required: a constant
    offset (a TTT that ignores its input) is "significant" while worth nothing.

    ``nonfinite_ttt``: TTT tensors holding NaN/Inf. Then gate 0 is not "TTT off" (0 x NaN = NaN),
    so a non-finite loss there measures the TTT branch, not the base.

    ``loss_no_inner_step``: the outer loss at the learned gate with every inner step size set to
    0 (W_t = W_0, the branch as a static layer). Reported, not judged: it splits the gain into
    what the branch adds as an ordinary layer and what test-time training adds on top, which
    the verdict alone cannot tell apart (measured: the committed healthy-seed0's whole 0.21% is
    static). ``no_inner_step_unavailable``: why that pass could not be made; the explanation says
    so instead of leaving the split out silently.

    ``output_spread``: per TTT layer, how much its branch output varies over the positions of the
    learned-gate pass (std / rms, ``metrics/branch_output.py``). Below ``help_min_output_spread``
    the branch ignores its input: it adds a constant (a trained ``wo.bias`` behind a zeroed
    ``wo.weight``), which can lower the loss like any bias (measured 0.094%) but is not TTT, so
    the check fails whatever the gain."""
    margin = th["help_min_loss_decrease"]
    a, b = np.asarray(loss_learned, dtype=np.float64), np.asarray(loss_gate0, dtype=np.float64)
    mean_a, mean_b = (float(np.mean(a)) if a.size else float("nan")), (float(np.mean(b)) if b.size else float("nan"))
    if not _finite(mean_a, mean_b):
        if nonfinite_ttt and not _finite(mean_b):
            shown = name_list(nonfinite_ttt, 4)
            why = (f"cannot measure: TTT produces NaN, gate 0 is not off (0 x NaN = NaN): non-finite TTT tensors {shown}; "
                   f"outer loss learned gate {mean_a}, gate 0 {mean_b}")
        elif not _finite(mean_b):
            why = f"cannot measure: the outer loss at gate 0 (TTT off) is not finite ({mean_b}): the base model itself produces NaN/Inf"
        else:
            why = f"TTT produces a non-finite outer loss at the learned gate ({mean_a}) while gate 0 gives {mean_b:.4f}: TTT breaks the model"
        return Verdict("ttt_helps", False, "nan", margin, why,
                       details={"loss_learned": mean_a, "loss_gate0": mean_b, "nonfinite_ttt": list(nonfinite_ttt)})
    gain = (mean_b - mean_a) / abs(mean_b) if mean_b else float("-inf")
    paired = _paired_t(b - a) if a.shape == b.shape else None
    block = _block_mean_and_se(b - a) if a.shape == b.shape else None
    se_rel = block[1] / abs(mean_b) if block is not None and mean_b else float("inf")
    noise = "" if paired is None else f", paired t over position blocks {paired:+.2f}"
    core = f"teacher-forced outer loss {mean_a:.5f} at the learned gate vs {mean_b:.5f} at gate 0 ({-gain:+.3%}{noise})"
    measured = {"loss_learned": mean_a, "loss_gate0": mean_b, "relative_decrease": gain, "paired_t": paired,
                "standard_error_rel": se_rel}
    min_spread = th["help_min_output_spread"]
    constant = {name: float(v) for name, v in (output_spread or {}).items() if math.isfinite(v) and v < min_spread}
    if constant:
        shown = ", ".join(f"{name} {v:.1e}" for name, v in constant.items())
        return Verdict("ttt_helps", False, gain, margin,
                       f"{core}: TTT IGNORES ITS INPUT: the branch output is the same at every position (spread std/rms "
                       f"{shown}, below {min_spread:g}; a branch that reads its input varies by order 1): what it adds is a "
                       "constant bias, not test-time training, whatever it does to the loss (a zeroed or frozen output "
                       "projection, or no gradient reaching it)",
                       details={**measured, "verdict": "does_nothing", "constant_output_layers": constant,
                                "output_spread": dict(output_spread or {})})
    if gain >= margin:
        ok, why = True, f"{core}: TTT lowers the loss by {gain:.3%} (at least {margin:.3%} required)"
    elif gain + HELP_RESOLUTION_SE * se_rel >= margin:
        # The input is too short (or too varied) to tell "no benefit" from a benefit of the size required.
        return Verdict("ttt_helps", False, gain, margin,
                       f"cannot measure: {core}; this input cannot tell a {margin:.3%} benefit from none (gain {gain:+.3%} "
                       f"+- {se_rel:.3%} standard error over {a.size} positions): give a longer --input",
                       details={**measured, "verdict": "unresolved"})
    elif gain <= -margin:
        ok, why = False, f"{core}: TTT HURTS: the model is {-gain:.3%} worse with its TTT branch than without it"
    else:
        ok, why = False, (f"{core}: TTT DOES NOTHING: the learned gate changes the outer loss by less than {margin:.3%} "
                          "either way (an output that ignores its input, a gate too small to matter, or no benefit learned)")
    details = {**measured, "verdict": "helps" if ok else ("hurts" if gain <= -margin else "does_nothing")}
    if output_spread:
        details["output_spread"] = dict(output_spread)
    split = _inner_step_share(mean_a, mean_b, loss_no_inner_step, margin)
    if split is None and no_inner_step_unavailable:
        split = ({"loss_no_inner_step": None, "no_inner_step_unavailable": no_inner_step_unavailable},
                 f"what test-time training itself buys was not measured: {no_inner_step_unavailable}")
    if split is not None:
        details.update(split[0])
        why = f"{why}; {split[1]}"
    return Verdict("ttt_helps", ok, gain, margin, why, details=details)


def _inner_step_share(mean_learned: float, mean_gate0: float, loss_no_inner_step: np.ndarray | None,
                      margin: float) -> tuple[dict[str, Any], str] | None:
    """What the test-time updates buy: (details, one clause) from the outer loss with the inner
    steps off, or None when it was not measured."""
    if loss_no_inner_step is None or not np.size(loss_no_inner_step):
        return None
    static = float(np.mean(np.asarray(loss_no_inner_step, dtype=np.float64)))
    if not _finite(static) or not static:
        return ({"loss_no_inner_step": static},
                f"with the inner steps off (W_t = W_0) the outer loss is {static}, so what test-time training buys is unknown")
    from_updates = (static - mean_learned) / abs(static)
    static_gain = (mean_gate0 - static) / abs(mean_gate0) if mean_gate0 else float("nan")
    clause = (f"with the inner steps off (W_t = W_0, the branch as a static layer) it is {static:.5f}: the branch alone "
              f"{'lowers' if static_gain >= 0 else 'raises'} the loss by {abs(static_gain):.3%}, and the test-time updates "
              f"{'lower it by a further' if from_updates >= 0 else 'raise it again by'} {abs(from_updates):.3%}")
    if from_updates < margin <= (mean_gate0 - mean_learned) / abs(mean_gate0):
        clause += " (the benefit is not test-time training: the inner loop adds less than the required margin)"
    return {"loss_no_inner_step": static, "relative_decrease_from_inner_steps": from_updates,
            "relative_decrease_static_branch": static_gain}, clause


def talk_base(words: int, transcript: str, collapse_reasons: Sequence[str], loss_gate0: np.ndarray | None,
              chance_loss: float | None, th: Mapping[str, float], nonfinite_ttt: Sequence[str] = ()) -> Verdict:
    """The base (gate 0) talks: Whisper hears words, and the base predicts its own stream far
    better than chance. Whisper invents words on gibberish ("See you next week"), so the words
    alone do not prove a talking base: a gate-0 outer loss near the loss of uniform prediction
    (``talk_max_base_loss_vs_chance``) does not talk, whatever is heard. With non-finite TTT
    tensors gate 0 is not "TTT off" (0 x NaN), so nothing here is the base's fault."""
    min_words, max_ratio = th["talk_min_base_words"], th["talk_max_base_loss_vs_chance"]
    loss = float(np.mean(loss_gate0)) if loss_gate0 is not None and np.size(loss_gate0) else None
    details: dict[str, Any] = {"words": words, "loss_gate0": loss, "chance_loss": chance_loss, "nonfinite_ttt": list(nonfinite_ttt)}
    if nonfinite_ttt and (loss is None or not math.isfinite(loss)):
        shown = ", ".join(list(nonfinite_ttt)[:4])
        return Verdict("talk_base", False, None, min_words,
                       f"cannot measure: TTT produces NaN, gate 0 is not off (0 x NaN = NaN in {shown}); the gate-0 replies "
                       f"are not the base model's ({words} words heard)", details=details)
    ratio = loss / chance_loss if loss is not None and chance_loss and math.isfinite(loss) else None
    details["loss_vs_chance"] = ratio
    problems = []
    if words < min_words:
        problems.append(f"the base model produced no speech at gate 0 ({words} words heard; {'; '.join(collapse_reasons) or 'no words'})")
    if loss is not None and not math.isfinite(loss):
        problems.append(f"the gate-0 outer loss is {loss}: the base model itself is broken")
    elif ratio is not None and ratio > max_ratio:
        problems.append(f"the base predicts its own stream barely better than chance: gate-0 outer loss {loss:.4g} vs "
                        f"{chance_loss:.4g} for uniform guessing ({ratio:.0%} > {max_ratio:.0%}), so the {words} words Whisper "
                        "heard are not speech it made")
    loss_note = "" if ratio is None else f"; gate-0 outer loss {loss:.4g} = {ratio:.0%} of chance ({chance_loss:.4g})"
    if not problems:
        return Verdict("talk_base", True, words, min_words,
                       f"at gate 0 (TTT off) Whisper heard {words} words: {transcript!r}{loss_note}", details=details)
    return Verdict("talk_base", False, words, min_words,
                   "; ".join(problems) + ": without a talking base the sweep cannot say whether TTT keeps the model talkative"
                   + ("" if ratio is None or ratio > max_ratio else loss_note), details=details)


def config_consistency(fields: Sequence[Any] | None, notes: Sequence[str] = ()) -> Verdict:
    """The recipe a checkpoint carries vs what it was trained with, where both are stated.

    ``fields``: :class:`ttt_checks.models.base.RecipeField` rows (name, the value the loader
    builds the model with and where it reads it, the other statement and where). A contradiction
    fails and names which value wins (the one the loader uses), because every other verdict
    measures the model at that value: a checkpoint trained at mini_batch_size 16 whose config.json
    says 64 is judged at 64 and its one-step improvement drops for no visible reason."""
    notes = list(notes)
    tail = ("; " + "; ".join(notes)) if notes else ""
    if not fields:
        return Verdict("config_consistency", True, 0, 0,
                       "nothing to compare: the checkpoint states its recipe once (no second record of the training settings)" + tail,
                       details={"compared": [], "contradictions": [], "notes": notes, "severity": "warning"})
    bad = [f for f in fields if not f.agrees]
    rows = [{"name": f.name, "loaded": f.loaded, "loaded_from": f.loaded_from, "trained": f.trained, "trained_from": f.trained_from,
             "agrees": f.agrees} for f in fields]
    if bad:
        parts = [f"{f.name}: {f.loaded_from} says {f.loaded!r} but {f.trained_from} says {f.trained!r}; the loader uses "
                 f"{f.loaded!r} ({f.loaded_from} wins)" for f in bad]
        why = ("CONFIG CONTRADICTS ITSELF OR ITS WEIGHTS: " + "; ".join(parts) + ". One of the two was edited after training "
               "or copied from another run, and every check measures the model at the value the loader uses; restore the "
               "files saved with the weights" + tail)
    else:
        why = f"{len(fields)} settings stated twice agree ({', '.join(f.name for f in fields)})" + tail
    return Verdict("config_consistency", not bad, len(bad), 0, why,
                   details={"compared": rows, "contradictions": [f.name for f in bad], "notes": notes})


INIT_MATCH_ULPS = 2.0
INIT_MATCH_ABS_ULPS = 8.0


def at_initial_value(current: Any, initial: Any) -> bool:
    """Is a stored tensor still its initial value, up to the rounding of another machine?

    The initial value is re-created from its seed on the machine that runs the check, and torch's
    CPU random kernels differ in their last bits between SIMD paths (``ATEN_CPU_CAPABILITY``).
    Measured: of 131,072 ``randn * 0.02`` draws rounded to bf16, 12 differ between the AVX-512 and
    the scalar kernels, by one bf16 unit in the last place, or, near 0 (Box-Muller's ``r cos(theta)``
    with a cosine a few fp32 ulp apart), by ~1e-8 absolute. So "untouched" means every element
    within ``INIT_MATCH_ULPS`` units in the last place of the coarser dtype (bf16: 1.6 %) plus
    ``INIT_MATCH_ABS_ULPS`` fp32 ulp of the tensor's largest element (the kernels' absolute error);
    an element initialised to exactly 0 must still be exactly 0. An optimiser step moves the
    small elements of a trained tensor by ~its learning rate (>= 1e-6), far beyond both.
    """
    import torch

    if tuple(current.shape) != tuple(initial.shape):
        return False
    eps = max(torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0 for t in (current, initial))
    a, b = current.detach().double().cpu(), initial.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return bool(torch.equal(a, b))
    scale = float(b.abs().max()) if b.numel() else 0.0
    slack = INIT_MATCH_ULPS * eps * b.abs() + INIT_MATCH_ABS_ULPS * torch.finfo(torch.float32).eps * scale
    return bool(((a - b).abs() <= slack).all())


def zeroed_tensor(current: Any, initial: Any) -> bool:
    """Every element exactly 0 where the initialisation was not: a tensor that passes no signal.

    No optimiser lands every element of a randomly initialised matrix on exactly 0.0; such a
    tensor was zeroed (an edit after training, or a zero-init the optimiser never saw)."""
    if tuple(current.shape) != tuple(initial.shape) or not current.numel():
        return False
    a, b = current.detach().cpu(), initial.detach().cpu()
    return bool((a == 0).all()) and bool((b != 0).any())


def dead_parameters(current: Mapping[str, Any], initial: Mapping[str, Any], used: Iterable[str] | None, th: Mapping[str, float]) -> Verdict:
    """Trainable TTT tensors still at their initial value were never trained; tensors zeroed
    everywhere (initialised non-zero) pass no signal. Both count as dead.

    Only tensors the forward uses count: one the forward never applies (the user's Moshi code
    skips post_norm, wo.bias and the backward gate) cannot be trained by any recipe, so its being
    at init says nothing about this checkpoint's training. It is named as a warning (dead weight
    in the code), not a failure; the Moshi-specific check reports the same tensors as a fact."""
    if not initial:
        return cannot_measure("dead_parameters", "the adapter knows no initial values of the TTT parameters")
    used = set(current) if used is None else set(used)
    unchanged, unused, zeroed, compared = [], [], [], 0
    for name, init in initial.items():
        if name not in current:
            continue
        compared += 1
        if at_initial_value(current[name], init):
            (unchanged if name in used else unused).append(name)
        elif name in used and zeroed_tensor(current[name], init):
            zeroed.append(name)
    if compared == 0:
        return cannot_measure("dead_parameters", "none of the known initial tensors is in the checkpoint")
    judged = compared - len(unused)
    frac = (len(unchanged) + len(zeroed)) / judged if judged else 0.0
    ok = frac <= th["dead_max_fraction"]
    parts = []
    if zeroed:
        parts.append(f"ZEROED (every element exactly 0, initialised non-zero: it passes no signal): {name_list(zeroed, 6)}")
    if unchanged:
        parts.append(f"still at init though used in the forward: {name_list(unchanged, 6)}")
    if unused:
        parts.append(f"never used by the forward (so never trained; dead weight in the code, not a training fault): "
                     f"{name_list(unused, 6)}")
    details: dict[str, Any] = {"unchanged": unchanged, "unused": unused, "zeroed": zeroed, "compared": compared,
                               "inner_initial_state": [n for n in initial if n in current and is_inner_initial_state(n)],
                               "inner_initial_state_unchanged": [n for n in unchanged if is_inner_initial_state(n)]}
    if ok and unused:
        details["severity"] = "warning"
    moved = f"all {judged} TTT tensors the forward uses moved from their initial values, none is zeroed"
    return Verdict("dead_parameters", ok, frac, th["dead_max_fraction"],
                   "; ".join(parts) if not ok else "; ".join([moved, *parts]), details=details)


def state_persistence(records: Mapping[str, Any], layers: Mapping[str, Any], th: Mapping[str, float]) -> list[Verdict]:
    """In a streamed run (one token per call) lprev must depart from l0 where W_{t-1} is not W_0
    by construction (``metrics/figure5.py``): the state is carried and moves.

    ``layers`` maps each record's layer to its ``TTTLayerInfo`` (mini_batch_size, causal). When
    lprev stays at l0 the cause is told apart by what else the record shows: losses identically
    0 (nothing to learn), lafter == lprev too (the inner updates are ~0: a carried state would
    not move either), or lafter != lprev (the step moves within a call, but the next call starts
    from W_0 again: the state is reset). ``details["cause"]`` names which: None (it passes),
    "loss_zero", "updates_zero" or "reset".
    """
    from ttt_checks.metrics.figure5 import exclusion_note, l0_equals_lprev_by_construction, positions_needed

    gap = th["persistence_min_rel_change"]
    min_frac = th["persistence_min_fraction"]
    out = []
    for layer, rec in records.items():
        info = layers.get(layer)
        if info is None:
            out.append(cannot_measure("state_persistence", "the model states no mini_batch_size/causal flag for this layer", layer))
            continue
        b, causal = int(info.mini_batch_size), bool(info.causal)
        positions = np.asarray(rec.positions)
        judged = ~l0_equals_lprev_by_construction(positions, b, causal)
        needed = positions_needed(b, causal)
        if not judged.any():
            out.append(cannot_measure("state_persistence", f"the streamed run has {len(positions)} positions, none past where "
                                      f"{exclusion_note(b, causal)}; give a longer --input: {needed} positions (frames) needed at "
                                      f"mini_batch_size {b} (and --max-positions at least {needed})", layer))
            continue
        l0_all, lprev_all, lafter_all = (np.asarray(getattr(rec, c), dtype=np.float64) for c in ("l0", "lprev", "lafter"))
        if not (np.isfinite(l0_all).all() and np.isfinite(lprev_all).all() and np.isfinite(lafter_all).all()):
            out.append(cannot_measure("state_persistence", "streamed losses are not finite (see figure5_finite)", layer))
            continue
        l0, lprev = l0_all[judged], lprev_all[judged]
        departs = np.abs(lprev - l0) > gap * np.maximum(np.abs(l0), np.abs(lprev))
        frac = float(departs.mean())
        steps = np.abs(lafter_all - lprev_all) > gap * np.maximum(np.abs(lafter_all), np.abs(lprev_all))
        step_frac = float(steps.mean())
        ok = frac >= min_frac
        where = f"{int(judged.sum())} of {len(positions)} streamed positions judged ({exclusion_note(b, causal)})"
        zero = max(np.abs(l0_all).max(), np.abs(lprev_all).max(), np.abs(lafter_all).max()) == 0.0
        cause = None if ok else "loss_zero" if zero else "updates_zero" if step_frac < min_frac else "reset"
        if ok:
            why = f"lprev departs from l0 (by more than {gap:g} relative) at {frac:.0%} of judged positions: the state is carried; {where}"
        elif cause == "loss_zero":
            why = (f"l0, lprev and lafter are exactly 0 at every streamed position: the inner loss is identically 0, nothing moves "
                   f"the inner weights, so whether the state is carried cannot be seen; {where}")
        elif cause == "updates_zero":
            why = (f"lprev equals l0 at {1 - frac:.0%} of judged positions, and lafter equals lprev (within {gap:g}) at "
                   f"{1 - step_frac:.0%} of all positions: the inner updates are ~0 (learning rate ~0, or saturated inner weights "
                   f"where the gradient vanishes): the state may be carried but does not move; {where}")
        else:
            why = (f"lprev equals l0 at {1 - frac:.0%} of judged positions while one inner step changes the loss at {step_frac:.0%} "
                   f"of positions: the TTT state is NOT carried across calls (weights reset every step); {where}")
        out.append(Verdict("state_persistence", ok, frac, min_frac, why, layer,
                           {"cause": cause, "frac_lprev_departs": frac, "frac_step_moves": step_frac, "judged": int(judged.sum()),
                            "positions": len(positions), "mini_batch_size": b, "causal": causal}))
    return out


def streaming_consistency(loss_teacher_forced: np.ndarray, loss_streamed: np.ndarray, th: Mapping[str, float],
                          loss_gate0: np.ndarray | None = None, causal: bool | None = None) -> Verdict:
    """The outer loss the model gets token by token (as it runs at inference) vs the loss of the
    teacher-forced pass over the same positions. A causal TTT layer gives the same numbers; a
    non-causal one that reads up to b-1 tokens ahead inside its mini-batch scores better in the
    teacher-forced pass than it ever can at inference, and that gap is the leak's cost.

    For a layer that is non-causal by design (the user's recipe) the leak is expected: it is a
    documented warning as long as TTT still earns its place at inference, i.e. the learned gate fed
    one token per call stays below the gate-0 loss (``loss_gate0``, same positions; TTT off is
    causal) by ``help_min_loss_decrease``. It fails when the benefit exists only with future
    tokens. For a causal layer any gap beyond ``leak_max_loss_gap`` is a bug: it fails."""
    a, b = float(np.mean(loss_streamed)), float(np.mean(loss_teacher_forced))
    if not _finite(a, b):
        return Verdict("streaming_consistency", False, "nan", th["leak_max_loss_gap"],
                       f"outer loss is not finite (streamed {a}, teacher-forced {b})")
    gap = (a - b) / abs(b) if b else float("inf")
    details: dict[str, Any] = {"loss_streamed": a, "loss_teacher_forced": b, "causal": causal}
    core = f"outer loss {a:.4f} fed one token per call vs {b:.4f} teacher-forced ({gap:+.2%})"
    if gap <= th["leak_max_loss_gap"]:
        return Verdict("streaming_consistency", True, gap, th["leak_max_loss_gap"], core, details=details)
    g0 = float(np.mean(loss_gate0)) if loss_gate0 is not None and np.size(loss_gate0) else None
    if causal is False and g0 is not None and _finite(g0) and g0:
        benefit = (g0 - a) / abs(g0)
        details.update(loss_gate0=g0, streamed_benefit=benefit, severity="warning")
        leak = (f"{core}: the non-causal mini-batches read up to b-1 tokens ahead in the teacher-forced pass, "
                "which inference cannot give them")
        if benefit >= th["help_min_loss_decrease"]:
            return Verdict("streaming_consistency", True, gap, th["leak_max_loss_gap"],
                           f"{leak}; expected for a non-causal layer (a warning): fed one token per call TTT still lowers "
                           f"the loss by {benefit:.2%} vs gate 0 ({g0:.4f})", details=details)
        del details["severity"]
        return Verdict("streaming_consistency", False, gap, th["leak_max_loss_gap"],
                       f"{leak}; and fed one token per call the learned gate gives {a:.4f} vs {g0:.4f} at gate 0 "
                       f"({-benefit:+.2%}): TTT's benefit exists only with future tokens", details=details)
    why = ("the TTT layer uses future tokens of its mini-batch in the teacher-forced pass (non-causal mini-batches), "
           "which inference cannot give it")
    if causal is True:
        why = "the layer is declared causal, yet the teacher-forced pass scores better than inference: future tokens leak in"
    return Verdict("streaming_consistency", False, gap, th["leak_max_loss_gap"], f"{core}: {why}", details=details)


# ---------------------------------------------------------------------------------------------
# Inner step size: a line search along the step each mini-batch takes (ttt/step_probe.py)
# ---------------------------------------------------------------------------------------------


def inner_step_size(records: Mapping[str, StepSizeRecord], th: Mapping[str, float]) -> list[Verdict]:
    """Is the inner step the layer takes near the best step along its own direction?

    The record holds the mean inner loss after the step scaled by m (1 = the step taken, whose
    loss is the mean lafter) and before it (m = 0). Overshoot: the best m is <= 1/2 and the full
    step gives away more than ``step_overshoot_margin`` of the gain the best m achieves; a line on
    which no grid step beats no step at all is an overshoot too, whichever m is least bad (a
    saturated step can dip at m = 4 and still be worse than not stepping), and so is a line that falls,
    rises by more than ``ordering_min_rel_gap`` (two losses equal within it are equal) below m = 1
    and falls again further out (``StepSizeRecord.first_basin``: the full step lies past the first
    minimum, in the saturated regime). Far too timid: the loss still falls at
    the top of the grid (best m >= 4) and the full step buys less than
    ``step_timid_gain_fraction`` of the gain of that m (1/4 when the loss has no curvature along
    the step at all). ``recommended base_lr`` = base_lr x best m, since eta is linear in base_lr.
    """
    out = []
    margin, fraction = th["step_overshoot_margin"], th["step_timid_gain_fraction"]
    threshold = f"overshoot: best m <= 0.5 and lost share > {margin:g}; timid: best m >= 4 and gain ratio < {fraction:g}"
    for layer, r in records.items():
        if r.count == 0 or not r.finite:
            out.append(cannot_measure("inner_step_size", f"{r.nonfinite} of {r.count} scaled-step inner losses are NaN/Inf "
                                      "(see figure5_finite)" if r.count else "no complete mini-batch reached the probe", layer))
            continue
        if not {1.0, 4.0} <= set(r.multipliers):
            out.append(cannot_measure("inner_step_size", f"the probe's grid {r.multipliers} lacks m = 1 or m = 4", layer))
            continue
        l_start, l_full, best, l_best = r.loss_start, r.loss_at(1.0), r.best_multiplier, r.best_loss
        losses = ", ".join(f"{m:g}: {v:.6g}" for m, v in zip(r.multipliers, r.losses))
        details = {**r.to_dict(), "step_overshoot_margin": margin, "step_timid_gain_fraction": fraction}
        lowest = min(r.multipliers)
        if l_start == 0 and all(v == 0 for v in r.losses):
            out.append(cannot_measure("inner_step_size", "the inner loss is exactly 0 before and after every scaled step: "
                                      "there is nothing to descend (a target the inner model reproduces trivially?)", layer))
            continue
        if all(v == l_start for v in r.losses):
            out.append(Verdict("inner_step_size", False, best, threshold,
                               f"TOO TIMID: no multiplier up to {max(r.multipliers):g} changes the inner loss ({l_start:.4g}): "
                               f"the inner update is exactly zero (base_lr {r.base_lr:g})", layer, details))
            continue
        uphill = l_best >= l_start  # no step on the grid helps, whichever is least bad
        # Two regimes on one line (StepSizeRecord.first_basin): the loss falls, rises, then falls again
        # further out, so the grid's best m is the saturated regime's, not the step's optimum.
        basin = None if uphill else r.first_basin(th["ordering_min_rel_gap"])
        basin_m = r.multipliers[basin[0]] if basin else None
        details["first_basin_multiplier"] = basin_m
        overshoot = uphill or basin is not None or (best <= 0.5 and r.lost_fraction > margin)
        timid = not overshoot and best >= 4.0 and r.gain_ratio_1_to_best < fraction
        if basin is not None:
            k, j = basin
            m_next = sorted(m for m in r.multipliers if m > basin_m)[0]
            why = (f"OVERSHOOT (saturated): along the update the inner loss falls to {r.losses[k]:.6g} at m = {basin_m:g} "
                   f"({l_start:.6g} before the step), rises to {r.loss_at(m_next):.6g} at m = {m_next:g}, and falls again to "
                   f"{r.losses[j]:.6g} at m = {r.multipliers[j]:g}: two regimes on one line, which a step near its optimum "
                   f"does not show. The step taken (m = 1, {l_full:.6g}) lies past the first minimum, in a regime where the "
                   f"update swamps the start weights and the inner LayerNorm hides its scale, so a larger step only looks better; "
                   f"recommended base_lr ~ {r.base_lr:g} x {basin_m:g} = {r.base_lr * basin_m:.3g} (the first minimum lies "
                   f"below m = {m_next:g}; the grid below 0.25 steps by 1000x)")
        elif uphill:
            why = (f"OVERSHOOT: every scaled step down to m = {lowest:g} makes the inner loss worse than no step ({l_start:.4g} "
                   f"before the step, {l_full:.4g} after the full step, {l_best:.4g} at best m = {best:g}): the step is far "
                   f"too large or points uphill; recommended base_lr < {r.base_lr * lowest:.3g} (base_lr {r.base_lr:g} x {lowest:g})")
        elif overshoot:
            coarse = " (below m = 0.25 the grid steps by 1000x: the value is good to a factor of about 30)" if best < 0.25 else ""
            edge = "; the best is the grid's smallest m, so the optimum may be smaller still" if best == lowest else ""
            why = (f"OVERSHOOT: the inner step is too large: along the update the layer applies the inner loss is {l_best:.4g} at "
                   f"m = {best:g} but {l_full:.4g} after the full step (m = 1; {l_start:.4g} before it), so the full step gives away "
                   f"{r.lost_fraction:.0%} of the best gain (margin {margin:.0%}); recommended base_lr = {r.base_lr:g} x {best:g} "
                   f"= {r.recommended_base_lr:.3g}{coarse}{edge}")
        elif timid:
            why = (f"TOO TIMID: the inner step is far too small: the inner loss still falls at m = {best:g} ({l_best:.6g}, vs "
                   f"{l_full:.6g} after the full step and {l_start:.6g} before it), and the full step buys only "
                   f"{r.gain(1.0):.3g} of the {r.gain(best):.3g} that m = {best:g} buys ({r.gain_ratio_1_to_best:.0%}; floor "
                   f"{fraction:.0%}; 25% means no curvature along the step); "
                   f"recommended base_lr >= {r.recommended_base_lr:.3g} (base_lr {r.base_lr:g} x {best:g}; the optimum lies "
                   "above the grid)")
        else:
            why = (f"best multiplier {best:g} (inner loss {l_best:.4g}; {l_full:.4g} after the full step, {l_start:.4g} before it): "
                   f"the step taken is within the tolerance; recommended base_lr = {r.recommended_base_lr:.3g}")
        out.append(Verdict("inner_step_size", not (overshoot or timid), best, threshold,
                           f"{why}. Loss per m: {losses}", layer, details))
    return out
