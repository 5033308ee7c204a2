"""The diagnosis rules (ttt_checks.diagnosis) on metrics dicts, and the docs table that lists them.

Each metrics dict below is shaped like HealthRun.metrics() writes it (verdicts with measured,
threshold, explanation, layer, details; figure5 stats per layer; sweep rows) and holds the
numbers of one failure mode; the assertions are on the ranked findings.
"""

from __future__ import annotations

import math

import copy
import re
from pathlib import Path

import pytest

from ttt_checks import diagnosis as dx

REPO = Path(__file__).resolve().parents[1]
LAYER = "layers.3.ttt"


def _v(name: str, ok: bool, measured=0.0, threshold=0.0, explanation="", layer=None, **details) -> dict:
    return {"name": name, "ok": ok, "measured": measured, "threshold": threshold, "explanation": explanation,
            "layer": layer, "details": details}


def _f5(l0=1.15, lprev=0.72, lafter=0.66, **over) -> dict:
    stats = {"layer": LAYER, "positions": 256, "expected_positions": 256, "coverage": 1.0, "nonfinite": 0,
             "mean_l0": l0, "mean_lprev": lprev, "mean_lafter": lafter, "max_smoothed_loss": max(l0, lprev, lafter) * 1.2,
             "frac_l0_gt_lprev": 1.0 if l0 > lprev else 0.0, "frac_lprev_gt_lafter": 1.0 if lprev > lafter else 0.0,
             "frac_ordered": 1.0, "improvement_abs": lprev - lafter, "improvement_rel": (lprev - lafter) / lprev,
             "context_gain_abs": l0 - lafter, "lprev_first_quarter": lprev * 1.1, "lprev_last_quarter": lprev * 0.9,
             "lafter_first_quarter": lafter * 1.1, "lafter_last_quarter": lafter * 0.9,
             "gap_first_quarter": (l0 - lafter) * 0.8, "gap_last_quarter": (l0 - lafter) * 1.2,
             "benefit_first_quarter": math.log(l0 / (lprev * 1.1)), "benefit_last_quarter": math.log(l0 / (lprev * 0.9))}
    stats.update(over)
    stats["gap_growth"] = stats["gap_last_quarter"] - stats["gap_first_quarter"]
    stats["benefit_growth"] = stats["benefit_last_quarter"] - stats["benefit_first_quarter"]
    return stats


def _row(label: str, tanh: float, words: int, collapsed: bool = False) -> dict:
    return {"label": label, "gate_alpha": tanh, "gate_tanh": tanh, "words": words, "transcript": "x",
            "wav": f"/r/sweep/gate_{label}.wav", "collapse": {"collapsed": collapsed, "kinds": ["repetition"] if collapsed else []}}


def healthy_metrics() -> dict:
    """Every check passes: the numbers of the healthy reference checkpoint."""
    verdicts = {
        "checkpoint_keys": [_v("checkpoint_keys", True, 0, 0)],
        "checkpoint_finite": [_v("checkpoint_finite", True, 0, 0, nonfinite=[])],
        "figure5_collected": [_v("figure5_collected", True, 1.0, 1.0, layer=LAYER)],
        "figure5_finite": [_v("figure5_finite", True, 0, 0, layer=LAYER)],
        "figure5_bounded": [_v("figure5_bounded", True, 1.4, 10.0, layer=LAYER)],
        "figure5_ordering": [_v("figure5_ordering", True, 1.0, 0.9, layer=LAYER)],
        "figure5_improvement": [_v("figure5_improvement", True, 0.06, 1e-3, layer=LAYER)],
        "figure5_adaptation": [_v("figure5_adaptation", True, 0.1, 0.0, layer=LAYER)],
        "gate_stats": [_v("gate_stats", True, 1.08, 0.5, layer=LAYER, mean_tanh=0.108, mean_alpha=0.108, alpha_init=0.1,
                          fraction_of_init=1.08, fraction_sign_flipped=0.0)],
        "ttt_helps": [_v("ttt_helps", True, 0.0021, 0.001, loss_learned=1.7227, loss_gate0=1.7264,
                         relative_decrease=0.0021, verdict="helps")],
        "dead_parameters": [_v("dead_parameters", True, 0.0, 0.0, unchanged=[], unused=[], compared=12)],
        "state_persistence": [_v("state_persistence", True, 1.0, 0.5, layer=LAYER)],
        "streaming_consistency": [_v("streaming_consistency", True, 0.0, 0.01, loss_streamed=1.7, loss_teacher_forced=1.7)],
        "talk_base": [_v("talk_base", True, 20, 3)],
        "talk_learned": [_v("talk_learned", True, 1.0, 0.5)],
        "talk_collapse": [_v("talk_collapse", True, 0.0, 0.5, layer=f"gate {g}", kinds=[]) for g in ("0", "learned", "1")],
    }
    return {"checkpoint": "/zoo/x", "adapter": "reference", "complete": True,
            "thresholds": {"loss_ceiling": 10.0, "improvement_min_abs": 1e-3, "improvement_min_rel": 0.01,
                           "ordering_min_fraction": 0.9, "talk_min_base_words": 3.0, "adaptation_min_benefit_growth": 0.0},
            "verdicts": verdicts, "figure5": {LAYER: _f5()},
            "outer_loss": {"learned": 1.7227, "gate0": 1.7264},
            "sweep": [_row("0", 0.0, 20), _row("learned", 0.108, 20), _row("1", 0.76, 18)],
            "layers": [{"name": LAYER, "index": 3, "base_lr": 1.0, "gate_mean_tanh": 0.108}],
            "artifacts": {"figure5_ordering": [f"/r/figure5_{LAYER.replace('.', '_')}.png", "/r/figure5_layers_0_ttt.png"],
                          "gate_stats": [], "ttt_helps": ["/r/outer_loss.png"], "talk_learned": ["/r/words_vs_gate.png"]}}


def fail(m: dict, check: str, index: int = 0, **changes) -> dict:
    v = m["verdicts"][check][index]
    details = changes.pop("details", {})
    v.update(ok=False, **changes)
    v["details"].update(details)
    return m


def top(m: dict) -> dx.Finding:
    d = dx.diagnose(m)
    assert d.findings, d.summary
    return d.findings[0]


def rules(m: dict) -> list[str]:
    return [f.rule for f in dx.diagnose(m).findings]


# -- healthy ------------------------------------------------------------------------------------


