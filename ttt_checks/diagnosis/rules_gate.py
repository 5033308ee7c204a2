"""Rules about the gate tanh(alpha): collapsed from its init, or never trained."""

from __future__ import annotations

from ttt_checks.diagnosis.finding import HIGH, LOW, MEDIUM, Finding, Metrics, rule
from ttt_checks.diagnosis.readers import (
    _dead,
    _details,
    _evidence,
    _f5_layers,
    _gate_verdicts,
    _keys,
    _recommended_lr,
    _to_value,
    _sweep_scenario,
    failing,
)
from ttt_checks.verdict import finite_or_none, fmt, name_list


@rule("gate_collapsed", 15, "the gate fell from its initial value: the outer loop switched TTT off",
      "verdict gate_stats (mean |tanh|, fraction_of_init, fraction_sign_flipped); figure5; ttt_helps; sweep",
      "gate_stats fails and the gate is not exactly at its init",
      overrides=("sweep_scenario_b", "ttt_does_nothing"),
      reads=("gate_stats", "talk_learned"))
def rule_gate_collapsed(m: Metrics) -> Finding | None:
    bad = [v for v in _gate_verdicts(m) if not _details(v).get("untrained")]
    if not bad:
        return None
    layers = [str(v.get("layer")) for v in bad if v.get("layer")]
    zeroed_gates = [z for z in _dead(m)[2] if "alpha" in z.rsplit(".", 1)[-1]]
    if zeroed_gates and all(finite_or_none(_details(v).get("mean_tanh", v.get("measured"))) == 0.0 for v in bad):
        # Every channel exactly 0.0 while the init was not: set, not fallen (no optimiser lands every channel on 0.0).
        return Finding("Gate zeroed: every alpha is exactly 0",
                       f"{name_list(zeroed_gates, 4)}: every element exactly 0 (mean |tanh(alpha)| 0), initialised at "
                       + ", ".join(sorted({fmt(_details(v).get('alpha_init')) for v in bad})),
                       "the gate was set to 0 after training (an edit that switches TTT off) or zero-initialised and held out "
                       "of the optimiser; the outer loop did not make this fall",
                       f"restore {name_list(zeroed_gates, 2)} from the training checkpoint, or initialise the gate non-zero and "
                       "put it in the optimiser",
                       confidence=HIGH, confidence_why="every element is exactly 0.0, which no optimiser step lands on",
                       evidence=_evidence(m, ["gate_stats", "dead_parameters"]), layers=layers)
    if all(finite_or_none(_details(v).get("alpha_init")) == 0.0 for v in bad):
        keys = _keys(m)
        shown = "; ".join(f"{v.get('layer')}: mean |tanh(alpha)| {fmt(_details(v).get('mean_tanh', v.get('measured')))}" for v in bad)
        return Finding("Gate never opened from its zero init",
                       f"{shown}, initialised at alpha 0 (TTT started switched off)",
                       "the outer loop did not open the gate: the TTT output was not useful enough to let through, or the "
                       "gate's learning rate is too small for the length of the run",
                       f"train longer or with a larger alpha learning rate, or start {keys['gate_init']} above 0 (0.1 is common)",
                       config_key=keys["gate_init"], confidence=MEDIUM,
                       confidence_why="the gate is measured against its stated zero init; why it stayed shut is not",
                       evidence=_evidence(m, ["gate_stats", "ttt_helps"]), layers=layers)
    parts, known_init, flipped = [], 0, False
    for v in bad:
        d = _details(v)
        frac, init = finite_or_none(d.get("fraction_of_init")), finite_or_none(d.get("alpha_init", d.get("initial_alpha")))
        signflip = (finite_or_none(d.get("fraction_sign_flipped")) or 0.0) > 0.5 or bool(d.get("sign_flipped"))
        flipped |= signflip
        text = f"{v.get('layer')}: mean |tanh(alpha)| {fmt(d.get('mean_tanh', v.get('measured')))}"
        if frac is not None:
            known_init += 1
            text += f" = {frac:.0%} of its init" + (f" tanh({init:g})" if init is not None else "")
        if signflip:
            text += ", sign flipped (driven through zero)"
        parts.append(text)
    # Why did the outer loop turn TTT off? The Figure-5 and outer-loss evidence says.
    reasons = []
    over = _f5_layers(m, lambda s: (finite_or_none(s.get("mean_lafter")) or 0) > (finite_or_none(s.get("mean_lprev")) or 0) > 0)
    if over:
        reasons.append(f"the inner step makes its own loss worse in {', '.join(over)} (lafter > lprev: inner lr too high)")
    hurts = [v for v in failing(m, "ttt_helps") if _details(v).get("verdict") == "hurts"]
    if hurts:
        reasons.append("TTT hurts the outer loss at the learned gate")
    sweep_b = _sweep_scenario(m) == "B"
    if sweep_b:
        reasons.append("the sweep shows scenario B (gate 0 and the top gate talk): the TTT features are useful, the gate ignores them")
    keys = _keys(m)
    rec, _, bound = _recommended_lr(m, over, "down") if over else (None, "", "")
    fix = "use an earlier checkpoint, from before the gates fell (`ttt-checks trend` names it); regularise the gate (a floor or a "\
          "penalty on alpha falling, or a smaller alpha learning rate)"
    if over:
        fix += f"; and fix what made TTT harmful: lower {keys['base_lr']}" + _to_value(rec, bound)
    confidence = HIGH if known_init == len(bad) and (reasons or flipped) else MEDIUM if known_init == len(bad) or flipped else LOW
    why = ("fall measured against the initial alpha" if known_init == len(bad) else
           "the initial alpha is unknown: judged by the absolute floor only") + (
        f"; cause supported by: {'; '.join(reasons)}" if reasons else "; no measurement says why the outer loop turned it off")
    return Finding("Gating collapsed (gates fell from their initial value)", "; ".join(parts),
                   "the outer loop switched TTT off" + (f" because {reasons[0]}" if reasons else
                                                        " (TTT output not useful enough to keep, or a penalty on the gate)"),
                   fix, config_key=keys["base_lr"] if over else keys["gate_init"], value=rec,
                   confidence=confidence, confidence_why=why,
                   evidence=_evidence(m, ["gate_stats", "ttt_helps", "figure5_ordering", "talk_learned"], over), layers=layers)


@rule("gate_never_moved", 20, "the gate was never trained (exactly at its initial value)",
      "verdict gate_stats (details.untrained)", "gate_stats fails with the gate exactly at its init",
      reads=("gate_stats",))
def rule_gate_never_moved(m: Metrics) -> Finding | None:
    bad = [v for v in _gate_verdicts(m) if _details(v).get("untrained")]
    if not bad:
        return None
    layers = [str(v.get("layer")) for v in bad if v.get("layer")]
    init = finite_or_none(_details(bad[0]).get("alpha_init"))
    keys = _keys(m)
    return Finding("Gate never trained (still at its init)",
                   f"{', '.join(layers) or 'the gates'}: alpha is exactly its initial value"
                   + (f" {init:g}" if init is not None else "") + " in every channel",
                   "the gate alpha is not in the optimiser (or its learning rate is 0), or the outer gradient never reached it",
                   f"add the gate alpha to the optimiser with a non-zero lr; {keys['gate_init']} only sets where it starts",
                   config_key=keys["gate_init"], confidence=HIGH,
                   confidence_why="every channel equals the configured init up to storage rounding",
                   evidence=_evidence(m, ["gate_stats"]), layers=layers)
