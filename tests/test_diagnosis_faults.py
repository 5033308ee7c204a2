"""The diagnosis judged like the verdicts (issue 26): broken checkpoints of this test's own making,
none of them in the zoo or used to set a threshold, each run through the health checks and asked
for the top finding's rule and for a fix that names the right key or tensor.

Half are *trained* with a faulty recipe as users make them (short fine-tunes of the zoo's base
with a new seed), half are edits of the kind a conversion or a copy makes (a base with two
blocks swapped, NaN in a frozen base tensor, inner weights or an output projection scaled, TTT
tensors redrawn). The gating sweep (Whisper) is left out: no rule below reads it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_diagnosis import advice_goes_its_own_way
from ttt_checks.checks.catalogue import CHECKS, TALK_CHECKS
from ttt_checks.diagnosis import diagnosis_dict
from ttt_checks.models.reference.adapter import ReferenceAdapter
from ttt_checks.models.reference.checkpoint import load_checkpoint, save_ttt
from ttt_checks.models.reference.corpus import DialogueCorpus
from ttt_checks.models.reference.train import (FinetuneRecipe, TTTInit, default_ttt_config, finetune_ttt, insert_ttt,
                                               round_to_bf16_)
from ttt_checks.paths import ZOO_DIR
from ttt_checks.run import HealthRun, RunOptions

SEED = 7  # not a seed of any zoo entry
TTT = "layers.3.ttt.ttt."
# Every check but the gating sweep's (no rule below reads the sweep) and the baseline comparison.
JUDGED = [c for c in CHECKS if c not in TALK_CHECKS and c != "model_specific"]


def _train(out: Path, base_dir: Path, recipe: FinetuneRecipe) -> Path:
    """A short fine-tune of the zoo's base, saved in the reference format like a zoo entry."""
    torch.manual_seed(recipe.seed)
    base = load_checkpoint(base_dir).model
    model = insert_ttt(base, default_ttt_config(base.config.width, **recipe.ttt), recipe.layers, recipe.alpha_init,
                       recipe.init_seed, init=TTTInit.from_dict(recipe.init))
    info = finetune_ttt(model, DialogueCorpus.load(seed=0), recipe)
    round_to_bf16_(model)
    save_ttt(model, out, base_dir, recipe.init_seed, extra={"recipe": asdict(recipe), "training": info,
                                                             "corpus_split_seed": 0, "name": out.name})
    return out


def _edit_ttt(src: Path, out: Path, edit) -> Path:
    shutil.copytree(src, out)
    tensors = load_file(out / "ttt.safetensors")
    edit(tensors)
    save_file(tensors, out / "ttt.safetensors")
    return out