def test_healthy_run_says_so_in_one_line():
    d = dx.diagnose(healthy_metrics())
    assert d.healthy and not d.findings
    assert d.summary.startswith("HEALTHY") and "\n" not in d.summary
    assert "0.21%" in d.summary and "talks like gate 0" in d.summary and "0.108 (108% of init)" in d.summary
    assert dx.one_line(d.to_dict()).startswith("diagnosis: HEALTHY")
    # With the loss at the inner steps off measured, the line says what test-time training itself buys, first
    # (the gate summary cuts the line at 160 characters): the embedded default's 13.86%, 14.06% from the updates.
    m = healthy_metrics()
    m["verdicts"]["ttt_helps"][0]["details"].update(relative_decrease=0.1386, relative_decrease_from_inner_steps=0.1406)
    line = dx.one_line(dx.diagnose(m).to_dict())
    assert "TTT lowers the outer loss by 13.86% (the test-time updates: 14.06%)" in line


def test_missing_measurements_lower_confidence_and_never_crash():
    m = healthy_metrics()
    for key in ("figure5", "sweep", "layers", "outer_loss", "artifacts", "thresholds"):
        m.pop(key)
    del m["verdicts"]["talk_base"], m["verdicts"]["figure5_adaptation"]
    d = dx.diagnose(m)
    assert d.healthy and set(d.missing_measurements) == {"talk_base", "figure5_adaptation"}
    assert not dx.diagnose({}).healthy and dx.diagnose({}).summary.startswith("NO DIAGNOSIS")
    broken = fail(healthy_metrics(), "checkpoint_finite", measured=2, details={"nonfinite": ["a.w"]})
    del broken["verdicts"]["figure5_finite"]
    assert top(broken).confidence == dx.MEDIUM and "figure5_finite" in top(broken).confidence_why


# -- Figure 5 ------------------------------------------------------------------------------------


def test_huge_inner_losses_mean_numerical_instability_lower_the_inner_lr():
    m = healthy_metrics()
    m["figure5"][LAYER]["max_smoothed_loss"] = 25.0
    fail(m, "figure5_bounded", measured=25.0)
    f = top(m)
    assert f.rule == "inner_loss_exploding" and "25" in f.symptom and "> ceiling 10" in f.symptom
    assert f.config_key == "decoder.ttt.base_lr" and f.value == pytest.approx(0.1)  # a decade below base_lr 1.0
    assert f.confidence == dx.MEDIUM and "starting point" in f.confidence_why


def test_lafter_above_lprev_is_an_inner_lr_far_too_high_and_the_probe_sizes_the_fix():
    m = healthy_metrics()
    m["figure5"][LAYER] = _f5(l0=1.80, lprev=2.289, lafter=2.305)
    fail(m, "figure5_ordering", measured=0.0)
    fail(m, "figure5_improvement", measured=-0.017)
    f = top(m)
    assert f.rule == "inner_lr_too_high" and "lafter 2.305 > lprev 2.289 > l0 1.8" in f.symptom
    assert "context_not_used" not in rules(m) and "inner_lr_too_low" not in rules(m)  # explained / contradicted
    assert any(s["rule"] == "context_not_used" and s["by"] == "inner_lr_too_high" for s in dx.diagnose(m).suppressed)
    assert f.evidence == [f"/r/figure5_{LAYER.replace('.', '_')}.png"]  # only the affected layer's plot
    m["inner_step_size"] = {LAYER: {"best_multiplier": 0.25, "base_lr": 1e5, "recommended_base_lr": 2.5e4}}
    m["verdicts"]["inner_step_size"] = [_v("inner_step_size", False, 0.25, 1.0, layer=LAYER)]
    f = top(m)
    assert f.value == 2.5e4 and f.confidence == dx.HIGH and "probe agree" in f.confidence_why


def test_a_saturated_step_is_too_high_even_when_the_grid_is_lowest_far_out():
    """The user's collapse recipe on the recall model (base_lr 1e5): along the update the inner loss falls to
    its first minimum at m = 0.001, rises, and falls again to the grid's lowest value at m = 4 (the saturated
    regime). The probe's record says best m = 4 (base_lr x 4 = 4e5); the verdict's first basin says 0.001.
    Read as 'raise base_lr from 1e5' it was advice in the wrong direction; the first basin is the optimum."""
    m = healthy_metrics()
    m["layers"][0]["base_lr"] = 1e5
    m["inner_step_size"] = {LAYER: {"best_multiplier": 4.0, "base_lr": 1e5, "recommended_base_lr": 4e5,
                                    "multipliers": [1e-6, 1e-3, 0.25, 0.5, 1.0, 2.0, 4.0], "bracketed": False}}
    m["verdicts"]["inner_step_size"] = [_v("inner_step_size", False, 0.001, 1.0, layer=LAYER)]
    fail(m, "inner_step_size", details={"first_basin_multiplier": 0.001, "best_multiplier": 4.0})
    f = top(m)
    assert f.rule == "inner_lr_too_high" and f.value == pytest.approx(100.0), (f.rule, f.fix)
    assert "inner_lr_too_low" not in rules(m) and "lower decoder.ttt.base_lr from 100000 to 100" in f.fix
    advice_goes_its_own_way(f.fix, f.rule)


def test_no_improvement_means_gradients_not_flowing_or_lr_near_zero():
    m = healthy_metrics()
    m["figure5"][LAYER] = _f5(l0=1.296, lprev=1.2960, lafter=1.2959)
    m["layers"][0]["base_lr"] = 1e-6
    fail(m, "figure5_improvement", measured=1e-4)
    f = top(m)
    assert f.rule == "inner_lr_too_low" and "1e-06" in f.symptom and f.confidence == dx.HIGH
    assert "raise decoder.ttt.base_lr" in f.fix
    m["inner_step_size"] = {LAYER: {"best_multiplier": 4.0, "base_lr": 1e-6, "recommended_base_lr": 4e-6}}
    assert top(m).value == 4e-6


def test_increasing_trend_means_the_context_is_not_used():
    m = healthy_metrics()
    # lprev/l0 0.6 -> 0.9: what the carried state buys falls over the context
    m["figure5"][LAYER] = _f5(benefit_first_quarter=math.log(1 / 0.6), benefit_last_quarter=math.log(1 / 0.9))
    fail(m, "figure5_adaptation", measured=-0.41)
    f = top(m)
    assert f.rule == "context_not_used" and "lprev/l0 0.6 -> 0.9" in f.symptom and "helps less later" in f.symptom
    assert "architecture or feature mismatch" in f.cause


