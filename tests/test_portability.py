"""Properties that must hold on any x86_64 machine, whatever its SIMD kernels and thread count.

torch picks its CPU kernels at run time (``ATEN_CPU_CAPABILITY``: default, avx2, avx512); two
machines therefore sum, and draw random numbers, in different orders. These tests run the same
computation under another capability in a child process and check that what the suite relies on
holds within the tolerance the arithmetic gives, never bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ttt_checks.checks import INIT_MATCH_ULPS, at_initial_value

DRAW = (
    "import json, torch; g = torch.Generator().manual_seed(1234); "
    "x = (torch.randn((8, 128, 128), generator=g) * 0.02).to(torch.bfloat16); "
    "print(json.dumps({'cap': torch.backends.cpu.get_cpu_capability(), 'x': x.float().flatten().tolist()}))"
)


def _draw_under(capability: str) -> tuple[str, torch.Tensor]:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    out = subprocess.run([sys.executable, "-c", DRAW], env=env, capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    return data["cap"], torch.tensor(data["x"]).reshape(8, 128, 128).to(torch.bfloat16)


def test_a_seeded_init_recreated_under_another_simd_path_is_still_at_its_initial_value():
    _, ours = _draw_under(torch.backends.cpu.get_cpu_capability())
    cap, theirs = _draw_under("default")
    assert cap.lower() == "default"
    # They may differ in the last bf16 place (they did on an AVX-512 machine); never by more.
    assert at_initial_value(ours, theirs) and at_initial_value(theirs, ours)


def test_at_initial_value_tolerates_one_rounding_step_and_nothing_a_trainer_does():
    g = torch.Generator().manual_seed(0)
    init = (torch.randn(64, 64, generator=g) * 0.02).to(torch.bfloat16)
    bits = init.view(torch.int16).clone()
    bits[0, 0] += 1  # the next bf16 number of one element: one unit in the last place
    one_ulp = bits.view(torch.bfloat16)
    assert at_initial_value(one_ulp, init) and not torch.equal(one_ulp, init)
    # One Adam step of lr 1e-4 moves every element by ~1e-4: the small elements far beyond 2 ulp.
    stepped = (init.float() - 1e-4 * torch.sign(torch.randn(64, 64, generator=g))).to(torch.bfloat16)
    assert not at_initial_value(stepped, init)
    zeros = torch.zeros(8)
    assert at_initial_value(zeros, zeros) and not at_initial_value(zeros + 1e-30, zeros)
    assert not at_initial_value(init[:, :32], init)
    assert INIT_MATCH_ULPS * torch.finfo(torch.bfloat16).eps == pytest.approx(2 ** -6)
