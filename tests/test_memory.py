"""Memory of Moshi 7B + TTT without a GPU: exact parameter bytes on the meta device, the estimate's
parts, and the early refusal of a CUDA run that would not fit (``mem_get_info`` mocked).

The numbers docs/moshi.md states are checked against the model moshi builds, so the docs cannot
drift from the code: the test reads the counts out of the docs' memory table.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from ttt_checks.models.moshi.memory import (GIB, GPUMemoryError, MoshiMemoryModel, inner_state_numel,  # noqa: E402
                                            require_fits, ttt_parameter_count)
from ttt_checks.models.moshi.model import ttt_config_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "moshi.md"
USER_TTT = {"ttt_mlp_hidden_dims": None, "ttt_mlp_expansion_factor": 4.0, "mini_batch_size": 64, "base_lr": 1.0}
USER_LAYERS = (29, 30, 31)


def _docs_count(label: str) -> int:
    """The integer the docs' memory section states after ``label`` (e.g. '7,687,729,152')."""
    text = DOCS.read_text()
    match = re.search(re.escape(label) + r"[^0-9]*([0-9][0-9,]+)", text)
    assert match, f"docs/moshi.md states no number after {label!r}"
    return int(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def moshi_7b() -> MoshiMemoryModel:
    from moshi.models import loaders

    config = ttt_config_for(4096, 32, "mlp", 2, USER_TTT)
    return MoshiMemoryModel(dict(loaders._lm_kwargs), {i: config for i in USER_LAYERS})


def test_7b_parameter_bytes_on_the_meta_device_are_those_the_docs_state(moshi_7b):
    from moshi.models import loaders

    from ttt_checks.ttt import GatedTTT

    lm = loaders.get_moshi_lm(None, lm_kwargs=dict(loaders._lm_kwargs), device="meta", dtype=torch.bfloat16)
    lm_params = sum(p.numel() for p in lm.parameters())
    assert all(p.dtype == torch.bfloat16 for p in lm.parameters())
    assert lm_params == moshi_7b.lm_params == _docs_count("Moshi 7B LM parameters:")
    assert round(lm_params * 2 / 1e9, 1) == 15.4  # the docs' "15.4 GB" in bf16
    block = sum(p.numel() for p in lm.transformer.layers[0].parameters())
    assert block == _docs_count("parameters per transformer block:")

    config = ttt_config_for(4096, 32, "mlp", 2, USER_TTT)
    with torch.device("meta"):
        gated = GatedTTT(config)
    ttt_params = sum(p.numel() for p in gated.parameters())
    assert ttt_params == ttt_parameter_count(config) == _docs_count("TTT parameters per layer (model):")
    # the checkpoint also stores wo [4096, 4096] + bias, post_norm (2 x 4096) and the backward gate, never applied
    assert ttt_params + (4096 * 4096 + 4096) + 2 * 4096 + 4096 == _docs_count("TTT tensors per layer (checkpoint):")
    assert inner_state_numel(config) == _docs_count("inner weights per layer and batch row:")


def test_estimate_parts_follow_the_layout(moshi_7b):
    # KV cache: [2, rows, 32 heads, context 3000, 128] bf16 in each of 32 blocks (+ the depformer's context 8)
    main = 2 * 5 * 32 * 3000 * 128 * 2 * 32
    depformer = 2 * 5 * 1024 * 8 * 6 * 2
    assert moshi_7b.kv_cache(5) == main + depformer
    assert moshi_7b.ttt_state(5) == 3 * 4 * (5 * 4_214_784 + 4_214_784 + 63 * 5 * (3 * 4096 + 32))
    s1, s5 = moshi_7b.streaming(1), moshi_7b.streaming(5)
    assert s1.total < s5.total and s5.total - s1.total > 4 * moshi_7b.kv_cache(1)
    short, long = moshi_7b.teacher_forced(425), moshi_7b.teacher_forced(3000)
    assert short.total < long.total
    assert moshi_7b.teacher_forced(3000, figure5=False).total < long.total
    # the docs' headline numbers: weights + 5-gate sweep, and the 3000-frame pass, in GiB as printed
    assert f"{s5.total / GIB:.1f} GiB" in DOCS.read_text()
    assert f"{long.total / GIB:.1f} GiB" in DOCS.read_text()


def test_what_fits_is_the_largest_setting_under_the_budget(moshi_7b):
    budget = 20 * GIB
    rows = moshi_7b.max_rows(budget)
    assert rows >= 1 and moshi_7b.streaming(rows).total <= budget < moshi_7b.streaming(rows + 1).total
    frames = moshi_7b.max_frames(budget)
    assert moshi_7b.teacher_forced(frames).total <= budget < moshi_7b.teacher_forced(frames + 1).total
    assert moshi_7b.max_rows(GIB) == 0 and moshi_7b.max_frames(GIB) == 0  # the weights alone do not fit


def _fake_gpu(monkeypatch, free: int, total: int = 80 * GIB) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free), int(total)))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")


