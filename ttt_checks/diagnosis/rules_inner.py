"""Rules about the inner loop (Figure 5 and the step-size probe): diverging, exploding or off-scale
inner losses, an inner lr too high or too low, a context that is not used, a step off its optimum."""

from __future__ import annotations

import math
from typing import Any, Mapping

from ttt_checks.diagnosis.finding import FIGURE5_RULES, HIGH, MEDIUM, Finding, Metrics, rule
from ttt_checks.diagnosis.readers import (
    _base_lr,
    _cannot_measure,
    _dead,
    _details,
    _evidence,
    _f5_layers,
    _figure5,
    _gate_verdicts,
    _keys,
    _layer_key,
    _recommended_lr,
    _to_value,
    _step_probe,
    _th,
    failing,
    verdicts_of,
)
from ttt_checks.verdict import finite_or_none, fmt, name_list


@rule("inner_loss_nonfinite", 11, "the inner loop diverges numerically (weights finite, inner losses NaN/Inf)",
      "figure5 per layer (nonfinite); verdict figure5_finite", "figure5_finite fails while checkpoint_finite passes",
      overrides=FIGURE5_RULES[1:], reads=("figure5_finite", "figure5_bounded", "figure5_ordering", "figure5_improvement",
                                           "figure5_adaptation"))
def rule_inner_loss_nonfinite(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "figure5_finite") if not _cannot_measure(v)]
    if not bad:
        return None
    layers = sorted({str(v.get("layer")) for v in bad if v.get("layer")}, key=_layer_key)
    counts = {name: s.get("nonfinite") for name, s in _figure5(m).items() if name in layers}
    keys = _keys(m)
    rec, why, bound = _recommended_lr(m, layers, "down")
    return Finding("Inner loop diverges (NaN/Inf inner losses)",
                   f"non-finite Figure-5 losses from layer {layers[0] if layers else '?'} on "
                   f"({', '.join(f'{k}: {fmt(c)} values' for k, c in counts.items()) or ', '.join(layers)}) while the weights are finite",
                   "the inner update overflows: the inner lr is far too high or the inner inputs are not normalised",
                   f"lower {keys['base_lr']}" + (_to_value(rec, bound) if rec is not None else " (a decade at a time)"),
                   config_key=keys["base_lr"], value=rec,
                   confidence=HIGH if rec is not None else MEDIUM,
                   confidence_why=(why if rec is not None else "NaN counted in the inner losses; no step-size probe to size the fix"),
                   evidence=_evidence(m, ["figure5_finite"], layers), layers=layers)


@rule("inner_loss_exploding", 12, "numerical instability of the inner loop: the inner lr is too high",
      "figure5 per layer (max_smoothed_loss vs loss_ceiling); verdict figure5_bounded; inner_step_size",
      "a smoothed Figure-5 loss exceeds loss_ceiling (default 10)",
      overrides=("inner_lr_too_low", "context_not_used", "inner_lr_too_high"),
      reads=("figure5_bounded", "figure5_ordering", "figure5_improvement", "figure5_adaptation", "inner_step_size"))
def rule_inner_loss_exploding(m: Metrics) -> Finding | None:
    ceiling = _th(m, "loss_ceiling", 10.0)
    layers = _f5_layers(m, lambda s: (finite_or_none(s.get("max_smoothed_loss")) or 0.0) > ceiling)
    if not layers:
        return None
    f5 = _figure5(m)
    keys = _keys(m)
    rec, why, bound = _recommended_lr(m, layers, "down")
    base = _base_lr(m, layers)
    value = rec if rec is not None else (base / 10 if base else None)
    return Finding("Huge inner losses (numerical instability)",
                   ", ".join(f"{l}: smoothed loss reaches {fmt(f5[l].get('max_smoothed_loss'))}" for l in layers)
                   + f" > ceiling {ceiling:g}",
                   "the inner step is numerically unstable: the inner learning rate is too high",
                   f"lower {keys['base_lr']}" + (f" from {base:g}" if base else "") + _to_value(value, bound if rec is not None else ""),
                   config_key=keys["base_lr"], value=value,
                   confidence=HIGH if rec is not None else MEDIUM,
                   confidence_why=why if rec is not None else
                   "Figure-5 losses measured; the value is a decade lower, a starting point (no step-size probe in this run)",
                   evidence=_evidence(m, ["figure5_bounded", "inner_step_size"], layers), layers=layers)