def test_carried_state_worse_than_w0_at_the_end_is_named():
    m = healthy_metrics()
    m["figure5"][LAYER] = _f5(benefit_first_quarter=math.log(1 / 1.3), benefit_last_quarter=math.log(1 / 1.25))
    fail(m, "figure5_adaptation", measured=0.04)
    f = top(m)
    assert f.rule == "context_not_used" and "no better than W_0 at the end" in f.symptom


# -- gates ---------------------------------------------------------------------------------------


def test_gate_fallen_from_init_is_a_collapse_and_names_its_cause():
    m = healthy_metrics()
    m["figure5"][LAYER] = _f5(l0=1.738, lprev=2.163, lafter=2.177)
    fail(m, "figure5_ordering", measured=0.0)
    fail(m, "gate_stats", measured=0.061, details={"mean_tanh": 0.061, "alpha_init": 0.3, "fraction_of_init": 0.21,
                                                   "fraction_sign_flipped": 0.6, "mean_alpha": -0.02})
    d = dx.diagnose(m)
    assert [f.rule for f in d.findings][:2] == ["gate_collapsed", "inner_lr_too_high"]
    f = d.findings[0]
    assert "21% of its init" in f.symptom and "sign flipped" in f.symptom and "lafter > lprev" in f.cause
    assert "earlier checkpoint" in f.fix and f.confidence == dx.HIGH


def test_gate_never_moved_is_not_a_collapse():
    m = healthy_metrics()
    fail(m, "gate_stats", measured=0.0997, details={"untrained": True, "alpha_init": 0.1, "fraction_of_init": 1.0})
    assert rules(m) == ["gate_never_moved"]
    assert "optimiser" in top(m).cause


def test_gate_with_unknown_init_is_a_low_confidence_collapse():
    m = healthy_metrics()
    fail(m, "gate_stats", measured=0.005, details={"alpha_init": None, "fraction_of_init": None})
    f = top(m)
    assert f.rule == "gate_collapsed" and f.confidence == dx.LOW and "unknown" in f.confidence_why


# -- outer loss ---------------------------------------------------------------------------------


def test_ttt_hurts_and_ttt_does_nothing_are_different_findings():
    m = healthy_metrics()
    fail(m, "ttt_helps", measured=-0.01, details={"loss_learned": 1.7442, "loss_gate0": 1.7264, "verdict": "hurts"})
    assert rules(m) == ["ttt_hurts"] and "+1.03%" in top(m).symptom
    m = healthy_metrics()
    fail(m, "ttt_helps", measured=0.0002, details={"verdict": "does_nothing"})
    assert rules(m) == ["ttt_does_nothing"]


def test_untrained_ttt_explains_hurt_outer_loss_and_dead_parameters():
    m = healthy_metrics()
    fail(m, "dead_parameters", measured=1.0, details={"unchanged": [f"t{i}" for i in range(10)], "unused": ["u0", "u1"]})
    fail(m, "ttt_helps", measured=-0.01, details={"verdict": "hurts", "relative_decrease": -0.0103})
    fail(m, "figure5_adaptation", measured=-0.1)
    m["figure5"][LAYER] = _f5(benefit_first_quarter=0.5, benefit_last_quarter=0.4)
    assert rules(m) == ["ttt_untrained"]
    assert "+1.03% vs gate 0" in top(m).symptom


def test_all_but_one_tensor_at_init_is_a_branch_no_gradient_reached():
    """A zeroed output projection held out of the optimiser (zoo ttt-ignores-input): it is the only
    tensor that differs from its init, everything behind it got no gradient."""
    m = healthy_metrics()
    fail(m, "dead_parameters", measured=18 / 19, details={"compared": 19, "unchanged": [f"t{i}" for i in range(18)], "unused": []})
    fail(m, "ttt_helps", measured=0.0, details={"verdict": "does_nothing", "relative_decrease": 0.0})
    fail(m, "figure5_adaptation", measured=-0.04)
    assert rules(m)[0] == "ttt_untrained"
    assert "no gradient" in top(m).title and "18 of 19" in top(m).symptom
    # two tensors moved: some training happened, the partial finding stays
    fail(m, "dead_parameters", measured=17 / 19, details={"compared": 19, "unchanged": [f"t{i}" for i in range(17)], "unused": []})
    assert "ttt_untrained" not in rules(m)


def test_inner_weights_left_out_of_the_optimiser_are_named_before_the_context_symptom():
    """The user's bug #12 made by training (weights.* / biases.* filtered out of the optimiser):
    measured on the reference, dead_parameters names the four W_0 tensors and figure5_adaptation fails
    (-0.029 +- 0.053); the top finding must be the optimiser, not 'TTT cannot use the context'."""
    m = healthy_metrics()
    frozen = [f"layers.3.ttt.ttt.{kind}.{i}" for kind in ("weights", "biases") for i in (0, 1)]
    fail(m, "dead_parameters", measured=4 / 19, details={"compared": 19, "unchanged": frozen, "unused": [],
                                                         "inner_initial_state": frozen, "inner_initial_state_unchanged": frozen})
    fail(m, "figure5_adaptation", measured=-0.029)
    m["figure5"][LAYER] = _f5(benefit_first_quarter=1.61, benefit_last_quarter=1.581)
    finding = top(m)
    assert finding.rule == "inner_state_untrained" and finding.confidence == dx.HIGH, rules(m)
    assert "weights.0" in finding.symptom and "15 other TTT tensors" in finding.symptom and "optimiser" in finding.fix
    assert "context_not_used" not in rules(m) and "dead_parameters_partial" not in rules(m)
    # weights at init but the zero-initialised biases moved: updates rounding away (a tiny outer lr), not a filter
    fail(m, "dead_parameters", measured=2 / 19, details={"compared": 19, "unchanged": frozen[:2], "unused": [],
                                                         "inner_initial_state": frozen, "inner_initial_state_unchanged": frozen[:2]})
    assert "inner_state_untrained" not in rules(m) and "dead_parameters_partial" in rules(m)


def test_other_tensors_at_init_stay_a_partial_finding():
    m = healthy_metrics()
    fail(m, "dead_parameters", measured=1 / 19, details={"compared": 19, "unchanged": ["layers.3.ttt.ttt.lr_bias"],
                                                         "unused": [], "inner_initial_state_unchanged": []})
    assert rules(m) == ["dead_parameters_partial"]


