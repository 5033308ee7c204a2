"""Rules about the checkpoint as saved: non-finite or missing tensors, a contradicting config, a state
not carried across calls, read-ahead, and TTT tensors that never trained."""

from __future__ import annotations

import math
from typing import Mapping

from ttt_checks.diagnosis.finding import FIGURE5_RULES, HIGH, MEDIUM, SWEEP_RULES, Finding, Metrics, rule
from ttt_checks.diagnosis.readers import (_cannot_measure, _dead, _details, _evidence, _keys, _layer_key, _step_probe, _th, failing,
                                         verdicts_of)
from ttt_checks.verdict import finite_or_none, fmt, name_list


@rule("checkpoint_not_loaded", 0, "the checkpoint does not load: the loader refused its files, so nothing was measured",
      "verdict checkpoint_load (details.stage == load, details.error_type, details.load_error: the loader's message)",
      "checkpoint_load fails because the loader raised (not because the run was interrupted)",
      reads=("checkpoint_load",))
def rule_checkpoint_not_loaded(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "checkpoint_load") if _details(v).get("stage") == "load"]
    if not bad:
        return None
    d = _details(bad[0])
    reason = str(d.get("load_error") or bad[0].get("explanation", ""))
    return Finding("Checkpoint does not load", f"{d.get('error_type', 'error')}: {reason}",
                   f"the checkpoint does not load: {reason}",
                   "fix what the loader names (the file, key or setting in its message), then rerun; no check could measure "
                   "anything until the checkpoint loads",
                   confidence=HIGH, confidence_why="the loader raised on these files; no measurement is involved",
                   evidence=_evidence(m, ["checkpoint_load"]))


@rule("nonfinite_weights", 1, "non-finite (NaN/Inf) weights in the checkpoint",
      "verdict checkpoint_finite (details.nonfinite: tensor names); figure5_finite per layer",
      "checkpoint_finite fails",
      overrides=("inner_loss_nonfinite", *FIGURE5_RULES[1:], "ttt_hurts", "ttt_does_nothing", "state_not_carried",
                 "noncausal_read_ahead", *SWEEP_RULES, "gate_collapsed", "unexplained_failure"),
      reads=("checkpoint_finite", "figure5_finite", "figure5_bounded", "figure5_ordering", "figure5_improvement",
             "figure5_adaptation", "ttt_helps", "state_persistence", "streaming_consistency", "talk_base", "talk_learned",
             "talk_collapse", "model_specific", "inner_step_size"))
def rule_nonfinite_weights(m: Metrics) -> Finding | None:
    bad = failing(m, "checkpoint_finite")
    bad = [v for v in bad if not _cannot_measure(v)]
    if not bad:
        return None
    tensors = [str(t) for v in bad for t in _details(v).get("nonfinite") or []]
    tensors.sort(key=_layer_key)
    f5_layers = sorted({str(v.get("layer")) for v in failing(m, "figure5_finite") if v.get("layer")}, key=_layer_key)
    where = f"first in {tensors[0]}" if tensors else "tensor names not recorded"
    shown = name_list(tensors, 6)
    symptom = f"{len(tensors) or fmt(bad[0].get('measured'))} checkpoint tensor(s) hold NaN/Inf ({where}" + (f": {shown}" if shown else "") + ")"
    if f5_layers:
        symptom += f"; the inner-loop losses are non-finite from layer {f5_layers[0]} on ({', '.join(f5_layers)})"
    keys = _keys(m)
    in_base = [str(t) for v in bad for t in _details(v).get("nonfinite_base") or []]
    in_ttt = [str(t) for v in bad for t in _details(v).get("nonfinite_ttt") or []]
    if in_base and not in_ttt:
        return Finding("Non-finite weights in the base model", symptom + "; every TTT tensor is finite",
                       "the base model's weights are broken, not the TTT fine-tune: the TTT recipe trains only the TTT "
                       "tensors, so a frozen base cannot diverge in it; the base file was damaged, replaced or saved from a "
                       "diverged run (if the base was trained too, its own training diverged)",
                       f"restore the base weights the checkpoint was built on ({keys['base_weights']}) and rerun; "
                       "nothing about the TTT recipe needs to change",
                       config_key=keys["base_weights"], confidence=HIGH,
                       confidence_why="NaN/Inf counted in the saved tensors, all of them base tensors (names against "
                                      "the TTT keys the config implies)",
                       evidence=_evidence(m, ["checkpoint_finite"]), layers=f5_layers)
    return Finding("Non-finite weights", symptom,
                   "the training diverged before this checkpoint was saved (typically an inner lr too high, an exploding "
                   "outer gradient, or a bf16 overflow); every later measurement of this checkpoint is meaningless",
                   f"use the last checkpoint with finite weights (see `ttt-checks trend`); then lower {keys['base_lr']} "
                   "and clip the outer gradient before resuming",
                   config_key=keys["base_lr"],
                   confidence=HIGH, confidence_why="NaN/Inf counted directly in the saved tensors",
                   evidence=_evidence(m, ["checkpoint_finite", "figure5_finite"]), layers=f5_layers)


