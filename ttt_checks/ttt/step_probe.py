"""Inner step-size probe: a line search along the update each mini-batch actually applies.

Notation of ``inner.py``. For a mini-batch with start weights W' and per-row gradients
G_j = grad loss(W'; x_j), row i's weights after the step are

    W_i(1) = W' - sum_{j in S(i)} eta[i, j] G_j          (lafter = loss(W_i(1); x_i), Figure 5)

with S(i) = {j <= i} (causal: the token's own row of the step-size matrix) or the whole
mini-batch (non-causal: every row sees the end-of-mini-batch state). The probe scales that
step by a multiplier m,

    W_i(m) = W' - m * sum_{j in S(i)} eta[i, j] G_j,      loss_m = mean_{rows, batch, heads} loss(W_i(m); x_i)

so loss_1 is the mean of lafter and loss_0 the loss at the mini-batch start. If the step the
layer takes is about right, the smallest loss_m on a grid around 1 sits at m = 1; if it sits
at m <= 1/2 the step overshoots the minimum along its own direction, at m >= 4 it is timid.
Scaling a step size by m is scaling base_lr by m (eta is linear in base_lr), hence
``recommended base_lr = base_lr * best m``.

Dual form: W_i(m) is never materialised. Layer l's pre-activation at query k_i is

    z_l(m) = h_l(m) W_l' + b_l' - m * (eta * (h_l(m) X_l^T + 1)) @ g_l

where X_l, g_l are the start-of-mini-batch inputs and output gradients of layer l (as in
``inner.dual_form``) and h_l(m) the query's activation through the already-scaled earlier
layers. For the first layer h_1 = k does not depend on m, so k W_1' + b_1' and the masked
product (eta * (k X_1^T + 1)) @ g_1 are computed once and shared by every m (they are the
same products the Figure-5 lafter evaluation uses); the later layers run for all m at once,
the rows of each m stacked after each other. In the layer's capture, m = 1 is Figure-5's lafter
itself (``line_search_losses``), so it is not computed twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ttt_checks.ttt import inner
from ttt_checks.ttt.config import TTTConfig

# The line search around the step taken (0.25 .. 4, the step within a factor 4 either way), and
# below it 1e-3 and 1e-6. Those are needed because a step that is orders of magnitude too large
# saturates: the inner LayerNorm removes the scale of f_res, so the loss is flat for every m in
# 0.25 .. 4 (measured on the zoo's lr-too-high, base_lr 1e5: 2.3055 at every m of that grid,
# 2.1965 at m = 1e-6) and only a much smaller step shows what was lost. Two points, 1000x apart,
# because each point costs about 5% of the reference model's teacher-forced pass
# (benchmarks/RESULTS.md); the recommended base_lr below the grid is good to a factor of ~30.
LOCAL_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
BELOW_MULTIPLIERS: tuple[float, ...] = (1e-6, 1e-3)
DEFAULT_MULTIPLIERS: tuple[float, ...] = BELOW_MULTIPLIERS + LOCAL_MULTIPLIERS


def scaled_step_losses(
    params: inner.InnerParams,
    xk: Tensor,
    target: Tensor,
    acts: inner.InnerActivations,
    grads: list[Tensor],
    eta: Tensor,
    config: TTTConfig,
    gamma: Tensor,
    beta: Tensor,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
) -> Tensor:
    """loss(W_i(m); x_i) for every multiplier m and row i: [M, B, H, r].

    Arguments are those of ``inner.figure5_losses`` (complete or partial mini-batches, possibly
    several stacked along the batch dimension): W' in ``params``, the keys' forward at W' in
    ``acts``, the per-layer output gradients ``grads`` and the step-size matrix ``eta``
    [B, H, r, r] whose row i holds the weights of row i's own step (causal or not).
    """
    B, H, r, _ = xk.shape
    M = len(multipliers)
    m = torch.tensor([float(v) for v in multipliers], dtype=xk.dtype, device=xk.device)
    masked = eta * (xk @ acts.inputs[0].transpose(-1, -2) + 1.0)  # [B, H, r, r]
    first_step = masked @ grads[0]  # the first layer's update at the keys, for m = 1
    # Every multiplier at once, its rows stacked after each other ([B, H, M*r, .]), as
    # figure5_losses stacks lafter and lprev: plain batched products, no per-m loop.
    z = (acts.preacts[0][:, :, None] - m.view(1, 1, M, 1, 1) * first_step[:, :, None]).reshape(B, H, M * r, -1)
    eta_m = (m.view(1, 1, M, 1, 1) * eta[:, :, None]).reshape(B, H, M * r, r)
    for layer in range(1, len(params.weights)):
        h = inner.gelu_tanh(z)
        masked = (h @ acts.inputs[layer].transpose(-1, -2)).add_(1.0).mul_(eta_m)  # eta * (h X^T + 1): [B, H, M*r, r]
        z = (h @ params.weights[layer]).add_(params.biases[layer]).sub_(masked @ grads[layer])
    if config.inner_norm:  # inner.layer_norm's formula (biased variance), in torch's fused kernel
        pred = torch.nn.functional.layer_norm(z, z.shape[-1:], eps=config.ln_eps) * gamma[:, None, :] + beta[:, None, :]
    else:
        pred = z
    loss = inner.reconstruction_loss(pred.reshape(B, H, M, r, -1), target[:, :, None])  # [B, H, M, r]
    return loss.permute(2, 0, 1, 3)


def line_search_losses(lafter: Tensor, *args: Any, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> Tensor:
    """``scaled_step_losses`` on the grid, with m = 1 taken from Figure-5's ``lafter`` [B, H, r]
    of the same rows instead of being computed again: the step the layer took is lafter by
    definition (tests/test_step_probe.py checks the two computations agree). ``args`` are those
    of ``scaled_step_losses`` before ``multipliers``."""
    others = [m for m in multipliers if m != 1.0]
    scaled = iter(scaled_step_losses(*args, multipliers=others)) if others else iter(())
    return torch.stack([lafter if m == 1.0 else next(scaled) for m in multipliers])


# ---------------------------------------------------------------------------------------------
# Accumulation over a pass, and the per-layer record the health rule reads
# ---------------------------------------------------------------------------------------------


@dataclass
class StepSizeRecord:
    """One layer's line search, averaged over every row of every complete mini-batch of a pass.

    ``losses[k]`` is the mean loss at ``multipliers[k]``; ``loss_start`` the mean loss at the
    mini-batch start (m = 0), the point every gain is measured from. ``count`` values (rows x
    batch x heads) went into each mean; ``nonfinite`` of them were NaN or Inf (the means are then
    NaN: never averaged away).
    """

    layer: str
    multipliers: list[float]
    losses: list[float]
    loss_start: float
    count: int
    nonfinite: int
    base_lr: float

    @property
    def finite(self) -> bool:
        return self.nonfinite == 0 and self.count > 0 and all(math.isfinite(v) for v in (*self.losses, self.loss_start))

    @property
    def best_index(self) -> int:
        """Index of the smallest mean loss on the grid (ties go to the multiplier nearest 1)."""
        order = sorted(range(len(self.losses)), key=lambda k: (self.losses[k], abs(math.log(self.multipliers[k]))))
        return order[0]

    @property
    def best_multiplier(self) -> float:
        return self.multipliers[self.best_index]

    @property
    def best_loss(self) -> float:
        return self.losses[self.best_index]

    def loss_at(self, multiplier: float) -> float:
        """Mean loss at one grid multiplier (e.g. 1.0: the step actually taken, the mean lafter)."""
        for m, v in zip(self.multipliers, self.losses):
            if m == multiplier:
                return v
        raise KeyError(f"multiplier {multiplier} is not on the probe's grid {self.multipliers}")

    def gain(self, multiplier: float) -> float:
        """loss at the mini-batch start minus loss after the scaled step (positive: it helps)."""
        return self.loss_start - self.loss_at(multiplier)

    @property
    def recommended_base_lr(self) -> float:
        return self.base_lr * self.best_multiplier

    @property
    def bracketed(self) -> bool:
        """The best multiplier lies inside the grid, so the loss rises on both sides of it and the
        recommended base_lr is the optimum along the step. At the grid's smallest or largest
        multiplier it is only a bound: the optimum may lie beyond, and a recommendation that
        scales with the grid (4 x base_lr whenever larger steps still help) measures the grid,
        not the layer."""
        return min(self.multipliers) < self.best_multiplier < max(self.multipliers)

    @property
    def best_gain_rel(self) -> float:
        """(loss at m = 0 - best loss) / loss at m = 0: what the best step on the grid buys, relative.
        Near 0 the loss does not see the step at all (``inner_step_size`` calls the line flat)."""
        return (self.loss_start - self.best_loss) / abs(self.loss_start) if self.loss_start else float("nan")

    @property
    def lost_fraction(self) -> float:
        """(loss at m = 1 - best loss) / (loss at m = 0 - best loss): the share of the gain the best
        step on the grid achieves that the step actually taken gives away (0 when m = 1 is best;
        1 when it ends where it started; above 1 when it makes the loss worse than no step).
        In a quadratic loss along the step, an overshoot by a factor s gives (s - 1)^2."""
        best_gain = self.loss_start - self.best_loss
        if best_gain <= 0:
            return float("inf") if self.loss_at(1.0) > self.best_loss else 0.0
        return (self.loss_at(1.0) - self.best_loss) / best_gain

    @property
    def gain_ratio_1_to_best(self) -> float:
        """gain(m = 1) / gain(best m). Without curvature along the step (a step far too small)
        the gain is linear in m, so with the best at m = 4 this is 1/4."""
        best_gain = self.gain(self.best_multiplier)
        return self.gain(1.0) / best_gain if best_gain > 0 else float("nan")

    def first_basin(self, min_rel_gap: float) -> tuple[int, int] | None:
        """(k, j): the first grid point m_k below m = 1 after which the loss rises (loss(m_{k+1}) exceeds
        loss(m_k) by more than ``min_rel_gap`` of the larger, the Figure-5 margin for two losses being
        equal) and, when the loss falls again (by more than the margin) after that rise, the point m_j
        past the rise where it is lowest; else None (no rise below m = 1, or it never falls again).

        Why it matters: along a step near its optimum the loss is unimodal (falls to the optimum, then
        rises; a quadratic, or any convex loss, cannot fall again after rising). A fall after a rise means
        two regimes on one line: a first basin at small m and, far beyond it, a saturated one where the
        update swamps the start weights and the inner LayerNorm makes the loss blind to its scale, so
        a larger step always looks better. Then "best m" on the grid is not the step's optimum, and the
        step taken lies past the first basin (measured: the zoo's healthy-seed0 with base_lr x 1e4, loss
        1.0646 at m = 1e-3, 1.0665 at 0.25, then 0.947 at 4; a trained b = 64 one with base_lr x 1e4:
        1.0719 at 1e-3, 1.1265 at 0.5, 1.0757 at 4, whose full step gave away only 16% of the best
        gain, inside the quadratic overshoot margin that does not hold on such a line)."""
        order = sorted(range(len(self.multipliers)), key=lambda i: self.multipliers[i])
        ms = [self.multipliers[i] for i in order]
        ls = [self.losses[i] for i in order]
        n = len(ms)

        def beyond(a: float, b: float) -> bool:  # b exceeds a by more than the equality margin
            return b - a > min_rel_gap * max(abs(a), abs(b))

        for k in range(n - 1):
            if ms[k] >= 1.0:
                return None
            if not beyond(ls[k], ls[k + 1]):
                continue
            peak = k + 1  # climb the rise (flat within the margin counts as no fall)
            while peak + 1 < n and not beyond(ls[peak + 1], ls[peak]):
                peak += 1
            if peak + 1 >= n:
                return None  # it rises (or stays) to the end of the grid: one basin, unimodal
            j = min(range(peak + 1, n), key=lambda i: ls[i])
            return order[k], order[j]
        return None

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json entry of one layer."""
        return {"multipliers": list(self.multipliers), "losses": list(self.losses), "loss_start": self.loss_start,
                "best_multiplier": self.best_multiplier, "base_lr": self.base_lr,
                "recommended_base_lr": self.recommended_base_lr, "bracketed": self.bracketed,
                "lost_fraction": self.lost_fraction, "best_gain_rel": self.best_gain_rel,
                "gain_ratio_1_to_best": self.gain_ratio_1_to_best, "count": self.count, "nonfinite": self.nonfinite}