def test_inner_loss_off_scale_names_the_outer_lr_before_the_gate_it_also_toppled():
    """Measured on a fine-tune at outer lr 0.3 (100x): mean l0 8.27 (healthy ~2), no smoothed loss
    above 10, the gate fell to 21% of its init; the report had only 'gating collapsed' and left
    figure5_bounded unexplained."""
    m = healthy_metrics()
    m["figure5"][LAYER] = _f5(l0=8.265, lprev=7.228, lafter=7.203, max_smoothed_loss=9.63)
    fail(m, "figure5_bounded", measured=9.63, explanation="ABNORMAL mean l0 8.265 outside [0.001, 5]")
    fail(m, "gate_stats", measured=0.214, details={"mean_tanh": 0.02136, "alpha_init": 0.1, "fraction_of_init": 0.214})
    assert rules(m)[:2] == ["inner_loss_off_scale", "gate_collapsed"], rules(m)
    finding = top(m)
    assert "8.265" in finding.symptom and "outer" in finding.fix and "unexplained_failure" not in rules(m)
    # that run predates lmean: the old absolute bounds judged it, and the finding says so
    assert "predates lmean" in finding.symptom
    # beyond the ceiling it is the inner step's instability, a rule of its own
    m["figure5"][LAYER] = _f5(l0=12.0, lprev=14.0, lafter=15.0, max_smoothed_loss=18.0)
    assert "inner_loss_off_scale" not in rules(m) and "inner_loss_exploding" in rules(m)


def test_inner_loss_off_scale_reads_l0_against_the_mean_predictor_when_the_run_has_it():
    """l0 1.2e3 x lmean: off scale; the same l0 against an lmean that makes it 2x is on scale (a
    loss scale shared by prediction and target, e.g. a grown ttt_norm_weight), and no rule names it."""
    m = healthy_metrics()
    m["figure5"][LAYER] = _f5(l0=6.0, lprev=5.0, lafter=4.9, max_smoothed_loss=7.0, mean_lmean=0.005, l0_to_lmean=1200.0)
    fail(m, "figure5_bounded", measured=7.0, explanation="W_0 OFF SCALE: mean l0 6 is 1200x ...")
    finding = top(m)
    assert finding.rule == "inner_loss_off_scale" and "1200x, above 1000" in finding.symptom and "outer" in finding.fix
    assert "predates" not in finding.symptom
    m = healthy_metrics()
    m["figure5"][LAYER] = _f5(l0=6.0, lprev=5.0, lafter=4.9, max_smoothed_loss=7.0, mean_lmean=3.0, l0_to_lmean=2.0)
    assert "inner_loss_off_scale" not in rules(m)


def test_a_target_that_does_not_vary_is_nothing_to_reconstruct_by_lmean():
    m = healthy_metrics()
    m["figure5"][LAYER] = _f5(l0=1e-4, lprev=0.9e-4, lafter=0.8e-4, mean_lmean=1e-4, l0_to_lmean=1.0)
    fail(m, "figure5_bounded", measured=1e-4, explanation="NOTHING TO RECONSTRUCT ...")
    finding = top(m)
    assert finding.rule == "inner_loss_off_scale" and "nothing to reconstruct" in finding.title
    assert "lmean below 0.001" in finding.symptom and "inner_lr_too_low" not in rules(m)


def test_an_inner_loss_of_zero_is_nothing_to_reconstruct_not_a_timid_step():
    """ttt_norm_weight zeroed: l0 = lprev = lafter = 0 exactly."""
    m = healthy_metrics()
    m["figure5"][LAYER] = {**_f5(), "mean_l0": 0.0, "mean_lprev": 0.0, "mean_lafter": 0.0, "max_smoothed_loss": 0.0,
                           "improvement_abs": 0.0, "improvement_rel": 0.0}
    fail(m, "figure5_bounded", measured=0.0, explanation="ABNORMAL mean l0 0 outside [0.001, 5]")
    fail(m, "figure5_improvement", measured=0.0)
    finding = top(m)
    assert finding.rule == "inner_loss_off_scale" and "nothing to reconstruct" in finding.title and "ttt_norm_weight" in finding.fix
    assert finding.confidence == dx.MEDIUM and "inner_lr_too_low" not in rules(m)  # no step helps where nothing is to learn
    fail(m, "dead_parameters", measured=1 / 19, details={"compared": 19, "unchanged": [], "zeroed": ["layers.3.ttt.ttt.ttt_norm_weight"]})
    finding = top(m)
    assert finding.confidence == dx.HIGH and "restore layers.3.ttt.ttt.ttt_norm_weight" in finding.fix


def test_unused_parameters_are_a_dead_code_path():
    m = healthy_metrics()
    fail(m, "dead_parameters", measured=0.25, details={"unchanged": [], "unused": ["post_norm.weight", "wo.bias"]})
    assert rules(m) == ["dead_code_path"] and "post_norm.weight" in top(m).symptom


# -- code bugs and causality ---------------------------------------------------------------------


def test_non_causal_read_ahead_wins_over_the_generation_collapse_it_causes():
    m = healthy_metrics()
    fail(m, "streaming_consistency", measured=0.061, details={"loss_streamed": 1.737, "loss_teacher_forced": 1.636})
    fail(m, "talk_collapse", 1, measured=0.5, details={"kinds": ["repetition"]})
    d = dx.diagnose(m)
    assert [f.rule for f in d.findings] == ["noncausal_read_ahead"]
    assert "+6.10%" in d.findings[0].symptom and "fooled" in d.findings[0].symptom
    assert d.findings[0].config_key == "decoder.ttt.causal" and d.findings[0].value is True


def test_state_not_carried_is_a_code_bug_with_the_flag_to_set():
    m = healthy_metrics()
    fail(m, "state_persistence", measured=0.0)
    f = top(m)
    assert f.rule == "state_not_carried" and "code bug" in f.cause
    assert (f.config_key, f.value) == ("decoder.ttt_reset_each_call", False)
    m["adapter"] = "moshi"
    assert (top(m).config_key, top(m).value) == ("ttt.persistent_states", True)