@rule("config_inconsistent", 3, "the checkpoint's config contradicts itself or its training record",
      "verdict config_consistency (details.contradictions)", "config_consistency fails",
      reads=("config_consistency",))
def rule_config_inconsistent(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "config_consistency") if not _cannot_measure(v)]
    if not bad:
        return None
    d = _details(bad[0])
    names = [str(x) for x in d.get("contradictions") or []]
    rows = [r for r in d.get("compared") or [] if isinstance(r, Mapping) and not r.get("agrees", True)]
    parts = [f"{r.get('name')}: {r.get('loaded_from')} {r.get('loaded')!r} vs {r.get('trained_from')} {r.get('trained')!r}" for r in rows]
    symptom = "; ".join(parts) or str(bad[0].get("explanation", "config contradictions"))
    first = rows[0] if rows else {}
    return Finding("Config contradicts its training record", symptom,
                   "a config file was edited after training or copied from another run; every other check measured the "
                   "model at the value the loader uses",
                   "restore the config files saved with the weights" + (f" ({', '.join(names)})" if names else ""),
                   config_key=str(first.get("name")) if first else (names[0] if names else None),
                   value=first.get("trained") if first else None,
                   confidence=HIGH, confidence_why="two saved statements of the same setting disagree",
                   evidence=_evidence(m, ["config_consistency"]))


@rule("missing_keys", 4, "TTT tensors missing from (or unexpected in) the checkpoint: a save/load naming bug",
      "verdict checkpoint_keys (details.missing, details.unexpected)", "checkpoint_keys fails",
      overrides=(*FIGURE5_RULES, "ttt_hurts", "ttt_does_nothing", "dead_code_path", "ttt_untrained", "inner_state_untrained",
                 "dead_parameters_partial"),
      reads=("checkpoint_keys", "figure5_adaptation", "figure5_ordering", "figure5_improvement", "dead_parameters"))
def rule_missing_keys(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "checkpoint_keys") if not _cannot_measure(v)]
    if not bad:
        return None
    d = _details(bad[0])
    missing, unexpected = list(d.get("missing") or []), list(d.get("unexpected") or [])
    parts = []
    if missing:
        parts.append(f"{len(missing)} TTT tensor(s) missing ({', '.join(map(str, missing[:4]))}{' ...' if len(missing) > 4 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(map(str, unexpected[:4]))}{' ...' if len(unexpected) > 4 else ''})")
    return Finding("TTT tensors missing from the checkpoint", "; ".join(parts) or str(bad[0].get("explanation")),
                   "the saver or the parameter filter does not match these names (e.g. weights./biases. not matched), so "
                   "they were never trained or never saved; a non-strict load leaves them at their init",
                   "fix the name filter of the trainable / saved TTT parameters and save again; the Figure-5 and outer-loss "
                   "results of this checkpoint describe an untrained inner model",
                   confidence=HIGH, confidence_why="key names compared with what the config implies",
                   evidence=_evidence(m, ["checkpoint_keys"]))


