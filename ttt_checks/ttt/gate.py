"""The residual gate of a TTT block, defined once: ``out = x + tanh(clamp(alpha, -3, 3)) * TTT(x)``.

alpha is learned per channel; the clamp keeps tanh away from its flat tails, so the largest
share of TTT(x) that can reach the residual stream is tanh(3) = 0.995. Everything that turns an
alpha into a gate value (the layer's forward, the adapters, the checks, the reports, ``trend``)
calls :func:`effective_gate`, so they cannot disagree on the formula.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALPHA_CLAMP = 3.0

#: The gate value that means "the checkpoint's own learned alpha" (a gating sweep's label, ``--gates``).
LEARNED = "learned"


def effective_gate(alpha: Any) -> Any:
    """tanh(clamp(alpha, -3, 3)) per element: a torch tensor stays a tensor (same dtype and
    device, differentiable), anything else (array, list, float) becomes a float64 ndarray."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; numpy inputs need no torch
        torch = None
    if torch is not None and isinstance(alpha, torch.Tensor):
        return torch.tanh(alpha.clamp(-ALPHA_CLAMP, ALPHA_CLAMP))
    return np.tanh(np.clip(np.asarray(alpha, dtype=np.float64), -ALPHA_CLAMP, ALPHA_CLAMP))


def mean_effective_gate(alpha: Any) -> float:
    """The mean gate over channels (signed): the average share of TTT(x) added to the stream."""
    gate = effective_gate(alpha)
    return float(gate.double().mean()) if hasattr(gate, "double") else float(np.mean(gate))