def _edit_base(root: Path, name: str, edit) -> Path:
    """A copy of the zoo's base (its config, with the reference loss, kept) edited, and healthy-seed0's
    TTT tensors on top of it."""
    base = root / f"base-{name}"
    shutil.copytree(ZOO_DIR / "base", base)
    tensors = load_file(base / "model.safetensors")
    edit(tensors)
    save_file(tensors, base / "model.safetensors")
    ckpt = root / name
    shutil.copytree(ZOO_DIR / "healthy-seed0", ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["base"] = f"../base-{name}"
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def _swap_blocks(tensors: dict) -> None:
    swapped = {}
    for key, value in tensors.items():
        if key.startswith(("layers.1.", "layers.2.")):
            other = "layers.2." if key.startswith("layers.1.") else "layers.1."
            swapped[other + key[len("layers.1."):]] = value
        else:
            swapped[key] = value
    tensors.clear()
    tensors.update(swapped)


def _nan_in_base(tensors: dict) -> None:
    key = next(k for k in tensors if k.startswith("layers.0.") and k.endswith("weight") and tensors[k].dim() == 2)
    tensors[key][0, :3] = float("nan")


def _scale(suffixes: tuple[str, ...], factor: float):
    def edit(tensors: dict) -> None:
        for key in tensors:
            if key.startswith(TTT) and key[len(TTT):].startswith(suffixes):
                tensors[key] = tensors[key] * factor
    return edit


def _redraw(tensors: dict) -> None:
    """Every randomly initialised TTT tensor redrawn at its own initial std with another seed, the
    constant ones (biases 0, norm weights 1, the gate alpha) at their init: a model saved straight
    after a fresh initialisation whose seed is not the one its config states."""
    generator = torch.Generator().manual_seed(SEED)
    fresh = ReferenceAdapter(ZOO_DIR / "healthy-seed0").initial_state()
    for key in tensors:
        if key not in fresh:
            continue
        init = fresh[key].float()
        constant = bool((init.reshape(-1) == init.reshape(-1)[0]).all())
        tensors[key] = (init if constant else torch.randn(init.shape, generator=generator) * init.std()).to(tensors[key].dtype)


def _reset_each_call(config: dict) -> None:
    config["decoder"]["ttt_reset_each_call"] = True


HEALTHY = FinetuneRecipe(seed=SEED, init_seed=SEED + 1000)

# name -> (how it is made, the rule its top finding must be, text its fix or config key must contain)
FAULTS = {
    # trained with a faulty recipe
    "trained-inner-lr-1e5": ("trained", replace(HEALTHY, steps=30, lr=1e-5, ttt={"base_lr": 1e5}), "inner_lr_too_high", "base_lr"),
    "trained-inner-lr-1e-6": ("trained", replace(HEALTHY, steps=30, ttt={"base_lr": 1e-6}), "inner_lr_too_low", "base_lr"),
    "trained-alpha-decay": ("trained", replace(HEALTHY, steps=120, alpha_lr=3e-2, alpha_l2=30.0), "gate_collapsed", "gate"),
    "trained-output-frozen-at-zero": ("trained", replace(HEALTHY, steps=30, zeroed_ttt=("ttt.wo.weight", "ttt.wo.bias"),
                                                         frozen_ttt=("ttt.wo.weight", "ttt.wo.bias")), "ttt_untrained", "wo"),
    "trained-noncausal": ("trained", replace(HEALTHY, steps=100, ttt={"causal": False}), "noncausal_read_ahead", "causal"),
    "trained-outer-lr-far-too-high": ("trained", replace(HEALTHY, steps=30, warmup=1, lr=3.0), "ttt_tensor_off_scale",
                                      "outer learning rate"),
    "trained-w0-frozen": ("trained", replace(HEALTHY, steps=60, frozen_ttt=("ttt.weights.0", "ttt.weights.1", "ttt.biases.0",
                                                                           "ttt.biases.1")), "inner_state_untrained", "weights"),
    # edited as a conversion, a copy or a loader does
    "base-blocks-swapped": ("base", _swap_blocks, "base_model", "base"),
    "base-nan": ("base", _nan_in_base, "nonfinite_weights", "base"),
    "w0-times-1000": ("ttt", _scale(("weights.",), 1000.0), "ttt_tensor_off_scale", "weights."),
    "output-times-100": ("ttt", _scale(("wo.weight",), 100.0), "ttt_tensor_off_scale", "wo.weight"),
    "state-reset-every-call": ("config", _reset_each_call, "state_not_carried", "ttt_reset_each_call"),
    "fresh-init-another-seed": ("ttt", _redraw, "ttt_untrained", "train"),
}


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(ZOO_DIR / "base", root / "base")
    return root


def _make(root: Path, name: str) -> Path:
    kind, how, _, _ = FAULTS[name]
    out = root / name
    if kind == "trained":
        return _train(out, root / "base", how)
    if kind == "base":
        return _edit_base(root, name, how)
    if kind == "config":
        shutil.copytree(ZOO_DIR / "healthy-seed0", out)
        config = json.loads((out / "config.json").read_text())
        how(config)
        (out / "config.json").write_text(json.dumps(config))
        return out
    return _edit_ttt(ZOO_DIR / "healthy-seed0", out, how)


def _diagnose(ckpt: Path, report: Path) -> dict:
    run = HealthRun(ReferenceAdapter(ckpt), RunOptions(report_dir=report, gates=[0.0, "learned"]))
    for check in JUDGED:
        run.judge(check)
    return diagnosis_dict(run.metrics())


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_of_our_own_gets_the_right_top_finding_and_fix(fault_dir, name):
    _, _, rule, names = FAULTS[name]
    ckpt = _make(fault_dir, name)
    diagnosis = _diagnose(ckpt, fault_dir / f"report-{name}")
    assert not diagnosis["healthy"], diagnosis["summary"]
    top = diagnosis["findings"][0]
    assert top["rule"] == rule, f"{name}: top finding {top['rule']} ({top['title']}: {top['symptom']})"
    said = f"{top.get('config_key')} {top['fix']}"
    assert names in said, f"{name}: the fix does not name {names!r}: {said}"
    for finding in diagnosis["findings"]:  # no advice contradicts its own numbers
        advice_goes_its_own_way(finding["fix"], finding["rule"])



def test_half_of_the_faults_are_trained():
    kinds = [kind for kind, *_ in FAULTS.values()]
    assert len(kinds) >= 12 and kinds.count("trained") >= len(kinds) / 2