@rule("state_not_carried", 5, "the TTT state is not carried across streaming calls (a code bug, not training)",
      "verdict state_persistence (measured: share of streamed positions where lprev departs from l0)",
      "state_persistence fails with a measured share", reads=("state_persistence",))
def rule_state_not_carried(m: Metrics) -> Finding | None:
    # Only a reset state is a code bug; a carried state whose inner updates are ~0 (cause
    # "updates_zero" / "loss_zero") is the inner-lr finding's to name. Older runs have no cause.
    bad = [v for v in failing(m, "state_persistence") if finite_or_none(v.get("measured")) is not None
           and _details(v).get("cause", "reset") == "reset"]
    if not bad:
        return None
    layers = [str(v.get("layer")) for v in bad if v.get("layer")]
    worst = min(finite_or_none(v["measured"]) for v in bad)
    keys = _keys(m)
    value: bool | None = True if str(m.get("adapter")) == "moshi" else False if str(m.get("adapter")) == "reference" else None
    return Finding("TTT state not carried across calls",
                   f"in a stream fed one token per call, lprev departs from l0 at only {worst:.0%} of positions after the first "
                   f"mini-batch (threshold {fmt(bad[0].get('threshold'))}) in {', '.join(layers) or 'the TTT layers'}: l0 == lprev",
                   "a code bug, not a training problem: the inner weights are reset (or never written back) at every "
                   "streaming call, so at inference TTT never learns from the context",
                   f"set {keys['persistent']} = {value}" if value is not None else
                   "write the updated inner weights back to the streaming state after each call",
                   config_key=keys["persistent"], value=value,
                   confidence=HIGH, confidence_why="measured directly on a streamed pass (l0 and lprev coincide)",
                   evidence=_evidence(m, ["state_persistence"], layers), layers=layers)


@rule("noncausal_read_ahead", 6, "the TTT layer reads future tokens of its mini-batch (non-causal), which inference cannot",
      "verdict streaming_consistency (outer loss one token per call vs teacher-forced)",
      "streaming_consistency fails with a measured gap",
      overrides=("generation_collapse", "ttt_hurts", "ttt_does_nothing", "sweep_scenario_a", "sweep_scenario_b"),
      reads=("streaming_consistency", "talk_collapse", "talk_learned"))
def rule_noncausal_read_ahead(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "streaming_consistency") if finite_or_none(v.get("measured")) is not None]
    if not bad:
        return None
    d = _details(bad[0])
    gap = finite_or_none(bad[0]["measured"])
    keys = _keys(m)
    extra = ""
    if failing(m, "talk_collapse") or failing(m, "talk_learned"):
        extra = "; generation at the learned gate also degrades, as expected when the model relies on tokens it cannot see"
    helps = verdicts_of(m, "ttt_helps")
    if helps and all(v.get("ok") for v in helps):
        extra += "; ttt_helps passes only because the teacher-forced pass leaks the future (it is fooled)"
    return Finding("Non-causal read-ahead (future tokens leak into training)",
                   f"outer loss fed one token per call {fmt(d.get('loss_streamed'))} vs teacher-forced "
                   f"{fmt(d.get('loss_teacher_forced'))} ({gap:+.2%}, threshold {fmt(bad[0].get('threshold'))}){extra}",
                   "the TTT update inside a mini-batch uses tokens after the current one; training rewards it, inference "
                   "(one token at a time) cannot provide it",
                   f"make the mini-batch update causal ({keys['causal']}) and retrain",
                   config_key=keys["causal"], value=True if str(m.get("adapter")) == "reference" else None,
                   confidence=HIGH, confidence_why="the same positions scored two ways; only causality makes them differ",
                   evidence=_evidence(m, ["streaming_consistency", "talk_collapse"]))


