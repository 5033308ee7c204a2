"""Issue 13's false alarm, made the way a user makes it: a tiny Moshi with non-causal TTT-MLP at
mini_batch_size 64, trained (base frozen) and saved in the moshi-finetune layout, must pass the
Figure-5 checks and "state carried" on the default input; re-saves of the same trained tensors
with the state reset, or with an inner learning rate of 0, fail with their own causes.

One module fixture trains once (~35 s on 1 thread, tests/moshi_fixtures.py ``B64_TRAINING``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import moshi_fixtures as mf  # noqa: E402

from ttt_checks.models.moshi import checks  # noqa: E402
from ttt_checks.models.moshi.adapter import MoshiAdapter  # noqa: E402
from ttt_checks.run import HealthRun, RunOptions  # noqa: E402

FIGURE5 = ("figure5_collected", "figure5_finite", "figure5_bounded", "figure5_ordering", "figure5_improvement",
           "figure5_adaptation")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> mf.TrainedB64:
    torch.set_num_threads(1)
    return mf.train_b64_noncausal(tmp_path_factory.mktemp("tiny_moshi_b64"))


def health_run(trained: mf.TrainedB64, ckpt: Path, tmp: Path) -> HealthRun:
    return HealthRun(MoshiAdapter(ckpt, **trained.base.options), RunOptions(report_dir=tmp / "report"))


def test_training_really_trains_the_b64_checkpoint(trained):
    assert trained.losses[-1] < 0.5 * trained.losses[0], trained.losses[::25]


def test_trained_noncausal_b64_passes_figure5_and_state_checks(trained, tmp_path):
    run = health_run(trained, trained.healthy, tmp_path)
    assert run.inputs.positions >= 3 * mf.B64_MINI_BATCH  # the default input covers 2 judged mini-batches
    for check in (*FIGURE5, "state_persistence"):
        verdicts = run.judge(check)
        assert verdicts and all(v.ok for v in verdicts), [v.line() for v in verdicts]
    for v in run.judge("figure5_ordering"):
        n = run.inputs.positions
        assert f"judged {n - 64} of {n} positions" in v.explanation, v.explanation
        assert "the first mini-batch of 64 is l0 == lprev by construction" in v.explanation
    carried = [v for v in run.judge("model_specific") if v.name == "moshi_state_carried"]
    assert len(carried) == 2 and all(v.ok and v.measured == 1.0 for v in carried), [v.line() for v in carried]
    assert all(v.details["frames"] >= 3 * 64 for v in carried)


def test_state_reset_at_b64_fails_with_the_reset_cause(trained, tmp_path):
    ckpt = trained.variant(tmp_path / "no_state", persistent_states=False)
    adapter = MoshiAdapter(ckpt, **trained.base.options)
    inputs = adapter.load_inputs()
    for v in checks.state_carried(adapter, inputs.teacher_forced):
        assert not v.ok and "NOT carried" in v.explanation and "reset every step" in v.explanation, v.line()
    for v in health_run(trained, ckpt, tmp_path).judge("state_persistence"):
        assert not v.ok and "NOT carried" in v.explanation, v.line()


def test_inner_lr_zero_at_b64_says_the_state_does_not_move_not_that_it_resets(trained, tmp_path):
    ckpt = trained.variant(tmp_path / "lr0", base_lr=0.0)
    adapter = MoshiAdapter(ckpt, **trained.base.options)
    for v in checks.state_carried(adapter, adapter.load_inputs().teacher_forced):
        assert not v.ok and "inner updates are ~0" in v.explanation and "carried" in v.explanation, v.line()
        assert "reset" not in v.explanation
    run = health_run(trained, ckpt, tmp_path)
    for v in run.judge("state_persistence"):
        assert not v.ok and "inner updates are ~0" in v.explanation and "reset" not in v.explanation, v.line()
    for v in run.judge("figure5_ordering"):
        assert not v.ok and "overlap" in v.explanation, v.line()


def test_too_short_input_at_b64_cannot_measure_and_says_how_many_frames(trained, tmp_path):
    adapter = MoshiAdapter(trained.healthy, **trained.base.options)
    run = HealthRun(adapter, RunOptions(report_dir=tmp_path / "report", max_positions=150))
    for check in ("figure5_ordering", "figure5_adaptation"):
        for v in run.judge(check):
            assert not v.ok and "give a longer --input: 192 positions (frames) needed at mini_batch_size 64" in v.explanation, v.line()
    for v in checks.state_carried(adapter, adapter.load_inputs(max_positions=150).teacher_forced):
        assert not v.ok and "192 frames needed at mini_batch_size 64" in v.explanation, v.line()
