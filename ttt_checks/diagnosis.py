"""From verdicts to a diagnosis: what broke, why, what to change, how sure we are.

A health run ends with up to twenty PASS/FAIL lines; a user needs the conclusion their own notes
reach by hand ("the gating collapsed because TTT hurt the outer loss; the inner lr is too high; use
an earlier checkpoint"). :func:`diagnose` turns one run's ``metrics.json`` into that conclusion: a
ranked list of :class:`Finding` objects, each with the symptom and its numbers, the likely cause,
what to change (a config key and, where a measurement supports one, a value), a confidence with
its reason, and the evidence files to open.

Design:

- Pure functions over the metrics dict (what ``HealthRun.metrics()`` writes, or a merged report):
  no model, no file read. Keys are read defensively: a measurement another part of the suite did
  not make (an older run, a ``-k`` selection) lowers a finding's confidence; it is never a finding.
- Rules key on verdict names and metric values, never on test names.
- Every rule of :data:`RULES` has a fixed precedence (1 = most fundamental). Findings are ranked by
  it. A rule that fires *overrides* the rules it lists: a contradicting or consequential finding is
  not printed next to it but recorded under ``suppressed`` with the reason (a checkpoint with NaN
  weights does not also get "Figure 5 is not ordered"). docs/diagnosis.md shows the same table and
  tests/test_diagnosis.py keeps the two equal.
- A failing verdict no rule accounts for still becomes a (low-confidence) ``unexplained_failure``
  finding, so the diagnosis never hides a red check.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ttt_checks.health import name_list

Metrics = Mapping[str, Any]

HIGH, MEDIUM, LOW = "high", "medium", "low"


@dataclass(frozen=True)
class Rule:
    """One diagnosis rule: what it reads, what it concludes, what it overrides when it fires."""

    id: str
    precedence: int
    cause: str  # the cause in a few words (also the value of a zoo entry's ``expected_diagnosis``)
    evidence: str  # which measurements it reads (metrics.json keys and verdict names)
    fires_when: str  # the condition, in words (docs/diagnosis.md)
    overrides: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()  # verdict names whose failures this rule accounts for, and whose artifacts it cites


@dataclass
class Finding:
    """One conclusion of the diagnosis."""

    rule: str
    title: str
    symptom: str  # what was measured, with the numbers
    cause: str  # the likely cause
    fix: str  # what to change
    config_key: str | None = None
    value: float | str | bool | None = None  # a recommended value, where a measurement supports one
    confidence: str = MEDIUM
    confidence_why: str = ""
    evidence: list[str] = field(default_factory=list)  # files to open (plots, wavs, transcripts)
    layers: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # failing checks this finding accounts for
    rank: int = 0
    precedence: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for the gate's summary and trend tables."""
        change = f" -> {self.fix}" if self.fix else ""
        return f"{self.title} [{self.confidence}]: {self.symptom}{change}"


# ---------------------------------------------------------------------------------------------
# The rules (precedence order). docs/diagnosis.md mirrors this table; a test keeps them equal.
# ---------------------------------------------------------------------------------------------

_FIGURE5_RULES = ("inner_loss_nonfinite", "inner_loss_exploding", "inner_lr_too_high", "inner_lr_too_low",
                  "context_not_used", "inner_step_size_off")
_SWEEP_RULES = ("sweep_scenario_a", "sweep_scenario_b", "sweep_scenario_c", "generation_collapse")

RULES: tuple[Rule, ...] = (
    Rule("nonfinite_weights", 1, "non-finite (NaN/Inf) weights in the checkpoint",
         "verdict checkpoint_finite (details.nonfinite: tensor names); figure5_finite per layer",
         "checkpoint_finite fails",
         overrides=("inner_loss_nonfinite", *_FIGURE5_RULES[1:], "ttt_hurts", "ttt_does_nothing", "state_not_carried",
                    "noncausal_read_ahead", *_SWEEP_RULES, "gate_collapsed", "unexplained_failure"),
         reads=("checkpoint_finite", "figure5_finite", "figure5_bounded", "figure5_ordering", "figure5_improvement",
                "figure5_adaptation", "ttt_helps", "state_persistence", "streaming_consistency", "talk_base", "talk_learned",
                "talk_collapse", "model_specific", "inner_step_size")),
    Rule("config_inconsistent", 2, "the checkpoint's config contradicts itself or its training record",
         "verdict config_consistency (details.contradictions)", "config_consistency fails",
         reads=("config_consistency",)),
    Rule("missing_keys", 3, "TTT tensors missing from (or unexpected in) the checkpoint: a save/load naming bug",
         "verdict checkpoint_keys (details.missing, details.unexpected)", "checkpoint_keys fails",
         overrides=(*_FIGURE5_RULES, "ttt_hurts", "ttt_does_nothing", "dead_code_path", "ttt_untrained", "inner_state_untrained",
                    "dead_parameters_partial"),
         reads=("checkpoint_keys", "figure5_adaptation", "figure5_ordering", "figure5_improvement", "dead_parameters")),
    Rule("state_not_carried", 4, "the TTT state is not carried across streaming calls (a code bug, not training)",
         "verdict state_persistence (measured: share of streamed positions where lprev departs from l0)",
         "state_persistence fails with a measured share", reads=("state_persistence",)),
    Rule("noncausal_read_ahead", 5, "the TTT layer reads future tokens of its mini-batch (non-causal), which inference cannot",
         "verdict streaming_consistency (outer loss one token per call vs teacher-forced)",
         "streaming_consistency fails with a measured gap",
         overrides=("generation_collapse", "ttt_hurts", "ttt_does_nothing", "sweep_scenario_a", "sweep_scenario_b"),
         reads=("streaming_consistency", "talk_collapse", "talk_learned")),
    Rule("ttt_untrained", 6, "the TTT layers were never trained (every TTT tensor, or all but one that blocks the gradient, still at its initial value)",
         "verdict dead_parameters (details.unchanged + unused == compared, or compared - 1)",
         "dead_parameters fails and at most one compared TTT tensor moved from its init",
         overrides=("dead_code_path", "inner_state_untrained", "dead_parameters_partial", "gate_never_moved", "ttt_hurts", "ttt_does_nothing",
                    "context_not_used", "inner_lr_too_high", "inner_lr_too_low", "inner_step_size_off"),
         reads=("dead_parameters", "ttt_helps", "gate_stats", "figure5_adaptation", "figure5_ordering", "figure5_improvement")),
    Rule("inner_state_untrained", 7, "the inner model's initial weights W_0 were never trained (left out of the optimiser) while the rest of the TTT layer was",
         "verdict dead_parameters (details.inner_initial_state, details.inner_initial_state_unchanged: weights.i / biases.i, W1 / b1 ...)",
         "dead_parameters fails with every inner-model initial weight (biases included) still at init while at least two other TTT tensors moved",
         overrides=("dead_parameters_partial", "context_not_used", "inner_step_size_off"),
         reads=("dead_parameters", "figure5_adaptation")),
    Rule("dead_code_path", 8, "a code path is never applied: TTT parameters the forward never uses",
         "verdict dead_parameters (details.unused)", "dead_parameters fails with tensors never used by the forward",
         reads=("dead_parameters",)),
    Rule("inner_loss_nonfinite", 9, "the inner loop diverges numerically (weights finite, inner losses NaN/Inf)",
         "figure5 per layer (nonfinite); verdict figure5_finite", "figure5_finite fails while checkpoint_finite passes",
         overrides=_FIGURE5_RULES[1:], reads=("figure5_finite", "figure5_bounded", "figure5_ordering", "figure5_improvement",
                                              "figure5_adaptation")),
    Rule("inner_loss_exploding", 10, "numerical instability of the inner loop: the inner lr is too high",
         "figure5 per layer (max_smoothed_loss vs loss_ceiling); verdict figure5_bounded; inner_step_size",
         "a smoothed Figure-5 loss exceeds loss_ceiling (default 10)",
         overrides=("inner_lr_too_low", "context_not_used", "inner_lr_too_high"),
         reads=("figure5_bounded", "figure5_ordering", "figure5_improvement", "figure5_adaptation", "inner_step_size")),
    Rule("inner_loss_off_scale", 11, "the inner loss at W_0 is outside the range a working layer shows: W_0 or the projections are off scale (above), or there is nothing to reconstruct (near 0)",
         "figure5 per layer (mean_l0 vs loss_mean_min / loss_mean_max); verdict figure5_bounded",
         "figure5_bounded fails on the mean l0 while no smoothed loss exceeds loss_ceiling",
         reads=("figure5_bounded",)),
    Rule("gate_collapsed", 12, "the gate fell from its initial value: the outer loop switched TTT off",
         "verdict gate_stats (mean |tanh|, fraction_of_init, fraction_sign_flipped); figure5; ttt_helps; sweep",
         "gate_stats fails and the gate is not exactly at its init",
         overrides=("sweep_scenario_b", "ttt_does_nothing"),
         reads=("gate_stats", "talk_learned")),
    Rule("inner_lr_too_high", 13, "degenerate inner learning: one inner step makes the loss worse (inner lr far too high)",
         "figure5 per layer (mean lafter vs lprev, improvement_abs, frac_lprev_gt_lafter); inner_step_size (best_multiplier <= 0.5)",
         "lafter > lprev on average in a layer, or the step-size probe's best multiplier is <= 0.5",
         overrides=("inner_lr_too_low", "context_not_used", "inner_step_size_off", "ttt_hurts", "ttt_does_nothing"),
         reads=("figure5_ordering", "figure5_improvement", "figure5_adaptation", "inner_step_size", "ttt_helps")),
    Rule("inner_lr_too_low", 14, "no inner learning: gradients do not flow or the inner lr is ~0",
         "figure5 per layer (improvement_abs < improvement_min_abs, curves overlapping); inner_step_size (best_multiplier >= 4)",
         "one inner step improves the loss by less than improvement_min_abs (default 0.001) without making it worse",
         overrides=("context_not_used", "inner_step_size_off", "ttt_does_nothing"),
         reads=("figure5_improvement", "figure5_ordering", "figure5_adaptation", "inner_step_size", "ttt_helps")),
    Rule("context_not_used", 15, "TTT cannot use the context: architecture or feature mismatch",
         "figure5 per layer (lprev/lafter first vs last quarter, gap growth, frac_l0_gt_lprev)",
         "lprev or lafter rise over the context, the gap l0 - lafter does not grow, or l0 > lprev fails",
         reads=("figure5_adaptation", "figure5_ordering")),
    Rule("inner_step_size_off", 16, "the inner step size is off the minimum along its own direction",
         "metrics.inner_step_size per layer (best_multiplier, base_lr, recommended_base_lr); verdict inner_step_size",
         "inner_step_size fails and no Figure-5 rule above explains it", reads=("inner_step_size",)),
    Rule("gate_never_moved", 17, "the gate was never trained (exactly at its initial value)",
         "verdict gate_stats (details.untrained)", "gate_stats fails with the gate exactly at its init",
         reads=("gate_stats",)),
    Rule("ttt_hurts", 18, "TTT makes the outer loss worse than the model without it",
         "verdict ttt_helps (details.verdict == hurts; relative_decrease); outer_loss learned / gate0",
         "ttt_helps fails as 'hurts' (or fails with a loss increase, older runs)", reads=("ttt_helps",)),
    Rule("ttt_does_nothing", 19, "TTT does nothing: the outer loss is the same with and without it, or its output is a constant",
         "verdict ttt_helps (details.verdict == does_nothing; constant_output_layers); outer_loss",
         "ttt_helps fails as 'does nothing' or 'ignores its input'",
         reads=("ttt_helps",)),
    Rule("sweep_scenario_c", 20, "scenario C: every gate is quiet, so the problem is elsewhere (base model, input, sampling)",
         "sweep rows (words per gate, collapse); verdict talk_base", "no gate of the sweep talks, gate 0 included",
         overrides=("sweep_scenario_a", "sweep_scenario_b", "generation_collapse"),
         reads=("talk_base", "talk_learned", "talk_collapse")),
    Rule("sweep_scenario_a", 21, "scenario A: the TTT weights learned quiet behaviour (data / objective)",
         "sweep rows: gate 0 talks, the learned gate and the highest gate are quiet", "gate 0 talks, learned and top gate quiet",
         reads=("talk_learned", "talk_collapse")),
    Rule("sweep_scenario_b", 22, "scenario B: TTT learned useful features but the gate ignores them (gating collapsed)",
         "sweep rows: gate 0 and the highest gate talk, the learned gate is quiet", "gate 0 and top gate talk, learned quiet and below the top gate",
         reads=("talk_learned",)),
    Rule("generation_collapse", 23, "generation collapses (silence, repetition) at a gate the model runs at",
         "verdict talk_collapse per gate (details.kinds)", "talk_collapse fails", reads=("talk_collapse",)),
    Rule("dead_parameters_partial", 24, "some trainable TTT tensors never moved from their init (not in the optimiser, or too small an update), or are zeroed",
         "verdict dead_parameters (details.unchanged, details.zeroed)", "dead_parameters fails with used tensors unchanged or zeroed",
         reads=("dead_parameters",)),
    Rule("unexplained_failure", 98, "a check failed that no rule above explains",
         "any failing verdict with a measurement", "a failing verdict is not accounted for by a finding above"),
    Rule("not_measured", 99, "a check could not measure (no data), so the diagnosis cannot use it",
         "failing verdicts whose explanation starts with 'cannot measure'", "such a verdict is not accounted for above"),
)