@rule("ttt_untrained", 7, "the TTT layers were never trained (every TTT tensor, or all but one that blocks the gradient, still at its "
      "initial value; or saved from a fresh initialisation with another seed)",
      "verdict dead_parameters (details.unchanged + unused == compared, or compared - 1; details.constant_init, "
      "constant_init_unchanged, fresh_draw_like: the init signature)",
      "dead_parameters fails and at most one compared TTT tensor moved from its init, or every deterministically initialised "
      "TTT tensor (at least two) is exactly at its init while every one that moved has the spread of a fresh draw of its init",
      overrides=("dead_code_path", "inner_state_untrained", "dead_parameters_partial", "gate_never_moved", "ttt_hurts", "ttt_does_nothing",
                 "context_not_used", "inner_lr_too_high", "inner_lr_too_low", "inner_step_size_off"),
      reads=("dead_parameters", "ttt_helps", "gate_stats", "figure5_adaptation", "figure5_ordering", "figure5_improvement"))
def rule_ttt_untrained(m: Metrics) -> Finding | None:
    unchanged, unused, zeroed, compared, v = _dead(m)
    if v is None:
        return None
    frac = finite_or_none(v.get("measured"))
    # A zeroed tensor moved from its init (it counts in the measured fraction, not among the unchanged).
    all_dead = ((compared is not None and compared > 0 and len(unchanged) + len(unused) >= compared)
                or (frac is not None and frac >= 1.0 and not zeroed))
    # One tensor moved and nothing else: no gradient reached the rest, so that tensor (typically a zeroed
    # output projection or gate held out of the optimiser) blocks every path; the branch is as untrained.
    all_but_one = (not all_dead and compared is not None and compared >= 3
                   and len(unchanged) + len(unused) == compared - 1)
    d = _details(v)
    constant = [str(x) for x in d.get("constant_init") or []]
    constant_kept = set(map(str, d.get("constant_init_unchanged") or []))
    fresh = set(map(str, d.get("fresh_draw_like") or []))
    moved_random = [str(n) for n in (d.get("std_ratio_to_init") or {})]
    fresh_init = (not all_dead and not all_but_one and len(constant) >= 2 and set(constant) <= constant_kept
                  and bool(moved_random) and set(moved_random) <= fresh and not zeroed)
    if not (all_dead or all_but_one or fresh_init):
        return None
    helps = verdicts_of(m, "ttt_helps")
    extra = ""
    if helps and finite_or_none(_details(helps[0]).get("relative_decrease")) is not None:
        extra = f"; outer loss {-finite_or_none(_details(helps[0])['relative_decrease']):+.2%} vs gate 0"
    # gate_stats' measured value is a fraction of the init when the init is known; the gate itself is mean_tanh.
    gate = [finite_or_none(_details(g).get("mean_tanh", g.get("measured"))) for g in verdicts_of(m, "gate_stats")]
    gate = [g for g in gate if g is not None]
    if gate:
        extra += f"; the gate lets {max(gate):.1%} of the random TTT output through"
    if fresh_init:
        ratios = [finite_or_none(r) for r in (d.get("std_ratio_to_init") or {}).values()]
        spread = ", ".join(f"{r:.3f}" for r in sorted(r for r in ratios if r is not None)[:1] + sorted(r for r in ratios if r is not None)[-1:])
        return Finding("TTT never trained (saved from a fresh initialisation)",
                       f"all {len(constant)} deterministically initialised TTT tensors are exactly at their init "
                       f"({name_list(constant, 4)}), and the {len(moved_random)} random ones that differ from the stated init "
                       f"have its spread (std / init std {spread}) as a new draw would{extra}",
                       "the TTT weights were never trained: training moves every bias and norm weight from its "
                       "initial value, and these are all still there; the random tensors differ only because they were "
                       "drawn with another seed (a fresh model saved instead of the trained one, or the wrong file)",
                       "save the trained TTT weights (check the checkpoint is written after the optimiser steps, from the "
                       "trained model), or point the gate at a trained checkpoint",
                       confidence=HIGH, confidence_why="deterministic inits compared bit for bit; random ones by their spread "
                                                       "against the sampling noise of a fresh draw",
                       evidence=_evidence(m, ["dead_parameters", "ttt_helps"]))
    if all_but_one and zeroed:
        return Finding("TTT never trained (no gradient reached it)",
                       f"{compared - 1} of {compared} compared TTT tensors are exactly at their initial values, every one "
                       f"but {zeroed[0]}, which is zeroed (every element 0){extra}",
                       f"no gradient reached the TTT branch: {zeroed[0]} sits on every path from the branch to the loss and "
                       "is all zeros, so it passes nothing forward and nothing back (zero-initialised and left out of the "
                       "optimiser, or zeroed after training)",
                       f"initialise {zeroed[0]} non-zero or put it in the optimiser, and train again",
                       confidence=HIGH, confidence_why="tensors compared bit for bit with the initialisation",
                       evidence=_evidence(m, ["dead_parameters", "ttt_helps"]))
    if all_but_one:
        return Finding("TTT never trained (no gradient reached it)",
                       f"{compared - 1} of {compared} compared TTT tensors are exactly at their initial values, every one "
                       f"but the one that changed{extra}",
                       "no gradient reached the TTT branch: the one tensor that changed sits on every path from the "
                       "branch to the loss and was held at a value that blocks it (a zero-initialised output "
                       "projection or gate left out of the optimiser, or edited after training)",
                       "find the tensor that is not in the list of unchanged ones in dead_parameters, initialise it "
                       "non-zero or put it in the optimiser, and train again",
                       confidence=HIGH, confidence_why="tensors compared bit for bit with the initialisation",
                       evidence=_evidence(m, ["dead_parameters", "ttt_helps"]))
    return Finding("TTT never trained",
                   f"all {compared if compared is not None else ''} compared TTT tensors are exactly at their initial values{extra}",
                   "the checkpoint holds freshly inserted TTT layers (training never ran on them, the optimiser did not "
                   "include them, or the wrong file was saved)",
                   "train the TTT parameters (check they are in the optimiser and saved), or point the gate at a trained checkpoint",
                   confidence=HIGH, confidence_why="tensors compared bit for bit with the initialisation",
                   evidence=_evidence(m, ["dead_parameters", "ttt_helps"]))


