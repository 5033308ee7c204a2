"""Rules about the outer loss: trained on another objective, TTT hurts the model, or does nothing for it."""

from __future__ import annotations

from typing import Any, Mapping

from ttt_checks.checks.thresholds import GATE_OPEN_MAX_RATIO
from ttt_checks.diagnosis.finding import HIGH, LOW, MEDIUM, Finding, Metrics, rule
from ttt_checks.diagnosis.readers import _cannot_measure, _details, _evidence, _keys, _th, failing, verdicts_of
from ttt_checks.verdict import finite_or_none, fmt


def _helps(m: Metrics) -> tuple[dict[str, Any] | None, str | None]:
    # "cannot measure" (e.g. an input too short to resolve the required benefit) is not_measured's.
    bad = [v for v in failing(m, "ttt_helps") if finite_or_none(v.get("measured")) is not None and not _cannot_measure(v)]
    if not bad:
        return None, None
    v = bad[0]
    kind = _details(v).get("verdict")
    if kind not in ("hurts", "does_nothing"):  # older runs: measured is the relative loss increase
        kind = "hurts"
    return v, str(kind)


def _outer_symptom(m: Metrics, v: Mapping[str, Any]) -> str:
    d = _details(v)
    a = finite_or_none(d.get("loss_learned", (m.get("outer_loss") or {}).get("learned")))
    b = finite_or_none(d.get("loss_gate0", (m.get("outer_loss") or {}).get("gate0")))
    if a is None or b is None:
        return f"ttt_helps measured {fmt(v.get('measured'))}"
    return f"outer loss {a:.4f} at the learned gate vs {b:.4f} at gate 0 ({(a - b) / abs(b):+.2%})" if b else f"outer loss {a} vs {b}"


@rule("ttt_hurts", 21, "TTT makes the outer loss worse than the model without it",
      "verdict ttt_helps (details.verdict == hurts; relative_decrease); outer_loss learned / gate0",
      "ttt_helps fails as 'hurts' (or fails with a loss increase, older runs)", reads=("ttt_helps",))
def rule_ttt_hurts(m: Metrics) -> Finding | None:
    v, kind = _helps(m)
    if kind != "hurts":
        return None
    keys = _keys(m)
    gates = [g for g in verdicts_of(m, "gate_stats") if finite_or_none(_details(g).get("mean_tanh")) is not None]
    flipped = [g for g in gates if (finite_or_none(_details(g).get("fraction_sign_flipped")) or 0.0) > 0.5]

    def gate_text(g: Mapping[str, Any]) -> str:
        d = _details(g)
        text = f"{g.get('layer')}: gate mean |tanh(alpha)| {fmt(d.get('mean_tanh'))}"
        if finite_or_none(d.get("fraction_of_init")) is not None and finite_or_none(d.get("alpha_init")) is not None:
            text += f" = {finite_or_none(d['fraction_of_init']):.0%} of its init tanh({finite_or_none(d['alpha_init']):g})"
        if g in flipped:
            text += f", sign flipped in {finite_or_none(d['fraction_sign_flipped']):.0%} of channels (signed mean {fmt(d.get('signed_mean_tanh'))})"
        return text

    symptom = _outer_symptom(m, v) + ("; " + "; ".join(gate_text(g) for g in gates) if gates else "")
    if flipped:
        return Finding("TTT hurts the outer loss: its gate has the opposite sign of its init", symptom,
                       "the branch is subtracted from the residual stream instead of added: the gate alpha was negated (an edit) "
                       "or driven through zero by the outer loop",
                       "check the sign of the gate alpha; restore it from the training checkpoint, or use an earlier checkpoint "
                       "from before it crossed zero (`ttt-checks trend`)",
                       confidence=MEDIUM, confidence_why="the loss and the gate's sign are measured; which of the two made it is not",
                       evidence=_evidence(m, ["ttt_helps", "gate_stats"]))
    split = _harm_split(v)
    if split is not None and split[0] <= -_th(m, "help_min_loss_decrease", 0.001) and split[0] <= split[1]:
        from_updates, static = split
        return Finding("TTT hurts the outer loss: its test-time updates make the predictions worse",
                       f"{symptom}; with the inner steps off (W_t = W_0) the branch changes the loss by {-static:+.2%}, the "
                       f"test-time updates by a further {-from_updates:+.2%}",
                       "what the inner loop writes or reads is wrong: the harm comes from the updates W_0 -> W_t, not from "
                       "the branch as a static layer or from the gate (which scales both), so the inner loop's keys, values, "
                       "queries or initial state do not fit the rest of the branch (tensors edited, converted or restored "
                       "from another run, or a divergence saved mid-training)",
                       "compare the TTT tensors with those of the training checkpoint (`ttt-checks gate --baseline` on a "
                       "known-good one, `ttt-checks trend` over the run) and restore them; do not tune the gate for it",
                       confidence=MEDIUM,
                       confidence_why="the loss with and without the inner steps is measured; which tensor broke is not",
                       evidence=_evidence(m, ["ttt_helps"]))
    opened = [g for g in gates if (finite_or_none(_details(g).get("fraction_of_init")) or 0.0)
              > _th(m, "gate_open_max_ratio", GATE_OPEN_MAX_RATIO)]
    static_text = (f"; with the inner steps off (W_t = W_0) the branch alone changes the loss by {-split[1]:+.2%} and the "
                   f"test-time updates by {-split[0]:+.2%}" if split is not None else "")
    cause = ("the TTT branch adds output that makes the model's predictions worse and the gate lets it through "
             + ("(the gate opened, or was set, far beyond its init: the branch passes at a strength the model was not trained with"
                if opened else "(undertrained TTT weights, a gate initialised too open, or a static path of the branch - "
                               "queries, initial state, output projection - edited or converted wrongly") + ")")
    fix = (f"restore the gate alpha from the training checkpoint or use an earlier checkpoint (`ttt-checks trend`); train with a "
           f"smaller alpha learning rate or {keys['gate_init']}" if opened else
           f"compare the TTT tensors with a known-good checkpoint's (`--baseline`); train the TTT weights longer or with a "
           f"smaller {keys['gate_init']}; use an earlier checkpoint where TTT helped")
    return Finding("TTT hurts the outer loss", symptom + static_text, cause, fix,
                   config_key=keys["gate_init"], confidence=MEDIUM,
                   confidence_why="the outer loss is measured; which of the causes applies is not",
                   evidence=_evidence(m, ["ttt_helps"]))