RULES_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}

# Config keys per adapter family (metrics["adapter"]); a family not listed gets the generic names.
CONFIG_KEYS: dict[str, dict[str, str]] = {
    "moshi": {"base_lr": "ttt.base_lr", "gate_init": "ttt.initial_gating_alpha", "persistent": "ttt.persistent_states",
              "causal": "the TTT layer's mini-batch mask (make it causal: a lower-triangular eta)",
              "mini_batch": "ttt.mini_batch_size", "outer_lr": "optim.lr"},
    "reference": {"base_lr": "decoder.ttt.base_lr", "gate_init": "decoder.alpha_init", "persistent": "decoder.ttt_reset_each_call",
                  "causal": "decoder.ttt.causal", "mini_batch": "decoder.ttt.mini_batch_size", "outer_lr": "recipe.lr"},
}
GENERIC_KEYS = {"base_lr": "ttt.base_lr", "gate_init": "the gate's initial alpha", "persistent": "the TTT state carry flag",
                "causal": "the TTT mini-batch mask (causal)", "mini_batch": "ttt.mini_batch_size", "outer_lr": "the outer learning rate"}


# ---------------------------------------------------------------------------------------------
# Defensive readers
# ---------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A finite float, or None (strings like 'nan', None, bools, missing)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: Any) -> str:
    number = _num(value)
    return f"{number:.4g}" if number is not None else str(value)


def verdicts_of(metrics: Metrics, check: str) -> list[dict[str, Any]]:
    vs = (metrics.get("verdicts") or {}).get(check) or []
    return [v for v in vs if isinstance(v, Mapping)]


def failing(metrics: Metrics, check: str) -> list[dict[str, Any]]:
    return [v for v in verdicts_of(metrics, check) if not v.get("ok", False)]


def measured(metrics: Metrics, check: str) -> bool:
    """The check ran (has at least one verdict) in this run."""
    return bool(verdicts_of(metrics, check))


def _cannot_measure(v: Mapping[str, Any]) -> bool:
    return str(v.get("explanation", "")).startswith("cannot measure")


def _details(v: Mapping[str, Any]) -> Mapping[str, Any]:
    d = v.get("details")
    return d if isinstance(d, Mapping) else {}


def _keys(metrics: Metrics) -> dict[str, str]:
    return CONFIG_KEYS.get(str(metrics.get("adapter")), GENERIC_KEYS)


def _layer_info(metrics: Metrics) -> dict[str, Mapping[str, Any]]:
    return {str(l.get("name")): l for l in metrics.get("layers") or [] if isinstance(l, Mapping)}


def _figure5(metrics: Metrics) -> dict[str, Mapping[str, Any]]:
    f5 = metrics.get("figure5") or {}
    return {str(k): v for k, v in f5.items() if isinstance(v, Mapping)}


def _step_probe(metrics: Metrics) -> dict[str, Mapping[str, Any]]:
    """metrics["inner_step_size"][layer] (best_multiplier, base_lr, recommended_base_lr), or, when
    only the verdicts carry it, their details."""
    probe = metrics.get("inner_step_size")
    out: dict[str, Mapping[str, Any]] = {}
    if isinstance(probe, Mapping):
        out = {str(k): v for k, v in probe.items() if isinstance(v, Mapping)}
    for v in verdicts_of(metrics, "inner_step_size"):
        if v.get("layer") and str(v["layer"]) not in out and _details(v):
            out[str(v["layer"])] = _details(v)
    return out


def _th(metrics: Metrics, name: str, default: float) -> float:
    value = _num((metrics.get("thresholds") or {}).get(name))
    return default if value is None else value


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def _evidence(metrics: Metrics, checks: Iterable[str], layers: Sequence[str] = ()) -> list[str]:
    """Artifacts of the checks (metrics["artifacts"]); Figure-5 files only of the named layers."""
    artifacts = metrics.get("artifacts") or {}
    slugs = [_slug(l) for l in layers]
    out: list[str] = []
    for check in checks:
        for path in artifacts.get(check) or []:
            name = str(path).rsplit("/", 1)[-1]
            if slugs and name.startswith("figure5_") and not any(s in name for s in slugs):
                continue
            if path not in out:
                out.append(str(path))
    return out


def _sweep_rows(metrics: Metrics) -> list[Mapping[str, Any]]:
    return [r for r in metrics.get("sweep") or [] if isinstance(r, Mapping)]


def _recommended_lr(metrics: Metrics, layers: Sequence[str], direction: str) -> tuple[float | None, str]:
    """(value, why) for ttt base_lr: the step-size probe's recommendation when it measured one,
    else None (the caller says what to try and that it is not measured)."""
    probe = _step_probe(metrics)
    values = []
    for layer in layers or list(probe):
        rec = _num((probe.get(layer) or {}).get("recommended_base_lr"))
        if rec is not None:
            values.append((layer, rec, _num((probe.get(layer) or {}).get("best_multiplier"))))
    if not values:
        return None, ""
    layer, rec, mult = min(values, key=lambda x: x[1]) if direction == "down" else max(values, key=lambda x: x[1])
    shown = f" (best multiplier {mult:g} of the current step)" if mult is not None else ""
    return rec, f"the inner step-size probe measured the loss minimum along the step in {layer}{shown}"