@rule("inner_state_untrained", 8, "the inner model's initial weights W_0 were never trained (left out of the optimiser) while the rest of the TTT layer was",
      "verdict dead_parameters (details.inner_initial_state, details.inner_initial_state_unchanged: weights.i / biases.i, W1 / b1 ...)",
      "dead_parameters fails with every inner-model initial weight (biases included) still at init while at least two other TTT tensors moved",
      overrides=("dead_parameters_partial", "context_not_used", "inner_step_size_off"),
      reads=("dead_parameters", "figure5_adaptation"))
def rule_inner_state_untrained(m: Metrics) -> Finding | None:
    unchanged, unused, zeroed, compared, v = _dead(m)
    if v is None:
        return None
    frozen = [str(x) for x in _details(v).get("inner_initial_state_unchanged") or []]
    inner = [str(x) for x in _details(v).get("inner_initial_state") or []]
    moved = None if compared is None else compared - len(unchanged) - len(unused) - len(zeroed)
    # All of W_0, biases included: a bias starts at 0, where any update shows, so a tiny outer lr whose
    # steps round away in bf16 leaves weights at init but not biases (that stays dead_parameters_partial).
    if not frozen or sorted(frozen) != sorted(inner) or moved is None or moved < 2:
        return None
    return Finding("The inner model's initial weights W_0 were never trained",
                   f"{len(frozen)} inner-model tensor(s) still exactly at init: {name_list(frozen, 5)}, while {moved} other TTT "
                   f"tensors of {compared} moved",
                   "they were left out of the optimiser (a trainable-parameter filter that matches the projections but not "
                   "'weights.' / 'biases.'), so every sequence starts its inner loop from the random W_0 of the init and the outer "
                   "loop cannot shape where test-time training starts",
                   "put the inner model's weights.* and biases.* in the optimiser (check the trainable-parameter count) and train again",
                   confidence=HIGH, confidence_why="every W_0 tensor is bit for bit its initialisation, biases starting at 0 "
                   "included, while other TTT tensors moved: the optimiser never updated these",
                   evidence=_evidence(m, ["dead_parameters"]))