def test_non_finite_weights_say_where_they_first_appear_and_override_their_consequences():
    m = healthy_metrics()
    fail(m, "checkpoint_finite", measured=2, details={"nonfinite": ["layers.3.ttt.wk.weight", "layers.1.ttt.w0"]})
    fail(m, "figure5_finite", measured=5)
    fail(m, "ttt_helps", measured="nan", explanation="cannot measure: TTT produces NaN")
    fail(m, "talk_base", measured=None, explanation="cannot measure: TTT produces NaN")
    d = dx.diagnose(m)
    assert [f.rule for f in d.findings] == ["nonfinite_weights"]
    assert "first in layers.1.ttt.w0" in d.findings[0].symptom and f"from layer {LAYER}" in d.findings[0].symptom
    assert {"inner_loss_nonfinite"} <= {s["rule"] for s in d.suppressed}


def test_missing_keys_rank_above_their_figure5_consequences():
    m = healthy_metrics()
    fail(m, "checkpoint_keys", measured=2, details={"missing": ["a.weights.0", "a.biases.0"], "unexpected": []})
    fail(m, "figure5_adaptation", measured=-0.1)
    m["figure5"][LAYER] = _f5(benefit_first_quarter=0.5, benefit_last_quarter=0.4)
    assert rules(m) == ["missing_keys"]


def test_config_inconsistency_names_the_setting_and_the_trained_value():
    m = healthy_metrics()
    m["verdicts"]["config_consistency"] = [_v("config_consistency", False, 1, 0, contradictions=["mini_batch_size"], compared=[
        {"name": "mini_batch_size", "loaded": 64, "loaded_from": "config.json", "trained": 16,
         "trained_from": "training_config.json", "agrees": False}])]
    f = top(m)
    assert f.rule == "config_inconsistent" and (f.config_key, f.value) == ("mini_batch_size", 16)


# -- the gating sweep ----------------------------------------------------------------------------


@pytest.mark.parametrize("words, expected", [
    ({"0": 20, "learned": 0, "1": 0}, "sweep_scenario_a"),
    ({"0": 20, "learned": 1, "1": 15}, "sweep_scenario_b"),
    ({"0": 0, "learned": 0, "1": 1}, "sweep_scenario_c"),
])
def test_sweep_scenarios_a_b_c(words, expected):
    m = healthy_metrics()
    m["sweep"] = [_row(label, tanh, words[label]) for label, tanh in (("0", 0.0), ("learned", 0.05), ("1", 0.76))]
    if words["0"] < 3:
        fail(m, "talk_base", measured=words["0"])
    if words["learned"] < 0.5 * max(words["0"], 1):
        fail(m, "talk_learned", measured=0.0)
    assert rules(m) == [expected]
    assert top(m).evidence[0].endswith("gate_0.wav")


def test_a_learned_gate_above_every_talking_gate_is_not_scenario_b():
    """healthy-seed0 with alpha set to 3 (tanh 0.995): gate 0 and gate 1 (tanh 0.76) talk, the learned
    gate loops. Scenario B ('the learned gate is too small to use TTT') was reported; the gate is the
    most open of all, so no scenario applies and TTT hurts names the gate."""
    m = healthy_metrics()
    m["sweep"] = [_row("0", 0.0, 65), _row("learned", 0.995, 397, collapsed=True), _row("1", 0.76, 116)]
    fail(m, "talk_learned", measured=0.0)
    fail(m, "ttt_helps", measured=-0.29, details={"verdict": "hurts", "relative_decrease": -0.2896})
    m["verdicts"]["gate_stats"][0]["details"].update(mean_tanh=0.9951, alpha_init=0.1, fraction_of_init=9.98,
                                                     fraction_sign_flipped=0.0)
    assert "sweep_scenario_b" not in rules(m) and "sweep_scenario_a" not in rules(m)
    finding = top(m)
    assert finding.rule == "ttt_hurts" and "998% of its init" in finding.symptom and "far beyond its init" in finding.cause
    assert finding.cause.count("(") == finding.cause.count(")")
    m["verdicts"]["gate_stats"][0]["details"].update(fraction_of_init=1.05)
    finding = top(m)
    assert "undertrained" in finding.cause and finding.cause.count("(") == finding.cause.count(")"), finding.cause


def test_harm_from_the_test_time_updates_is_named_not_the_gate():
    """healthy-recall with its value projection redrawn (recall-values-random): +9.30% loss, of which the
    branch as a static layer -0.22% and the updates +9.06%, with the gate at 435% of its init, where the
    default's fine-tune put it. The cause is the inner loop's read/write, not the gate; with the harm in the
    static branch instead (recall-queries-random: -8.67% static, -2.88% updates) and the same healthy gate,
    the gate is not blamed either (gate_open_max_ratio 6.5)."""
    m = healthy_metrics()
    fail(m, "ttt_helps", measured=-0.093, details={"verdict": "hurts", "relative_decrease": -0.093,
                                                    "relative_decrease_from_inner_steps": -0.0906,
                                                    "relative_decrease_static_branch": -0.0022})
    m["verdicts"]["gate_stats"][0]["details"].update(mean_tanh=0.4337, alpha_init=0.1, fraction_of_init=4.35,
                                                     fraction_sign_flipped=0.0)
    finding = top(m)
    assert finding.rule == "ttt_hurts" and "test-time updates make the predictions worse" in finding.title
    assert "+9.06%" in finding.symptom and "do not tune the gate" in finding.fix and finding.config_key is None
    m["verdicts"]["ttt_helps"][0]["details"].update(relative_decrease_from_inner_steps=-0.0288,
                                                    relative_decrease_static_branch=-0.0867)
    finding = top(m)
    assert finding.rule == "ttt_hurts" and "far beyond its init" not in finding.cause
    assert "static path" in finding.cause and "+8.67%" in finding.symptom, finding.symptom
    m["verdicts"]["gate_stats"][0]["details"].update(fraction_of_init=9.98)
    assert "far beyond its init" in top(m).cause


def test_a_negated_gate_that_hurts_is_named():
    """healthy-seed0 with every alpha negated: +1.13% loss; gate_stats passes (as strong as at init)
    with a sign-flip warning."""
    m = healthy_metrics()
    fail(m, "ttt_helps", measured=-0.0113, details={"verdict": "hurts", "relative_decrease": -0.0113})
    m["verdicts"]["gate_stats"][0]["details"].update(mean_tanh=0.1076, signed_mean_tanh=-0.1076, alpha_init=0.1,
                                                     fraction_of_init=1.08, fraction_sign_flipped=1.0)
    finding = top(m)
    assert finding.rule == "ttt_hurts" and "opposite sign" in finding.title and "sign flipped in 100%" in finding.symptom


