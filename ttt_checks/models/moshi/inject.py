"""TTT injected into moshi's LMModel transformer blocks, with the user's placement and gate.

The user's ``HybridStreamingTransformerLayer`` runs, per block:

    x = x + layer_scale_1(self_attn(norm1(x)))     # the original block's _sa_block
    x = x + tanh(clamp(alpha, -3, 3)) * TTT(x)      # GatedTTT: after attention, before the FFN
    x = x + layer_scale_2(ff(norm2(x)))            # the original block's _ff_block

:class:`TTTHybridLayer` does the same with our TTT core, keeping the original block (and so its
KV cache, streaming offset and layer_scale) untouched. It is a moshi ``StreamingModule``: when
moshi enters streaming (``lm.streaming(B)`` or ``LMGen``), the TTT layer enters its own
streaming mode, so consecutive frames continue one TTT sequence; ``reset_streaming`` starts a
new one. With ``carry_state=False`` every call restarts from the learned W_0 (the "weights reset
every step" behaviour of the user's 2-layer code), for reproducing that bug.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from moshi.modules.streaming import State, StreamingModule
from moshi.modules.transformer import StreamingTransformerLayer
from moshi.utils.compile import in_cuda_graph, no_compile
from torch import nn

from ttt_checks.ttt import GatedTTT, TTTConfig, rope_within_minibatch


class TTTGraphCaptureError(RuntimeError):
    """A TTT hybrid layer reached from inside a CUDA graph capture or a graphed call."""


@dataclass
class _HybridState(State):
    """moshi streaming state of a hybrid layer: it holds the TTT layer's ``stream()`` context."""

    ttt_stream: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    layer: Any = None  # the TTTLayer, for reset

    def reset(self, reset_mask: torch.Tensor) -> None:
        super().reset(reset_mask)
        if not bool(reset_mask.all()):
            raise NotImplementedError(
                "a TTT layer keeps one inner state per batch row but resets all rows together; "
                "reset_streaming with a partial mask is not supported (reset every row)"
            )
        self.layer.reset_stream()

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.ttt_stream.close()


class TTTHybridLayer(StreamingModule[_HybridState]):
    """A moshi transformer block with a gated TTT layer between attention and feed-forward."""

    def __init__(self, original_layer: StreamingTransformerLayer, config: TTTConfig, alpha_init: float,
                 use_rope: bool = False, rope_theta: float = 10000.0) -> None:
        super().__init__()
        if getattr(original_layer, "cross_attention", None) is not None:
            raise ValueError("TTT injection does not support blocks with cross-attention (Moshi has none)")
        self.original_layer = original_layer
        rope = rope_within_minibatch(config.mini_batch_size, rope_theta) if use_rope else None
        self.ttt_block = GatedTTT(config, alpha_init=alpha_init, rope=rope)
        self.carry_state = True

    @property
    def ttt(self):
        """The TTT layer itself (what a Figure5Probe attaches to)."""
        return self.ttt_block.ttt

    def _init_streaming_state(self, batch_size: int) -> _HybridState:
        device = next(iter(self.parameters())).device
        state = _HybridState(batch_size, device, layer=self.ttt)
        state.ttt_stream.enter_context(self.ttt.stream())
        self.ttt.reset_state_each_call = not self.carry_state
        return state

    def forward(self, x: torch.Tensor, cross_attention_src: torch.Tensor | None = None) -> torch.Tensor:
        if cross_attention_src is not None:
            raise ValueError("TTT hybrid layers take no cross-attention source")
        if in_cuda_graph() or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            raise TTTGraphCaptureError(
                "a TTT hybrid layer was called inside a CUDA graph (moshi's CUDAGraphed, used by LMGen and "
                "streaming on CUDA): its per-frame Python decisions (open mini-batch, carried state) would be "
                "replayed from the captured frame. Run it under moshi.utils.compile.no_cuda_graph() or with "
                "NO_CUDA_GRAPH=1 (the MoshiAdapter does)")
        layer = self.original_layer
        with contextlib.ExitStack() as stack:
            if x.device.type != "cuda":
                stack.enter_context(no_compile())
            x = layer._sa_block(x)
            x = self.ttt_block(x)
            x = layer._ff_block(x)
            state = layer._streaming_state
            if state:
                state.offset_cpu += x.shape[1]
        return x


def inject_ttt(lm: nn.Module, layer_indices: list[int], configs: dict[int, TTTConfig], alpha_init: float,
               use_rope: bool = False, rope_theta: float = 10000.0) -> dict[int, TTTHybridLayer]:
    """Replace ``lm.transformer.layers[i]`` by a hybrid layer for every i; returns them by index.

    Must run before the model first enters streaming: moshi caches the list of streaming
    submodules on first use.
    """
    layers = lm.transformer.layers
    if getattr(lm.transformer, "_cached_children", None) is not None or getattr(lm, "_cached_children", None) is not None:
        raise RuntimeError("inject TTT before the model first streams (moshi caches its streaming submodules)")
    out = {}
    for i in layer_indices:
        original = layers[i]
        if isinstance(original, TTTHybridLayer):
            raise RuntimeError(f"transformer.layers.{i} already has a TTT layer")
        param = next(original.parameters())
        hybrid = TTTHybridLayer(original, configs[i], alpha_init, use_rope=use_rope, rope_theta=rope_theta)
        hybrid.ttt_block.to(device=param.device, dtype=param.dtype)
        layers[i] = hybrid
        out[i] = hybrid
    return out