@rule("dead_code_path", 9, "a code path is never applied: TTT parameters the forward never uses",
      "verdict dead_parameters (details.unused)", "dead_parameters fails with tensors never used by the forward",
      reads=("dead_parameters",))
def rule_dead_code_path(m: Metrics) -> Finding | None:
    unchanged, unused, zeroed, compared, v = _dead(m)
    if not unused:
        return None
    shown = name_list(unused, 5)
    return Finding("Dead parameters: a code path is never applied",
                   f"{len(unused)} TTT tensor(s) the forward never uses are still at init: {shown}",
                   "the forward skips the module these parameters belong to (e.g. an output norm or a second gate), so they "
                   "are never trained; the model does not run the architecture the config describes",
                   "apply the skipped module in the forward, or remove the parameters from the model and the config",
                   confidence=HIGH, confidence_why="the adapter traced which tensors the forward reads",
                   evidence=_evidence(m, ["dead_parameters"]))


@rule("dead_parameters_partial", 27, "some trainable TTT tensors never moved from their init (not in the optimiser, or too small an update), or are zeroed",
      "verdict dead_parameters (details.unchanged, details.zeroed)", "dead_parameters fails with used tensors unchanged or zeroed",
      reads=("dead_parameters",))
def rule_dead_parameters_partial(m: Metrics) -> Finding | None:
    unchanged, unused, zeroed, compared, v = _dead(m)
    if zeroed:
        shown = name_list(zeroed, 5)
        also = f"; {len(unchanged)} more still exactly at init: {', '.join(unchanged[:5])}" if unchanged else ""
        return Finding("TTT tensors zeroed: they pass no signal",
                       f"{len(zeroed)} of {compared} used TTT tensors are exactly 0 in every element though initialised "
                       f"non-zero: {shown}{also}",
                       "the tensor was set to 0 after training (an edit of the checkpoint) or zero-initialised and left out "
                       "of the optimiser; the path through it carries nothing",
                       "restore the tensor from the training checkpoint, or initialise it non-zero and put it in the optimiser",
                       confidence=HIGH, confidence_why="every element is exactly 0.0, which no optimiser step lands on",
                       evidence=_evidence(m, ["dead_parameters"]))
    if not unchanged:
        return None
    shown = name_list(unchanged, 5)
    return Finding("Some TTT tensors never moved", f"{len(unchanged)} of {compared} used TTT tensors "
                   f"are still exactly at init: {shown}",
                   "they are not in the optimiser, or their updates round away (a tiny outer lr in bf16)",
                   f"check the optimiser's parameter groups and {_keys(m)['outer_lr']}",
                   config_key=_keys(m)["outer_lr"], confidence=MEDIUM,
                   confidence_why="tensors compared bit for bit with the initialisation; which cause applies is not measured",
                   evidence=_evidence(m, ["dead_parameters"]))


_TTT_OUTCOME_CHECKS = ("figure5_bounded", "figure5_ordering", "figure5_improvement", "figure5_adaptation", "inner_step_size",
                       "gate_stats", "ttt_helps", "state_persistence", "streaming_consistency", "talk_base", "talk_learned",
                       "talk_collapse")


