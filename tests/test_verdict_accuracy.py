"""Verdicts that hold on checkpoints made the way a user makes them (issue 13, items 3-6).

- gates are judged against where they started (``gate_stats``: collapse relative to the initial
  alpha, an untrained gate, a sign flip, an unknown init);
- TTT must earn its place (``ttt_helps``: "does nothing" and "hurts" apart; a TTT whose output
  ignores its input, fine-tuned with its output projection frozen at zero, is caught);
- a config that contradicts what the checkpoint was trained with fails ``config_consistency``,
  and a DDP ``module.`` prefix is stripped on load and said;
- causes named right: gate 0 with NaN TTT weights is not "TTT off"; a base that predicts its own
  stream no better than chance does not talk, whatever Whisper hears.

Reference checkpoints are copies of the committed zoo (``fixtures/zoo``) edited or fine-tuned in
``tmp_path``; Moshi checkpoints are the tiny random Moshi of ``tests/moshi_fixtures.py`` (untrained:
these tests read configs and key names, not learned behaviour).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ttt_checks import checks as health
from ttt_checks.models.reference.adapter import ReferenceAdapter
from ttt_checks.models.reference.zoo import zoo_entries
from ttt_checks.run import HealthRun, RunOptions

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "fixtures" / "zoo"
TH = health.load_thresholds(ROOT / "pyproject.toml")
MARGIN = 1.25  # a healthy checkpoint must sit at least 25% away from every threshold it is judged by


def zoo_copy(name: str, tmp: Path) -> Path:
    """A private copy of one zoo entry and the shared base, laid out as the zoo lays them out."""
    shutil.copytree(ZOO / "base", tmp / "base")
    shutil.copytree(ZOO / name, tmp / name)
    return tmp / name


def health_run(ckpt: Path, tmp: Path) -> HealthRun:
    return HealthRun(ReferenceAdapter(ckpt), RunOptions(report_dir=tmp / "report", thresholds=dict(TH)))


def bf16(value: float) -> float:
    return float(torch.tensor(value).to(torch.bfloat16).float())


# -- gate_stats: judged against where the gate started --------------------------------------------


def test_gate_ten_percent_below_a_healthy_one_is_not_a_collapse():
    """The issue's false alarm: init 0.1, learned mean tanh 0.097 (10% under the healthy 0.1076)."""
    alpha = np.linspace(0.06, 0.134, 128)
    [v] = health.gate_stats({"layers.3.ttt": alpha}, TH, {"layers.3.ttt": 0.1})
    assert v.ok, v.line()
    assert v.details["fraction_of_init"] == pytest.approx(np.abs(np.tanh(alpha)).mean() / math.tanh(0.1))


def test_users_collapse_from_init_03_is_a_collapse_relative_to_its_init():
    """The user's run: init 0.3, learned gates 0.02-0.09 (7-30% of the init)."""
    alpha = np.arctanh(np.linspace(0.02, 0.09, 4096))
    [v] = health.gate_stats({"transformer.layers.29": alpha}, TH, {"transformer.layers.29": 0.3})
    assert not v.ok and "GATING COLLAPSE" in v.explanation and "of its initial" in v.explanation
    assert v.details["fraction_of_init"] < TH["gate_min_fraction_of_init"]


def test_gate_exactly_at_its_init_is_untrained_not_collapsed():
    """bf16 storage of 0.3 is 0.300781 (the user's backward gates): still exactly the init."""
    [v] = health.gate_stats({"transformer.layers.29": np.full(4096, bf16(0.3))}, TH, {"transformer.layers.29": 0.3})
    assert not v.ok and v.details["untrained"]
    assert "exactly its initial value" in v.explanation and "never trained" in v.explanation
    assert "COLLAPSE" not in v.explanation


