"""Regressions from the held-out sweep (issue 13): checkpoints made as a user makes them, trained
or edited after training, judged by the health rules.

Found by the sweep: a config whose inner ``base_lr`` was raised 1e4x after training makes the
inner loss along the update fall (to m = 1e-3), rise (m = 0.25) and fall again further out (m = 4);
``inner_step_size`` took the grid's best m = 4 for the step's optimum, passed, and recommended
raising base_lr 4x more. The rule now calls a line with two regimes an overshoot
(``StepSizeRecord.first_basin``). Edits of the committed zoo entry keep the tests fast (one
teacher-forced pass of the reference model each, ~10 s on 1 thread).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ttt_checks import checks as health
from ttt_checks.checks.outer import _block_mean_and_se
from ttt_checks.models.reference.adapter import ReferenceAdapter
from ttt_checks.models.reference.zoo import zoo_path
from ttt_checks.run import HealthRun, RunOptions
from ttt_checks.ttt.step_probe import DEFAULT_MULTIPLIERS, StepSizeRecord

TH = health.load_thresholds()


def _record(losses: list[float], start: float, base_lr: float = 1.0) -> StepSizeRecord:
    return StepSizeRecord("layers.3.ttt", list(DEFAULT_MULTIPLIERS), losses, start, 1024, 0, base_lr)


def _edited_zoo_copy(tmp_path: Path, name: str, edit_ttt: dict) -> Path:
    """healthy-seed0 copied into tmp_path with config.json's decoder.ttt fields replaced; the
    base stays where the zoo keeps it (an absolute path in the copy's config)."""
    src = zoo_path("healthy-seed0")
    dst = tmp_path / name
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["base"] = str((src / config["base"]).resolve())
    config["decoder"]["ttt"].update(edit_ttt)
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    return dst


def _judge(ckpt: Path, tmp_path: Path, check: str) -> list[health.Verdict]:
    torch.set_num_threads(1)
    return HealthRun(ReferenceAdapter(ckpt), RunOptions(report_dir=tmp_path / "report")).judge(check)


def test_a_line_that_falls_rises_and_falls_again_is_a_saturated_overshoot():
    # The numbers measured on healthy-seed0 with base_lr x 1e4 (grid 1e-6, 1e-3, 0.25, 0.5, 1, 2, 4).
    rec = _record([1.09713, 1.0646, 1.06654, 1.05687, 1.03475, 0.996518, 0.947285], 1.09737, base_lr=1e4)
    assert rec.best_multiplier == 4.0 and rec.first_basin(TH["ordering_min_rel_gap"]) == (1, 6)
    (v,) = health.inner_step_size({"layers.3.ttt": rec}, TH)
    assert not v.ok and "OVERSHOOT (saturated)" in v.explanation, v.line()
    assert "recommended base_lr ~ 10000 x 0.001 = 10" in v.explanation, v.explanation
    assert v.details["first_basin_multiplier"] == 1e-3


def test_a_second_regime_that_does_not_beat_the_first_minimum_is_still_an_overshoot():
    # Trained b = 64 causal checkpoint with base_lr x 1e4 in config.json: best m = 1e-3, and the full
    # step gives away only 16% of its gain (inside the quadratic margin 25%), but the line rises then
    # falls again. Before: PASS, "the step taken is within the tolerance".
    rec = _record([1.38803, 1.07191, 1.11769, 1.12645, 1.12287, 1.10591, 1.07568], 1.39576, base_lr=1e4)
    assert rec.best_multiplier == 1e-3 and rec.lost_fraction < TH["step_overshoot_margin"]
    assert rec.first_basin(TH["ordering_min_rel_gap"]) == (1, 6)
    (v,) = health.inner_step_size({"layers.3.ttt": rec}, TH)
    assert not v.ok and "OVERSHOOT (saturated)" in v.explanation and "= 10 " in v.explanation, v.line()


def test_a_line_that_rises_to_the_end_of_the_grid_is_one_basin():
    # classic overshoot (optimum near 0.25), no second fall: judged by the lost share, not as saturated
    rec = _record([0.99, 0.98, 0.70, 0.72, 0.80, 0.95, 1.2], 1.0)
    assert rec.first_basin(TH["ordering_min_rel_gap"]) is None
    (v,) = health.inner_step_size({"layers.3.ttt": rec}, TH)
    assert not v.ok and v.explanation.startswith("OVERSHOOT: the inner step is too large"), v.line()


@pytest.mark.parametrize("losses,start", [
    # healthy lines of docs/health-checks.md: monotone down to the best m, then up (or still down at 4)
    ([0.754185, 0.754059, 0.724359, 0.69843, 0.658636, 0.618441, 0.625724], 0.7542),   # zoo healthy-seed0
    ([0.8414, 0.8413, 0.8136, 0.7885, 0.7473, 0.6968, 0.6694], 0.8414),                 # zoo healthy-seed1
    ([0.9783, 0.9773, 0.9358, 0.9199, 0.8966, 0.8623, 0.8060], 0.9783),                 # tiny Moshi layers.0
    ([0.1771, 0.1770, 0.1533, 0.1358, 0.1157, 0.0981, 0.0848], 0.1771),                 # tiny Moshi layers.1
])
def test_unimodal_healthy_lines_have_no_second_regime_and_pass(losses, start):
    rec = _record(losses, start)
    assert rec.first_basin(TH["ordering_min_rel_gap"]) is None
    (v,) = health.inner_step_size({"layers.3.ttt": rec}, TH)
    assert v.ok, v.line()


def test_a_rise_within_the_equality_margin_is_not_a_second_regime():
    # 1e-5 relative up between m = 1e-3 and 0.25: equal within ordering_min_rel_gap (1e-4), not a rise.
    rec = _record([0.90, 0.80, 0.80001, 0.78, 0.75, 0.72, 0.70], 0.9001)
    assert rec.first_basin(TH["ordering_min_rel_gap"]) is None


def test_healthy_checkpoint_with_base_lr_raised_1e4_after_training_fails_inner_step_size(tmp_path):
    ckpt = _edited_zoo_copy(tmp_path, "lr-x1e4", {"base_lr": 1e4})
    (v,) = _judge(ckpt, tmp_path, "inner_step_size")
    # before the fix: PASS with best m = 4 and "recommended base_lr = 4e+04"
    assert not v.ok and "OVERSHOOT (saturated)" in v.explanation, v.line()
    # the step's optimum is the first basin; the grid's lowest loss (m = 4) lies in the saturated regime
    assert v.details["first_basin_multiplier"] < 1.0 and v.details["grid_best_multiplier"] == 4.0, v.details
    assert v.details["best_multiplier"] == v.details["first_basin_multiplier"] == v.measured, v.details
    assert v.details["recommended_base_lr"] == pytest.approx(1e4 * v.details["first_basin_multiplier"]), v.details
    (c,) = _judge(ckpt, tmp_path, "config_consistency")
    assert not c.ok and "base_lr" in c.explanation, c.line()


def test_the_unedited_healthy_checkpoint_still_passes_inner_step_size(tmp_path):
    ckpt = _edited_zoo_copy(tmp_path, "unedited", {})
    (v,) = _judge(ckpt, tmp_path, "inner_step_size")
    assert v.ok and v.details["first_basin_multiplier"] is None, v.line()


def test_ttt_helps_reports_a_paired_t_over_every_position_with_the_sign_of_its_gain():
    # 24 positions, as a run with --max-positions 24: the benefit sits in the last 8, which the
    # old equal blocks (16 x 1 position) dropped, so the t contradicted the gain shown next to it.
    gate0 = np.full(24, 2.0)
    learned = np.concatenate([np.full(16, 2.0) + 0.001 * np.sin(np.arange(16)), np.full(8, 1.97)])
    v = health.ttt_helps(learned, gate0, TH)
    gain, t = v.details["relative_decrease"], v.details["paired_t"]
    assert gain > 0 and t > 0, v.line()
    mean, se = _block_mean_and_se(gate0 - learned)
    assert mean == pytest.approx(float(np.mean(gate0 - learned))) and se > 0


def test_noncausal_input_no_longer_than_one_minibatch_is_too_short_not_nonfinite():
    # Found on a trained non-causal b = 64 checkpoint fed --max-positions 64: every position is in
    # the first mini-batch (l0 == lprev by construction), so no l0-vs-lprev position is judged and
    # the fractions are NaN; figure5_ordering said "losses are not finite" while figure5_finite passed.
    from ttt_checks.metrics.figure5 import figure5_stats
    from ttt_checks.ttt.figure5 import Figure5Record

    n = 64
    t = np.arange(n)
    l0 = 1.0 + 0.01 * np.cos(t)
    lafter = l0 - 0.2
    rec = Figure5Record(layer="layers.3.ttt", positions=t, l0=l0, lprev=l0.copy(), lafter=lafter,
                        counts=np.full(n, 8), nonfinite=np.zeros(n, int))
    stats = {rec.layer: figure5_stats(rec, n, mini_batch_size=64, causal=False, min_rel_gap=TH["ordering_min_rel_gap"])}
    assert health.figure5_finite(stats)[0].ok
    (v,) = health.figure5_ordering(stats, TH)
    assert not v.ok and v.explanation.startswith("cannot measure") and "not finite" not in v.explanation, v.line()
    assert "192 positions (frames) needed at mini_batch_size 64" in v.explanation
    # a NaN still says "not finite"
    bad = Figure5Record(layer=rec.layer, positions=t, l0=np.where(t == 3, np.nan, l0), lprev=l0.copy(), lafter=lafter,
                        counts=np.full(n, 8), nonfinite=(t == 3).astype(int))
    (w,) = health.figure5_ordering({rec.layer: figure5_stats(bad, n, mini_batch_size=64, causal=False)}, TH)
    assert not w.ok and "not finite" in w.explanation, w.line()


def test_trained_moshi_with_base_lr_1e4_is_caught_only_by_the_saturated_line():
    # Tiny Moshi trained at b = 16 (non-causal), re-saved with base_lr 1e4 in training_config.json:
    # no second statement of base_lr, Figure 5 ordered, TTT helps 45%; before the fix every check passed.
    # layers.1's line (m = 1e-6, 1e-3, 0.25, 0.5, 1, 2, 4):
    rec = _record([1.51222, 1.39862, 1.48868, 1.45883, 1.40636, 1.32373, 1.20407], 1.51583, base_lr=1e4)
    (v,) = health.inner_step_size({"layers.1": rec}, TH)
    assert not v.ok and "OVERSHOOT (saturated)" in v.explanation, v.line()


def test_a_step_at_the_first_minimum_with_a_second_regime_above_it_is_not_flagged():
    # The same Moshi at base_lr 100, layers.1: lowest near m = 1, up at 2, down at 4. The step taken
    # sits at its first minimum, so the rule (a rise below m = 1) leaves it to the quadratic rules.
    rec = _record([0.341421, 0.311943, 0.225265, 0.218147, 0.203594, 0.24067, 0.201112], 0.3415, base_lr=100)
    assert rec.first_basin(TH["ordering_min_rel_gap"]) is None
    (v,) = health.inner_step_size({"layers.1": rec}, TH)
    assert v.ok, v.line()