# Absolute bounds on mean l0 that runs before lmean judged by (loss_mean_min / loss_mean_max then):
# a metrics.json without mean_lmean is read with them, and the finding says so.
_OLD_L0_BOUNDS = (1e-3, 5.0)


def l0_scale(m: Metrics, s: Mapping[str, Any]) -> tuple[str | None, str]:
    """("above" | "nothing" | None, the numbers in words) for one layer's Figure-5 stats: l0 against
    the mean predictor (``l0_to_lmean`` vs ``l0_lmean_ratio_max``, ``mean_lmean`` vs ``lmean_min``,
    as figure5_bounded judges), or, for metrics written before lmean existed, the absolute mean l0
    against the bounds of that time (``loss_mean_min`` / ``loss_mean_max``)."""
    l0, lmean = finite_or_none(s.get("mean_l0")), finite_or_none(s.get("mean_lmean"))
    if l0 is None:
        return None, ""
    if lmean is not None:
        floor, ratio_max = _th(m, "lmean_min", 1e-3), _th(m, "l0_lmean_ratio_max", 1e3)
        ratio = finite_or_none(s.get("l0_to_lmean"))
        text = f"mean l0 {fmt(l0)} against the mean predictor's lmean {fmt(lmean)}"
        if lmean < floor or ratio is None:
            return "nothing", text + f" (lmean below {floor:g}: the target barely varies)"
        if ratio > ratio_max:
            return "above", text + f": {fmt(ratio)}x, above {ratio_max:g}"
        return None, text
    low, high = _th(m, "loss_mean_min", _OLD_L0_BOUNDS[0]), _th(m, "loss_mean_max", _OLD_L0_BOUNDS[1])
    text = f"mean l0 {fmt(l0)} outside [{low:g}, {high:g}] (absolute: this run predates lmean, the mean predictor's loss)"
    return ("above" if l0 > high else "nothing" if l0 < low else None), text


@rule("inner_loss_off_scale", 13, "the inner loss at W_0 is off the scale of the problem: W_0 or the projections are off scale (l0 far above the mean predictor's loss lmean), or there is nothing to reconstruct (the target does not vary)",
      "figure5 per layer (l0_to_lmean vs l0_lmean_ratio_max, mean_lmean vs lmean_min; runs without mean_lmean: mean_l0 vs the "
      "old absolute bounds 0.001 / 5); verdict figure5_bounded",
      "figure5_bounded fails on l0's scale while no smoothed loss exceeds loss_ceiling",
      reads=("figure5_bounded",))
def rule_inner_loss_off_scale(m: Metrics) -> Finding | None:
    ceiling = _th(m, "loss_ceiling", 10.0)
    flagged = {str(v.get("layer")) for v in failing(m, "figure5_bounded") if v.get("layer") and not _cannot_measure(v)}
    f5 = _figure5(m)
    judged = {l: l0_scale(m, f5[l]) for l in sorted(f5, key=_layer_key)
              if l in flagged and (finite_or_none(f5[l].get("max_smoothed_loss")) or 0.0) <= ceiling}
    layers = [l for l, (kind, _) in judged.items() if kind is not None]
    if not layers:
        return None
    above = [l for l in layers if judged[l][0] == "above"]
    symptom = "; ".join(f"{l}: {judged[l][1]}" for l in layers)
    if above:
        return Finding("Inner loss off scale: W_0 or the TTT projections are far from where training keeps them",
                       symptom + " (the inner model's reconstruction error before any step)",
                       "the outer loop drove the TTT tensors that set the inner problem (W_0, the k/v projections, the target norm) "
                       "off scale: an outer learning rate too high for the TTT parameters, or a bad initialisation; the inner "
                       "learning rate does not enter l0",
                       f"compare the TTT tensors with an earlier checkpoint (`ttt-checks trend`); lower the outer learning rate of the "
                       f"TTT parameters ({_keys(m)['outer_lr']}) and train again",
                       config_key=_keys(m)["outer_lr"], confidence=MEDIUM,
                       confidence_why="l0 measured per token at W_0; which tensor moved it is not measured",
                       evidence=_evidence(m, ["figure5_bounded"], layers), layers=layers)
    zeroed = _dead(m)[2]
    return Finding("Inner loss ~0: nothing to reconstruct",
                   symptom + " (the inner model's reconstruction error before any step)"
                   + (f"; zeroed TTT tensors: {name_list(zeroed, 5)}" if zeroed else ""),
                   "the inner target carries no signal: the target norm's weight (ttt_norm_weight), the value projection or the "
                   "keys are zero, so W_0 already fits it and the inner loop has nothing to learn",
                   (f"restore {name_list(zeroed, 3)} (every element is 0)" if zeroed else
                    "check ttt_norm_weight and the k/v projections for zeros (an edit, or a zero init left out of the optimiser)"),
                   confidence=HIGH if zeroed else MEDIUM,
                   confidence_why=("l0 measured per token at W_0, and dead_parameters found tensors that are exactly 0" if zeroed else
                                   "l0 measured per token at W_0; which tensor zeroed it is not measured"),
                   evidence=_evidence(m, ["figure5_bounded", *(["dead_parameters"] if zeroed else [])], layers), layers=layers)