def _harm_split(v: Mapping[str, Any]) -> tuple[float, float] | None:
    """(relative decrease from the test-time updates, from the static branch) of a ttt_helps verdict that
    measured the loss with the inner steps off; None when it was not measured."""
    d = _details(v)
    from_updates = finite_or_none(d.get("relative_decrease_from_inner_steps"))
    static = finite_or_none(d.get("relative_decrease_static_branch"))
    return None if from_updates is None or static is None else (from_updates, static)


@rule("ttt_does_nothing", 22, "TTT does nothing: the outer loss is the same with and without it, or its output is a constant",
      "verdict ttt_helps (details.verdict == does_nothing; constant_output_layers); outer_loss",
      "ttt_helps fails as 'does nothing' or 'ignores its input'",
      reads=("ttt_helps",))
def rule_ttt_does_nothing(m: Metrics) -> Finding | None:
    v, kind = _helps(m)
    if kind != "does_nothing":
        return None
    constant = _details(v).get("constant_output_layers")
    if isinstance(constant, Mapping) and constant:
        spreads = ", ".join(f"{name} {fmt(value)}" for name, value in constant.items())
        return Finding("TTT ignores its input: its output is a constant",
                       f"{_outer_symptom(m, v)}; the branch output is the same at every position (spread std/rms {spreads})",
                       "the TTT branch adds the same vector at every position, so nothing the inner loop learns reaches the "
                       "model: its output projection is zeroed or frozen (only a bias left), or no gradient reaches it",
                       "check the TTT output projection (wo) in the checkpoint and in training (frozen, zero-initialised and "
                       "never trained, or cut off from the loss)",
                       confidence=HIGH, confidence_why="the output's spread over positions is measured; a constant has none",
                       evidence=_evidence(m, ["ttt_helps"]))
    return Finding("TTT does nothing", _outer_symptom(m, v),
                   "the TTT branch does not change the predictions: its output ignores the input, the gate is too small to "
                   "matter, or no benefit was learned",
                   "read the gate and Figure-5 findings; train longer or on data whose context matters",
                   confidence=LOW, confidence_why="the outer loss is measured; a cause is not",
                   evidence=_evidence(m, ["ttt_helps"]))


@rule("objective_mismatch", 14, "the weights were trained on another objective or other data than the one evaluated: the loss the "
      "checkpoint's own training record states is far below the one measured",
      "metrics.training_record (train_loss, source) vs outer_loss.learned; threshold record_max_loss_ratio; verdicts ttt_helps, "
      "gate_stats, talk_*",
      "a check of the outer loss, the gate or the sweep fails and the learned-gate outer loss exceeds the recorded train loss "
      "by more than record_max_loss_ratio",
      overrides=("gate_collapsed", "ttt_hurts", "ttt_does_nothing", "sweep_scenario_a", "sweep_scenario_b", "generation_collapse"),
      reads=("ttt_helps", "gate_stats", "talk_learned", "talk_collapse"))
def rule_objective_mismatch(m: Metrics) -> Finding | None:
    record = m.get("training_record") or {}
    recorded = finite_or_none(record.get("train_loss"))
    measured_loss = finite_or_none((m.get("outer_loss") or {}).get("learned"))
    if recorded is None or measured_loss is None or recorded <= 0:
        return None
    limit = _th(m, "record_max_loss_ratio", 3.0)
    ratio = measured_loss / recorded
    failing_checks = [c for c in ("ttt_helps", "gate_stats", "talk_learned", "talk_collapse") if failing(m, c)]
    if ratio <= limit or not failing_checks:
        return None
    gate0 = finite_or_none((m.get("outer_loss") or {}).get("gate0"))
    symptom = (f"teacher-forced outer loss {measured_loss:.4g} at the learned gate" + (f" ({gate0:.4g} at gate 0)" if gate0 else "")
               + f" vs {recorded:.4g} in the checkpoint's training record ({record.get('source', 'training record')}): "
               f"{ratio:.1f}x, above {limit:g}x; failing: {', '.join(failing_checks)}")
    return Finding("Trained on another objective or other data", symptom,
                   "the checkpoint learned what its training measured, and that is not what is evaluated here: a train loss "
                   "this far below the evaluated one means another objective (e.g. labels not shifted, predicting the "
                   "current token) or other data, so the gate and the outer loss are judged against a task the weights "
                   "never learned",
                   "check the training objective and data against the evaluation (label shift, input/target pairing, the "
                   "dataset and its preprocessing), then retrain; do not tune the gate or the learning rates first",
                   confidence=HIGH if ratio > 2 * limit else MEDIUM,
                   confidence_why="two losses of the same model on the same kind of tokens, one recorded by its training, "
                                  "one measured here",
                   evidence=_evidence(m, ["ttt_helps"]))