def test_sign_flip_from_a_positive_init_is_reported():
    flipped = -np.linspace(0.25, 0.35, 64)
    [v] = health.gate_stats({"l": flipped}, TH, {"l": 0.3})
    assert v.ok and v.warning and "SIGN FLIPPED" in v.explanation  # as strong as at init: reported, not a collapse
    through_zero = np.concatenate([np.full(40, -0.05), np.full(24, 0.02)])
    [w] = health.gate_stats({"l": through_zero}, TH, {"l": 0.3})
    assert not w.ok and "GATING COLLAPSE" in w.explanation and "SIGN FLIPPED" in w.explanation


def test_unknown_init_is_said_and_only_the_floor_judges():
    [low] = health.gate_stats({"l": np.full(8, 0.005)}, TH, {"l": None})
    [fine] = health.gate_stats({"l": np.full(8, 0.05)}, TH)
    assert not low.ok and fine.ok
    assert "not stated" in low.explanation and "not stated" in fine.explanation


def test_a_gate_that_fell_from_only_one_of_two_stated_inits_has_not_collapsed():
    """config.json edited from alpha_init 0.1 to 0.5 while the training record keeps 0.1: the
    healthy gate (0.108) is 23% of 0.5 but 108% of 0.1, so no collapse is claimed, and why is said."""
    alpha = np.full(128, 0.108)
    [plain] = health.gate_stats({"l": alpha}, TH, {"l": 0.5})
    assert not plain.ok and "GATING COLLAPSE" in plain.explanation  # without the record: judged against 0.5
    [v] = health.gate_stats({"l": alpha}, TH, {"l": 0.5}, {"l": 0.1})
    assert v.ok and v.warning, v.line()
    assert v.details["fraction_of_init"] == pytest.approx(math.tanh(0.108) / math.tanh(0.1))
    assert "two inits" in v.explanation and "collapse is not established" in v.explanation and "COLLAPSE" not in v.explanation
    # the other way round: the loader's init is the one the gate did not fall from
    [w] = health.gate_stats({"l": alpha}, TH, {"l": 0.1}, {"l": 0.5})
    assert w.ok and w.warning and "against 0.5 it would be at 23%" in w.explanation, w.line()


def test_a_gate_that_fell_from_both_stated_inits_collapsed_and_both_are_named():
    [v] = health.gate_stats({"l": np.full(64, 0.01)}, TH, {"l": 0.3}, {"l": 0.5})
    assert not v.ok and "GATING COLLAPSE" in v.explanation and "two inits" in v.explanation, v.line()
    [same] = health.gate_stats({"l": np.full(64, 0.01)}, TH, {"l": 0.3}, {"l": None})
    assert not same.ok and "two inits" not in same.explanation


def test_a_gate_exactly_at_one_of_two_stated_inits_is_untrained():
    [v] = health.gate_stats({"l": np.full(64, bf16(0.3))}, TH, {"l": 0.5}, {"l": 0.3})
    assert not v.ok and v.details["untrained"] and "never trained" in v.explanation and "two inits" in v.explanation