@rule("inner_lr_too_high", 16, "degenerate inner learning: one inner step makes the loss worse (inner lr far too high)",
      "figure5 per layer (mean lafter vs lprev, improvement_abs, frac_lprev_gt_lafter); inner_step_size (best_multiplier <= 0.5)",
      "lafter > lprev on average in a layer, or the step-size probe's best multiplier is <= 0.5",
      overrides=("inner_lr_too_low", "context_not_used", "inner_step_size_off", "ttt_hurts", "ttt_does_nothing"),
      reads=("figure5_ordering", "figure5_improvement", "figure5_adaptation", "inner_step_size", "ttt_helps"))
def rule_inner_lr_too_high(m: Metrics) -> Finding | None:
    f5 = _figure5(m)
    over = _f5_layers(m, lambda s: finite_or_none(s.get("mean_lafter")) is not None and finite_or_none(s.get("mean_lprev")) is not None
                      and (finite_or_none(s.get("mean_lafter")) > finite_or_none(s.get("mean_lprev")) or (finite_or_none(s.get("improvement_abs")) or 0) < 0))
    probe = _step_probe(m)
    probe_high = [l for l, p in probe.items() if (finite_or_none(p.get("best_multiplier")) or 1.0) <= 0.5]
    if verdicts_of(m, "inner_step_size"):  # where the probe's own verdict passed, its optimum is close enough
        probe_high = [l for l in probe_high if l in failing_layers(m, "inner_step_size")]
    layers = sorted(set(over) | set(probe_high), key=_layer_key)
    if not layers:
        return None
    parts = []
    for l in layers:
        s = f5.get(l, {})
        text = f"{l}:"
        if l in over:
            text += f" lafter {fmt(s.get('mean_lafter'))} > lprev {fmt(s.get('mean_lprev'))}"
            if finite_or_none(s.get("mean_l0")) is not None and finite_or_none(s.get("mean_lprev")) is not None and finite_or_none(s["mean_lprev"]) > finite_or_none(s["mean_l0"]):
                text += f" > l0 {fmt(s.get('mean_l0'))}"
        if l in probe:
            text += f" step-size probe best multiplier {fmt(probe[l].get('best_multiplier'))}"
        parts.append(text)
    keys = _keys(m)
    rec, why, bound = _recommended_lr(m, layers, "down")
    base = _base_lr(m, layers)
    value = rec if rec is not None else (base / 10 if base else None)
    both = bool(set(over) & set(probe_high))
    consequences = []
    if _gate_verdicts(m):
        consequences.append("the gates fell (the outer loop turns a harmful TTT down)")
    if [v for v in failing(m, "ttt_helps") if _details(v).get("verdict") in ("hurts", None)]:
        consequences.append("TTT hurts the outer loss")
    return Finding("Inner learning rate far too high (degenerate inner learning)", "; ".join(parts),
                   "one inner step overshoots the minimum along its own direction, so the inner model gets worse the more "
                   "it learns" + (f"; consequences: {', '.join(consequences)}" if consequences else ""),
                   f"lower {keys['base_lr']}" + (f" from {base:g}" if base else "") + _to_value(value, bound if rec is not None else ""),
                   config_key=keys["base_lr"], value=value,
                   confidence=HIGH if both or rec is not None else MEDIUM,
                   confidence_why=(f"Figure 5 and the step-size probe agree; {why}" if both else why if rec is not None else
                                   "Figure-5 means measured; the value is a decade lower, a starting point (no step-size probe)"),
                   evidence=_evidence(m, ["figure5_ordering", "figure5_improvement", "inner_step_size"], layers), layers=layers)