@rule("base_model", 2, "the base model is not the one its reference loss was measured on (damaged, blocks loaded in another "
      "order, another base file): every TTT verdict is judged against a broken base",
      "verdict base_model (loss_gate0 vs reference.loss, relative_excess; reference.source)",
      "base_model fails: the loss at gate 0 exceeds the base's reference loss on the same input by more than base_max_loss_excess",
      overrides=(*FIGURE5_RULES, "inner_loss_off_scale", "objective_mismatch", "gate_collapsed", "ttt_hurts", "ttt_does_nothing",
                 *SWEEP_RULES, "ttt_tensor_off_scale"),
      reads=("base_model", *_TTT_OUTCOME_CHECKS))
def rule_base_model(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "base_model") if not _cannot_measure(v)]
    if not bad:
        return None
    d = _details(bad[0])
    reference = d.get("reference") if isinstance(d.get("reference"), Mapping) else {}
    loss, ref, excess = finite_or_none(d.get("loss_gate0")), finite_or_none(reference.get("loss")), finite_or_none(d.get("relative_excess"))
    symptom = (f"loss at gate 0 (the base alone) {fmt(loss)} vs {fmt(ref)} measured on the same input when the base was known to be "
               f"good ({reference.get('source', 'reference')})" + (f": {excess:+.1%}" if excess is not None else ""))
    others = [c for c in _TTT_OUTCOME_CHECKS if failing(m, c)]
    if others:
        symptom += f"; also failing, judged against this base: {', '.join(others)}"
    keys = _keys(m)
    return Finding("The base model is broken", symptom,
                   "the base weights are not the ones the TTT layers were trained on: damaged, loaded in another block order, "
                   "or another (half-trained, re-trained) base file; at gate 0 nothing of TTT is applied, so the difference is "
                   "the base's alone, and the TTT verdicts that compare with gate 0 are judged against a broken model",
                   f"restore the base weights the checkpoint was built on ({keys['base_weights']}) and check how they are "
                   "loaded (key names, block order); judge the TTT findings again after that",
                   config_key=keys["base_weights"], confidence=HIGH,
                   confidence_why="the same tokens through the same base give the reference loss to float precision (2e-8 "
                                  "measured); this base does not",
                   evidence=_evidence(m, ["base_model", "ttt_helps"]))


@rule("ttt_tensor_off_scale", 10, "TTT tensors far off the scale a healthy fine-tune gives them: one group of them scaled after "
      "training (a conversion, save/load or unit bug, an edit), or most of them grown by the outer updates (an outer learning "
      "rate far too high); inner weights W_0 off scale freeze the inner loop (the inner LayerNorm makes the loss blind to their "
      "scale), an output projection off scale swamps the residual stream",
      "verdict dead_parameters (details.std_ratio_to_init, inner_initial_state); metrics.branch_output (strength); "
      "metrics.inner_step_size (best_gain_rel); threshold tensor_max_std_ratio",
      "a TTT tensor's std is more than tensor_max_std_ratio times (or less than 1/that) its initial std while a check of the inner "
      "loop, the outer loss or the sweep fails; 'grown by training' when at least half of the randomly initialised TTT tensors "
      "(and at least 3) are off scale",
      overrides=(*FIGURE5_RULES, "inner_loss_off_scale", "objective_mismatch", "gate_collapsed", "ttt_hurts", "ttt_does_nothing",
                 *SWEEP_RULES, "dead_parameters_partial"),
      reads=("dead_parameters", *_TTT_OUTCOME_CHECKS))