def _base_lr(metrics: Metrics, layers: Sequence[str]) -> float | None:
    info = _layer_info(metrics)
    for layer in layers or list(info):
        value = _num((info.get(layer) or {}).get("base_lr"))
        if value is not None:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# Rule functions: metrics -> Finding | None
# ---------------------------------------------------------------------------------------------


def _layer_key(name: str) -> tuple[int, str]:
    numbers = re.findall(r"\d+", name)
    return (int(numbers[0]) if numbers else 1 << 30, name)


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
    symptom = f"{len(tensors) or _fmt(bad[0].get('measured'))} checkpoint tensor(s) hold NaN/Inf ({where}" + (f": {shown}" if shown else "") + ")"
    if f5_layers:
        symptom += f"; the inner-loop losses are non-finite from layer {f5_layers[0]} on ({', '.join(f5_layers)})"
    keys = _keys(m)
    return Finding("nonfinite_weights", "Non-finite weights", symptom,
                   "the training diverged before this checkpoint was saved (typically an inner lr too high, an exploding "
                   "outer gradient, or a bf16 overflow); every later measurement of this checkpoint is meaningless",
                   f"use the last checkpoint with finite weights (see `ttt-checks trend`); then lower {keys['base_lr']} "
                   "and clip the outer gradient before resuming",
                   config_key=keys["base_lr"],
                   confidence=HIGH, confidence_why="NaN/Inf counted directly in the saved tensors",
                   evidence=_evidence(m, ["checkpoint_finite", "figure5_finite"]), layers=f5_layers)


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
    return Finding("config_inconsistent", "Config contradicts its training record", symptom,
                   "a config file was edited after training or copied from another run; every other check measured the "
                   "model at the value the loader uses",
                   "restore the config files saved with the weights" + (f" ({', '.join(names)})" if names else ""),
                   config_key=str(first.get("name")) if first else (names[0] if names else None),
                   value=first.get("trained") if first else None,
                   confidence=HIGH, confidence_why="two saved statements of the same setting disagree",
                   evidence=_evidence(m, ["config_consistency"]))


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
    return Finding("missing_keys", "TTT tensors missing from the checkpoint", "; ".join(parts) or str(bad[0].get("explanation")),
                   "the saver or the parameter filter does not match these names (e.g. weights./biases. not matched), so "
                   "they were never trained or never saved; a non-strict load leaves them at their init",
                   "fix the name filter of the trainable / saved TTT parameters and save again; the Figure-5 and outer-loss "
                   "results of this checkpoint describe an untrained inner model",
                   confidence=HIGH, confidence_why="key names compared with what the config implies",
                   evidence=_evidence(m, ["checkpoint_keys"]))


def rule_state_not_carried(m: Metrics) -> Finding | None:
    # Only a reset state is a code bug; a carried state whose inner updates are ~0 (cause
    # "updates_zero" / "loss_zero") is the inner-lr finding's to name. Older runs have no cause.
    bad = [v for v in failing(m, "state_persistence") if _num(v.get("measured")) is not None
           and _details(v).get("cause", "reset") == "reset"]
    if not bad:
        return None
    layers = [str(v.get("layer")) for v in bad if v.get("layer")]
    worst = min(_num(v["measured"]) for v in bad)
    keys = _keys(m)
    value: bool | None = True if str(m.get("adapter")) == "moshi" else False if str(m.get("adapter")) == "reference" else None
    return Finding("state_not_carried", "TTT state not carried across calls",
                   f"in a stream fed one token per call, lprev departs from l0 at only {worst:.0%} of positions after the first "
                   f"mini-batch (threshold {_fmt(bad[0].get('threshold'))}) in {', '.join(layers) or 'the TTT layers'}: l0 == lprev",
                   "a code bug, not a training problem: the inner weights are reset (or never written back) at every "
                   "streaming call, so at inference TTT never learns from the context",
                   f"set {keys['persistent']} = {value}" if value is not None else
                   "write the updated inner weights back to the streaming state after each call",
                   config_key=keys["persistent"], value=value,
                   confidence=HIGH, confidence_why="measured directly on a streamed pass (l0 and lprev coincide)",
                   evidence=_evidence(m, ["state_persistence"], layers), layers=layers)


def rule_noncausal_read_ahead(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "streaming_consistency") if _num(v.get("measured")) is not None]
    if not bad:
        return None
    d = _details(bad[0])
    gap = _num(bad[0]["measured"])
    keys = _keys(m)
    extra = ""
    if failing(m, "talk_collapse") or failing(m, "talk_learned"):
        extra = "; generation at the learned gate also degrades, as expected when the model relies on tokens it cannot see"
    helps = verdicts_of(m, "ttt_helps")
    if helps and all(v.get("ok") for v in helps):
        extra += "; ttt_helps passes only because the teacher-forced pass leaks the future (it is fooled)"
    return Finding("noncausal_read_ahead", "Non-causal read-ahead (future tokens leak into training)",
                   f"outer loss fed one token per call {_fmt(d.get('loss_streamed'))} vs teacher-forced "
                   f"{_fmt(d.get('loss_teacher_forced'))} ({gap:+.2%}, threshold {_fmt(bad[0].get('threshold'))}){extra}",
                   "the TTT update inside a mini-batch uses tokens after the current one; training rewards it, inference "
                   "(one token at a time) cannot provide it",
                   f"make the mini-batch update causal ({keys['causal']}) and retrain",
                   config_key=keys["causal"], value=True if str(m.get("adapter")) == "reference" else None,
                   confidence=HIGH, confidence_why="the same positions scored two ways; only causality makes them differ",
                   evidence=_evidence(m, ["streaming_consistency", "talk_collapse"]))


def _dead(m: Metrics) -> tuple[list[str], list[str], list[str], int | None, Mapping[str, Any] | None]:
    """(unchanged, unused, zeroed, compared, verdict) of a failing dead_parameters verdict."""
    bad = [v for v in failing(m, "dead_parameters") if not _cannot_measure(v)]
    if not bad:
        return [], [], [], None, None
    d = _details(bad[0])
    compared = d.get("compared")
    return ([str(x) for x in d.get("unchanged") or []], [str(x) for x in d.get("unused") or []],
            [str(x) for x in d.get("zeroed") or []],
            int(compared) if isinstance(compared, (int, float)) and not isinstance(compared, bool) else None, bad[0])


def rule_ttt_untrained(m: Metrics) -> Finding | None:
    unchanged, unused, zeroed, compared, v = _dead(m)
    if v is None:
        return None
    frac = _num(v.get("measured"))
    # A zeroed tensor moved from its init (it counts in the measured fraction, not among the unchanged).
    all_dead = ((compared is not None and compared > 0 and len(unchanged) + len(unused) >= compared)
                or (frac is not None and frac >= 1.0 and not zeroed))
    # One tensor moved and nothing else: no gradient reached the rest, so that tensor (typically a zeroed
    # output projection or gate held out of the optimiser) blocks every path; the branch is as untrained.
    all_but_one = (not all_dead and compared is not None and compared >= 3
                   and len(unchanged) + len(unused) == compared - 1)
    if not (all_dead or all_but_one):
        return None
    helps = verdicts_of(m, "ttt_helps")
    extra = ""
    if helps and _num(_details(helps[0]).get("relative_decrease")) is not None:
        extra = f"; outer loss {-_num(_details(helps[0])['relative_decrease']):+.2%} vs gate 0"
    # gate_stats' measured value is a fraction of the init when the init is known; the gate itself is mean_tanh.
    gate = [_num(_details(g).get("mean_tanh", g.get("measured"))) for g in verdicts_of(m, "gate_stats")]
    gate = [g for g in gate if g is not None]
    if gate:
        extra += f"; the gate lets {max(gate):.1%} of the random TTT output through"
    if all_but_one and zeroed:
        return Finding("ttt_untrained", "TTT never trained (no gradient reached it)",
                       f"{compared - 1} of {compared} compared TTT tensors are exactly at their initial values, every one "
                       f"but {zeroed[0]}, which is zeroed (every element 0){extra}",
                       f"no gradient reached the TTT branch: {zeroed[0]} sits on every path from the branch to the loss and "
                       "is all zeros, so it passes nothing forward and nothing back (zero-initialised and left out of the "
                       "optimiser, or zeroed after training)",
                       f"initialise {zeroed[0]} non-zero or put it in the optimiser, and train again",
                       confidence=HIGH, confidence_why="tensors compared bit for bit with the initialisation",
                       evidence=_evidence(m, ["dead_parameters", "ttt_helps"]))
    if all_but_one:
        return Finding("ttt_untrained", "TTT never trained (no gradient reached it)",
                       f"{compared - 1} of {compared} compared TTT tensors are exactly at their initial values, every one "
                       f"but the one that changed{extra}",
                       "no gradient reached the TTT branch: the one tensor that changed sits on every path from the "
                       "branch to the loss and was held at a value that blocks it (a zero-initialised output "
                       "projection or gate left out of the optimiser, or edited after training)",
                       "find the tensor that is not in the list of unchanged ones in dead_parameters, initialise it "
                       "non-zero or put it in the optimiser, and train again",
                       confidence=HIGH, confidence_why="tensors compared bit for bit with the initialisation",
                       evidence=_evidence(m, ["dead_parameters", "ttt_helps"]))
    return Finding("ttt_untrained", "TTT never trained",
                   f"all {compared if compared is not None else ''} compared TTT tensors are exactly at their initial values{extra}",
                   "the checkpoint holds freshly inserted TTT layers (training never ran on them, the optimiser did not "
                   "include them, or the wrong file was saved)",
                   "train the TTT parameters (check they are in the optimiser and saved), or point the gate at a trained checkpoint",
                   confidence=HIGH, confidence_why="tensors compared bit for bit with the initialisation",
                   evidence=_evidence(m, ["dead_parameters", "ttt_helps"]))


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
    return Finding("inner_state_untrained", "The inner model's initial weights W_0 were never trained",
                   f"{len(frozen)} inner-model tensor(s) still exactly at init: {name_list(frozen, 5)}, while {moved} other TTT "
                   f"tensors of {compared} moved",
                   "they were left out of the optimiser (a trainable-parameter filter that matches the projections but not "
                   "'weights.' / 'biases.'), so every sequence starts its inner loop from the random W_0 of the init and the outer "
                   "loop cannot shape where test-time training starts",
                   "put the inner model's weights.* and biases.* in the optimiser (check the trainable-parameter count) and train again",
                   confidence=HIGH, confidence_why="every W_0 tensor is bit for bit its initialisation, biases starting at 0 "
                   "included, while other TTT tensors moved: the optimiser never updated these",
                   evidence=_evidence(m, ["dead_parameters"]))