@rule("inner_lr_too_low", 17, "no inner learning: gradients do not flow or the inner lr is ~0",
      "figure5 per layer (improvement_abs < improvement_min_abs, curves overlapping); inner_step_size (best_multiplier >= 4)",
      "one inner step improves the loss by less than improvement_min_abs (default 0.001) without making it worse",
      overrides=("context_not_used", "inner_step_size_off", "ttt_does_nothing"),
      reads=("figure5_improvement", "figure5_ordering", "figure5_adaptation", "inner_step_size", "ttt_helps"))
def rule_inner_lr_too_low(m: Metrics) -> Finding | None:
    min_abs = _th(m, "improvement_min_abs", 1e-3)
    min_rel = _th(m, "improvement_min_rel", 0.01)

    def flat(s: Mapping[str, Any]) -> bool:
        imp, rel = finite_or_none(s.get("improvement_abs")), finite_or_none(s.get("improvement_rel"))
        return imp is not None and imp >= 0 and (imp < min_abs or (rel is not None and rel < min_rel))

    layers = set(_f5_layers(m, flat))
    overlapping = {str(v.get("layer")) for v in verdicts_of(m, "figure5_ordering") if _details(v).get("overlapping")}
    probe = _step_probe(m)
    probe_low = {l for l, p in probe.items() if (finite_or_none(p.get("best_multiplier")) or 1.0) >= 4}
    if verdicts_of(m, "inner_step_size"):
        probe_low &= failing_layers(m, "inner_step_size")
    f5 = _figure5(m)
    # A target with nothing to reconstruct leaves nothing to learn, whatever the step (inner_loss_off_scale says so).
    nothing_to_learn = {l for l, s in f5.items() if l0_scale(m, s)[0] == "nothing"}
    layers = sorted((layers | overlapping | probe_low) - nothing_to_learn, key=_layer_key)
    if not layers:
        return None
    parts = []
    for l in layers:
        s = f5.get(l, {})
        text = f"{l}: one inner step improves the loss by {fmt(s.get('improvement_abs'))}"
        if finite_or_none(s.get("improvement_rel")) is not None:
            text += f" ({finite_or_none(s['improvement_rel']):.2%})"
        if l in overlapping:
            text += ", the three curves overlap"
        if l in probe:
            text += f", step-size probe best multiplier {fmt(probe[l].get('best_multiplier'))}"
        parts.append(text)
    keys = _keys(m)
    rec, why, bound = _recommended_lr(m, layers, "up")
    base = _base_lr(m, layers)
    near_zero = base is not None and base < 1e-3
    value = rec if rec is not None else None
    return Finding("No inner learning (inner lr ~ 0 or no gradient)",
                   "; ".join(parts) + f" (floor {min_abs:g} / {min_rel:.0%})" + (f"; base_lr is {base:g}" if base is not None else ""),
                   "the inner learning rate is ~0" if near_zero else
                   "gradients do not reach the inner weights or the inner learning rate is ~0",
                   f"raise {keys['base_lr']}" + (f" from {base:g}" if base is not None else "")
                   + _to_value(value, bound)
                   + ("" if value or near_zero else "; check the inner gradient is computed (not detached)"),
                   config_key=keys["base_lr"], value=value,
                   confidence=HIGH if rec is not None or near_zero else MEDIUM,
                   confidence_why=why if rec is not None else
                   ("Figure 5 flat and the configured base_lr is tiny" if near_zero else
                    "Figure 5 flat; no step-size probe to say whether the lr or the gradient is at fault"),
                   evidence=_evidence(m, ["figure5_improvement", "inner_step_size"], layers), layers=layers)


def failing_layers(m: Metrics, check: str) -> set[str]:
    return {str(v.get("layer")) for v in failing(m, check) if v.get("layer")}


@rule("context_not_used", 18, "TTT cannot use the context: architecture or feature mismatch",
      "figure5 per layer (benefit_first_quarter / benefit_last_quarter / benefit_growth: mean log(l0/lprev); frac_l0_gt_lprev); "
      "verdicts figure5_adaptation, figure5_ordering",
      "in a layer failing figure5_adaptation or figure5_ordering: what the carried state buys, mean log(l0/lprev), does not grow "
      "from the first to the last quarter (<= adaptation_min_benefit_growth) or is <= 0 in the last quarter, or l0 > lprev holds "
      "at fewer than ordering_min_fraction of positions",
      reads=("figure5_adaptation", "figure5_ordering"))
