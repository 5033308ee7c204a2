"""Measuring whether a sequence model looks ahead: perturb the future, watch the past.

Causal TTT layers must leave every output at positions <= t unchanged when x_{>t} changes.
Non-causal mini-batches (video-DiT, the user's Moshi code) leak up to b-1 future tokens into
each output; this measures that leak instead of hiding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class CausalityLeak:
    """How much outputs at positions <= ``position`` moved when only x_{>position} changed."""

    position: int
    max_abs_change: float  # over positions <= position (0 for a causal model)
    relative_change: float  # max_abs_change / max |output| over those positions
    changed_positions: tuple[int, ...]  # positions <= position whose output moved

    @property
    def causal(self) -> bool:
        return self.max_abs_change == 0.0


@torch.no_grad()
def causality_leak(
    fn: Callable[[Tensor], Tensor], x: Tensor, position: int, scale: float = 1.0, seed: int = 0
) -> CausalityLeak:
    """Run ``fn`` on x [B, T, C] and on x with positions > ``position`` replaced by noise."""
    if not 0 <= position < x.shape[1] - 1:
        raise ValueError(f"position must leave at least one future token: 0 <= {position} < {x.shape[1] - 1}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    perturbed = x.clone()
    noise = torch.randn(perturbed[:, position + 1 :].shape, generator=gen, dtype=x.dtype)
    perturbed[:, position + 1 :] = noise.to(x.device) * scale
    base, moved = fn(x), fn(perturbed)
    diff = (base[:, : position + 1] - moved[:, : position + 1]).abs()
    per_position = diff.flatten(2).amax(dim=(0, 2)) if diff.dim() > 2 else diff.amax(dim=0)
    max_change = float(per_position.max())
    ref = float(base[:, : position + 1].abs().max())
    changed = tuple(int(p) for p in torch.nonzero(per_position > 0).flatten())
    return CausalityLeak(position, max_change, max_change / ref if ref > 0 else float("inf"), changed)