def rule_dead_code_path(m: Metrics) -> Finding | None:
    unchanged, unused, zeroed, compared, v = _dead(m)
    if not unused:
        return None
    shown = name_list(unused, 5)
    return Finding("dead_code_path", "Dead parameters: a code path is never applied",
                   f"{len(unused)} TTT tensor(s) the forward never uses are still at init: {shown}",
                   "the forward skips the module these parameters belong to (e.g. an output norm or a second gate), so they "
                   "are never trained; the model does not run the architecture the config describes",
                   "apply the skipped module in the forward, or remove the parameters from the model and the config",
                   confidence=HIGH, confidence_why="the adapter traced which tensors the forward reads",
                   evidence=_evidence(m, ["dead_parameters"]))


def _f5_layers(m: Metrics, predicate: Callable[[Mapping[str, Any]], bool]) -> list[str]:
    return sorted((name for name, s in _figure5(m).items() if predicate(s)), key=_layer_key)


def rule_inner_loss_nonfinite(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "figure5_finite") if not _cannot_measure(v)]
    if not bad:
        return None
    layers = sorted({str(v.get("layer")) for v in bad if v.get("layer")}, key=_layer_key)
    counts = {name: s.get("nonfinite") for name, s in _figure5(m).items() if name in layers}
    keys = _keys(m)
    rec, why = _recommended_lr(m, layers, "down")
    return Finding("inner_loss_nonfinite", "Inner loop diverges (NaN/Inf inner losses)",
                   f"non-finite Figure-5 losses from layer {layers[0] if layers else '?'} on "
                   f"({', '.join(f'{k}: {_fmt(c)} values' for k, c in counts.items()) or ', '.join(layers)}) while the weights are finite",
                   "the inner update overflows: the inner lr is far too high or the inner inputs are not normalised",
                   f"lower {keys['base_lr']}" + (f" to {rec:.3g}" if rec is not None else " (a decade at a time)"),
                   config_key=keys["base_lr"], value=rec,
                   confidence=HIGH if rec is not None else MEDIUM,
                   confidence_why=(why if rec is not None else "NaN counted in the inner losses; no step-size probe to size the fix"),
                   evidence=_evidence(m, ["figure5_finite"], layers), layers=layers)


def rule_inner_loss_exploding(m: Metrics) -> Finding | None:
    ceiling = _th(m, "loss_ceiling", 10.0)
    layers = _f5_layers(m, lambda s: (_num(s.get("max_smoothed_loss")) or 0.0) > ceiling)
    if not layers:
        return None
    f5 = _figure5(m)
    keys = _keys(m)
    rec, why = _recommended_lr(m, layers, "down")
    base = _base_lr(m, layers)
    value = rec if rec is not None else (base / 10 if base else None)
    return Finding("inner_loss_exploding", "Huge inner losses (numerical instability)",
                   ", ".join(f"{l}: smoothed loss reaches {_fmt(f5[l].get('max_smoothed_loss'))}" for l in layers)
                   + f" > ceiling {ceiling:g}",
                   "the inner step is numerically unstable: the inner learning rate is too high",
                   f"lower {keys['base_lr']}" + (f" from {base:g}" if base else "") + (f" to {value:.3g}" if value else ""),
                   config_key=keys["base_lr"], value=value,
                   confidence=HIGH if rec is not None else MEDIUM,
                   confidence_why=why if rec is not None else
                   "Figure-5 losses measured; the value is a decade lower, a starting point (no step-size probe in this run)",
                   evidence=_evidence(m, ["figure5_bounded", "inner_step_size"], layers), layers=layers)