def rule_context_not_used(m: Metrics) -> Finding | None:
    min_frac = _th(m, "ordering_min_fraction", 0.9)

    def benefit(s: dict, quarter: str) -> float | None:
        return finite_or_none(s.get(f"benefit_{quarter}_quarter"))

    declining = _f5_layers(m, lambda s: finite_or_none(s.get("benefit_growth")) is not None
                           and finite_or_none(s["benefit_growth"]) <= _th(m, "adaptation_min_benefit_growth", 0.0))
    no_help_late = _f5_layers(m, lambda s: benefit(s, "last") is not None and benefit(s, "last") <= 0)
    no_ctx = _f5_layers(m, lambda s: finite_or_none(s.get("frac_l0_gt_lprev")) is not None and finite_or_none(s["frac_l0_gt_lprev"]) < min_frac)
    flagged = failing_layers(m, "figure5_adaptation") | failing_layers(m, "figure5_ordering")
    layers = sorted((set(declining) | set(no_help_late) | set(no_ctx)) & flagged if flagged else set(), key=_layer_key)
    if not layers:
        return None
    f5 = _figure5(m)
    parts = []
    for l in layers:
        s = f5[l]
        text = []
        if l in declining or l in no_help_late:
            first, last = benefit(s, "first"), benefit(s, "last")
            ratio = (f"lprev/l0 {fmt(math.exp(-min(max(first, -700.0), 700.0)))} -> "
                     f"{fmt(math.exp(-min(max(last, -700.0), 700.0)))} (first -> last quarter"
                     if first is not None and last is not None else "lprev/l0 (first -> last quarter")
            text.append(ratio + (", the carried state helps less later)" if l in declining else ")")
                        + (", W_(t-1) no better than W_0 at the end" if l in no_help_late else ""))
        if l in no_ctx:
            text.append(f"l0 > lprev at only {finite_or_none(s['frac_l0_gt_lprev']):.0%} of positions")
        parts.append(f"{l}: " + ", ".join(text))
    keys = _keys(m)
    return Finding("TTT cannot use the context", "; ".join(parts),
                   "the inner model does not get better later in the context: the features it learns from (keys, target) "
                   "do not carry what the next tokens need, an architecture or feature mismatch",
                   f"check the inner model's inputs and target (what the TTT layer reconstructs) and {keys['mini_batch']}; "
                   "compare with a healthy configuration",
                   config_key=keys["mini_batch"],
                   confidence=MEDIUM, confidence_why="Figure-5 trend measured; the architectural cause is inferred, not measured",
                   evidence=_evidence(m, ["figure5_adaptation", "figure5_ordering"], layers), layers=layers)


@rule("inner_step_size_off", 19, "the inner step size is off the minimum along its own direction",
      "metrics.inner_step_size per layer (best_multiplier, base_lr, recommended_base_lr); verdict inner_step_size",
      "inner_step_size fails and no Figure-5 rule above explains it", reads=("inner_step_size",))
def rule_inner_step_size_off(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "inner_step_size") if not _cannot_measure(v)]
    if not bad:
        return None
    probe = _step_probe(m)
    layers = [str(v.get("layer")) for v in bad if v.get("layer")]
    parts = []
    for v in bad:
        p = probe.get(str(v.get("layer")), _details(v))
        parts.append(f"{v.get('layer') or 'model'}: best multiplier {fmt(p.get('best_multiplier'))} of base_lr "
                     f"{fmt(p.get('base_lr'))}")
    keys = _keys(m)
    rec, why, bound = _recommended_lr(m, layers, "any")
    return Finding("Inner step size off its optimum", "; ".join(parts),
                   "the loss along the applied inner step is lowest at another multiple of the step",
                   f"set {keys['base_lr']}" + (_to_value(rec, bound) if rec is not None else " to base_lr x best multiplier"),
                   config_key=keys["base_lr"], value=rec, confidence=MEDIUM,
                   confidence_why=why or "measured by the step-size probe; Figure 5 itself is within bounds",
                   evidence=_evidence(m, ["inner_step_size"], layers), layers=layers)
