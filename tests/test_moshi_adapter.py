"""The Moshi-TTT adapter on tiny random Moshi models saved in the moshi-finetune layout.

One module-scoped fixture builds a tiny base, injects TTT-MLP into both blocks, trains the TTT
layers (base frozen, 300 teacher-forced steps on Mimi codes of the repo's speech clips, ~35 s on
2 CPU cores) and saves variants: lora and consolidated files, wrapper and direct key layouts, and
broken copies (NaN, missing keys, collapsed gate, state not carried). The real health suite runs
on them as a subprocess and its JUnit XML says which checks pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import moshi_fixtures as mf  # noqa: E402

from ttt_checks.metrics.figure5 import figure5_stats  # noqa: E402
from ttt_checks import checks as health  # noqa: E402
from ttt_checks.models.moshi import checks  # noqa: E402
from ttt_checks.models.moshi.adapter import MoshiAdapter  # noqa: E402
from ttt_checks.models.moshi.checkpoint import MoshiCheckpointError, consolidated_dir  # noqa: E402
from ttt_checks.models.moshi.model import export_ttt_tensors  # noqa: E402
from ttt_checks.models.registry import resolve  # noqa: E402
from ttt_checks.report.junit import cases_by_name  # noqa: E402
from ttt_checks.ttt import Figure5Probe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIG5_RULES = (health.figure5_ordering, health.figure5_improvement, health.figure5_adaptation)


def _figure5_failures(adapter: MoshiAdapter) -> dict[str, list[str]]:
    inputs = adapter.load_inputs()
    probe = Figure5Probe()
    adapter.teacher_forced(inputs.teacher_forced, probe=probe)
    th = health.load_thresholds(REPO / "pyproject.toml")
    out = {}
    for name in probe.layers:
        stats = {name: figure5_stats(probe.record(name), inputs.positions)}
        out[name] = [v.name for rule in FIG5_RULES for v in rule(stats, th) if not v.ok]
        out[name + ":means"] = [stats[name].mean_l0, stats[name].mean_lprev, stats[name].mean_lafter]
    return out


class Tiny:
    """Paths of every saved variant, plus measurements taken while building them."""

    def __init__(self, root: Path) -> None:
        torch.manual_seed(0)
        self.root = root
        self.base = mf.build_base(root / "base")
        self.train_cfg = mf.training_config()
        empty = mf.write_run(root / "untrained", self.base, {}, self.train_cfg)
        adapter = MoshiAdapter(empty, **self.base.options)
        self.keys = adapter.loaded.keys
        self.init_tensors = export_ttt_tensors(adapter.loaded.hybrids, adapter.loaded.keys, 0.1)
        self.fig5_before = _figure5_failures(adapter)
        self.losses = mf.train_ttt(adapter, steps=300)
        self.fig5_after = _figure5_failures(adapter)
        self.trained = export_ttt_tensors(adapter.loaded.hybrids, adapter.loaded.keys, 0.1)
        self.healthy = mf.write_run(root / "healthy", self.base, self.trained, self.train_cfg)
        base_state = {k: v for k, v in _load(self.base.dir / "model.safetensors").items()}
        full = {}
        for k, v in base_state.items():
            parts = k.split(".")
            if k.startswith("transformer.layers.") and int(parts[2]) in (0, 1):
                rest = ".".join(parts[3:])
                full[f"transformer.layers.{parts[2]}.original_layer.{rest}"] = v
                full[f"transformer.layers.{parts[2]}.seq_modeling_block.original_layer.{rest}"] = v.clone()
            else:
                full[k] = v
        self.consolidated = mf.write_run(root / "consolidated", self.base, {**full, **self.trained}, self.train_cfg,
                                         consolidated=True, lora=True)  # lora: true must be overridden for merged weights
        self.direct = mf.write_run(root / "direct", self.base,
                                   {k.replace("ttt_layer.ttt.", ""): v for k, v in self.trained.items()}, self.train_cfg)
        nan = dict(self.trained)
        w = nan["transformer.layers.1.seq_modeling_block.ttt_layer.ttt.W1"].clone()
        w[0, :2, 0] = float("nan")
        nan["transformer.layers.1.seq_modeling_block.ttt_layer.ttt.W1"] = w
        self.nan = mf.write_run(root / "nan", self.base, nan, self.train_cfg)
        self.missing = mf.write_run(root / "missing", self.base,
                                    {k: v for k, v in self.trained.items() if not k.endswith(("ttt.W2", "ttt.b2"))}, self.train_cfg)
        collapsed = dict(self.trained)
        for i in (0, 1):
            key = f"transformer.layers.{i}.seq_modeling_block.forward_ssm_gating.gating_alpha"
            collapsed[key] = torch.full_like(collapsed[key], 1e-3)
        self.collapsed = mf.write_run(root / "collapsed", self.base, collapsed, self.train_cfg)
        self.no_state = mf.write_run(root / "no_state", self.base, self.trained, mf.training_config(persistent_states=False))


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    torch.set_num_threads(1)
    return Tiny(tmp_path_factory.mktemp("tiny_moshi"))


def run_health(tiny: Tiny, ckpt: Path, tmp: Path, select: str | None = None) -> dict[str, tuple[str, str]]:
    """Run tests_gpu on ``ckpt`` in a subprocess: {test name: (outcome, message)}."""
    xml = tmp / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests_gpu", "--ckpt", str(ckpt), "--device", "cpu",
           "-p", "no:cacheprovider", "--report-dir", str(tmp / "report"), f"--junitxml={xml}", "-q"]
    if select:
        cmd += ["-k", select]
    env = {**os.environ, **tiny.base.env, "NO_TORCH_COMPILE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert xml.is_file(), f"no JUnit XML written:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {name: (case.outcome, case.message + case.text) for name, case in cases_by_name(xml).items()}


# -- resolution and loading ----------------------------------------------------------------------


def test_run_dir_resolves_to_its_latest_checkpoint(tiny, tmp_path):
    run = mf.write_run(tmp_path / "run", tiny.base, tiny.trained, tiny.train_cfg, step=100)
    mf.write_run(tmp_path / "run", tiny.base, tiny.trained, tiny.train_cfg, step=300)
    assert consolidated_dir(run).parent.name == "checkpoint_000300"
    ckpt_dir = run / "checkpoints" / "checkpoint_000100"
    assert consolidated_dir(ckpt_dir) == ckpt_dir / "consolidated"
    assert consolidated_dir(ckpt_dir / "consolidated") == ckpt_dir / "consolidated"


def test_registry_picks_the_moshi_adapter_for_each_kind_of_path(tiny, monkeypatch):
    for k, v in tiny.base.env.items():
        monkeypatch.setenv(k, v)
    cons = tiny.healthy / "checkpoints" / "checkpoint_000300" / "consolidated"
    for path in (tiny.healthy, cons.parent, cons):
        adapter = resolve(path, device="cpu")
        assert isinstance(adapter, MoshiAdapter)
        assert adapter.load_report.missing_ttt == []


def test_missing_base_weights_name_the_file_and_the_fix(tiny, monkeypatch):
    for k in tiny.base.env:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MoshiCheckpointError, match="TTT_CHECKS_MOSHI_WEIGHT"):
        MoshiAdapter(tiny.healthy, hf_repo="nobody/not-cached-anywhere")


def test_bad_input_missing_training_config_is_a_clear_error(tiny, tmp_path):
    run = mf.write_run(tmp_path / "run", tiny.base, tiny.trained, tiny.train_cfg)
    (consolidated_dir(run) / "training_config.json").unlink()
    with pytest.raises(MoshiCheckpointError, match="training_config.json"):
        MoshiAdapter(consolidated_dir(run).parent, **tiny.base.options)


def test_bad_input_wrong_shapes_are_reported_with_the_config_that_implies_them(tiny, tmp_path):
    run = mf.write_run(tmp_path / "run", tiny.base, tiny.trained, mf.training_config(ttt_mlp_expansion_factor=2.0))
    with pytest.raises(MoshiCheckpointError, match=r"W1 has shape .* ttt_mlp_expansion_factor 2.0"):
        MoshiAdapter(run, **tiny.base.options)


def test_lora_consolidated_and_direct_layouts_give_the_same_model(tiny):
    inputs = MoshiAdapter(tiny.healthy, **tiny.base.options).load_inputs(max_positions=40)
    losses = {}
    for name in ("healthy", "consolidated", "direct"):
        adapter = MoshiAdapter(getattr(tiny, name), **tiny.base.options)
        assert adapter.load_report.missing_ttt == [] and adapter.load_report.unexpected_ttt == []
        losses[name] = adapter.teacher_forced(inputs.teacher_forced).outer_loss
    assert MoshiAdapter(tiny.direct, **tiny.base.options).load_report.layouts == {0: "direct", 1: "direct"}
    np.testing.assert_allclose(losses["consolidated"], losses["healthy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses["direct"], losses["healthy"], rtol=1e-6, atol=1e-6)


def test_multilayer_and_linear_inner_models_load_from_their_key_names(tiny, tmp_path):
    three = mf.write_run(tmp_path / "three0", tiny.base, {}, mf.training_config(ttt_mlp_layers=3))
    a3 = MoshiAdapter(three, **tiny.base.options)
    exported = export_ttt_tensors(a3.loaded.hybrids, a3.loaded.keys, 0.1)
    assert "transformer.layers.0.seq_modeling_block.ttt_layer.ttt.weights.2" in exported
    run3 = mf.write_run(tmp_path / "three", tiny.base, exported, mf.training_config(ttt_mlp_layers=3))
    loaded = MoshiAdapter(run3, **tiny.base.options)
    assert loaded.load_report.missing_ttt == [] and loaded.ttt_layers()[0].mlp_layers == 3
    linear = {k: v for k, v in tiny.trained.items() if not k.endswith(("ttt.W2", "ttt.b2", "ttt.W1", "ttt.b1"))}
    for i in (0, 1):
        p = f"transformer.layers.{i}.seq_modeling_block.ttt_layer.ttt."
        linear[p + "W1"] = (torch.randn(4, 16, 16) * 0.02).to(torch.bfloat16)
        linear[p + "b1"] = torch.zeros(4, 1, 16, dtype=torch.bfloat16)
    lin = MoshiAdapter(mf.write_run(tmp_path / "linear", tiny.base, linear, tiny.train_cfg), **tiny.base.options)
    assert lin.ttt_layers()[0].inner == "linear" and lin.load_report.missing_ttt == []


def test_bad_input_missing_and_unexpected_ttt_keys_are_named(tiny, tmp_path):
    adapter = MoshiAdapter(tiny.missing, **tiny.base.options)
    assert "transformer.layers.0.seq_modeling_block.ttt_layer.ttt.W2" in adapter.load_report.missing_ttt
    verdict = health.checkpoint_keys(adapter.expected_ttt_keys(), adapter.state().keys())
    assert not verdict.ok and "ttt.W2" in verdict.explanation
    extra = {**tiny.trained, "transformer.layers.0.seq_modeling_block.ttt_layer.ttt.W3": torch.zeros(1)}
    odd = MoshiAdapter(mf.write_run(tmp_path / "odd", tiny.base, extra, tiny.train_cfg), **tiny.base.options)
    assert odd.load_report.unexpected_ttt == ["transformer.layers.0.seq_modeling_block.ttt_layer.ttt.W3"]


# -- the model ------------------------------------------------------------------------------------


def test_training_turns_unhealthy_random_ttt_into_healthy_figure5(tiny):
    before = {k: v for k, v in tiny.fig5_before.items() if not k.endswith(":means")}
    after = {k: v for k, v in tiny.fig5_after.items() if not k.endswith(":means")}
    assert any(before.values()), f"random TTT layers should fail some Figure-5 rule: {tiny.fig5_before}"
    assert not any(after.values()), f"trained TTT layers must pass every Figure-5 rule: {tiny.fig5_after}"
    assert tiny.losses[-1] < 0.6 * tiny.losses[0]


def test_gate_zero_reproduces_moshi_without_ttt(tiny):
    adapter = MoshiAdapter(tiny.healthy, **tiny.base.options)
    inputs = adapter.load_inputs(max_positions=40)
    verdict = checks.gate0_matches_vanilla(adapter, inputs.teacher_forced)
    assert verdict.ok and verdict.measured == 0.0
    with checks.ttt_removed(adapter):
        vanilla = adapter.teacher_forced(inputs.teacher_forced).outer_loss
    assert not np.allclose(adapter.teacher_forced(inputs.teacher_forced).outer_loss, vanilla)  # the learned gate matters


def test_bad_input_nan_in_ttt_weights_breaks_even_gate_zero(tiny):
    adapter = MoshiAdapter(tiny.nan, **tiny.base.options)
    verdict = checks.gate0_matches_vanilla(adapter, adapter.load_inputs(max_positions=40).teacher_forced)
    assert not verdict.ok and "not finite" in verdict.explanation
    result = adapter.teacher_forced(adapter.load_inputs(max_positions=40).teacher_forced)
    assert not result.outputs_finite and not np.isfinite(result.outer_loss).any()  # never averaged away


def test_bad_input_nan_and_inf_ttt_weights_fail_checkpoint_finite(tiny, tmp_path):
    key = "transformer.layers.0.seq_modeling_block.ttt_layer.ttt.W2"
    w = tiny.trained[key].clone()
    w[0, 0, 0] = float("inf")
    inf = mf.write_run(tmp_path / "inf", tiny.base, {**tiny.trained, key: w}, tiny.train_cfg)
    for run, bad in ((tiny.nan, "transformer.layers.1.seq_modeling_block.ttt_layer.ttt.W1"), (inf, key)):
        verdict = health.checkpoint_finite(MoshiAdapter(run, **tiny.base.options).state())
        assert not verdict.ok and verdict.details["nonfinite"] == [bad]


def test_unused_parameters_are_found_at_init_and_moved_ones_flagged(tiny, tmp_path):
    adapter = MoshiAdapter(tiny.healthy, **tiny.base.options)
    verdict = checks.unused_parameters_at_init(adapter)
    assert verdict.ok, verdict.explanation
    assert "transformer.layers.0.seq_modeling_block.backward_ssm_gating.gating_alpha" in verdict.details["at_init"]
    assert "transformer.layers.1.seq_modeling_block.ttt_layer.ttt.post_norm.weight" in verdict.details["at_init"]
    moved = dict(tiny.trained)
    key = "transformer.layers.0.seq_modeling_block.ttt_layer.ttt.post_norm.weight"
    moved[key] = moved[key] * 1.5
    other = MoshiAdapter(mf.write_run(tmp_path / "moved", tiny.base, moved, tiny.train_cfg), **tiny.base.options)
    bad = checks.unused_parameters_at_init(other)
    assert not bad.ok and bad.details["moved"] == [key]


def test_state_is_carried_across_streaming_steps_unless_the_checkpoint_says_not(tiny):
    healthy = MoshiAdapter(tiny.healthy, **tiny.base.options)
    inputs = healthy.load_inputs(max_positions=32)
    assert all(v.ok and v.measured == 1.0 for v in checks.state_carried(healthy, inputs.teacher_forced))
    broken = MoshiAdapter(tiny.no_state, **tiny.base.options)
    assert broken.carry_state is False
    assert all(not v.ok and v.measured == 0.0 for v in checks.state_carried(broken, inputs.teacher_forced))


def test_streamed_teacher_forcing_matches_one_pass_where_causality_allows(tiny):
    adapter = MoshiAdapter(tiny.healthy, **tiny.base.options)
    inputs = adapter.load_inputs(max_positions=40)
    one = adapter.teacher_forced(inputs.teacher_forced).outer_loss
    streamed = adapter.teacher_forced(inputs.teacher_forced, chunk=1).outer_loss
    with adapter.set_gate(0.0):  # without TTT, streaming the base must equal one pass exactly
        np.testing.assert_allclose(adapter.teacher_forced(inputs.teacher_forced, chunk=1).outer_loss,
                                   adapter.teacher_forced(inputs.teacher_forced).outer_loss, rtol=1e-4, atol=1e-4)
    assert np.isfinite(streamed).all() and not np.allclose(one, streamed)  # non-causal TTT: frames differ


def test_causality_leak_is_measured_and_reported_as_a_warning(tiny):
    adapter = MoshiAdapter(tiny.healthy, **tiny.base.options)
    verdicts = checks.causality_leak(adapter, adapter.load_inputs(max_positions=32).teacher_forced)
    assert len(verdicts) == 2
    for v in verdicts:
        assert v.ok and v.details["severity"] == "warning" and v.measured > 1e-3, v.line()
        assert v.details["changed_positions"] == list(range(v.details["position"] + 1))


def test_generation_batches_gates_deterministically_with_24khz_audio(tiny):
    adapter = MoshiAdapter(tiny.healthy, **tiny.base.options, reply_seconds=0.4)
    prompt = adapter.load_inputs().prompts[0][: 1920 * 10]
    first = adapter.generate(prompt, [0.0, "learned", 1.0])
    again = adapter.generate(prompt, [0.0, "learned", 1.0])
    assert [g.gate for g in first] == [0.0, "learned", 1.0]
    for a, b in zip(first, again):
        assert a.sample_rate == 24000 and len(a.audio) == 15 * 1920 and np.isfinite(a.audio).all()
        np.testing.assert_array_equal(a.audio, b.audio)
        assert a.tokens == b.tokens and len(a.tokens) == 15
    assert first[0].gate_tanh == 0.0 and abs(first[2].gate_tanh - np.tanh(1.0)) < 1e-6
    assert 0.0 < first[1].gate_tanh < 1.0


# -- the health suite on the tiny checkpoints -----------------------------------------------------


TALK = ("test_base_model_talks_at_gate_zero", "test_learned_gate_keeps_the_model_talkative",
        "test_no_collapse_at_any_gate_of_the_sweep")


def test_health_suite_on_the_healthy_tiny_checkpoint(tiny, tmp_path):
    results = run_health(tiny, tiny.healthy, tmp_path)
    passing = {"test_checkpoint_has_every_ttt_key", "test_checkpoint_tensors_are_finite",
               "test_figure5_data_collected_for_every_ttt_layer", "test_inner_losses_are_finite",
               "test_inner_losses_are_bounded", "test_inner_losses_are_ordered_l0_lprev_lafter",
               "test_each_inner_step_improves_the_loss", "test_inner_model_adapts_over_the_context",
               "test_gates_have_not_collapsed", "test_ttt_does_not_hurt_the_outer_loss",
               "test_ttt_state_persists_across_streaming_calls"}
    for name in passing:
        assert results[name][0] == "passed", (name, results[name])
    # post_norm, wo.bias and the backward gate are never applied by the user's forward: dead weight
    # in the code, named as a warning (metrics.json), not a failure of this checkpoint.
    outcome, _ = results["test_no_dead_ttt_parameters"]
    assert outcome == "passed", results["test_no_dead_ttt_parameters"]
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    (dead,) = metrics["verdicts"]["dead_parameters"]
    assert dead["details"]["severity"] == "warning" and any("backward_ssm_gating" in k for k in dead["details"]["unused"])
    # A random tiny Mimi cannot speak: the talkativeness checks must fail, saying the base is silent
    for name in TALK:
        if name in results:
            assert results[name][0] in ("failed", "error"), (name, results[name])
    if TALK[0] in results:
        assert "gate 0" in results[TALK[0]][1] or "base" in results[TALK[0]][1], results[TALK[0]]


@pytest.mark.parametrize("variant, select, failing", [
    ("nan", "finite or every_ttt_key or hurt", {"test_checkpoint_tensors_are_finite", "test_inner_losses_are_finite",
                                                "test_ttt_does_not_hurt_the_outer_loss"}),
    ("missing", "every_ttt_key", {"test_checkpoint_has_every_ttt_key"}),
    ("collapsed", "collapsed or hurt", {"test_gates_have_not_collapsed"}),
    ("no_state", "persists", {"test_ttt_state_persists_across_streaming_calls"}),
])
def test_health_suite_fails_exactly_the_broken_checks(tiny, tmp_path, variant, select, failing):
    results = run_health(tiny, getattr(tiny, variant), tmp_path, select)
    failed = {name for name, (outcome, _) in results.items() if outcome in ("failed", "error")}
    assert failed == failing, results


# -- bad --input files (`-k bad_input` selects these with tests/test_bad_input_audio.py) -----------


def _tone(seconds: float, rate: int, freq: float = 220.0, peak: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return peak * np.sin(2 * np.pi * freq * t)


@pytest.fixture(scope="module")
def healthy_adapter(tiny) -> MoshiAdapter:
    return MoshiAdapter(tiny.healthy, **tiny.base.options)


def test_bad_input_stereo_44k_wav_is_fed_as_24k_mono_with_notes(healthy_adapter, tmp_path):
    from ttt_checks.audio.wav import resample, write_wav

    left, right = _tone(1.0, 44100, 220.0, 0.4), _tone(1.0, 44100, 330.0, 0.3)
    wav = write_wav(tmp_path / "stereo44.wav", np.stack([left, right], axis=1), 44100)
    inputs = healthy_adapter.load_inputs(wav)
    assert inputs.notes == ("downmixed 2 channels to mono (channel average)", "resampled 44100 Hz -> 24000 Hz")
    assert inputs.positions == 12 and inputs.teacher_forced.shape == (12 * 1920,)  # 1 s = 12.5 frames of 80 ms
    average = resample(((left + right) / 2).astype(np.float32), 44100, 24000)[: 12 * 1920]
    np.testing.assert_allclose(inputs.teacher_forced, average, atol=1e-3)  # both channels, not channel 0


def test_bad_input_silent_clipped_or_short_wav_raises_the_input_error(healthy_adapter, tmp_path):
    from ttt_checks.audio.wav import write_wav
    from ttt_checks.models.base import InputError
    from ttt_checks.models.moshi.adapter import MoshiInputError

    cases = {
        "silent.wav": (np.zeros(24000), r"silent\.wav: silent \(every sample is 0\)"),
        "clipped.wav": (np.clip(2.0 * _tone(1.0, 24000), -1.0, 1.0), r"clipped\.wav: clipped: [\d.]+ % of the samples"),
        "short.wav": (_tone(1.0, 24000)[:1000], r"short\.wav: too short: 1000 samples at 24000 Hz \(42 ms\), "
                                                r"the model needs at least 160 ms"),
    }
    for name, (pcm, message) in cases.items():
        wav = write_wav(tmp_path / name, pcm, 24000)
        with pytest.raises(MoshiInputError, match=message) as err:
            healthy_adapter.load_inputs(wav)
        assert isinstance(err.value, InputError)


def test_bad_input_health_run_on_a_bad_wav_fails_with_the_message(healthy_adapter, tmp_path):
    from ttt_checks.audio.wav import write_wav
    from ttt_checks.run import HealthRun, RunOptions

    wav = write_wav(tmp_path / "silent.wav", np.zeros(24000), 24000)
    run = HealthRun(healthy_adapter, RunOptions(report_dir=tmp_path / "report", input_path=wav))
    for check in ("figure5_collected", "ttt_helps"):
        verdicts = run.judge(check)
        assert len(verdicts) == 1 and not verdicts[0].ok, verdicts
        assert "silent.wav: silent (every sample is 0)" in verdicts[0].explanation
    assert "inputs" not in run.metrics()
