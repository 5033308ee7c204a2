"""Is the inner loop learning? The Figure-5 checks, one verdict per TTT layer.

They judge the statistics of ``metrics/figure5.py`` (l0, lprev, lafter per position): collected
over every expected position, finite, bounded (l0 on the scale of lmean, the mean predictor's
loss), ordered l0 > lprev > lafter, one inner step
improving the loss, and the carried state helping more as the context grows.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from ttt_checks.metrics.figure5 import Figure5Stats
from ttt_checks.verdict import Verdict, all_finite, cannot_measure


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
        bad = s.nonfinite > 0 or not all_finite(s.mean_l0, s.mean_lprev, s.mean_lafter)
        out.append(Verdict("figure5_finite", not bad, s.nonfinite, 0,
                           "NaN/Inf in the inner-loop losses: the inner loop diverged, or its weights (W_0, projections) or inputs are not finite" if bad
                           else "all inner-loop losses are finite", layer))
    return out


def figure5_bounded(stats: Mapping[str, Figure5Stats], th: Mapping[str, float]) -> list[Verdict]:
    """The inner losses are on the scale of the problem they solve.

    Exploding: no smoothed loss above ``loss_ceiling`` (absolute, the user's rule). Off scale: W_0
    is judged against the mean predictor, ``l0_to_lmean = mean l0 / mean lmean`` at most
    ``l0_lmean_ratio_max``; nothing to reconstruct: ``mean lmean`` (the target's spread around its
    running mean) at least ``lmean_min``. The derivations are in ``checks/thresholds.py``. A record
    without lmean (saved before it was captured) cannot be judged for scale: that is a failure
    saying so, never a pass on the ceiling alone.
    """
    out = []
    for layer, s in stats.items():
        if not all_finite(s.max_smoothed_loss, s.mean_l0):
            out.append(cannot_measure("figure5_bounded", "losses are not finite (see figure5_finite)", layer))
            continue
        ratio_max, floor = th["l0_lmean_ratio_max"], th["lmean_min"]
        details = {"mean_l0": s.mean_l0, "mean_lmean": s.mean_lmean, "l0_to_lmean": s.l0_to_lmean,
                   "l0_lmean_ratio_max": ratio_max, "lmean_min": floor, "loss_ceiling": th["loss_ceiling"]}
        problems = []
        if s.max_smoothed_loss > th["loss_ceiling"]:
            problems.append(f"HUGE LOSSES: a smoothed loss reaches {s.max_smoothed_loss:.4g} > ceiling {th['loss_ceiling']:g}")
        if not all_finite(s.mean_lmean):
            if not problems:
                out.append(cannot_measure(
                    "figure5_bounded", f"no finite lmean (the loss of predicting the target's running mean) for this layer, so "
                    f"the scale of mean l0 {s.mean_l0:.4g} cannot be judged: the record was saved before lmean was captured "
                    "(measure the checkpoint again) or lmean is not finite (see figure5_finite)", layer, details))
                continue
            problems.append("the scale of l0 cannot be judged (no finite lmean)")
        elif s.mean_lmean < floor:
            problems.append(f"NOTHING TO RECONSTRUCT: the target barely varies over positions, mean lmean {s.mean_lmean:.4g} < {floor:g}"
                            + (" (l0, lprev and lafter are exactly 0: the inner loss is identically 0)" if s.max_abs_loss == 0.0 else ""))
        elif not all_finite(s.l0_to_lmean):  # lmean exactly 0 under a floor set to 0: no scale to judge against
            problems.append(f"NOTHING TO RECONSTRUCT: the target is constant over positions (mean lmean {s.mean_lmean:.4g})")
        elif s.l0_to_lmean > ratio_max:
            problems.append(f"W_0 OFF SCALE: mean l0 {s.mean_l0:.4g} is {s.l0_to_lmean:.4g}x the loss of predicting the target's "
                            f"running mean (lmean {s.mean_lmean:.4g}), above {ratio_max:g}")
        ok_text = (f"losses within bounds (mean l0 {s.mean_l0:.4g} = {s.l0_to_lmean:.3g}x the mean predictor's lmean "
                   f"{s.mean_lmean:.4g}; W_0 " + ("beats" if s.l0_to_lmean < 1 else "does not beat") + " a constant)")
        out.append(Verdict("figure5_bounded", not problems, s.max_smoothed_loss, th["loss_ceiling"],
                           "; ".join(problems) or ok_text, layer, details))
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
        if s.nonfinite == 0 and all_finite(s.mean_l0, s.mean_lprev, s.mean_lafter):
            short = _too_short("figure5_ordering", s, layer)
            if short is not None:
                out.append(short)
                continue
        if not all_finite(s.frac_l0_gt_lprev, s.frac_lprev_gt_lafter, s.mean_gap_l0_lprev, s.improvement_abs):
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
        if not all_finite(s.mean_lprev, s.mean_lafter, s.improvement_abs):
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
        if s.nonfinite or not all_finite(first, last, s.mean_l0, s.mean_lprev, s.mean_lafter):
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
