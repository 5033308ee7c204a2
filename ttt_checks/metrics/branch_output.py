"""How much a TTT branch's output varies over the positions of a pass.

A TTT branch whose output is the same at every position (its output projection zeroed or frozen,
only a bias left) adds a constant to the residual stream: whatever its inner loop learns never
reaches the model, yet that constant may still lower the outer loss a little, like any bias
would, and pass for a benefit. The spread below tells the two apart without a threshold tuned
to any model: a constant output has a spread of float rounding (about 1e-8 of its size,
accumulated in float64), a branch that reads its input one of order 1.

    spread = sqrt(mean over channels of the variance over positions) / sqrt(mean of output^2)

An output of exact zeros has spread 0 as well (it ignores its input just the same).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch


@dataclass(frozen=True)
class BranchSpread:
    """Spread of one TTT branch's output over ``positions`` (rows x time steps)."""

    positions: int
    rms: float  # sqrt(mean(output^2)) over positions and channels
    std: float  # sqrt(mean over channels of the variance over positions)
    nonfinite: int  # positions with a NaN/Inf output (left out of the sums)

    @property
    def relative(self) -> float:
        """std / rms; 0 for an output of zeros, NaN when no position had a finite output."""
        if self.positions == 0:
            return float("nan")
        return self.std / self.rms if self.rms > 0 else 0.0


class BranchOutputProbe:
    """Accumulates, per TTT module, the first two moments of its output per channel (float64).

    Attach it around any forward passes (``with probe.attach(adapter.ttt_modules()):``); a
    module called once per chunk or per token adds up the same as one called once.
    """

    def __init__(self) -> None:
        self._count: dict[str, int] = {}
        self._sum: dict[str, torch.Tensor] = {}
        self._sumsq: dict[str, torch.Tensor] = {}
        self._nonfinite: dict[str, int] = {}

    @contextlib.contextmanager
    def attach(self, modules: Mapping[str, torch.nn.Module]) -> Iterator["BranchOutputProbe"]:
        handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, name: str):
        def record(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                return
            rows = output.detach().reshape(-1, output.shape[-1]).to(torch.float64)
            finite = torch.isfinite(rows).all(dim=-1)
            self._nonfinite[name] = self._nonfinite.get(name, 0) + int((~finite).sum())
            rows = rows[finite]
            if name not in self._sum:
                self._count[name] = 0
                self._sum[name] = torch.zeros(rows.shape[-1], dtype=torch.float64, device=rows.device)
                self._sumsq[name] = torch.zeros_like(self._sum[name])
            self._count[name] += int(rows.shape[0])
            self._sum[name] += rows.sum(dim=0)
            self._sumsq[name] += (rows * rows).sum(dim=0)
        return record

    def spreads(self) -> dict[str, BranchSpread]:
        """Per module that produced output: its spread over every position it saw."""
        out = {}
        for name, n in self._count.items():
            if n == 0:
                out[name] = BranchSpread(0, float("nan"), float("nan"), self._nonfinite.get(name, 0))
                continue
            mean = self._sum[name] / n
            meansq = self._sumsq[name] / n
            variance = (meansq - mean * mean).clamp_min(0.0)
            out[name] = BranchSpread(n, float(meansq.mean().sqrt()), float(variance.mean().sqrt()), self._nonfinite.get(name, 0))
        return out
