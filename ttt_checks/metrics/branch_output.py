"""How much a TTT branch's output varies over the positions of a pass.

A TTT branch whose output is the same at every position (its output projection zeroed or frozen,
only a bias left) adds a constant to the residual stream: whatever its inner loop learns never
reaches the model, yet that constant may still lower the outer loss a little, like any bias
would, and pass for a benefit. The spread below tells the two apart without a threshold tuned
to any model: a constant output has a spread of float rounding (about 1e-8 of its size,
accumulated in float64), a branch that reads its input one of order 1.

    spread = sqrt(mean over channels of the variance over positions) / sqrt(mean of output^2)

An output of exact zeros has spread 0 as well (it ignores its input just the same).

The same pass measures how strong the branch is against the stream it is added to. The TTT
layer's input x is the residual stream (``x + tanh(alpha) * TTT(x)``), so with g_c = tanh(alpha_c)
the gate of channel c,

    strength = sqrt(sum_c g_c^2 * mean(TTT(x)_c^2)) / sqrt(sum_c mean(x_c^2))

is the rms of what the gated branch adds over the rms of the residual it is added to. Above 1
the branch outweighs the whole stream: the base's features are swamped (an output projection or
gate far off scale); near 0 it is too weak to change anything.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch


@dataclass(frozen=True)
class BranchSpread:
    """Spread of one TTT branch's output over ``positions`` (rows x time steps)."""

    positions: int
    rms: float  # sqrt(mean(output^2)) over positions and channels
    std: float  # sqrt(mean over channels of the variance over positions)
    nonfinite: int  # positions with a NaN/Inf output (left out of the sums)
    output_meansq: tuple[float, ...] = ()  # per channel, mean of output^2 over positions
    input_rms: float = float("nan")  # sqrt(mean(input^2)) over positions and channels: the residual stream's size

    def strength(self, gate: "torch.Tensor | Sequence[float]") -> float:
        """rms of the gated branch (gate = tanh(alpha) per channel, or one value) over the input's rms
        (see the module docstring); NaN without positions or a finite input."""
        if not self.output_meansq or not (self.input_rms > 0):
            return float("nan")
        meansq = torch.tensor(self.output_meansq, dtype=torch.float64)
        g = torch.as_tensor(gate, dtype=torch.float64).reshape(-1)
        if g.numel() not in (1, meansq.numel()):
            raise ValueError(f"gate has {g.numel()} values for {meansq.numel()} output channels")
        return float((g * g * meansq).mean().sqrt()) / self.input_rms

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
        self._input_sumsq: dict[str, float] = {}
        self._input_count: dict[str, int] = {}

    @contextlib.contextmanager
    def attach(self, modules: Mapping[str, torch.nn.Module]) -> Iterator["BranchOutputProbe"]:
        handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, name: str):
        def record(_module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                return
            rows = output.detach().reshape(-1, output.shape[-1]).to(torch.float64)
            finite = torch.isfinite(rows).all(dim=-1)
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if x is not None and x.shape == output.shape:
                x_rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
                x_finite = x_rows[torch.isfinite(x_rows).all(dim=-1) & finite]
                self._input_sumsq[name] = self._input_sumsq.get(name, 0.0) + float((x_finite * x_finite).mean(dim=-1).sum())
                self._input_count[name] = self._input_count.get(name, 0) + int(x_finite.shape[0])
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
            n_in = self._input_count.get(name, 0)
            input_rms = (self._input_sumsq[name] / n_in) ** 0.5 if n_in else float("nan")
            out[name] = BranchSpread(n, float(meansq.mean().sqrt()), float(variance.mean().sqrt()), self._nonfinite.get(name, 0),
                                     tuple(float(v) for v in meansq), input_rms)
        return out
