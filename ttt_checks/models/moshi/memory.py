"""GPU memory of a Moshi+TTT run, estimated before anything is loaded, and an early refusal.

A 7B Moshi with TTT does not fit every GPU with every setting: the KV cache grows with the gate
rows of a batched sweep and the attention context, a teacher-forced pass with the frames it
reads. A CUDA out-of-memory traceback in the middle of a sweep says none of that, so a run on
CUDA first compares this module's estimate with ``torch.cuda.mem_get_info`` and, when it would
not fit, stops with the need (by part), the free memory, and the largest gate batch or context
that fits.

The estimate counts bytes the run allocates with PyTorch (what ``torch.cuda.max_memory_allocated``
reports), not the CUDA context or the allocator's cached free blocks; ``SLACK_BYTES`` and
``SAFETY`` cover fragmentation. Parameter counts are exact (the model is built on the ``meta``
device, which allocates nothing); activations are an upper-bound count of the largest tensors
alive at once (docs/moshi.md, "Memory", gives the formulas and the 7B numbers).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ttt_checks.ttt import TTTConfig

GIB = 1024 ** 3
SLACK_BYTES = GIB // 2  # allocator fragmentation and small tensors not counted below
SAFETY = 1.10  # the activation counts are of the largest tensors; 10 % for the rest
CAPTURE_GROUP = 32  # TTTLayer.CAPTURE_GROUP: mini-batches whose Figure-5 tensors are alive at once


class GPUMemoryError(RuntimeError):
    """A CUDA run that would not fit: the message gives the need by part, the free memory, the fix."""


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


@dataclass
class MemoryEstimate:
    """Bytes of one phase of a run, by part (weights, KV cache, TTT state, activations, slack)."""

    phase: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def describe(self) -> str:
        return f"{self.phase}: {_gib(self.total)} (" + ", ".join(f"{k} {_gib(v)}" for k, v in self.parts.items()) + ")"

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "total_bytes": self.total, "parts_bytes": dict(self.parts)}


@functools.lru_cache(maxsize=8)
def _meta_counts(lm_kwargs_json: str, mimi_config_json: str | None) -> tuple[int, int]:
    """(LM parameters, Mimi parameters + buffers) of the layouts, built on the meta device."""
    from moshi.models import loaders

    lm_kwargs = json.loads(lm_kwargs_json)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device="meta", dtype=torch.bfloat16,
                              lm_kwargs_overrides={"lora": False})
    lm_params = sum(p.numel() for p in lm.parameters())
    mimi_cfg = json.loads(mimi_config_json) if mimi_config_json else None
    n_q = int((mimi_cfg or loaders._mimi_config)["quantizer"]["n_q"])  # codebooks used do not change the count
    with torch.device("meta"):
        mimi = loaders.get_mimi(None, mimi_cfg, device="meta", num_codebooks=n_q)
    mimi_numel = sum(p.numel() for p in mimi.parameters()) + sum(b.numel() for b in mimi.buffers())
    return lm_params, mimi_numel


def ttt_parameter_count(config: TTTConfig) -> int:
    """Parameters of one :class:`~ttt_checks.ttt.GatedTTT` (our module: wo/post_norm only when
    ``output_projection``; the user's checkpoints also store wo and post_norm, which their forward
    never applies, so a checkpoint holds 4096*4096 + 3*4096 more per 7B layer than the model)."""
    c = config
    inner_width = c.num_heads * c.head_dim
    n = 3 * (c.width * inner_width + inner_width)  # wq, wk, wv with bias
    n += c.num_heads * c.width + c.num_heads  # step-size weight and bias
    n += 2 * c.num_heads * c.head_dim  # ttt_norm weight and bias
    dims = c.inner_dims
    n += sum(c.num_heads * dims[i] * dims[i + 1] + c.num_heads * dims[i + 1] for i in range(len(dims) - 1))
    if c.output_projection:
        n += 2 * inner_width + inner_width * c.width + c.width
    return n + c.width  # the gate alpha


def inner_state_numel(config: TTTConfig) -> int:
    """Elements of one head-batched inner model (weights and biases), for one batch row."""
    dims = config.inner_dims
    return sum(config.num_heads * (dims[i] * dims[i + 1] + dims[i + 1]) for i in range(len(dims) - 1))


def lm_kwargs_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """moshi LM kwargs from a checkpoint's config.json (moshi's 7B defaults for missing keys;
    keys moshi's LMModel does not take, e.g. lora or model_type, are dropped)."""
    from moshi.models import loaders

    return {k: config.get(k, v) for k, v in loaders._lm_kwargs.items()}


