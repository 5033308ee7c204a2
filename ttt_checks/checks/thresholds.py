"""Thresholds of the checks: one table, its defaults, and how a run overrides them.

The defaults below are the one home of every threshold; the ``[tool.ttt_checks]`` table of a
project's pyproject.toml (ours lists them all, and a test keeps the two equal) and
``--threshold NAME=VALUE`` override them per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from ttt_checks.metrics.figure5 import ORDERING_MIN_REL_GAP


GATE_OPEN_MAX_RATIO = 6.5


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
        # l0 is judged against lmean, the loss of predicting the target by the running mean of the
        # targets before it (docs/ttt-math.md). Derivation (docs/health-checks.md, "l0 against the mean
        # predictor"): l0 = lmean + (spread of the prediction around the target's mean) - 2 cov, so a
        # prediction at the target's scale but unrelated to it gives ~2/(1-a) (a: share of the target's
        # energy in its mean), one pointing against it at most ~4/(1-a). Measured on the zoo's held-out
        # input: every checkpoint, healthy or broken, 1.30-4.38; W_0 a random draw at the init std 2.75
        # (1.50 without the inner LN); the same draw x1000 1.43e7 without the inner LN (with it, LN undoes
        # any scale: 3.14). The geometric mean of 4.38 and 1.43e7 is 7.9e3, rounded down to 1e3: 230x above
        # every at-scale value, 1.4e4x below the first off-scale one.
        Threshold("l0_lmean_ratio_max", 1e3, "mean l0 / mean lmean (W_0 against predicting the target's running mean) above this: W_0 or the projections are off scale; at scale it is <= ~4/(1-a), zoo 1.30-4.38, a W_0 x1000 gives 1.4e7 (geometric mean 7.9e3, rounded down)"),
        # The old absolute floor on l0 (1e-3) moved to the quantity it meant: a target that does not vary.
        # Zoo lmean 0.47-0.89 (a LayerNorm target, gamma ~1); a zeroed ttt_norm_weight gives exactly 0.
        Threshold("lmean_min", 1e-3, "mean lmean (the target's squared spread around its running mean, per dim) below this: the target barely varies, nothing to reconstruct (zoo 0.47-0.89; a zeroed ttt_norm_weight gives 0)"),
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
        Threshold("record_max_loss_ratio", 3.0, "teacher-forced outer loss at the learned gate / the train loss the checkpoint's own training record states, above this: the weights were trained on another objective or other data (the diagnosis reads it; healthy zoo <= 1.24, a fine-tune on unshifted labels 12.5; about their geometric mean, 3.9, rounded down)"),
        Threshold("base_max_loss_excess", 0.005, "the base model's loss at gate 0 may exceed its reference (measured on the same input when the base was built, or --base-reference) by this much (relative): above, the base is not the one the TTT layers were trained on. Derived: evaluating the same base in bf16 instead of fp32 moves it by 2e-4 (fp64: 2e-8), a base pretrained again by the same recipe by 1.7%; 0.5% is about their geometric mean (0.06%-1.7% keeps a 25% margin to both)"),
        Threshold("tensor_max_std_ratio", 10.0, "a TTT tensor whose std is more than this times (or less than 1/this) its initial std was scaled, not trained (the diagnosis reads it). Derived: training moved every trained reference tensor's std by 1.0-2.3x (17 zoo checkpoints); 10x keeps a factor 4 above that and 10 below the scale faults it names (W_0 x1000, an output projection x100)"),
        Threshold("gate_open_max_ratio", GATE_OPEN_MAX_RATIO, "when TTT hurts the outer loss through the branch as a static layer, a gate whose mean |tanh(alpha)| is more than this times its init was opened or set beyond what training gives it (the diagnosis reads it). Derived: healthy fine-tunes open the gate to at most 4.35x its init (healthy-recall; the first generation 0.92-1.19x), a gate set by hand to alpha 3 on healthy-seed0 is 9.98x; 6.5 is about their geometric mean (6.6), 49% above the one and 54% below the other"),
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
