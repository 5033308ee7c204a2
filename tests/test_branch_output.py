"""The TTT branch's output spread (metrics/branch_output.py) and the ttt_helps rule built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from ttt_checks import checks as health
from ttt_checks.metrics.branch_output import BranchOutputProbe

TH = health.load_thresholds()


class _Constant(torch.nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) @ torch.zeros(x.shape[-1], self.value.numel()) + self.value


def _spread(module: torch.nn.Module, *batches: torch.Tensor) -> float:
    probe = BranchOutputProbe()
    with probe.attach({"layer": module}):
        for x in batches:
            module(x)
    return probe.spreads()["layer"].relative


@given(st.floats(-50, 50, allow_nan=False), st.integers(1, 4), st.integers(1, 40))
def test_a_constant_output_has_no_spread_whatever_its_size(scale, rows, steps):
    value = torch.linspace(-1, 1, 16) * scale
    spread = _spread(_Constant(value), torch.randn(rows, steps, 8), torch.randn(rows, 3, 8))
    assert spread <= 1e-6  # float rounding of the float64 moments; the threshold is 1e-3


def test_an_output_that_reads_its_input_spreads_by_order_one_and_chunks_add_up():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 16)
    x = torch.randn(2, 64, 8)
    whole = _spread(layer, x)
    chunked = _spread(layer, x[:, :10], x[:, 10:37], x[:, 37:])
    assert whole > 0.3 and chunked == pytest.approx(whole, rel=1e-9)


def test_the_hooks_are_removed_and_nonfinite_rows_are_counted_not_summed():
    layer = torch.nn.Identity()
    probe = BranchOutputProbe()
    x = torch.randn(1, 5, 4)
    x[0, 2, 1] = float("nan")
    with probe.attach({"layer": layer}):
        layer(x)
    layer(torch.full((1, 5, 4), 1e6))  # after detaching: not recorded
    (s,) = probe.spreads().values()
    assert s.positions == 4 and s.nonfinite == 1 and math.isfinite(s.relative) and s.rms < 10


def _losses(gain: float, n: int = 512) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    gate0 = 1.7 + 0.01 * rng.standard_normal(n)
    return gate0 * (1 - gain), gate0


def test_a_constant_branch_fails_ttt_helps_even_when_the_loss_falls():
    learned, gate0 = _losses(0.005)  # 0.5%: would pass on the loss alone
    assert health.ttt_helps(learned, gate0, TH).ok
    v = health.ttt_helps(learned, gate0, TH, output_spread={"layers.3.ttt": 2e-9})
    assert not v.ok and "IGNORES ITS INPUT" in v.explanation and "layers.3.ttt" in v.explanation
    assert v.details["verdict"] == "does_nothing" and v.details["constant_output_layers"] == {"layers.3.ttt": 2e-9}


@pytest.mark.parametrize("spread", [0.83, 0.0945, TH["help_min_output_spread"] * 1.01, float("nan")])
def test_a_branch_that_varies_is_judged_on_the_loss_alone(spread):
    learned, gate0 = _losses(0.005)
    v = health.ttt_helps(learned, gate0, TH, output_spread={"layers.3.ttt": spread})
    assert v.ok, v.explanation


def test_a_layer_with_no_finite_output_has_no_spread_to_report():
    layer = torch.nn.Identity()
    probe = BranchOutputProbe()
    with probe.attach({"layer": layer}):
        layer(torch.full((1, 3, 4), float("nan")))
    (s,) = probe.spreads().values()
    assert s.positions == 0 and s.nonfinite == 3 and math.isnan(s.relative)