@dataclass
class StepSizeAccumulator:
    """Sums of the scaled-step losses of one layer over the mini-batches it has seen."""

    multipliers: tuple[float, ...]
    sums: np.ndarray = field(default_factory=lambda: np.zeros(0))
    start_sum: float = 0.0
    count: int = 0
    nonfinite: int = 0
    base_lr: float = float("nan")

    def __post_init__(self) -> None:
        if len(self.sums) != len(self.multipliers):
            self.sums = np.zeros(len(self.multipliers))

    def add(self, losses: Tensor, start: Tensor) -> None:
        """losses: [M, ...] per multiplier; start: the same rows' loss at m = 0. NaN is kept."""
        flat = losses.detach().to(torch.float64).reshape(len(self.multipliers), -1)
        start = start.detach().to(torch.float64).reshape(-1)
        self.sums += flat.sum(dim=1).cpu().numpy()
        self.start_sum += float(start.sum())
        self.count += int(flat.shape[1])
        bad = (~torch.isfinite(flat)).any(dim=0) | ~torch.isfinite(start)
        self.nonfinite += int(bad.sum())

    def record(self, layer: str) -> StepSizeRecord:
        n = max(self.count, 1)
        nan = float("nan")
        return StepSizeRecord(
            layer=layer, multipliers=[float(m) for m in self.multipliers],
            losses=[float(s / n) if self.count else nan for s in self.sums],
            loss_start=self.start_sum / n if self.count else nan,
            count=self.count, nonfinite=self.nonfinite, base_lr=float(self.base_lr),
        )


__all__ = ["DEFAULT_MULTIPLIERS", "LOCAL_MULTIPLIERS", "BELOW_MULTIPLIERS", "scaled_step_losses", "line_search_losses", "StepSizeRecord", "StepSizeAccumulator"]
