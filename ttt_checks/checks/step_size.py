"""Inner step size: a line search along the step each mini-batch takes (ttt/step_probe.py)."""

from __future__ import annotations

from typing import Mapping

from ttt_checks.ttt.step_probe import StepSizeRecord
from ttt_checks.verdict import Verdict, cannot_measure

# A line on which even the grid's largest step buys less than this share of what one inner step
# must buy (figure5_improvement's improvement_min_rel) is flat: reaching that floor would take a
# step 100x larger than any measured, so the grid says nothing about where the optimum lies.
FLAT_SHARE_OF_IMPROVEMENT_FLOOR = 0.01


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
        if basin_m is not None:  # the step's optimum is the first minimum; the grid's best lies in the saturated regime
            details.update(grid_best_multiplier=best, best_multiplier=basin_m, recommended_base_lr=r.base_lr * basin_m)
        overshoot = uphill or basin is not None or (best <= 0.5 and r.lost_fraction > margin)
        timid = not overshoot and best >= 4.0 and r.gain_ratio_1_to_best < fraction
        flat_below = FLAT_SHARE_OF_IMPROVEMENT_FLOOR * th["improvement_min_rel"]
        flat = not overshoot and r.best_gain_rel < flat_below
        details["flat"] = flat
        if flat:
            why = (f"FLAT: the inner loss does not see the step: the best step on the grid (m = {best:g}, up to {max(r.multipliers):g}x "
                   f"the step taken) lowers it by {r.best_gain_rel:.2e} of its value ({l_start:.7g} -> {l_best:.7g}), below "
                   f"{flat_below:.0e} (1/100 of the {th['improvement_min_rel']:.0%} one inner step must buy). Either the step is "
                   f"orders of magnitude too small for the weights (base_lr {r.base_lr:g}), or the loss is invariant to the inner "
                   "weights' scale (an inner LayerNorm normalises the prediction, so W_0 far off scale shrinks the gradient and the "
                   "step relative to W together); no base_lr is recommended: the grid brackets no optimum")
            out.append(Verdict("inner_step_size", False, best, threshold, f"{why}. Loss per m: {losses}", layer, details))
            continue
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
        out.append(Verdict("inner_step_size", not (overshoot or timid), best if basin_m is None else basin_m, threshold,
                           f"{why}. Loss per m: {losses}", layer, details))
    return out
