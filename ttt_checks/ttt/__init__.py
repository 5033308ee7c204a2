"""The reference TTT layer family and its exact per-token Figure-5 capture.

- ``config.TTTConfig``: which member of the family (linear/MLP, causal or not, eta weighting, ...).
- ``inner``: the inner-loop math, one function per equation (read it next to the paper).
- ``layer.TTTLayer`` / ``layer.GatedTTT``: projections, mini-batch scan, streaming, gated residual.
- ``gate``: the gate formula tanh(clamp(alpha, -3, 3)), defined once.
- ``figure5``: ``Figure5Probe`` and ``Figure5Record`` (l0, lprev, lafter per token).
- ``oracle``: a naive per-token float64 implementation, the ground truth for tests and benchmarks.
"""

from ttt_checks.ttt.config import TTTConfig, TTTConfigError
from ttt_checks.ttt.figure5 import Figure5Error, Figure5Probe, Figure5Record
from ttt_checks.ttt.gate import effective_gate, mean_effective_gate
from ttt_checks.ttt.layer import GatedTTT, TTTLayer, TTTState, rope_within_minibatch

__all__ = [
    "TTTConfig",
    "TTTConfigError",
    "TTTLayer",
    "GatedTTT",
    "TTTState",
    "Figure5Probe",
    "Figure5Record",
    "Figure5Error",
    "effective_gate",
    "mean_effective_gate",
    "rope_within_minibatch",
]