def rule_inner_loss_off_scale(m: Metrics) -> Finding | None:
    low, high = _th(m, "loss_mean_min", 0.001), _th(m, "loss_mean_max", 5.0)
    ceiling = _th(m, "loss_ceiling", 10.0)
    flagged = failing_layers(m, "figure5_bounded")
    f5 = _figure5(m)

    def mean_l0(layer: str) -> float | None:
        return _num(f5[layer].get("mean_l0"))

    layers = [l for l in sorted(f5, key=_layer_key) if l in flagged and mean_l0(l) is not None
              and not (low <= mean_l0(l) <= high) and (_num(f5[l].get("max_smoothed_loss")) or 0.0) <= ceiling]
    if not layers:
        return None
    above = [l for l in layers if mean_l0(l) > high]
    symptom = ", ".join(f"{l}: mean l0 {_fmt(mean_l0(l))}" for l in layers) + f" outside [{low:g}, {high:g}]"
    if above:
        return Finding("inner_loss_off_scale", "Inner loss off scale: W_0 or the TTT projections are far from where training keeps them",
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
    return Finding("inner_loss_off_scale", "Inner loss ~0: nothing to reconstruct",
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


def _gate_verdicts(m: Metrics) -> list[dict[str, Any]]:
    return [v for v in failing(m, "gate_stats") if not _cannot_measure(v)]


def rule_gate_collapsed(m: Metrics) -> Finding | None:
    bad = [v for v in _gate_verdicts(m) if not _details(v).get("untrained")]
    if not bad:
        return None
    layers = [str(v.get("layer")) for v in bad if v.get("layer")]
    zeroed_gates = [z for z in _dead(m)[2] if "alpha" in z.rsplit(".", 1)[-1]]
    if zeroed_gates and all(_num(_details(v).get("mean_tanh", v.get("measured"))) == 0.0 for v in bad):
        # Every channel exactly 0.0 while the init was not: set, not fallen (no optimiser lands every channel on 0.0).
        return Finding("gate_collapsed", "Gate zeroed: every alpha is exactly 0",
                       f"{name_list(zeroed_gates, 4)}: every element exactly 0 (mean |tanh(alpha)| 0), initialised at "
                       + ", ".join(sorted({_fmt(_details(v).get('alpha_init')) for v in bad})),
                       "the gate was set to 0 after training (an edit that switches TTT off) or zero-initialised and held out "
                       "of the optimiser; the outer loop did not make this fall",
                       f"restore {name_list(zeroed_gates, 2)} from the training checkpoint, or initialise the gate non-zero and "
                       "put it in the optimiser",
                       confidence=HIGH, confidence_why="every element is exactly 0.0, which no optimiser step lands on",
                       evidence=_evidence(m, ["gate_stats", "dead_parameters"]), layers=layers)
    if all(_num(_details(v).get("alpha_init")) == 0.0 for v in bad):
        keys = _keys(m)
        shown = "; ".join(f"{v.get('layer')}: mean |tanh(alpha)| {_fmt(_details(v).get('mean_tanh', v.get('measured')))}" for v in bad)
        return Finding("gate_collapsed", "Gate never opened from its zero init",
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
        frac, init = _num(d.get("fraction_of_init")), _num(d.get("alpha_init", d.get("initial_alpha")))
        signflip = (_num(d.get("fraction_sign_flipped")) or 0.0) > 0.5 or bool(d.get("sign_flipped"))
        flipped |= signflip
        text = f"{v.get('layer')}: mean |tanh(alpha)| {_fmt(d.get('mean_tanh', v.get('measured')))}"
        if frac is not None:
            known_init += 1
            text += f" = {frac:.0%} of its init" + (f" tanh({init:g})" if init is not None else "")
        if signflip:
            text += ", sign flipped (driven through zero)"
        parts.append(text)
    # Why did the outer loop turn TTT off? The Figure-5 and outer-loss evidence says.
    reasons = []
    over = _f5_layers(m, lambda s: (_num(s.get("mean_lafter")) or 0) > (_num(s.get("mean_lprev")) or 0) > 0)
    if over:
        reasons.append(f"the inner step makes its own loss worse in {', '.join(over)} (lafter > lprev: inner lr too high)")
    hurts = [v for v in failing(m, "ttt_helps") if _details(v).get("verdict") == "hurts"]
    if hurts:
        reasons.append("TTT hurts the outer loss at the learned gate")
    sweep_b = _sweep_scenario(m) == "B"
    if sweep_b:
        reasons.append("the sweep shows scenario B (gate 0 and the top gate talk): the TTT features are useful, the gate ignores them")
    keys = _keys(m)
    rec, _ = _recommended_lr(m, over, "down") if over else (None, "")
    fix = "use an earlier checkpoint, from before the gates fell (`ttt-checks trend` names it); regularise the gate (a floor or a "\
          "penalty on alpha falling, or a smaller alpha learning rate)"
    if over:
        fix += f"; and fix what made TTT harmful: lower {keys['base_lr']}" + (f" to {rec:.3g}" if rec is not None else "")
    confidence = HIGH if known_init == len(bad) and (reasons or flipped) else MEDIUM if known_init == len(bad) or flipped else LOW
    why = ("fall measured against the initial alpha" if known_init == len(bad) else
           "the initial alpha is unknown: judged by the absolute floor only") + (
        f"; cause supported by: {'; '.join(reasons)}" if reasons else "; no measurement says why the outer loop turned it off")
    return Finding("gate_collapsed", "Gating collapsed (gates fell from their initial value)", "; ".join(parts),
                   "the outer loop switched TTT off" + (f" because {reasons[0]}" if reasons else
                                                        " (TTT output not useful enough to keep, or a penalty on the gate)"),
                   fix, config_key=keys["base_lr"] if over else keys["gate_init"], value=rec,
                   confidence=confidence, confidence_why=why,
                   evidence=_evidence(m, ["gate_stats", "ttt_helps", "figure5_ordering", "talk_learned"], over), layers=layers)


def rule_inner_lr_too_high(m: Metrics) -> Finding | None:
    f5 = _figure5(m)
    over = _f5_layers(m, lambda s: _num(s.get("mean_lafter")) is not None and _num(s.get("mean_lprev")) is not None
                      and (_num(s.get("mean_lafter")) > _num(s.get("mean_lprev")) or (_num(s.get("improvement_abs")) or 0) < 0))
    probe = _step_probe(m)
    probe_high = [l for l, p in probe.items() if (_num(p.get("best_multiplier")) or 1.0) <= 0.5]
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
            text += f" lafter {_fmt(s.get('mean_lafter'))} > lprev {_fmt(s.get('mean_lprev'))}"
            if _num(s.get("mean_l0")) is not None and _num(s.get("mean_lprev")) is not None and _num(s["mean_lprev"]) > _num(s["mean_l0"]):
                text += f" > l0 {_fmt(s.get('mean_l0'))}"
        if l in probe:
            text += f" step-size probe best multiplier {_fmt(probe[l].get('best_multiplier'))}"
        parts.append(text)
    keys = _keys(m)
    rec, why = _recommended_lr(m, layers, "down")
    base = _base_lr(m, layers)
    value = rec if rec is not None else (base / 10 if base else None)
    both = bool(set(over) & set(probe_high))
    consequences = []
    if _gate_verdicts(m):
        consequences.append("the gates fell (the outer loop turns a harmful TTT down)")
    if [v for v in failing(m, "ttt_helps") if _details(v).get("verdict") in ("hurts", None)]:
        consequences.append("TTT hurts the outer loss")
    return Finding("inner_lr_too_high", "Inner learning rate far too high (degenerate inner learning)", "; ".join(parts),
                   "one inner step overshoots the minimum along its own direction, so the inner model gets worse the more "
                   "it learns" + (f"; consequences: {', '.join(consequences)}" if consequences else ""),
                   f"lower {keys['base_lr']}" + (f" from {base:g}" if base else "") + (f" to {value:.3g}" if value else ""),
                   config_key=keys["base_lr"], value=value,
                   confidence=HIGH if both or rec is not None else MEDIUM,
                   confidence_why=(f"Figure 5 and the step-size probe agree; {why}" if both else why if rec is not None else
                                   "Figure-5 means measured; the value is a decade lower, a starting point (no step-size probe)"),
                   evidence=_evidence(m, ["figure5_ordering", "figure5_improvement", "inner_step_size"], layers), layers=layers)


def rule_inner_lr_too_low(m: Metrics) -> Finding | None:
    min_abs = _th(m, "improvement_min_abs", 1e-3)
    min_rel = _th(m, "improvement_min_rel", 0.01)

    def flat(s: Mapping[str, Any]) -> bool:
        imp, rel = _num(s.get("improvement_abs")), _num(s.get("improvement_rel"))
        return imp is not None and imp >= 0 and (imp < min_abs or (rel is not None and rel < min_rel))

    layers = set(_f5_layers(m, flat))
    overlapping = {str(v.get("layer")) for v in verdicts_of(m, "figure5_ordering") if _details(v).get("overlapping")}
    probe = _step_probe(m)
    probe_low = {l for l, p in probe.items() if (_num(p.get("best_multiplier")) or 1.0) >= 4}
    if verdicts_of(m, "inner_step_size"):
        probe_low &= failing_layers(m, "inner_step_size")
    f5 = _figure5(m)
    # An inner loss already ~0 at W_0 leaves nothing to learn, whatever the step (inner_loss_off_scale says so).
    nothing_to_learn = {l for l, s in f5.items()
                        if _num(s.get("mean_l0")) is not None and _num(s["mean_l0"]) < _th(m, "loss_mean_min", 1e-3)}
    layers = sorted((layers | overlapping | probe_low) - nothing_to_learn, key=_layer_key)
    if not layers:
        return None
    parts = []
    for l in layers:
        s = f5.get(l, {})
        text = f"{l}: one inner step improves the loss by {_fmt(s.get('improvement_abs'))}"
        if _num(s.get("improvement_rel")) is not None:
            text += f" ({_num(s['improvement_rel']):.2%})"
        if l in overlapping:
            text += ", the three curves overlap"
        if l in probe:
            text += f", step-size probe best multiplier {_fmt(probe[l].get('best_multiplier'))}"
        parts.append(text)
    keys = _keys(m)
    rec, why = _recommended_lr(m, layers, "up")
    base = _base_lr(m, layers)
    near_zero = base is not None and base < 1e-3
    value = rec if rec is not None else None
    return Finding("inner_lr_too_low", "No inner learning (inner lr ~ 0 or no gradient)",
                   "; ".join(parts) + f" (floor {min_abs:g} / {min_rel:.0%})" + (f"; base_lr is {base:g}" if base is not None else ""),
                   "the inner learning rate is ~0" if near_zero else
                   "gradients do not reach the inner weights or the inner learning rate is ~0",
                   f"raise {keys['base_lr']}" + (f" from {base:g}" if base is not None else "")
                   + ((f" to at least {value:.3g} (the probe's best is its largest multiplier: the optimum may lie further)"
                       if any((_num((probe.get(l) or {}).get("best_multiplier")) or 0) >= 4 for l in layers) else f" to {value:.3g}")
                      if value else "")
                   + ("" if value or near_zero else "; check the inner gradient is computed (not detached)"),
                   config_key=keys["base_lr"], value=value,
                   confidence=HIGH if rec is not None or near_zero else MEDIUM,
                   confidence_why=why if rec is not None else
                   ("Figure 5 flat and the configured base_lr is tiny" if near_zero else
                    "Figure 5 flat; no step-size probe to say whether the lr or the gradient is at fault"),
                   evidence=_evidence(m, ["figure5_improvement", "inner_step_size"], layers), layers=layers)


def failing_layers(m: Metrics, check: str) -> set[str]:
    return {str(v.get("layer")) for v in failing(m, check) if v.get("layer")}


def rule_context_not_used(m: Metrics) -> Finding | None:
    min_frac = _th(m, "ordering_min_fraction", 0.9)

    def benefit(s: dict, quarter: str) -> float | None:
        return _num(s.get(f"benefit_{quarter}_quarter"))

    declining = _f5_layers(m, lambda s: _num(s.get("benefit_growth")) is not None
                           and _num(s["benefit_growth"]) <= _th(m, "adaptation_min_benefit_growth", 0.0))
    no_help_late = _f5_layers(m, lambda s: benefit(s, "last") is not None and benefit(s, "last") <= 0)
    no_ctx = _f5_layers(m, lambda s: _num(s.get("frac_l0_gt_lprev")) is not None and _num(s["frac_l0_gt_lprev"]) < min_frac)
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
            ratio = (f"lprev/l0 {_fmt(math.exp(-min(max(first, -700.0), 700.0)))} -> "
                     f"{_fmt(math.exp(-min(max(last, -700.0), 700.0)))} (first -> last quarter"
                     if first is not None and last is not None else "lprev/l0 (first -> last quarter")
            text.append(ratio + (", the carried state helps less later)" if l in declining else ")")
                        + (", W_(t-1) no better than W_0 at the end" if l in no_help_late else ""))
        if l in no_ctx:
            text.append(f"l0 > lprev at only {_num(s['frac_l0_gt_lprev']):.0%} of positions")
        parts.append(f"{l}: " + ", ".join(text))
    keys = _keys(m)
    return Finding("context_not_used", "TTT cannot use the context", "; ".join(parts),
                   "the inner model does not get better later in the context: the features it learns from (keys, target) "
                   "do not carry what the next tokens need, an architecture or feature mismatch",
                   f"check the inner model's inputs and target (what the TTT layer reconstructs) and {keys['mini_batch']}; "
                   "compare with a healthy configuration",
                   config_key=keys["mini_batch"],
                   confidence=MEDIUM, confidence_why="Figure-5 trend measured; the architectural cause is inferred, not measured",
                   evidence=_evidence(m, ["figure5_adaptation", "figure5_ordering"], layers), layers=layers)


def rule_inner_step_size_off(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "inner_step_size") if not _cannot_measure(v)]
    if not bad:
        return None
    probe = _step_probe(m)
    layers = [str(v.get("layer")) for v in bad if v.get("layer")]
    parts = []
    for v in bad:
        p = probe.get(str(v.get("layer")), _details(v))
        parts.append(f"{v.get('layer') or 'model'}: best multiplier {_fmt(p.get('best_multiplier'))} of base_lr "
                     f"{_fmt(p.get('base_lr'))}")
    keys = _keys(m)
    rec, why = _recommended_lr(m, layers, "down")
    return Finding("inner_step_size_off", "Inner step size off its optimum", "; ".join(parts),
                   "the loss along the applied inner step is lowest at another multiple of the step",
                   f"set {keys['base_lr']}" + (f" to {rec:.3g}" if rec is not None else " to base_lr x best multiplier"),
                   config_key=keys["base_lr"], value=rec, confidence=MEDIUM,
                   confidence_why=why or "measured by the step-size probe; Figure 5 itself is within bounds",
                   evidence=_evidence(m, ["inner_step_size"], layers), layers=layers)


def rule_gate_never_moved(m: Metrics) -> Finding | None:
    bad = [v for v in _gate_verdicts(m) if _details(v).get("untrained")]
    if not bad:
        return None
    layers = [str(v.get("layer")) for v in bad if v.get("layer")]
    init = _num(_details(bad[0]).get("alpha_init"))
    keys = _keys(m)
    return Finding("gate_never_moved", "Gate never trained (still at its init)",
                   f"{', '.join(layers) or 'the gates'}: alpha is exactly its initial value"
                   + (f" {init:g}" if init is not None else "") + " in every channel",
                   "the gate alpha is not in the optimiser (or its learning rate is 0), or the outer gradient never reached it",
                   f"add the gate alpha to the optimiser with a non-zero lr; {keys['gate_init']} only sets where it starts",
                   config_key=keys["gate_init"], confidence=HIGH,
                   confidence_why="every channel equals the configured init up to storage rounding",
                   evidence=_evidence(m, ["gate_stats"]), layers=layers)


def _helps(m: Metrics) -> tuple[dict[str, Any] | None, str | None]:
    # "cannot measure" (e.g. an input too short to resolve the required benefit) is not_measured's.
    bad = [v for v in failing(m, "ttt_helps") if _num(v.get("measured")) is not None and not _cannot_measure(v)]
    if not bad:
        return None, None
    v = bad[0]
    kind = _details(v).get("verdict")
    if kind not in ("hurts", "does_nothing"):  # older runs: measured is the relative loss increase
        kind = "hurts"
    return v, str(kind)


def _outer_symptom(m: Metrics, v: Mapping[str, Any]) -> str:
    d = _details(v)
    a = _num(d.get("loss_learned", (m.get("outer_loss") or {}).get("learned")))
    b = _num(d.get("loss_gate0", (m.get("outer_loss") or {}).get("gate0")))
    if a is None or b is None:
        return f"ttt_helps measured {_fmt(v.get('measured'))}"
    return f"outer loss {a:.4f} at the learned gate vs {b:.4f} at gate 0 ({(a - b) / abs(b):+.2%})" if b else f"outer loss {a} vs {b}"


def rule_ttt_hurts(m: Metrics) -> Finding | None:
    v, kind = _helps(m)
    if kind != "hurts":
        return None
    keys = _keys(m)
    gates = [g for g in verdicts_of(m, "gate_stats") if _num(_details(g).get("mean_tanh")) is not None]
    flipped = [g for g in gates if (_num(_details(g).get("fraction_sign_flipped")) or 0.0) > 0.5]
    opened = [g for g in gates if (_num(_details(g).get("fraction_of_init")) or 0.0) > 2.0]

    def gate_text(g: Mapping[str, Any]) -> str:
        d = _details(g)
        text = f"{g.get('layer')}: gate mean |tanh(alpha)| {_fmt(d.get('mean_tanh'))}"
        if _num(d.get("fraction_of_init")) is not None and _num(d.get("alpha_init")) is not None:
            text += f" = {_num(d['fraction_of_init']):.0%} of its init tanh({_num(d['alpha_init']):g})"
        if g in flipped:
            text += f", sign flipped in {_num(d['fraction_sign_flipped']):.0%} of channels (signed mean {_fmt(d.get('signed_mean_tanh'))})"
        return text

    symptom = _outer_symptom(m, v) + ("; " + "; ".join(gate_text(g) for g in gates) if gates else "")
    if flipped:
        return Finding("ttt_hurts", "TTT hurts the outer loss: its gate has the opposite sign of its init", symptom,
                       "the branch is subtracted from the residual stream instead of added: the gate alpha was negated (an edit) "
                       "or driven through zero by the outer loop",
                       "check the sign of the gate alpha; restore it from the training checkpoint, or use an earlier checkpoint "
                       "from before it crossed zero (`ttt-checks trend`)",
                       confidence=MEDIUM, confidence_why="the loss and the gate's sign are measured; which of the two made it is not",
                       evidence=_evidence(m, ["ttt_helps", "gate_stats"]))
    cause = ("the TTT branch adds output that makes the model's predictions worse and the gate lets it through "
             + ("(the gate opened, or was set, far beyond its init: the branch passes at a strength the model was not trained with"
                if opened else "(undertrained TTT weights, or a gate initialised too open") + ")")
    fix = (f"restore the gate alpha from the training checkpoint or use an earlier checkpoint (`ttt-checks trend`); train with a "
           f"smaller alpha learning rate or {keys['gate_init']}" if opened else
           f"train the TTT weights longer or with a smaller {keys['gate_init']}; use an earlier checkpoint where TTT helped")
    return Finding("ttt_hurts", "TTT hurts the outer loss", symptom, cause, fix,
                   config_key=keys["gate_init"], confidence=MEDIUM,
                   confidence_why="the outer loss is measured; which of the causes applies is not",
                   evidence=_evidence(m, ["ttt_helps"]))


def rule_ttt_does_nothing(m: Metrics) -> Finding | None:
    v, kind = _helps(m)
    if kind != "does_nothing":
        return None
    constant = _details(v).get("constant_output_layers")
    if isinstance(constant, Mapping) and constant:
        spreads = ", ".join(f"{name} {_fmt(value)}" for name, value in constant.items())
        return Finding("ttt_does_nothing", "TTT ignores its input: its output is a constant",
                       f"{_outer_symptom(m, v)}; the branch output is the same at every position (spread std/rms {spreads})",
                       "the TTT branch adds the same vector at every position, so nothing the inner loop learns reaches the "
                       "model: its output projection is zeroed or frozen (only a bias left), or no gradient reaches it",
                       "check the TTT output projection (wo) in the checkpoint and in training (frozen, zero-initialised and "
                       "never trained, or cut off from the loss)",
                       confidence=HIGH, confidence_why="the output's spread over positions is measured; a constant has none",
                       evidence=_evidence(m, ["ttt_helps"]))
    return Finding("ttt_does_nothing", "TTT does nothing", _outer_symptom(m, v),
                   "the TTT branch does not change the predictions: its output ignores the input, the gate is too small to "
                   "matter, or no benefit was learned",
                   "read the gate and Figure-5 findings; train longer or on data whose context matters",
                   confidence=LOW, confidence_why="the outer loss is measured; a cause is not",
                   evidence=_evidence(m, ["ttt_helps"]))


def _talks(m: Metrics, row: Mapping[str, Any]) -> bool | None:
    words = _num(row.get("words"))
    if words is None:
        return None
    collapsed = bool((row.get("collapse") or {}).get("collapsed")) if isinstance(row.get("collapse"), Mapping) else False
    return words >= _th(m, "talk_min_base_words", 3.0) and not collapsed


def _sweep_scenario(m: Metrics) -> str | None:
    """'healthy', 'A', 'B', 'C' or None (no sweep, or a shape none of them describes)."""
    rows = _sweep_rows(m)
    by_label = {str(r.get("label")): r for r in rows}
    base, learned = by_label.get("0"), by_label.get("learned")
    if base is None:
        return None
    others = [r for r in rows if str(r.get("label")) not in ("0", "learned") and _num(r.get("gate_tanh")) is not None]
    top = max(others, key=lambda r: abs(_num(r["gate_tanh"]))) if others else None
    talks = {str(r.get("label")): _talks(m, r) for r in rows}
    if any(t is None for t in talks.values()):
        return None
    if not any(talks.values()):
        return "C"
    base_talks = talks["0"]
    learned_talks = talks.get("learned")
    gate_failed = any(not _details(v).get("untrained") for v in _gate_verdicts(m))  # fell, not never trained
    # B says the learned gate is too small to use what TTT learned: only where it is smaller than the top gate that talks.
    learned_below_top = (learned is not None and top is not None and _num(learned.get("gate_tanh")) is not None
                         and abs(_num(learned["gate_tanh"])) < abs(_num(top["gate_tanh"])))
    if base_talks and learned_talks is not None and not learned_talks:
        if top is not None and talks[str(top.get("label"))]:
            return "B" if learned_below_top else None
        return "A" if top is not None else None
    if base_talks and gate_failed and top is not None and talks[str(top.get("label"))] and (learned is None or learned_below_top):
        return "B"
    if base_talks and learned_talks:
        return "healthy"
    return None


def _sweep_numbers(m: Metrics) -> str:
    return ", ".join(f"gate {r.get('label')} (tanh {_fmt(r.get('gate_tanh'))}): {r.get('words')} words"
                     for r in _sweep_rows(m))


def _sweep_evidence(m: Metrics) -> list[str]:
    wavs = [str(r["wav"]) for r in _sweep_rows(m) if r.get("wav")]
    return wavs + [p for p in _evidence(m, ["talk_learned"]) if p.endswith(".png") and p not in wavs]


def rule_sweep_scenario_c(m: Metrics) -> Finding | None:
    if _sweep_scenario(m) != "C":
        return None
    return Finding("sweep_scenario_c", "Sweep scenario C: every gate is quiet", _sweep_numbers(m),
                   "the problem is elsewhere: the base model, the input prompt or the sampling (temperature); TTT is not "
                   "what silences the model",
                   "check the base model without TTT, the prompt audio and the sampling temperature before the TTT recipe",
                   confidence=MEDIUM, confidence_why="words counted by ASR at every gate; ASR can miss quiet or noisy speech",
                   evidence=_sweep_evidence(m))


def rule_sweep_scenario_a(m: Metrics) -> Finding | None:
    if _sweep_scenario(m) != "A":
        return None
    return Finding("sweep_scenario_a", "Sweep scenario A: TTT learned quiet behaviour", _sweep_numbers(m),
                   "the TTT weights themselves learned to make the model quiet (the data or the objective rewards silence)",
                   "look at the fine-tuning data (share of silence, speaker turns) and the loss weighting of the text/audio streams",
                   config_key="first_codebook_weight_multiplier" if str(m.get("adapter")) == "moshi" else None,
                   confidence=MEDIUM, confidence_why="the quiet replies follow the TTT strength (gate 0 talks, the top gate does not)",
                   evidence=_sweep_evidence(m))


def rule_sweep_scenario_b(m: Metrics) -> Finding | None:
    if _sweep_scenario(m) != "B":
        return None
    return Finding("sweep_scenario_b", "Sweep scenario B: the gate ignores useful TTT features", _sweep_numbers(m),
                   "TTT learned useful features but the learned gate is too small to use them (gating collapsed)",
                   "use an earlier checkpoint, before the gate fell; regularise the gate",
                   config_key=_keys(m)["gate_init"], confidence=MEDIUM,
                   confidence_why="gate 0 and the top gate talk while the learned gate is quiet",
                   evidence=_sweep_evidence(m))


def rule_generation_collapse(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "talk_collapse") if not _cannot_measure(v)]
    if not bad:
        return None
    parts = [f"{v.get('layer') or 'a gate'}: {_fmt(v.get('measured'))} of replies collapsed "
             f"({', '.join(_details(v).get('kinds') or []) or 'kind not recorded'})" for v in bad]
    return Finding("generation_collapse", "Generation collapses at a gate the model runs at", "; ".join(parts),
                   "the model loops or falls silent at its own gate; read the Figure-5 and gate findings for the mechanism",
                   "listen to the wavs; use a checkpoint where the learned gate still talks",
                   confidence=LOW, confidence_why="a symptom of several causes; no rule above pins it down",
                   evidence=_sweep_evidence(m))


def rule_dead_parameters_partial(m: Metrics) -> Finding | None:
    unchanged, unused, zeroed, compared, v = _dead(m)
    if zeroed:
        shown = name_list(zeroed, 5)
        also = f"; {len(unchanged)} more still exactly at init: {', '.join(unchanged[:5])}" if unchanged else ""
        return Finding("dead_parameters_partial", "TTT tensors zeroed: they pass no signal",
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
    return Finding("dead_parameters_partial", "Some TTT tensors never moved", f"{len(unchanged)} of {compared} used TTT tensors "
                   f"are still exactly at init: {shown}",
                   "they are not in the optimiser, or their updates round away (a tiny outer lr in bf16)",
                   f"check the optimiser's parameter groups and {_keys(m)['outer_lr']}",
                   config_key=_keys(m)["outer_lr"], confidence=MEDIUM,
                   confidence_why="tensors compared bit for bit with the initialisation; which cause applies is not measured",
                   evidence=_evidence(m, ["dead_parameters"]))


RULE_FUNCTIONS: dict[str, Callable[[Metrics], Finding | None]] = {
    "nonfinite_weights": rule_nonfinite_weights,
    "config_inconsistent": rule_config_inconsistent,
    "missing_keys": rule_missing_keys,
    "state_not_carried": rule_state_not_carried,
    "noncausal_read_ahead": rule_noncausal_read_ahead,
    "ttt_untrained": rule_ttt_untrained,
    "inner_state_untrained": rule_inner_state_untrained,
    "inner_loss_off_scale": rule_inner_loss_off_scale,
    "dead_code_path": rule_dead_code_path,
    "inner_loss_nonfinite": rule_inner_loss_nonfinite,
    "inner_loss_exploding": rule_inner_loss_exploding,
    "gate_collapsed": rule_gate_collapsed,
    "inner_lr_too_high": rule_inner_lr_too_high,
    "inner_lr_too_low": rule_inner_lr_too_low,
    "context_not_used": rule_context_not_used,
    "inner_step_size_off": rule_inner_step_size_off,
    "gate_never_moved": rule_gate_never_moved,
    "ttt_hurts": rule_ttt_hurts,
    "ttt_does_nothing": rule_ttt_does_nothing,
    "sweep_scenario_c": rule_sweep_scenario_c,
    "sweep_scenario_a": rule_sweep_scenario_a,
    "sweep_scenario_b": rule_sweep_scenario_b,
    "generation_collapse": rule_generation_collapse,
    "dead_parameters_partial": rule_dead_parameters_partial,
}


# ---------------------------------------------------------------------------------------------
# The diagnosis
# ---------------------------------------------------------------------------------------------


@dataclass
class Diagnosis:
    healthy: bool
    summary: str  # one line: the healthy line, or the top finding
    findings: list[Finding]
    suppressed: list[dict[str, str]]  # {"rule", "by", "why"}: fired but overridden
    missing_measurements: list[str]  # checks that did not run in this metrics (lower confidence, not findings)
    warnings: list[str]  # passing verdicts with a warning

    def to_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "summary": self.summary, "findings": [f.to_dict() for f in self.findings],
                "suppressed": self.suppressed, "missing_measurements": self.missing_measurements, "warnings": self.warnings}

    @property
    def top(self) -> Finding | None:
        return self.findings[0] if self.findings else None


# The checks a full health run measures; one that did not run is reported as missing, not as a finding.
EXPECTED_CHECKS = ("checkpoint_keys", "checkpoint_finite", "figure5_collected", "figure5_finite", "figure5_bounded",
                   "figure5_ordering", "figure5_improvement", "figure5_adaptation", "gate_stats", "ttt_helps",
                   "dead_parameters", "state_persistence", "streaming_consistency", "talk_base", "talk_learned", "talk_collapse")


def _all_failing(m: Metrics) -> list[dict[str, Any]]:
    return [dict(v, _check=check) for check, vs in (m.get("verdicts") or {}).items() if isinstance(vs, list)
            for v in vs if isinstance(v, Mapping) and not v.get("ok", False)]


def _healthy_line(m: Metrics) -> str:
    parts = []
    f5 = _figure5(m)
    if f5:
        parts.append(f"Figure 5 ordered in {len(f5)} layer(s)")
    gates = []
    for v in verdicts_of(m, "gate_stats"):
        d = _details(v)
        mean = _num(d.get("mean_tanh", v.get("measured")))
        frac = _num(d.get("fraction_of_init"))
        if mean is not None:
            gates.append(f"{mean:.3g}" + (f" ({frac:.0%} of init)" if frac is not None else ""))
    if gates:
        parts.append("gate mean |tanh| " + ", ".join(gates))
    helps = verdicts_of(m, "ttt_helps")
    if helps and _num(_details(helps[0]).get("relative_decrease")) is not None:
        parts.append(f"TTT lowers the outer loss by {_num(_details(helps[0])['relative_decrease']):.2%}")
    elif (m.get("outer_loss") or {}).get("gate0") is not None:
        a, b = _num(m["outer_loss"].get("learned")), _num(m["outer_loss"].get("gate0"))
        if a is not None and b:
            parts.append(f"outer loss {(a - b) / abs(b):+.2%} vs gate 0")
    if _sweep_scenario(m) == "healthy":
        parts.append("the learned gate talks like gate 0")
    return "HEALTHY: every check passed" + (f" ({'; '.join(parts)})" if parts else "")


def diagnose(metrics: Metrics) -> Diagnosis:
    """Rank the findings of one health run's metrics (see the module docstring)."""
    fired: list[tuple[Rule, Finding]] = []
    for rule in RULES:
        fn = RULE_FUNCTIONS.get(rule.id)
        if fn is None:
            continue
        finding = fn(metrics)
        if finding is not None:
            fired.append((rule, finding))
    # Precedence: a fired rule overrides the ones it lists (only if it is itself kept).
    kept: list[tuple[Rule, Finding]] = []
    suppressed: list[dict[str, str]] = []
    for rule, finding in fired:
        by = next((r for r, _ in kept if rule.id in r.overrides), None)
        if by is not None:
            suppressed.append({"rule": rule.id, "by": by.id,
                               "why": f"{by.id} (precedence {by.precedence}) explains or contradicts it: {finding.symptom}"})
            continue
        kept.append((rule, finding))
    # Which failing verdicts are accounted for?
    covered = {c for r, _ in kept for c in r.reads} | {c for r, _ in fired if any(s["rule"] == r.id for s in suppressed)
                                                       for c in r.reads}
    failing_all = _all_failing(metrics)
    leftovers = [v for v in failing_all if v["_check"] not in covered]
    unexplained = [v for v in leftovers if not _cannot_measure(v) and v.get("measured") is not None]
    unmeasured = [v for v in leftovers if v not in unexplained]
    override_all = [r for r, _ in kept if "unexplained_failure" in r.overrides]
    findings = [f for _, f in kept]
    if unexplained and not override_all:
        checks = sorted({v["_check"] for v in unexplained})
        findings.append(Finding("unexplained_failure", "Failing check(s) without a diagnosis rule",
                                "; ".join(f"{v['_check']}{' [' + str(v['layer']) + ']' if v.get('layer') else ''}: "
                                          f"{v.get('explanation', '')}" for v in unexplained[:4]),
                                "not diagnosed: no rule maps this measurement to a cause", "read the check's explanation and evidence",
                                confidence=LOW, confidence_why="no rule covers these checks",
                                evidence=_evidence(metrics, checks), checks=checks))
    if unmeasured and not override_all:
        checks = sorted({v["_check"] for v in unmeasured})
        findings.append(Finding("not_measured", "Check(s) could not measure", "; ".join(
            f"{v['_check']}{' [' + str(v['layer']) + ']' if v.get('layer') else ''}: {v.get('explanation', '')}" for v in unmeasured[:4]),
                                "missing data for these checks (see their explanations)", "fix what the explanation names and rerun",
                                confidence=LOW, confidence_why="nothing was measured", checks=checks))
    precedence = {r.id: r.precedence for r in RULES}
    findings.sort(key=lambda f: precedence.get(f.rule, 1000))
    for rank, f in enumerate(findings, 1):
        f.rank = rank
        f.precedence = precedence.get(f.rule, 1000)
        if not f.checks:
            failing_checks = {v["_check"] for v in failing_all}
            f.checks = [c for c in RULES_BY_ID[f.rule].reads if c in failing_checks] if f.rule in RULES_BY_ID else []
    missing = [c for c in EXPECTED_CHECKS if not measured(metrics, c)]
    for f in findings:  # a missing measurement lowers confidence, it is not a finding
        related = [c for c in RULES_BY_ID.get(f.rule, RULES[-1]).reads if c in missing]
        if related and f.confidence == HIGH:
            f.confidence = MEDIUM
            f.confidence_why += f"; not measured in this run: {', '.join(related)}"
    warnings = [f"{check}{' [' + str(v.get('layer')) + ']' if v.get('layer') else ''}: {v.get('explanation', '')}"
                for check, vs in (metrics.get("verdicts") or {}).items() if isinstance(vs, list)
                for v in vs if isinstance(v, Mapping) and v.get("ok") and _details(v).get("severity") == "warning"]
    complete = metrics.get("complete", True) is not False
    healthy = not failing_all and bool(metrics.get("verdicts")) and complete
    if healthy:
        summary = _healthy_line(metrics)
    elif not failing_all and metrics.get("verdicts"):  # interrupted: nothing failed among what finished
        summary = (f"INCOMPLETE: the run was interrupted; no failure among the {len(metrics['verdicts'])} checks that "
                   "finished, which proves nothing about the others")
    elif findings:
        top = findings[0]
        summary = f"{top.title}: {top.symptom}" + (f" -> {top.fix}" if top.fix else "")
    elif not metrics.get("verdicts"):
        summary = "NO DIAGNOSIS: no check ran"
    else:
        summary = "UNHEALTHY: failing checks, no finding"
    return Diagnosis(healthy, summary, findings, suppressed, missing, warnings)


# A zoo entry names the finding its construction implies in ``expected_diagnosis`` (config.json
# ``expected.expected_diagnosis``, or the ZooEntry field); an entry without one gets it from the
# first check its defect is aimed at (``built_to_fail``) through this table.
CAUSE_OF_AIMED_CHECK: dict[str, str] = {
    "checkpoint_finite": "nonfinite_weights", "checkpoint_keys": "missing_keys", "config_consistency": "config_inconsistent",
    "state_persistence": "state_not_carried", "streaming_consistency": "noncausal_read_ahead",
    "figure5_bounded": "inner_loss_exploding", "figure5_finite": "inner_loss_nonfinite", "figure5_ordering": "inner_lr_too_high",
    "figure5_improvement": "inner_lr_too_low", "figure5_adaptation": "context_not_used", "gate_stats": "gate_collapsed",
    "dead_parameters": "ttt_untrained", "ttt_helps": "ttt_hurts", "inner_step_size": "inner_step_size_off",
}


def expected_diagnosis(expected: Mapping[str, Any]) -> str | None:
    """The rule a zoo entry's top finding must be: its ``expected_diagnosis``, else derived from
    ``built_to_fail`` (the aimed-at checks, in order; 'figure5_ordering' + 'figure5_improvement'
    together mean an overshooting inner step). None for a healthy entry."""
    if expected.get("expected_diagnosis"):
        return str(expected["expected_diagnosis"])
    if expected.get("healthy"):
        return None
    aimed = [str(c) for c in expected.get("built_to_fail") or []]
    if "figure5_improvement" in aimed and "figure5_ordering" not in aimed:
        return "inner_lr_too_low"
    for check in aimed:
        if check in CAUSE_OF_AIMED_CHECK:
            return CAUSE_OF_AIMED_CHECK[check]
    return None


def diagnosis_dict(metrics: Metrics) -> dict[str, Any]:
    """``metrics.json["diagnosis"]``: never raises (a rule bug must not cost the report)."""
    try:
        return diagnose(metrics).to_dict()
    except Exception as exc:  # noqa: BLE001 - the report is written regardless; the failure is said
        return {"healthy": False, "summary": f"diagnosis failed: {type(exc).__name__}: {exc}", "findings": [],
                "suppressed": [], "missing_measurements": [], "warnings": [], "error": f"{type(exc).__name__}: {exc}"}


def render_text(diagnosis: Mapping[str, Any]) -> list[str]:
    """The "Diagnosis" section of report.txt (lines)."""
    lines = ["Diagnosis", "-" * 78, f"  {diagnosis.get('summary', '')}"]
    for f in diagnosis.get("findings") or []:
        lines += ["", f"  {f['rank']}. {f['title']}  (confidence {f['confidence']}: {f['confidence_why']})",
                  f"     symptom : {f['symptom']}", f"     cause   : {f['cause']}", f"     change  : {f['fix']}"]
        if f.get("config_key"):
            lines.append(f"     config  : {f['config_key']}" + (f" = {_fmt(f['value'])}" if f.get("value") is not None else ""))
        for path in (f.get("evidence") or [])[:6]:
            lines.append(f"     evidence: {path}")
    for s in diagnosis.get("suppressed") or []:
        lines.append(f"  (not shown: {s['rule']}, overridden by {s['by']})")
    if diagnosis.get("missing_measurements"):
        lines.append(f"  not measured in this run: {', '.join(diagnosis['missing_measurements'])}")
    return lines


def one_line(diagnosis: Mapping[str, Any], width: int = 160) -> str:
    """The top finding (or the healthy line) in one line, for the gate summary."""
    findings = diagnosis.get("findings") or []
    if findings:
        f = findings[0]
        text = f"diagnosis: {f['title']} ({f['confidence']}) -> {f['fix']}"
        if f.get("config_key") and f.get("value") is not None:
            text += f" [{f['config_key']} = {_fmt(f['value'])}]"
    else:
        text = f"diagnosis: {diagnosis.get('summary', '')}"
    return text if len(text) <= width else text[: width - 3] + "..."
