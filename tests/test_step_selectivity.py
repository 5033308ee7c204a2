"""The step-size selectivity measurement of issue 25 (scripts/fact_sessions_grid.py --step-selectivity).

Its numbers are cited in docs/health-checks.md ("Why the step-size projection's reset keeps more than
half"): the committed default writes the bytes of stated facts with a larger step than the rest, and a
projection without its per-token term cannot choose (its ratio is 1: every byte of a head gets that head's
step, so both means are the same mean over heads).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ttt_checks.models.reference.zoo import DEFAULT_CHECKPOINT, zoo_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grid():
    spec = importlib.util.spec_from_file_location("fact_sessions_grid", ROOT / "scripts" / "fact_sessions_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _only(result: dict) -> dict:
    assert list(result) == ["ttt layer 0"], result
    return result["ttt layer 0"]


def test_the_default_writes_stated_facts_with_a_larger_step(grid) -> None:
    sel = _only(grid.step_selectivity(zoo_path(DEFAULT_CHECKPOINT), rows=4))
    for name in ("recalled values", "stated values", "other bytes"):
        assert 0.0 < sel[name] < 1.0, sel  # a mean of sigmoids
    # Measured 1.70 on these 4 rows (1.75 on 8); a projection that does not choose reads 1 (the test below),
    # and the recipes whose fine-tune did not learn to choose 0.95-1.13 (benchmarks/issue25-step-gate-recipes.jsonl).
    assert sel["stated over other"] > 1.3, sel


def test_a_projection_without_its_per_token_term_does_not_choose(grid, tmp_path: Path) -> None:
    src, ckpt = zoo_path(DEFAULT_CHECKPOINT), tmp_path / "no-choice"
    shutil.copytree(src, ckpt)
    # The copy's config names its base relative to the zoo directory: point it at the committed base.
    config = json.loads((ckpt / "config.json").read_text())
    config["base"] = str((src / config["base"]).resolve())
    (ckpt / "config.json").write_text(json.dumps(config, indent=1))
    tensors = load_file(ckpt / "ttt.safetensors")
    names = [k for k in tensors if k.endswith("ttt.ttt.lr_weight")]
    assert names, sorted(tensors)
    for k in names:
        tensors[k] = torch.zeros_like(tensors[k])
    save_file(tensors, ckpt / "ttt.safetensors")
    sel = _only(grid.step_selectivity(ckpt, rows=4))
    # Both means are the same average of four per-head constants, summed in a different order: float64
    # rounding only.
    assert sel["stated over other"] == pytest.approx(1.0, abs=1e-9), sel
