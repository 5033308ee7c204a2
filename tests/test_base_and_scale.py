"""Measurements that name a cause instead of a symptom (issue 26): the base model against its own
reference loss, the gated branch's strength against the residual stream, a step-size line that
is flat, and the diagnosis rules that read them (base_model, ttt_tensor_off_scale)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from test_diagnosis import LAYER, _v, healthy_metrics
from ttt_checks import checks
from ttt_checks import diagnosis as dx
from ttt_checks.checks.base_model import BaseReference, base_not_checked, reference_from_metrics
from ttt_checks.metrics.branch_output import BranchOutputProbe
from ttt_checks.ttt.step_probe import DEFAULT_MULTIPLIERS, StepSizeRecord

TH = checks.load_thresholds()


# -- the base model against its reference ---------------------------------------------------------


def test_the_fingerprint_follows_every_value_the_dtype_and_the_shape():
    ids = torch.arange(12).reshape(3, 4)
    assert checks.input_fingerprint(ids) == checks.input_fingerprint(ids.clone().numpy())
    changed = ids.clone()
    changed[2, 3] += 1
    assert checks.input_fingerprint(changed) != checks.input_fingerprint(ids)
    assert checks.input_fingerprint(ids.reshape(4, 3)) != checks.input_fingerprint(ids)
    assert checks.input_fingerprint(ids.to(torch.int32)) != checks.input_fingerprint(ids)
    assert checks.input_fingerprint({"not": "an array"}) is None


@given(st.floats(0.5, 5.0), st.floats(-0.5, 0.5))
def test_the_base_fails_exactly_when_it_is_worse_than_its_reference_by_more_than_the_limit(reference, excess):
    loss = np.full(64, reference * (1.0 + excess))
    v = checks.base_model(loss, BaseReference(reference, "f", "config.json"), "f", TH)
    assert v.ok == (v.measured <= TH["base_max_loss_excess"])
    assert v.measured == pytest.approx(excess, abs=1e-12)
    if not v.ok:
        assert "NOT THE ONE ITS REFERENCE WAS MEASURED ON" in v.explanation


def test_a_nonfinite_base_loss_fails_and_says_so():
    v = checks.base_model(np.array([1.0, float("nan")]), BaseReference(1.7, "f", "x"), "f", TH)
    assert not v.ok and "not finite" in v.explanation


def test_a_reference_on_another_input_or_none_is_not_checked_and_says_why():
    ref = BaseReference(1.7, "aaaa", "config.json", "default input")
    assert base_not_checked(ref, "aaaa", "") is None
    other = base_not_checked(ref, "bbbb", "")
    assert other["checked"] is False and "another input" in other["why"]
    assert base_not_checked(None, "aaaa", "no reference stored")["why"] == "no reference stored"
    assert "not an array" in base_not_checked(ref, None, "")["why"]


def test_a_base_reference_file_must_hold_a_gate0_loss(tmp_path):
    with pytest.raises(checks.BaseReferenceError, match="no such file"):
        reference_from_metrics(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(checks.BaseReferenceError, match="not a readable"):
        reference_from_metrics(bad)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"verdicts": {}}))
    with pytest.raises(checks.BaseReferenceError, match="gate0"):
        reference_from_metrics(empty)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"outer_loss": {"gate0": 1.25}, "inputs": {"fingerprint": "abc", "description": "d"}}))
    ref = reference_from_metrics(good)
    assert (ref.loss, ref.fingerprint, ref.input) == (1.25, "abc", "d")


# -- the branch against the residual stream ------------------------------------------------------


class _Scaled(torch.nn.Module):
    """A branch whose output is ``scale`` times a fixed mix of its input."""

    def __init__(self, width: int, scale: float) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.mix = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64))[0] * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.mix


@settings(max_examples=25, deadline=None)
@given(st.floats(1e-3, 1e3), st.floats(0.01, 1.0), st.integers(1, 3))
def test_branch_strength_is_gate_times_scale_for_an_orthogonal_branch(scale, gate, chunks):
    """An orthogonal mix keeps the rms, so the gated branch over the residual is gate x scale,
    whatever the number of calls the positions come in."""
    width = 16
    module = _Scaled(width, scale)
    probe = BranchOutputProbe()
    x = torch.randn(2, 30, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with probe.attach({"layer": module}):
        for part in torch.tensor_split(x, chunks, dim=1):
            module(part)
    spread = probe.spreads()["layer"]
    # The rms of x @ Q equals the rms of x only summed over channels: exact to float64 rounding.
    assert spread.strength(np.full(width, gate)) == pytest.approx(gate * scale, rel=1e-9)
    assert spread.strength(gate) == pytest.approx(gate * scale, rel=1e-9)


def test_branch_strength_weights_each_channel_by_its_own_gate():
    width = 4
    module = _Scaled(width, 1.0)
    module.mix = torch.eye(width, dtype=torch.float64)
    probe = BranchOutputProbe()
    x = torch.ones(1, 8, width, dtype=torch.float64)
    with probe.attach({"layer": module}):
        module(x)
    gate = np.array([1.0, 0.0, 0.0, 0.0])  # one channel of four passes: rms sqrt(1/4)
    assert probe.spreads()["layer"].strength(gate) == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError, match="gate has 3 values"):
        probe.spreads()["layer"].strength(np.ones(3))


# -- a flat line along the step ------------------------------------------------------------------


def _record(losses: dict[float, float], start: float, base_lr: float = 1.0) -> StepSizeRecord:
    return StepSizeRecord("layer", list(losses), list(losses.values()), start, count=100, nonfinite=0, base_lr=base_lr)


def test_a_line_the_loss_does_not_see_is_flat_and_recommends_no_base_lr():
    """W_0 x 1000 behind the inner LayerNorm, as measured: 1.0340380 before the step, 1.0340370
    at 4x the step (a relative gain of 1e-6)."""
    line = {m: 1.034038 - 2.6e-7 * m for m in DEFAULT_MULTIPLIERS}
    [v] = checks.inner_step_size({"layer": _record(line, 1.034038)}, TH)
    assert not v.ok and v.explanation.startswith("FLAT") and v.details["flat"] is True
    assert "no base_lr is recommended" in v.explanation
    metrics = healthy_metrics()
    metrics["verdicts"]["inner_step_size"] = [{**v.to_dict(), "layer": LAYER}]
    metrics["inner_step_size"] = {LAYER: v.details}
    from ttt_checks.diagnosis.readers import _recommended_lr

    assert _recommended_lr(metrics, [LAYER], "up")[0] is None


def test_a_small_but_measurable_gain_is_timid_not_flat():
    line = {m: 1.0 - 1e-4 * m for m in DEFAULT_MULTIPLIERS}  # 4e-4 at m = 4: 4x the flat limit
    [v] = checks.inner_step_size({"layer": _record(line, 1.0)}, TH)
    assert "TOO TIMID" in v.explanation and v.details["flat"] is False


# -- the rules -----------------------------------------------------------------------------------


def _top(metrics: dict) -> str:
    return dx.diagnosis_dict(metrics)["findings"][0]["rule"]


def test_a_broken_base_outranks_every_ttt_finding():
    m = healthy_metrics()
    m["verdicts"]["base_model"] = [_v("base_model", False, 0.19, 0.005, loss_gate0=2.055, relative_excess=0.19,
                                      reference={"loss": 1.726, "source": "base/config.json reference_loss"})]
    m["verdicts"]["ttt_helps"] = [_v("ttt_helps", False, -0.002, 0.001, "cannot measure: give a longer --input",
                                     verdict="unresolved")]
    m["verdicts"]["ttt_helps"][0]["status"] = "cannot_measure"
    report = dx.diagnosis_dict(m)
    top = report["findings"][0]
    assert top["rule"] == "base_model" and "1.726" in top["symptom"] and "+19.0%" in top["symptom"]
    assert "base" in top["config_key"]
    assert all(f["rule"] != "not_measured" for f in report["findings"])


def test_a_passing_base_adds_no_finding():
    m = healthy_metrics()
    m["verdicts"]["base_model"] = [_v("base_model", True, 2.5e-8, 0.005)]
    assert dx.diagnosis_dict(m)["healthy"]


def _scaled(tensor: str, ratio: float, failing: str, **extra) -> dict:
    m = healthy_metrics()
    m["verdicts"]["dead_parameters"] = [_v("dead_parameters", True, 0.0, 0.0, unchanged=[], unused=[], compared=12,
                                           inner_initial_state=["layers.3.ttt.ttt.weights.0", "layers.3.ttt.ttt.weights.1"],
                                           std_ratio_to_init={tensor: ratio, "layers.3.ttt.ttt.wk.weight": 1.13})]
    m["verdicts"][failing] = [_v(failing, False, 0.0, 0.0, layer=LAYER if failing.startswith("figure5") else None,
                                 verdict="hurts")]
    m.update(extra)
    return m


def test_inner_weights_far_off_scale_are_named_instead_of_an_inner_lr_to_raise():
    m = _scaled("layers.3.ttt.ttt.weights.0", 1901.7, "figure5_improvement",
                inner_step_size={LAYER: {"best_multiplier": 4.0, "best_gain_rel": 1.1e-6, "flat": True, "base_lr": 1.0,
                                         "recommended_base_lr": 4.0, "multipliers": list(DEFAULT_MULTIPLIERS)}})
    m["figure5"][LAYER] = {**m["figure5"][LAYER], "improvement_abs": 1.4e-7, "improvement_rel": 1.8e-7}
    top = dx.diagnosis_dict(m)["findings"][0]
    assert top["rule"] == "ttt_tensor_off_scale" and top["config_key"] == "layers.3.ttt.ttt.weights.0"
    assert "1.9e+03x" in top["symptom"] and "blind to W's scale" in top["cause"] and "1.1e-06" in top["cause"]
    assert "base_lr" not in (top.get("value") or "") and "do not tune base_lr" in top["fix"]


def test_an_output_projection_off_scale_is_named_with_the_branch_strength():
    m = _scaled("layers.3.ttt.ttt.wo.weight", 119.0, "ttt_helps",
                branch_output={LAYER: {"strength": 3.2, "branch_rms": 40.0, "residual_rms": 12.0}},
                training_record={"train_loss": 1.39, "source": "config.json training"})
    m["outer_loss"] = {"learned": 5.02, "gate0": 1.726}
    top = dx.diagnosis_dict(m)["findings"][0]
    assert top["rule"] == "ttt_tensor_off_scale" and top["config_key"] == "layers.3.ttt.ttt.wo.weight"
    assert "outweighs the residual stream" in top["cause"] and "3.2x" in top["cause"]


def test_most_tensors_grown_each_by_its_own_factor_is_the_outer_training_not_a_scaling():
    """The outer lr x10000 run of tests/test_trend_causes.py: every trained TTT tensor 60-210x its init."""
    m = _scaled("layers.3.ttt.ttt.weights.0", 207.0, "figure5_bounded")
    m["verdicts"]["dead_parameters"][0]["details"]["std_ratio_to_init"] = {
        f"layers.3.ttt.ttt.{k}": r for k, r in (("weights.0", 207.0), ("weights.1", 199.0), ("lr_weight", 163.0),
                                                 ("wo.weight", 75.3), ("wq.weight", 71.7), ("wk.weight", 62.7), ("wv.weight", 62.5))}
    top = dx.diagnosis_dict(m)["findings"][0]
    assert top["rule"] == "ttt_tensor_off_scale" and "outer updates" in top["title"]
    assert top["config_key"] == "recipe.lr" and "lower the outer learning rate" in top["fix"] and "base_lr is not the cause" in top["fix"]


@pytest.mark.parametrize("ratio", [2.3, 0.5])
def test_tensors_within_what_training_moves_are_not_called_off_scale(ratio):
    m = _scaled("layers.3.ttt.ttt.wo.weight", ratio, "ttt_helps")
    assert _top(m) != "ttt_tensor_off_scale"


def test_a_tensor_off_scale_with_every_check_passing_is_no_finding():
    m = healthy_metrics()
    m["verdicts"]["dead_parameters"][0]["details"]["std_ratio_to_init"] = {"layers.3.ttt.ttt.wo.weight": 50.0}
    assert dx.diagnosis_dict(m)["healthy"]


# -- through a health run --------------------------------------------------------------------------


def _gate0_run(tmp_path, ckpt, **options):
    from ttt_checks.models.reference.adapter import ReferenceAdapter
    from ttt_checks.paths import ZOO_DIR
    from ttt_checks.run import HealthRun, RunOptions

    run = HealthRun(ReferenceAdapter(ZOO_DIR / ckpt), RunOptions(report_dir=tmp_path / "report", **options))
    return run, run.judge("base_model")


def test_the_zoo_base_matches_the_reference_stored_when_it_was_built(tmp_path):
    """healthy-seed0 at gate 0 runs the base through a model with a TTT block whose output is
    multiplied by 0, fed 16 tokens per call instead of the whole row: float rounding only."""
    run, [v] = _gate0_run(tmp_path, "healthy-seed0")
    assert v.ok and abs(v.measured) < 1e-6, v.explanation
    metrics = run.metrics()
    assert metrics["inputs"]["fingerprint"] == v.details["reference"]["fingerprint"]
    assert "base_model_not_checked" not in metrics


def test_a_base_reference_file_replaces_the_stored_one_and_another_input_is_not_checked(tmp_path):
    reference = tmp_path / "good.json"
    run, _ = _gate0_run(tmp_path, "healthy-seed0")
    fingerprint = run.input_fingerprint
    reference.write_text(json.dumps({"outer_loss": {"gate0": 1.5}, "inputs": {"fingerprint": fingerprint}}))
    _, [v] = _gate0_run(tmp_path, "healthy-seed0", base_reference=reference)
    assert not v.ok and v.measured == pytest.approx(1.7264 / 1.5 - 1, abs=1e-3) and "--base-reference" not in v.explanation
    assert str(reference) in v.details["reference"]["source"]
    reference.write_text(json.dumps({"outer_loss": {"gate0": 1.5}, "inputs": {"fingerprint": "another"}}))
    run, verdicts = _gate0_run(tmp_path, "healthy-seed0", base_reference=reference)
    assert verdicts == [] and "another input" in run.base_model_not_checked()["why"]
    assert run.metrics()["base_model_not_checked"]["checked"] is False


def _zoo_copy(tmp_path, name: str, strip_reference: bool) -> "Path":
    import shutil

    from ttt_checks.paths import ZOO_DIR

    shutil.copytree(ZOO_DIR / "base", tmp_path / "base")
    shutil.copytree(ZOO_DIR / name, tmp_path / name)
    if strip_reference:
        config = json.loads((tmp_path / "base" / "config.json").read_text())
        config.pop("reference_loss")
        (tmp_path / "base" / "config.json").write_text(json.dumps(config))
    return tmp_path / name


def test_a_base_built_before_the_reference_existed_is_checked_against_the_checkpoints_measured_gate0_loss(tmp_path):
    from ttt_checks.models.reference.adapter import ReferenceAdapter
    from ttt_checks.run import HealthRun, RunOptions

    ckpt = _zoo_copy(tmp_path, "healthy-seed0", strip_reference=True)
    run = HealthRun(ReferenceAdapter(ckpt), RunOptions(report_dir=tmp_path / "report"))
    [v] = run.judge("base_model")
    assert "measured.summary.val_loss_gate0" in v.details["reference"]["source"]
    assert v.ok and abs(v.measured) < 1e-4, v.explanation  # the stored loss is rounded to 4 digits


def test_nan_in_ttt_tensors_leaves_the_base_unchecked_instead_of_blaming_it(tmp_path):
    from ttt_checks.models.reference.adapter import ReferenceAdapter
    from ttt_checks.paths import ZOO_DIR
    from ttt_checks.run import HealthRun, RunOptions

    run = HealthRun(ReferenceAdapter(ZOO_DIR / "nan-weights"), RunOptions(report_dir=tmp_path / "report"))
    assert run.judge("base_model") == []
    assert "0 x NaN" in run.base_model_not_checked()["why"]