def test_unknown_failure_is_reported_not_hidden():
    m = healthy_metrics()
    m["verdicts"]["model_specific"] = [_v("gate0_matches_vanilla", False, 0.3, 1e-4, "gate 0 differs from vanilla Moshi")]
    f = top(m)
    assert f.rule == "unexplained_failure" and "vanilla" in f.symptom and f.confidence == dx.LOW


def test_every_rule_has_a_function_and_precedence_is_strict():
    precedences = [r.precedence for r in dx.RULES]
    assert precedences == sorted(precedences) and len(set(precedences)) == len(precedences)
    assert set(dx.RULE_FUNCTIONS) == {r.id for r in dx.RULES} - {"unexplained_failure", "not_measured"}
    for r in dx.RULES:
        assert set(r.overrides) <= set(dx.RULES_BY_ID), r.id


def test_a_broken_rule_never_costs_the_report(monkeypatch):
    monkeypatch.setitem(dx.RULE_FUNCTIONS, "ttt_hurts", lambda m: 1 / 0)
    out = dx.diagnosis_dict(healthy_metrics())
    assert out["summary"].startswith("diagnosis failed: ZeroDivisionError") and out["findings"] == []


# -- where people look ---------------------------------------------------------------------------


def test_report_text_html_and_junit_properties_lead_with_the_diagnosis(tmp_path):
    from ttt_checks.pytest_plugin import junit_diagnosis_properties
    from ttt_checks.report import write_report

    m = healthy_metrics()
    fail(m, "state_persistence", measured=0.0)
    paths = write_report(copy.deepcopy(m), tmp_path)
    import json

    saved = json.loads(paths["metrics"].read_text())
    assert saved["diagnosis"]["findings"][0]["rule"] == "state_not_carried"
    text = paths["report"].read_text()
    assert text.index("Diagnosis") < text.index("Layer ") and "1. TTT state not carried" in text
    page = paths["html"].read_text()
    assert page.index("<h2>Diagnosis</h2>") < page.index("<h2>Verdicts</h2>")
    props = dict(junit_diagnosis_properties(saved["diagnosis"]))
    assert props["diagnosis.healthy"] == "false" and props["diagnosis.1.rule"] == "state_not_carried"
    assert "code bug" in props["diagnosis.1.cause"] and props["diagnosis.1.config_key"] == "decoder.ttt_reset_each_call"


def test_junit_carries_the_reviewers_numbers_per_layer_and_leaves_out_what_was_not_measured():
    from ttt_checks.pytest_plugin import junit_measurement_properties

    m = healthy_metrics()
    m["outer_loss"] = {"learned": 1.70, "gate0": 1.71, "no_inner_step": "nan"}
    m["verdicts"]["ttt_helps"][0]["details"]["relative_decrease"] = 0.0058
    props = dict(junit_measurement_properties(m))
    stats = m["figure5"][LAYER]
    assert float(props[f"layer.{LAYER}.mean_l0"]) == pytest.approx(stats["mean_l0"])
    assert float(props[f"layer.{LAYER}.mean_lafter"]) == pytest.approx(stats["mean_lafter"])
    assert f"layer.{LAYER}.mean_lmean" not in props  # a run from before lmean: left out, not 0
    stats.update(mean_lmean=0.5996, l0_to_lmean=1.924)
    props = dict(junit_measurement_properties(m))
    assert props[f"layer.{LAYER}.mean_lmean"] == "0.5996" and props[f"layer.{LAYER}.l0_to_lmean"] == "1.924"
    assert props[f"layer.{LAYER}.gate_mean_abs_tanh"] == "0.108"
    assert props["outer_loss.learned"] == "1.7" and props["outer_loss.relative_decrease"] == "0.0058"
    m["figure5"][LAYER]["mean_lprev"] = "nan"
    assert f"layer.{LAYER}.mean_lprev" not in dict(junit_measurement_properties(m))  # never a made-up number


def test_gate_summary_prints_the_top_finding_in_one_line(tmp_path):
    import json

    from ttt_checks.runs.suite import summary

    m = healthy_metrics()
    fail(m, "state_persistence", measured=0.0)
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    lines = summary(tmp_path, 1, 1.0).splitlines()
    diag = [l for l in lines if l.startswith("diagnosis:")]
    assert len(diag) == 1 and "TTT state not carried" in diag[0]
    (tmp_path / "metrics.json").write_text(json.dumps(healthy_metrics()))
    assert any(l.startswith("diagnosis: HEALTHY") for l in summary(tmp_path, 0, 1.0).splitlines())


# -- docs/diagnosis.md ---------------------------------------------------------------------------


def test_docs_table_is_the_one_generated_from_the_rules():
    """docs/diagnosis.md's table is generated from the rules' declarations (``python -m
    ttt_checks.diagnosis.table``), so a rule and its description cannot drift apart."""
    from ttt_checks.diagnosis.table import DOC, main, with_table

    text = DOC.read_text()
    assert with_table(text, dx.rules_table()) == text, "docs/diagnosis.md is stale: run python -m ttt_checks.diagnosis.table"
    assert main(["--check"]) == 0
    for r in dx.RULES:  # every rule has a row, in precedence order, with its overrides
        assert f"| {r.precedence} | `{r.id}` |" in text, r.id


def test_a_stale_docs_table_is_refused(tmp_path):
    from ttt_checks.diagnosis.table import DOC, main

    stale = tmp_path / "diagnosis.md"
    stale.write_text(DOC.read_text().replace("| 1 | `nonfinite_weights` |", "| 1 | `nonfinite_weights_old` |"))
    assert main(["--check"], doc=stale) == 1
    assert main([], doc=stale) == 0 and main(["--check"], doc=stale) == 0  # rewritten from the rules


def test_a_rule_is_declared_once_with_a_unique_precedence():
    from ttt_checks.diagnosis.finding import declare

    with pytest.raises(ValueError, match="declared twice"):
        declare(dx.Rule("ttt_hurts", 500, "c", "e", "f"))
    with pytest.raises(ValueError, match="share precedence"):
        declare(dx.Rule("a_new_rule", dx.RULES_BY_ID["ttt_hurts"].precedence, "c", "e", "f"))