def rule_ttt_tensor_off_scale(m: Metrics) -> Finding | None:
    limit = _th(m, "tensor_max_std_ratio", 10.0)
    dead = verdicts_of(m, "dead_parameters")
    d = _details(dead[0]) if dead else {}
    every = {str(k): r for k, r in ((k, finite_or_none(v)) for k, v in (d.get("std_ratio_to_init") or {}).items())
             if r is not None and r > 0}
    ratios = {k: r for k, r in every.items() if r > limit or r < 1.0 / limit}
    others = [c for c in _TTT_OUTCOME_CHECKS if failing(m, c)]
    if not ratios or not others:
        return None
    inner_state = set(map(str, d.get("inner_initial_state") or []))
    names = sorted(ratios, key=lambda k: -abs(math.log(ratios[k])))
    grown = len(ratios) >= 3 and 2 * len(ratios) >= len(every)
    parts = [f"{k}: std {ratios[k]:.3g}x its initial std" for k in names[:6]] + ([f"{len(names) - 6} more"] if len(names) > 6 else [])
    consequences = []
    if inner_state & set(names):
        probe = {layer: p for layer, p in _step_probe(m).items() if finite_or_none(p.get("best_gain_rel")) is not None}
        shown = "; ".join(f"{layer}: the best step on the step-size grid lowers the inner loss by {finite_or_none(p['best_gain_rel']):.1e}"
                          for layer, p in probe.items())
        consequences.append("the inner weights W_0 are off scale: the inner LayerNorm normalises the prediction, so the loss is "
                            "blind to W's scale, the gradient shrinks as W grows and the step relative to W shrinks with its "
                            "square; no base_lr within reach moves the inner loop" + (f" ({shown})" if shown else ""))
    strength = {str(k): finite_or_none((v or {}).get("strength")) for k, v in (m.get("branch_output") or {}).items()
                if isinstance(v, Mapping)}
    strong = {k: s for k, s in strength.items() if s is not None and s > 1.0}
    if strong:
        consequences.append("the gated branch outweighs the residual stream it is added to ("
                            + ", ".join(f"{k}: {s:.3g}x its rms" for k, s in strong.items()) + "), swamping the base's features")
    elif set(names) - inner_state and strength:
        consequences.append("branch rms over residual rms: " + ", ".join(f"{k} {fmt(s)}" for k, s in strength.items()))
    then = ("; " + "; ".join(consequences)) if consequences else ""
    symptom = (f"{'; '.join(parts)} ({len(ratios)} of {len(every)} moved TTT tensors beyond {limit:g}x; a healthy fine-tune moves "
               f"a std by at most a few x); failing: {', '.join(others)}")
    keys = _keys(m)
    if grown:
        return Finding("TTT weights blown up by the outer updates", symptom,
                       f"{len(ratios)} of the {len(every)} trained TTT tensors grew {min(ratios.values()):.3g}-{max(ratios.values()):.3g}x "
                       "beyond their initial scale, each by its own factor: the outer training did it (an outer learning rate far "
                       "too high, or no gradient clipping), not the inner step" + then,
                       f"lower the outer learning rate ({keys['outer_lr']}) or clip the outer gradient, and resume from the last "
                       "checkpoint before the weights grew (`ttt-checks trend` names it); base_lr is not the cause",
                       config_key=keys["outer_lr"], confidence=MEDIUM,
                       confidence_why="the tensors' stds against their initial stds are measured on the saved weights; that the "
                                      "outer lr grew them is inferred from most of them growing, each by its own factor",
                       evidence=_evidence(m, ["dead_parameters", *others[:2]]))
    return Finding("TTT tensor off scale", symptom,
                   f"{names[0]} is {ratios[names[0]]:.3g}x the scale it was initialised at while the other TTT tensors are where "
                   "training leaves them: it was scaled after training (a checkpoint conversion, a save/load or unit bug, an edit)"
                   + then,
                   f"restore {name_list(names, 3)} to the scale training left (compare with the training run's last good "
                   "checkpoint and find where it was scaled); do not tune base_lr, the gate or the outer lr for this",
                   config_key=names[0], confidence=HIGH,
                   confidence_why="the tensor's std against its initial std is measured on the saved weights; training moved "
                                  "every trained reference tensor by at most 2.3x",
                   evidence=_evidence(m, ["dead_parameters", *others[:2]]))