def test_edited_alpha_init_in_config_fails_config_consistency_not_gate_stats(tmp_path):
    """The edit made the way a user makes it: healthy-seed0's config.json says alpha_init 0.5,
    its recipe (how it was trained) 0.1."""
    ckpt = zoo_copy("healthy-seed0", tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["decoder"]["alpha_init"] = 0.5
    (ckpt / "config.json").write_text(json.dumps(config))
    adapter = ReferenceAdapter(ckpt)
    [info] = adapter.ttt_layers()
    assert (info.gate_alpha_init, info.gate_alpha_init_disputed) == (0.5, 0.1)
    run = health_run(ckpt, tmp_path)
    [consistency] = run.judge("config_consistency")
    [gate] = run.judge("gate_stats")
    assert not consistency.ok and "alpha_init" in consistency.explanation
    assert gate.ok and gate.warning and "collapse is not established" in gate.explanation, gate.line()
    assert ReferenceAdapter(ZOO / "healthy-seed0").ttt_layers()[0].gate_alpha_init_disputed is None


HEALTHY_ZOO = [e.name for e in zoo_entries(broken=False)]  # seeds and one variant per recipe knob users vary


@pytest.mark.parametrize("name", HEALTHY_ZOO)
def test_healthy_zoo_gates_sit_far_from_both_gate_thresholds(name):
    adapter = ReferenceAdapter(ZOO / name)
    layers = adapter.ttt_layers()
    assert all(i.gate_alpha_init is not None for i in layers)
    for v in health.gate_stats({i.name: i.gate_alpha for i in layers}, TH, {i.name: i.gate_alpha_init for i in layers}):
        assert v.ok, v.line()
        assert v.details["fraction_of_init"] >= MARGIN * TH["gate_min_fraction_of_init"], v.line()
        assert v.details["mean_tanh"] >= MARGIN * TH["gate_min_mean_tanh"], v.line()


@pytest.mark.parametrize("name, message", [
    ("gate-collapse", "GATING COLLAPSE"),
    ("untrained-gate1", "never trained"),
])
def test_broken_zoo_gates_fail_with_their_cause(name, message):
    adapter = ReferenceAdapter(ZOO / name)
    layers = adapter.ttt_layers()
    verdicts = health.gate_stats({i.name: i.gate_alpha for i in layers}, TH, {i.name: i.gate_alpha_init for i in layers})
    assert verdicts and all(not v.ok and message in v.explanation for v in verdicts), [v.line() for v in verdicts]
    if name == "gate-collapse":  # init 0.3 driven through zero: the flip is named too
        assert all("SIGN FLIPPED" in v.explanation for v in verdicts)


# -- ttt_helps: TTT must earn its place ------------------------------------------------------------


def test_helps_does_nothing_and_hurts_are_three_different_verdicts():
    rng = np.random.default_rng(0)
    gate0 = 1.7 + 0.3 * rng.standard_normal(256)
    helps = health.ttt_helps(gate0 * 0.99, gate0, TH)
    nothing = health.ttt_helps(gate0 - 1e-5, gate0, TH)
    hurts = health.ttt_helps(gate0 * 1.01, gate0, TH)
    assert helps.ok and helps.details["verdict"] == "helps"
    assert not nothing.ok and "DOES NOTHING" in nothing.explanation and nothing.details["verdict"] == "does_nothing"
    assert not hurts.ok and "HURTS" in hurts.explanation and hurts.details["verdict"] == "hurts"
    assert helps.details["paired_t"] > 0 > hurts.details["paired_t"]


def test_nan_ttt_weights_make_gate_zero_not_off():
    v = health.ttt_helps(np.full(8, np.nan), np.full(8, np.nan), TH, nonfinite_ttt=["layers.3.ttt.ttt.wq.weight"])
    assert not v.ok and "TTT produces NaN, gate 0 is not off" in v.explanation
    base = health.ttt_helps(np.full(8, np.nan), np.full(8, np.nan), TH)
    assert not base.ok and "base model itself" in base.explanation


@pytest.mark.parametrize("name", HEALTHY_ZOO)
def test_healthy_reference_clears_the_help_threshold_with_margin(tmp_path, name):
    run = health_run(ZOO / name, tmp_path)
    [v] = run.judge("ttt_helps")
    assert v.ok, v.line()
    assert v.measured >= MARGIN * TH["help_min_loss_decrease"], v.line()


def _finetune_with_output_projection_frozen_at_zero(ckpt: Path) -> Path:
    """What a user does: zero the TTT output projection, keep it frozen at zero (its gradient is
    masked, so AdamW never moves it), fine-tune the rest, save. The TTT branch then adds a
    constant (wo.bias) whatever its input."""
    from ttt_checks.models.reference.checkpoint import load_checkpoint, save_ttt
    from ttt_checks.models.reference.corpus import DialogueCorpus
    from ttt_checks.models.reference.train import FinetuneRecipe, finetune_ttt

    loaded = load_checkpoint(ckpt)
    model = loaded.model
    frozen = [p for n, p in model.named_parameters() if n.endswith(".ttt.ttt.wo.weight")]
    assert frozen, "the reference TTT has no output projection to freeze"
    with torch.no_grad():
        for p in frozen:
            p.zero_()
    hooks = [p.register_hook(torch.zeros_like) for p in frozen]
    recipe = FinetuneRecipe(steps=6, batch=4, seq_len=128, warmup=1, layers=tuple(loaded.decoder_config.ttt_layers),
                            alpha_init=loaded.decoder_config.alpha_init)
    torch.manual_seed(0)
    finetune_ttt(model, DialogueCorpus.load(seed=0), recipe)
    for h in hooks:
        h.remove()
    assert all(float(p.detach().abs().max()) == 0.0 for p in frozen)
    out = ckpt.parent / "wo-frozen-at-zero"
    config = dict(loaded.config)
    extra = {k: v for k, v in config.items() if k not in ("format", "kind", "base", "decoder", "ttt_init_seed")}
    save_ttt(model.eval(), out, ckpt.parent / "base", int(config["ttt_init_seed"]), extra={**extra, "name": out.name})
    return out


def test_ttt_that_ignores_its_input_is_caught_as_doing_nothing(tmp_path):
    ckpt = _finetune_with_output_projection_frozen_at_zero(zoo_copy("healthy-seed0", tmp_path / "zoo"))
    run = health_run(ckpt, tmp_path)
    [v] = run.judge("ttt_helps")
    assert not v.ok and "IGNORES ITS INPUT" in v.explanation, v.line()
    assert v.details["verdict"] == "does_nothing" and v.details["constant_output_layers"], v.line()
    assert abs(v.measured) <= TH["help_min_loss_decrease"] / MARGIN, v.line()  # far from the line, on the right side
    assert all(c.ok for c in run.judge("gate_stats")), "the gate is fine: only ttt_helps names this fault"


def test_nan_zoo_entry_names_nan_ttt_not_the_base(tmp_path):
    run = health_run(ZOO / "nan-weights", tmp_path)
    [v] = run.judge("ttt_helps")
    assert not v.ok and "gate 0 is not off" in v.explanation, v.line()
    assert v.details["nonfinite_ttt"]


# -- talk_base: a talking base predicts its own stream ----------------------------------------------


def test_base_at_chance_does_not_talk_whatever_whisper_hears():
    """Whisper invents "See you next week" on gibberish; the gate-0 loss 5.6 vs chance ln(260)."""
    chance = math.log(260)
    broken = health.talk_base(4, "See you next week.", [], np.full(16, 5.6), chance, TH)
    assert not broken.ok and "better than chance" in broken.explanation
    healthy = health.talk_base(12, "I am a joke that is a computer.", [], np.full(16, 1.7264), chance, TH)
    assert healthy.ok and healthy.details["loss_vs_chance"] * MARGIN <= TH["talk_max_base_loss_vs_chance"]
    assert broken.details["loss_vs_chance"] >= MARGIN * TH["talk_max_base_loss_vs_chance"]
    silent = health.talk_base(0, "", ["silence"], np.full(16, 1.7), chance, TH)
    assert not silent.ok and "no speech" in silent.explanation


def test_talk_base_with_nan_ttt_does_not_blame_the_base():
    v = health.talk_base(0, "", ["silence"], np.full(16, np.nan), math.log(260), TH, nonfinite_ttt=["layers.3.ttt.ttt.W1"])
    assert not v.ok and v.explanation.startswith("cannot measure: TTT produces NaN, gate 0 is not off")


def test_reference_chance_loss_is_uniform_guessing_over_its_vocabulary():
    adapter = ReferenceAdapter(ZOO / "healthy-seed0")
    assert adapter.chance_outer_loss() == pytest.approx(math.log(adapter.loaded.decoder_config.vocab_size))


# -- config_consistency and the DDP prefix -----------------------------------------------------------


def test_zoo_checkpoint_config_agrees_with_its_recipe(tmp_path):
    [v] = health_run(ZOO / "healthy-seed0", tmp_path).judge("config_consistency")
    assert v.ok and not v.warning, v.line()
    assert {"mini_batch_size", "base_lr", "ttt_layers", "alpha_init"} <= {row["name"] for row in v.details["compared"]}


def test_mini_batch_size_edited_after_training_is_named_with_the_winner(tmp_path):
    """The issue: config.json says 64, the checkpoint was trained at 16."""
    ckpt = zoo_copy("healthy-seed0", tmp_path / "zoo")
    config = json.loads((ckpt / "config.json").read_text())
    assert config["decoder"]["ttt"]["mini_batch_size"] == 16
    config["decoder"]["ttt"]["mini_batch_size"] = 64
    (ckpt / "config.json").write_text(json.dumps(config))
    run = health_run(ckpt, tmp_path)
    assert {i.mini_batch_size for i in run.layers} == {64}  # what every other check measures
    [v] = run.judge("config_consistency")
    assert not v.ok and v.details["contradictions"] == ["mini_batch_size"], v.line()
    assert "says 64" in v.explanation and "says 16" in v.explanation and "config.json decoder.ttt.mini_batch_size wins" in v.explanation


def _prefix_ddp(path: Path) -> dict[str, torch.Tensor]:
    """Re-save a weights file with every key prefixed ``module.`` (as a DDP-wrapped model saves);
    returns the original tensors (cloned: the file they were read from is rewritten)."""
    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    save_file({f"module.{k}": v.contiguous() for k, v in tensors.items()}, str(path))
    return tensors


def test_ddp_prefixed_reference_checkpoint_loads_and_says_so(tmp_path):
    ckpt = zoo_copy("healthy-seed0", tmp_path / "zoo")
    original = _prefix_ddp(ckpt / "ttt.safetensors")
    run = health_run(ckpt, tmp_path)
    state = run.adapter.state()
    assert all(torch.equal(state[k], v) for k, v in original.items())
    assert not any(k.startswith("module.") for k in state)
    [note] = run.adapter.checkpoint_notes()
    assert "module." in note and "consume_prefix_in_state_dict_if_present" in note and f"{len(original)} of" in note
    [v] = run.judge("config_consistency")
    assert v.ok and "module." in v.explanation
    assert run.metrics()["checkpoint_notes"] == [note]
    assert run.judge("checkpoint_keys")[0].ok


# -- Moshi: config.json vs training_config.json, DDP prefix (tiny random Moshi, no training) --------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    import moshi_fixtures as mf

    torch.set_num_threads(1)
    return mf.build_base(tmp_path_factory.mktemp("tiny_moshi_base"))


def _tiny_run(tiny_base, root: Path, **ttt) -> tuple[Path, dict[str, torch.Tensor]]:
    """An untrained tiny Moshi-TTT run saved in the moshi-finetune layout, and its TTT tensors."""
    import moshi_fixtures as mf
    from ttt_checks.models.moshi.adapter import MoshiAdapter
    from ttt_checks.models.moshi.model import export_ttt_tensors

    cfg = mf.training_config(**ttt)
    empty = mf.write_run(root / "empty", tiny_base, {}, cfg)
    adapter = MoshiAdapter(empty, **tiny_base.options)
    tensors = export_ttt_tensors(adapter.loaded.hybrids, adapter.loaded.keys, float(cfg["ttt"]["initial_gating_alpha"]))
    return mf.write_run(root / "run", tiny_base, tensors, cfg), tensors


def _consolidated(run_dir: Path) -> Path:
    return next(run_dir.glob("checkpoints/checkpoint_*/consolidated"))


def test_moshi_config_json_contradicting_training_config_fails(tiny_base, tmp_path):
    from ttt_checks.models.moshi.adapter import MoshiAdapter

    run_dir, _ = _tiny_run(tiny_base, tmp_path, mini_batch_size=16, initial_gating_alpha=0.3)
    adapter = MoshiAdapter(run_dir, **tiny_base.options)
    assert {i.gate_alpha_init for i in adapter.ttt_layers()} == {0.3}
    agree = health.config_consistency(adapter.recipe_fields(), adapter.checkpoint_notes())
    assert agree.ok and {"lora", "lora_rank", "lora_scaling"} <= {r["name"] for r in agree.details["compared"]}, agree.line()
    cfg_path = _consolidated(run_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["mini_batch_size"] = 64  # edited after a run trained at 16
    cfg_path.write_text(json.dumps(cfg))
    edited = MoshiAdapter(run_dir, **tiny_base.options)
    assert {i.mini_batch_size for i in edited.ttt_layers()} == {16}  # the loader reads training_config.json
    v = health.config_consistency(edited.recipe_fields(), edited.checkpoint_notes())
    assert not v.ok and v.details["contradictions"] == ["mini_batch_size"], v.line()
    assert "training_config.json ttt.mini_batch_size wins" in v.explanation and "64" in v.explanation


def test_moshi_unstated_initial_alpha_is_unknown_not_the_default(tiny_base, tmp_path):
    from ttt_checks.models.moshi.adapter import MoshiAdapter

    run_dir, _ = _tiny_run(tiny_base, tmp_path)
    train_path = _consolidated(run_dir) / "training_config.json"
    train = json.loads(train_path.read_text())
    del train["ttt"]["initial_gating_alpha"]
    train_path.write_text(json.dumps(train))
    assert {i.gate_alpha_init for i in MoshiAdapter(run_dir, **tiny_base.options).ttt_layers()} == {None}


def test_moshi_gate_init_contradicted_by_args_yaml_is_disputed_not_a_collapse(tiny_base, tmp_path):
    """training_config.json edited to initial_gating_alpha 0.5 after a launch at 0.1 (args.yaml):
    the gates (exported at 0.1 and then nudged, as training does) are judged against both inits."""
    from ttt_checks.models.moshi.adapter import MoshiAdapter

    run_dir, _ = _tiny_run(tiny_base, tmp_path, initial_gating_alpha=0.5)
    (run_dir / "args.yaml").write_text("run_dir: run\nttt:\n  enable: true\n  initial_gating_alpha: 0.1\n")
    adapter = MoshiAdapter(run_dir, **tiny_base.options)
    layers = adapter.ttt_layers()
    assert {(i.gate_alpha_init, i.gate_alpha_init_disputed) for i in layers} == {(0.5, 0.1)}
    gates = {i.name: np.full_like(i.gate_alpha, 0.11) for i in layers}  # 22% of tanh(0.5), 110% of tanh(0.1)
    verdicts = health.gate_stats(gates, TH, {i.name: i.gate_alpha_init for i in layers},
                                 {i.name: i.gate_alpha_init_disputed for i in layers})
    assert verdicts and all(v.ok and v.warning and "collapse is not established" in v.explanation for v in verdicts)
    assert not health.config_consistency(adapter.recipe_fields(), adapter.checkpoint_notes()).ok


def test_moshi_ddp_prefixed_lora_loads_stripped_and_says_so(tiny_base, tmp_path):
    from ttt_checks.models.moshi.adapter import MoshiAdapter

    run_dir, tensors = _tiny_run(tiny_base, tmp_path)
    _prefix_ddp(_consolidated(run_dir) / "lora.safetensors")
    adapter = MoshiAdapter(run_dir, **tiny_base.options)
    [note] = adapter.checkpoint_notes()
    assert "module." in note and "consume_prefix_in_state_dict_if_present" in note
    state = adapter.state()
    assert set(tensors) <= set(state) and not any(k.startswith("module.") for k in state)
    assert not adapter.loaded.report.unexpected_ttt and health.checkpoint_keys(adapter.expected_ttt_keys(), state).ok
    assert "module." in health.config_consistency(adapter.recipe_fields(), adapter.checkpoint_notes()).explanation


def test_moshi_training_config_edited_after_launch_contradicts_args_yaml(tiny_base, tmp_path):
    """moshi-finetune writes the TrainArgs to <run>/args.yaml at launch: a training_config.json
    whose mini_batch_size was changed to 64 after a launch at 16 is named, and the loader's value
    (training_config.json) is said to win."""
    from ttt_checks.models.moshi.adapter import MoshiAdapter

    run_dir, _ = _tiny_run(tiny_base, tmp_path, mini_batch_size=64)
    (run_dir / "args.yaml").write_text("run_dir: run\nttt:\n  enable: true\n  mini_batch_size: 16\n  base_lr: 1.0\n")
    adapter = MoshiAdapter(run_dir, **tiny_base.options)
    v = health.config_consistency(adapter.recipe_fields(), adapter.checkpoint_notes())
    assert not v.ok and v.details["contradictions"] == ["mini_batch_size"], v.line()
    assert "args.yaml" in v.explanation and "training_config.json ttt.mini_batch_size wins" in v.explanation
    assert "base_lr" in {row["name"] for row in v.details["compared"]}


def test_ttt_helps_says_cannot_measure_when_the_input_cannot_resolve_the_required_benefit():
    """A short input gives a noisy gain: "does nothing" would be a claim the data do not support."""
    th = health.load_thresholds()
    rng = np.random.default_rng(0)
    gate0 = 1.7 + 0.2 * rng.standard_normal(64)
    noisy = gate0 - 0.0005 + 0.02 * rng.standard_normal(64)  # +0.03 % gain, +- ~0.15 % over blocks
    v = health.ttt_helps(noisy, gate0, th)
    assert not v.ok and v.explanation.startswith("cannot measure") and "longer --input" in v.explanation
    assert v.details["verdict"] == "unresolved"
    steady = gate0 - 0.0005 + 1e-6 * rng.standard_normal(64)  # the same gain, resolved
    v = health.ttt_helps(steady, gate0, th)
    assert not v.ok and v.details["verdict"] == "does_nothing" and "DOES NOTHING" in v.explanation
    v = health.ttt_helps(gate0 - 0.01, gate0, th)  # a clear benefit passes whatever the noise
    assert v.ok and v.details["verdict"] == "helps"


def test_zero_initialised_gate_is_judged_by_the_floor_and_says_it_opened():
    """The zero-init trick (TTT starts switched off): measured on the healthy recipe with alpha init 0, the
    gate opened to 0.049 in 200 steps and TTT lowered the loss by 0.144%."""
    opened = health.gate_stats({"layers.3.ttt": np.full(128, 0.0487)}, TH, {"layers.3.ttt": 0.0})
    assert opened[0].ok and "opened to 0.048" in opened[0].explanation and "inf" not in opened[0].explanation
    shut = health.gate_stats({"layers.3.ttt": np.full(128, 0.002)}, TH, {"layers.3.ttt": 0.0})
    assert not shut[0].ok and "NEVER OPENED" in shut[0].explanation
    untouched = health.gate_stats({"layers.3.ttt": np.zeros(128)}, TH, {"layers.3.ttt": 0.0})
    assert not untouched[0].ok and untouched[0].details.get("untrained")


def test_nan_in_a_frozen_base_tensor_is_the_base_not_a_training_divergence(tmp_path):
    """Held-out class: NaN in a base tensor was diagnosed 'the training diverged ... lower base_lr'; the TTT
    fine-tune never updates the base, so the finding names the base weights and restoring them."""
    from safetensors.torch import load_file, save_file

    from ttt_checks.diagnosis import diagnose

    ckpt = zoo_copy("healthy-seed0", tmp_path)
    tensors = load_file(tmp_path / "base" / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.startswith("layers.1.") and tensors[k].is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, tmp_path / "base" / "model.safetensors")
    run = health_run(ckpt, tmp_path)
    [v] = run.judge("checkpoint_finite")
    assert not v.ok and v.details["nonfinite_base"] == [name] and v.details["nonfinite_ttt"] == []
    run.judge("figure5_finite")
    finding = diagnose(run.metrics()).findings[0]
    assert finding.rule == "nonfinite_weights" and "base" in finding.title.lower() and name in finding.symptom
    assert "restore the base weights" in finding.fix and "base_lr" not in finding.fix


def test_nan_in_a_ttt_tensor_is_still_a_divergence_of_the_ttt_training(tmp_path):
    run = health_run(ZOO / "nan-weights", tmp_path)
    [v] = run.judge("checkpoint_finite")
    assert v.details["nonfinite_ttt"] and not v.details["nonfinite_base"]
    from ttt_checks.diagnosis import diagnose

    finding = diagnose(run.metrics()).findings[0]
    assert finding.rule == "nonfinite_weights" and "base_lr" in finding.fix


def test_ttt_weights_saved_from_a_fresh_init_with_another_seed_are_never_trained(tmp_path):
    """Held-out class: TTT weights drawn from another seed than the config states do not bit-match its init,
    and were diagnosed 'context not used'. Every deterministic part of the init is still exactly at init
    while the random tensors have the init's spread: never trained, saved from a fresh initialisation."""
    from safetensors.torch import load_file, save_file

    from ttt_checks.diagnosis import diagnose
    from ttt_checks.models.reference.checkpoint import STORE_DTYPE, is_ttt_key, ttt_init_of
    from ttt_checks.models.reference.train import build_with_ttt_init

    ckpt = zoo_copy("healthy-seed0", tmp_path)
    adapter = ReferenceAdapter(ckpt)
    seed = int(adapter.loaded.config["ttt_init_seed"]) + 7
    fresh = build_with_ttt_init(adapter.loaded.decoder_config, seed, ttt_init_of(adapter.loaded.config)).state_dict()
    saved = load_file(ckpt / "ttt.safetensors")
    replaced = {k: (fresh[k].detach().to(STORE_DTYPE).contiguous() if is_ttt_key(k) and k in fresh else v) for k, v in saved.items()}
    assert sum(1 for k in saved if is_ttt_key(k) and k in fresh) >= 5
    save_file(replaced, ckpt / "ttt.safetensors")
    run = health_run(ckpt, tmp_path)
    [v] = run.judge("dead_parameters")
    d = v.details
    assert not v.ok and len(d["constant_init"]) >= 2 and set(d["constant_init"]) == set(d["constant_init_unchanged"])
    assert set(d["std_ratio_to_init"]) == set(d["fresh_draw_like"]) and d["fresh_draw_like"]
    for check in ("figure5_adaptation", "figure5_ordering", "figure5_improvement", "gate_stats"):
        run.judge(check)
    finding = diagnose(run.metrics()).findings[0]
    assert finding.rule == "ttt_untrained" and "fresh initialisation" in finding.title, finding.line()


def test_a_trained_checkpoint_has_no_fresh_init_signature(tmp_path):
    run = health_run(ZOO / "healthy-seed0", tmp_path)
    [v] = run.judge("dead_parameters")
    d = v.details
    assert v.ok and d["constant_init"] and not set(d["constant_init"]) <= set(d["constant_init_unchanged"])
    assert set(d["std_ratio_to_init"]) - set(d["fresh_draw_like"]), d["std_ratio_to_init"]  # trained spreads moved


def test_the_healthy_zoo_evaluates_near_its_training_record():
    """The other side of record_max_loss_ratio, from the committed measurements (no model run)."""
    import json

    for entry in zoo_entries():
        config = json.loads((entry.path / "config.json").read_text())
        record = (config.get("training") or {}).get("train_loss")
        learned = ((config.get("measured") or {}).get("summary") or {}).get("val_loss_learned")
        if entry.healthy and record and learned:
            assert learned / record * MARGIN <= TH["record_max_loss_ratio"], (entry.name, learned / record)