def test_every_broken_zoo_entry_names_the_diagnosis_its_construction_implies():
    """The mapping entry -> expected top finding is data (expected_diagnosis, else built_to_fail):
    every broken entry gets a rule of the table, healthy ones none."""
    from ttt_checks.runs.matrix import zoo_expected_diagnoses
    from ttt_checks.models.reference.zoo import zoo_entries

    expected = zoo_expected_diagnoses()
    for entry in zoo_entries():
        if entry.healthy:
            assert expected[entry.name] is None, entry.name
        else:
            assert expected[entry.name] in dx.RULES_BY_ID, (entry.name, expected[entry.name])
    assert dx.expected_diagnosis({"healthy": False, "built_to_fail": ["figure5_ordering", "figure5_improvement"]}) == "inner_lr_too_high"
    assert dx.expected_diagnosis({"healthy": False, "built_to_fail": ["figure5_improvement"]}) == "inner_lr_too_low"
    assert dx.expected_diagnosis({"expected_diagnosis": "gate_collapsed", "built_to_fail": ["x"]}) == "gate_collapsed"


@pytest.mark.slow
def test_gate_cli_prints_and_records_the_top_finding_of_a_broken_zoo_checkpoint(tmp_path):
    """`ttt-checks gate` on zoo lr-near-zero (a subprocess, ~40 s): the diagnosis line on stdout,
    metrics.json and the JUnit properties all name the cause its construction implies. The top
    finding of every zoo entry is asserted by tests/test_meta_zoo.py on its one health run."""
    import json
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    from ttt_checks.runs.matrix import zoo_expected_diagnoses
    from ttt_checks.models.reference.zoo import zoo_path

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "ttt_checks.cli", "gate", str(zoo_path("lr-near-zero")), "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, cwd=REPO)
    assert (out / "metrics.json").is_file(), proc.stdout[-3000:] + proc.stderr[-2000:]
    expected = zoo_expected_diagnoses()["lr-near-zero"]
    assert expected is not None
    diagnosis = json.loads((out / "metrics.json").read_text())["diagnosis"]
    assert diagnosis["findings"] and diagnosis["findings"][0]["rule"] == expected, diagnosis["summary"]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("diagnosis: ")]
    assert expected.replace("_", " ") in line or diagnosis["findings"][0]["title"] in line, line
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties").iter("property")}
    assert props["diagnosis.healthy"] == "false" and props.get("diagnosis.1.rule") == expected


def test_an_interrupted_run_is_never_called_healthy():
    m = healthy_metrics()
    m["complete"] = False
    d = dx.diagnose(m)
    assert not d.healthy and d.summary.startswith("INCOMPLETE") and "HEALTHY" not in d.summary


def test_detection_matrix_diagnosis_table_marks_a_wrong_top_finding():
    from ttt_checks.runs.matrix import render_diagnoses

    text = render_diagnoses([("a", "gate_collapsed", "gate_collapsed", "x | y"), ("b", "missing_keys", "ttt_hurts", "z"),
                             ("c", None, None, "HEALTHY")])
    rows = [l for l in text.splitlines() if l.startswith(("| a |", "| b |", "| c |"))]
    assert rows[0].endswith("| yes |") and rows[1].endswith("| NO |") and rows[2].endswith("| yes |")
    assert "x \\| y" in rows[0]


def test_a_constant_ttt_output_is_named_with_high_confidence():
    m = healthy_metrics()
    fail(m, "ttt_helps", measured=0.0012, details={"loss_learned": 1.7243, "loss_gate0": 1.7264, "relative_decrease": 0.0012,
                                                    "verdict": "does_nothing", "constant_output_layers": {LAYER: 0.0}})
    assert rules(m) == ["ttt_does_nothing"]
    finding = top(m)
    assert finding.confidence == dx.HIGH and "same at every position" in finding.symptom and "(wo)" in finding.fix


def test_a_zeroed_tensor_is_named_as_zeroed_not_as_left_out_of_the_optimiser():
    m = healthy_metrics()
    fail(m, "dead_parameters", measured=2 / 12, details={"unchanged": ["wq.bias"], "zeroed": ["wq.weight"], "compared": 12})
    finding = top(m)
    assert finding.rule == "dead_parameters_partial" and finding.confidence == dx.HIGH
    assert "wq.weight" in finding.symptom and "zeroed" in finding.title and "wq.bias" in finding.symptom


def test_a_zeroed_output_projection_that_blocked_every_gradient_is_named():
    m = healthy_metrics()
    unchanged = [f"t{i}" for i in range(18)]
    fail(m, "dead_parameters", measured=1.0, details={"unchanged": unchanged, "zeroed": ["layers.3.ttt.ttt.wo.weight"],
                                                      "compared": 19})
    finding = top(m)
    assert finding.rule == "ttt_untrained" and "no gradient reached it" in finding.title
    assert "layers.3.ttt.ttt.wo.weight" in finding.symptom and "layers.3.ttt.ttt.wo.weight" in finding.fix


def test_a_gate_set_to_zero_is_named_as_zeroed_not_as_a_fall_the_outer_loop_made():
    """healthy-seed0 with every alpha set to 0 after training: measured, the top finding said 'the outer
    loop switched TTT off' (scenario B) with high confidence."""
    m = healthy_metrics()
    fail(m, "gate_stats", measured=0.0, details={"mean_tanh": 0.0, "alpha_init": 0.1, "fraction_of_init": 0.0})
    fail(m, "dead_parameters", measured=1 / 19, details={"compared": 19, "unchanged": [], "zeroed": ["layers.3.ttt.alpha"]})
    fail(m, "ttt_helps", measured=0.0, details={"verdict": "does_nothing", "relative_decrease": 0.0})
    finding = top(m)
    assert finding.rule == "gate_collapsed" and "zeroed" in finding.title and finding.confidence == dx.HIGH
    assert "layers.3.ttt.alpha" in finding.fix and "outer loop did not" in finding.cause
    # a gate that fell to a small non-zero value is a fall, whatever else was zeroed
    fail(m, "gate_stats", measured=0.05, details={"mean_tanh": 0.005, "alpha_init": 0.1, "fraction_of_init": 0.05})
    assert "zeroed" not in top(m).title


def test_a_zero_initialised_gate_that_stayed_shut_did_not_fall():
    m = healthy_metrics()
    fail(m, "gate_stats", measured=0.002, threshold=0.01,
         details={"mean_tanh": 0.002, "alpha_init": 0.0, "fraction_of_init": None})
    finding = top(m)
    assert finding.rule == "gate_collapsed" and "never opened" in finding.title and "fell" not in finding.title