class MoshiMemoryModel:
    """Bytes of a Moshi+TTT model and of each phase of a health run on it.

    ``ttt_configs``: block index -> TTTConfig of the injected layers. ``contexts``: block index ->
    attention context when it differs from ``lm_kwargs['context']`` (ttt_layer_context,
    non_ttt_layer_context). ``dtype_bytes``: 2 for bf16 (CUDA default), 4 for fp32. Mimi is fp32.
    """

    def __init__(self, lm_kwargs: Mapping[str, Any], ttt_configs: Mapping[int, TTTConfig], dtype_bytes: int = 2,
                 mimi_config: Mapping[str, Any] | None = None, contexts: Mapping[int, int] | None = None) -> None:
        self.kw = dict(lm_kwargs)
        self.ttt = dict(ttt_configs)
        self.dtype_bytes = int(dtype_bytes)
        self.mimi_config = dict(mimi_config) if mimi_config is not None else None
        num_layers = int(self.kw["num_layers"])
        self.contexts = [int((contexts or {}).get(i, self.kw["context"])) for i in range(num_layers)]
        self.lm_params, self.mimi_numel = _meta_counts(json.dumps(self.kw, sort_keys=True),
                                                       json.dumps(self.mimi_config, sort_keys=True) if self.mimi_config else None)
        self.ttt_params = sum(ttt_parameter_count(c) for c in self.ttt.values())

    # -- the parts ------------------------------------------------------------------------------

    def weights(self) -> dict[str, int]:
        return {"LM weights": self.lm_params * self.dtype_bytes, "TTT weights": self.ttt_params * self.dtype_bytes,
                "Mimi (fp32)": self.mimi_numel * 4}

    def kv_cache(self, rows: int) -> int:
        """moshi's RingKVCache: [2, rows, heads, context, head_dim] per block, model dtype."""
        kw = self.kw
        head_dim = int(kw["dim"]) // int(kw["num_heads"])
        main = sum(2 * rows * int(kw["num_heads"]) * ctx * head_dim for ctx in self.contexts)
        dep_ctx = int(kw.get("depformer_context") or kw["dep_q"])
        dep = 2 * rows * int(kw["depformer_dim"]) * dep_ctx * int(kw["depformer_num_layers"])
        return (main + dep) * self.dtype_bytes

    def ttt_state(self, rows: int) -> int:
        """Per TTT layer: fp32 inner weights per row (carried), W_0 once, and up to b-1 pending
        rows of q, k, target and step size (recomputed with the next frame)."""
        total = 0
        for c in self.ttt.values():
            inner = inner_state_numel(c)
            pending = (c.mini_batch_size - 1) * rows * (3 * c.num_heads * c.head_dim + c.num_heads)
            total += 4 * (rows * inner + inner + pending)
        return total

    def step_activations(self, rows: int) -> int:
        """One streamed frame: text and audio logits, and the largest TTT mini-batch recompute
        (a full mini-batch of rows through the dual form: q, k, target, activations, gradients)."""
        kw = self.kw
        logits = rows * (int(kw["text_card"]) + int(kw["card"]) * int(kw["dep_q"])) * 4 * 2
        ttt = max((rows * c.mini_batch_size * c.num_heads * (6 * c.head_dim + 4 * max(c.inner_dims)) * 4
                   + rows * c.num_heads * c.mini_batch_size ** 2 * 4 * 2 for c in self.ttt.values()), default=0)
        return logits + ttt

    def teacher_forced_activations(self, frames: int, rows: int = 1, figure5: bool = True) -> int:
        """One pass over ``frames`` frames (the adapter's ``teacher_forced``), largest tensors alive at once.

        Attention scores (fp32, as a math-kernel fallback) of one block; a block's FFN input
        and gated hidden; one TTT layer's fp32 q, k, v, target and output rows; Figure-5 capture
        of CAPTURE_GROUP mini-batches and lmean's float64 running sum of the targets; then the loss, which holds the logits in fp64 twice (input
        and log-softmax) next to the model-dtype logits: text and audio are taken one after the
        other, so the larger of the two counts.
        """
        kw = self.kw
        dim, heads, T = int(kw["dim"]), int(kw["num_heads"]), int(frames)
        ctx = max(self.contexts)
        attn = rows * heads * T * min(T, ctx) * 4 + rows * T * min(T, ctx)  # scores + bool mask
        ffn_hidden = 2 * int(float(kw["hidden_scale"]) * dim) // 3
        hidden = rows * T * (4 * dim + 3 * ffn_hidden) * self.dtype_bytes
        ttt = 0
        for c in self.ttt.values():
            rows_fp32 = rows * T * (5 * c.num_heads * c.head_dim + c.num_heads) * 4
            capture = (CAPTURE_GROUP * rows * c.num_heads * c.mini_batch_size * 4 * sum(c.inner_dims) * 4
                       + rows * T * c.num_heads * c.head_dim * 8 * 2) if figure5 else 0  # + lmean's two float64 copies
            ttt = max(ttt, rows_fp32 + capture)
        text = rows * T * int(kw["text_card"])
        audio = rows * T * int(kw["dep_q"]) * int(kw["card"])
        logits_kept = (text + audio) * self.dtype_bytes
        loss = max(text, audio) * 8 * 2
        return attn + hidden + ttt + logits_kept + loss

    # -- the phases -----------------------------------------------------------------------------

    def load(self) -> MemoryEstimate:
        return MemoryEstimate("load", {**self.weights(), "slack": SLACK_BYTES})

    def teacher_forced(self, frames: int, rows: int = 1, figure5: bool = True) -> MemoryEstimate:
        act = int(self.teacher_forced_activations(frames, rows, figure5) * SAFETY)
        return MemoryEstimate(f"teacher-forced pass ({rows} row(s) x {frames} frames{', Figure-5 capture' if figure5 else ''})",
                              {**self.weights(), "activations": act, "slack": SLACK_BYTES})

    def streaming(self, rows: int) -> MemoryEstimate:
        return MemoryEstimate(f"streaming ({rows} row(s): gates of a batched sweep)", {
            **self.weights(), f"KV cache ({rows} rows x {len(self.contexts)} blocks, context {max(self.contexts)})": self.kv_cache(rows),
            f"TTT state ({len(self.ttt)} layers)": self.ttt_state(rows),
            "activations of one frame": int(self.step_activations(rows) * SAFETY), "slack": SLACK_BYTES})

    def weight_bytes(self) -> int:
        return sum(self.weights().values())

    # -- what fits ------------------------------------------------------------------------------

    def max_rows(self, budget: int) -> int:
        """Largest gate batch whose streaming estimate is <= ``budget`` bytes (0: not even one)."""
        rows = 0
        while rows < 4096 and self.streaming(rows + 1).total <= budget:
            rows += 1
        return rows

    def max_frames(self, budget: int, rows: int = 1, figure5: bool = True) -> int:
        """Largest teacher-forced length (frames) that fits ``budget`` bytes (bisection)."""
        lo, hi = 0, 1 << 20
        if self.teacher_forced(1, rows, figure5).total > budget:
            return 0
        lo = 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.teacher_forced(mid, rows, figure5).total <= budget:
                lo = mid
            else:
                hi = mid
        return lo


def free_bytes(device: torch.device | str) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device, as the driver reports them."""
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(free), int(total)


def require_fits(estimate: MemoryEstimate, device: torch.device | str, resident: int, fix: str) -> None:
    """Raise :class:`GPUMemoryError` unless the part of ``estimate`` not yet allocated
    (``estimate.total - resident``) fits the device's free memory. ``fix`` says what to change.

    Only CUDA devices are checked (a CPU run is bounded by the host, which swaps instead of failing).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return
    free, total = free_bytes(device)
    need = estimate.total - int(resident)
    if need <= free:
        return
    name = torch.cuda.get_device_name(device)
    raise GPUMemoryError(
        f"would not fit on {name} ({device}): {estimate.describe()}; {_gib(resident)} of it already allocated, "
        f"{_gib(need)} more needed, {_gib(free)} free of {_gib(total)}. Fix: {fix}"
    )


__all__ = ["GPUMemoryError", "MemoryEstimate", "MoshiMemoryModel", "require_fits", "free_bytes", "ttt_parameter_count",
           "inner_state_numel", "lm_kwargs_of", "GIB"]
