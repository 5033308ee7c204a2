"""The L2 norm of each TTT tensor of a checkpoint: one number per tensor, kept in metrics.json.

One checkpoint's norms say little (their scale is the recipe's); a run's checkpoints side by side
say which tensors the outer update moved and by how much between two saves. ``ttt-checks trend``
reads them to tell a fault of the outer update (the TTT weights' norms jump while the inner step
size ``base_lr`` is unchanged) from one of the inner loop or of the gate.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch


def tensor_norms(state: Mapping[str, Any], names: Iterable[str]) -> dict[str, float | None]:
    """{name: L2 norm over all elements} for the floating-point tensors ``names`` that ``state``
    holds; None where the tensor holds NaN/Inf (checkpoint_finite names those). Accumulated in
    float64, so a bf16 tensor's norm does not saturate or lose the small entries."""
    out: dict[str, float | None] = {}
    for name in names:
        tensor = state.get(name)
        if not isinstance(tensor, torch.Tensor) or not torch.is_floating_point(tensor):
            continue
        value = float(torch.linalg.vector_norm(tensor.detach().to(torch.float64)))
        out[name] = value if math.isfinite(value) else None
    return out


def norm_ratios(before: Mapping[str, float | None], after: Mapping[str, float | None]) -> dict[str, float]:
    """{name: norm after / norm before} for the tensors both record with a finite, non-zero
    norm before (a tensor at 0 has no ratio; a zero-initialised bias that moved is not "grown x-fold")."""
    out = {}
    for name, a in before.items():
        b = after.get(name)
        if a is None or b is None or a == 0.0:
            continue
        out[name] = b / a
    return out