# -- a checkpoint that does not load ----------------------------------------------------------------


def _load_failure(stage: str, **details) -> dict:
    return {"complete": True, "verdicts": {"checkpoint_load": [{
        "name": "checkpoint_load", "ok": False, "measured": None, "threshold": None, "status": "cannot_measure",
        "explanation": "cannot measure: could not load the checkpoint /x: CheckpointError: config.json names TTT layer 9, the "
                       "tensors hold layer 3", "details": {"stage": stage, **details}}]}}


def test_a_checkpoint_that_does_not_load_is_diagnosed_with_the_loaders_reason():
    f = top(_load_failure("load", error_type="CheckpointError",
                          load_error="config.json names TTT layer 9, the tensors hold layer 3"))
    assert f.rule == "checkpoint_not_loaded" and f.confidence == dx.HIGH
    assert "config.json names TTT layer 9, the tensors hold layer 3" in f.cause
    assert dx.diagnose(_load_failure("load", error_type="E", load_error="x")).findings[1:] == []  # nothing else claimed


def test_an_interrupted_load_is_not_called_a_load_failure():
    assert top(_load_failure("interrupted")).rule == "not_measured"


# -- advice never contradicts its own numbers -------------------------------------------------------

_GRID = [0.0, 0.001, 0.25, 0.5, 1.0, 2.0, 4.0]


def advice_goes_its_own_way(fix: str, rule: str) -> None:
    """A fix that says lower names a smaller value than the one it starts from, raise a larger one."""
    for verb, sign in (("lower", -1), ("raise", +1)):
        match = re.search(rf"{verb} \S+ from ([0-9.e+-]+) to (?:at (?:most|least) )?([0-9.e+-]+)", fix)
        if match:
            start, target = float(match.group(1)), float(match.group(2))
            assert (target - start) * sign > 0, f"{rule}: '{fix}' goes the wrong way"


def _advice_agrees(f: dx.Finding) -> None:
    advice_goes_its_own_way(f.fix, f.rule)


def test_a_probe_whose_best_is_the_grids_largest_step_never_sizes_advice_to_lower_the_lr():
    """Held-out trend case: Figure 5 failed after the outer lr jumped, and the fix read 'lower ttt.base_lr from
    1 to 4' because the probe's best multiplier was the grid's edge (x4). Lower must name a smaller value."""
    m = healthy_metrics()
    m["layers"][0]["base_lr"] = 1.0
    m["figure5"][LAYER] = _f5(l0=1.80, lprev=2.289, lafter=2.305)
    fail(m, "figure5_ordering", measured=0.0)
    fail(m, "figure5_improvement", measured=-0.017)
    m["inner_step_size"] = {LAYER: {"best_multiplier": 4.0, "base_lr": 1.0, "recommended_base_lr": 4.0,
                                    "multipliers": _GRID, "bracketed": False}}
    f = top(m)
    assert f.rule == "inner_lr_too_high" and f.value is not None and f.value < 1.0, f.fix
    _advice_agrees(f)


def test_an_unbracketed_optimum_is_a_bound_not_a_value():
    m = healthy_metrics()
    m["figure5"][LAYER] = _f5(l0=1.296, lprev=1.2960, lafter=1.2959)
    m["layers"][0]["base_lr"] = 100.0
    fail(m, "figure5_improvement", measured=1e-4)
    m["inner_step_size"] = {LAYER: {"best_multiplier": 4.0, "base_lr": 100.0, "recommended_base_lr": 400.0,
                                    "multipliers": _GRID, "bracketed": False}}
    f = top(m)
    assert f.rule == "inner_lr_too_low" and "to at least 400" in f.fix and "not bracketed" in f.confidence_why
    _advice_agrees(f)
    m["inner_step_size"][LAYER].update(best_multiplier=2.0, recommended_base_lr=200.0, bracketed=True)
    f = top(m)
    assert "to 200" in f.fix and "at least" not in f.fix and "not bracketed" not in f.confidence_why
    del m["inner_step_size"][LAYER]["bracketed"]  # a run written before the probe said so: derived from the grid
    assert "to 200" in top(m).fix


def test_the_probe_says_whether_its_optimum_is_bracketed():
    from ttt_checks.ttt.step_probe import StepSizeRecord

    def record(losses):
        return StepSizeRecord("l", list(_GRID[1:]), losses, loss_start=2.0, count=10, nonfinite=0, base_lr=1.0)

    inside = record([1.9, 1.5, 1.2, 1.0, 1.1, 1.4])
    edge = record([1.9, 1.7, 1.5, 1.3, 1.1, 1.0])
    assert inside.bracketed and inside.to_dict()["bracketed"] is True
    assert not edge.bracketed and edge.best_multiplier == 4.0 and edge.to_dict()["bracketed"] is False


# -- the checkpoint's own training record against what is measured -------------------------------


def test_a_train_loss_far_below_the_evaluated_one_is_another_objective():
    """Held-out class: a branch fine-tuned with labels not shifted (teacher-forced 6.48 at the learned gate,
    1.73 at gate 0, the training record 0.52) was diagnosed 'the gate opened'."""
    m = healthy_metrics()
    m["outer_loss"] = {"learned": 6.48, "gate0": 1.73}
    m["training_record"] = {"train_loss": 0.52, "val_loss": None, "source": "config.json training"}
    fail(m, "ttt_helps", measured=-2.75, details={"verdict": "hurts", "relative_decrease": -2.75})
    fail(m, "gate_stats", measured=0.2)
    f = top(m)
    assert f.rule == "objective_mismatch" and "12.5x" in f.symptom and f.confidence == dx.HIGH
    assert "gate_collapsed" not in rules(m) and "ttt_hurts" not in rules(m)
    m["outer_loss"]["learned"], m["training_record"]["train_loss"] = 1.72, 1.39  # healthy-seed0's 1.24: no finding
    assert "objective_mismatch" not in rules(m)


def test_a_record_alone_is_not_a_finding_when_every_check_passes():
    m = healthy_metrics()
    m["outer_loss"] = {"learned": 6.48, "gate0": 6.5}
    m["training_record"] = {"train_loss": 0.52, "source": "config.json training"}
    assert dx.diagnose(m).healthy and "objective_mismatch" not in rules(m)