def test_a_run_that_would_not_fit_is_refused_with_the_need_and_the_fix(moshi_7b, monkeypatch):
    _fake_gpu(monkeypatch, free=20 * GIB)
    sweep = moshi_7b.streaming(5)
    with pytest.raises(GPUMemoryError) as err:
        require_fits(sweep, "cuda:0", resident=0, fix="fewer gates per batch")
    message = str(err.value)
    assert "Fake GPU 80GB" in message and "20.00 GiB free of 80.00 GiB" in message
    assert f"{sweep.total / GIB:.2f} GiB more needed" in message and "KV cache (5 rows" in message
    assert message.endswith("Fix: fewer gates per batch")
    require_fits(moshi_7b.streaming(1), "cuda:0", resident=0, fix="-")  # 17 GiB fits in 20
    require_fits(sweep, "cuda:0", resident=moshi_7b.weight_bytes(), fix="-")  # weights already there: 8 GiB more fits
    require_fits(sweep, "cpu", resident=0, fix="-")  # the host is never checked


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    import moshi_fixtures as mf

    from ttt_checks.models.moshi.adapter import MoshiAdapter

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_memory")
    base = mf.build_base(root / "base")
    return MoshiAdapter(mf.write_run(root / "run", base, {}, mf.training_config()), **base.options)


def test_adapter_on_cuda_stops_before_a_sweep_or_pass_that_would_not_fit(tiny_adapter, monkeypatch):
    """The adapter's own check runs before anything touches the device: with the device set to
    CUDA and the free memory mocked, generate and teacher_forced fail with the fix, no CUDA call."""
    mem = tiny_adapter.memory_model()
    assert mem.lm_params == sum(p.numel() for n, p in tiny_adapter.lm.named_parameters() if ".ttt_block." not in n)
    assert mem.ttt_params == sum(p.numel() for n, p in tiny_adapter.lm.named_parameters() if ".ttt_block." in n)
    free = mem.streaming(2).total - mem.weight_bytes()  # room for exactly 2 gate rows
    _fake_gpu(monkeypatch, free=free)
    monkeypatch.setattr(tiny_adapter, "device", torch.device("cuda"))
    prompt = tiny_adapter.load_inputs().prompts[0][: 1920 * 4]
    with pytest.raises(GPUMemoryError, match=r"Fix: fewer gates per batch: at most 2 gate row\(s\) fit now"):
        tiny_adapter.generate(prompt, [0.0, "learned", 0.3, 0.5, 1.0])
    _fake_gpu(monkeypatch, free=mem.teacher_forced(50).total - mem.weight_bytes())
    with pytest.raises(GPUMemoryError, match=r"Fix: a shorter context: at most 50 frames fit now \(--max-positions 50"):
        tiny_adapter.teacher_forced(torch.zeros(100 * 1920))
