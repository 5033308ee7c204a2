"""The CUDA-graph decision, pinned on CPU: TTT generation and streamed passes never run graphed.

On CUDA, moshi's LMGen and Mimi wrap their per-frame calls in ``CUDAGraphed`` (capture one
frame, replay it for every later one). The TTT hybrid layer makes per-frame decisions in Python,
so the Moshi adapter runs generation and streamed passes under ``no_cuda_graph()``, and the
hybrid layer refuses to be called from inside a graphed call. On CPU moshi builds its
``CUDAGraphed`` wrappers with ``disable=True``; these tests force them on (as on CUDA) so the
decision is exercised without a GPU: with graphs forced on, the adapter's generation still runs
(and gives the tokens it gives with graphs off), while a bare LMGen fails with the layer's error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import moshi_fixtures as mf  # noqa: E402

import moshi.utils.compile as moshi_compile  # noqa: E402
from ttt_checks.models.moshi.adapter import MoshiAdapter  # noqa: E402
from ttt_checks.models.moshi.inject import TTTGraphCaptureError, TTTHybridLayer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory) -> MoshiAdapter:
    """An untrained tiny Moshi with TTT in both blocks (initial TTT tensors; loads in ~2 s)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_graphs")
    base = mf.build_base(root / "base")
    run = mf.write_run(root / "run", base, {}, mf.training_config())
    return MoshiAdapter(run, reply_seconds=0.24, sampling=False, **base.options)


@pytest.fixture
def graph_flag_log(monkeypatch) -> list[bool]:
    """Whether moshi would CUDA-graph, as seen from inside every TTT hybrid layer call."""
    monkeypatch.delenv("NO_CUDA_GRAPH", raising=False)
    seen: list[bool] = []
    original = TTTHybridLayer.forward

    def spy(self, x, *args, **kwargs):
        seen.append(moshi_compile._is_cuda_graph_enabled())
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(TTTHybridLayer, "forward", spy)
    return seen


@pytest.fixture
def graphs_forced_on(monkeypatch) -> None:
    """Every CUDAGraphed moshi builds is enabled, as it is on a CUDA device (on CPU it is built disabled)."""
    import moshi.models.compression as compression
    import moshi.models.lm as lm_module

    class ForcedOn(moshi_compile.CUDAGraphed):
        def __init__(self, func, warmup_steps: int = 1, disable: bool = False) -> None:
            super().__init__(func, warmup_steps=warmup_steps, disable=False)

    monkeypatch.delenv("NO_CUDA_GRAPH", raising=False)
    monkeypatch.setattr(lm_module, "CUDAGraphed", ForcedOn)
    monkeypatch.setattr(compression, "CUDAGraphed", ForcedOn)


def _prompt(adapter: MoshiAdapter, frames: int = 4):
    return adapter.load_inputs().prompts[0][: 1920 * frames]


def test_generation_and_streamed_passes_run_with_cuda_graphs_disabled(tiny_adapter, graph_flag_log):
    assert moshi_compile._is_cuda_graph_enabled(), "outside the adapter graphs must be on, or this test proves nothing"
    tiny_adapter.generate(_prompt(tiny_adapter), [0.0, "learned"])
    generated = len(graph_flag_log)
    tiny_adapter.teacher_forced(_prompt(tiny_adapter, 6), chunk=1)
    assert generated > 0 and len(graph_flag_log) > generated, "the TTT layers were never called"
    assert not any(graph_flag_log), f"{sum(graph_flag_log)} of {len(graph_flag_log)} TTT calls ran with CUDA graphs enabled"
    assert moshi_compile._is_cuda_graph_enabled(), "the adapter must restore moshi's flag when it is done"


def test_generation_is_unchanged_when_moshi_would_graph(tiny_adapter, request):
    plain = tiny_adapter.generate(_prompt(tiny_adapter), [0.0, "learned", 1.0])
    request.getfixturevalue("graphs_forced_on")  # from here on, moshi graphs as it does on CUDA
    forced = tiny_adapter.generate(_prompt(tiny_adapter), [0.0, "learned", 1.0])
    assert all(len(g.tokens) > 0 for g in forced)
    assert [g.tokens for g in forced] == [g.tokens for g in plain]


def test_a_graphed_lmgen_step_into_a_ttt_layer_fails_with_the_fix(tiny_adapter, graphs_forced_on):
    from moshi.models import LMGen

    lm = tiny_adapter.lm
    codes = tiny_adapter.mimi.encode(torch.as_tensor(_prompt(tiny_adapter))[None, None])
    lm_gen = LMGen(lm, use_sampling=False)
    with lm_gen.streaming(1), pytest.raises(TTTGraphCaptureError, match="no_cuda_graph"):
        lm_gen.step(codes[:, : lm.n_q - lm.dep_q, :1])
    with moshi_compile.no_cuda_graph(), lm_gen.streaming(1):  # the fix the message names works
        assert lm_gen.step(codes[:, : lm.n_q - lm.dep_q, :1]) is None  # first frame: delays not yet filled
