"""Measure one reference checkpoint: Figure 5, outer losses, gates and sample replies.

``build_zoo`` stores these numbers in each checkpoint's config.json (``measured``), so a
reviewer can see why a checkpoint counts as healthy or broken without running anything, and
the tests can check that a rebuilt zoo still measures the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ttt_checks.models.reference.adapter import ReferenceAdapter
from ttt_checks.ttt import Figure5Probe

SWEEP = (0.0, "learned", 1.0)
PROMPTS = ("Good morning, how are you?", "What is your favorite book?", "Tell me a joke.")


def _r(x: float, digits: int = 4) -> float | None:
    return None if not math.isfinite(x) else round(float(x), digits)


def figure5_stats(l0: np.ndarray, lprev: np.ndarray, lafter: np.ndarray, positions: np.ndarray,
                  mini_batch_size: int) -> dict[str, Any]:
    """Means, ordering fractions and the l0 - lafter gap early vs late in the sequence.

    Ordering fractions skip the first mini-batch for l0 > lprev: there W_{t-1} is W_0 by
    definition in a non-causal layer, so l0 == lprev carries no information.
    """
    late = positions >= mini_batch_size
    q = max(1, len(positions) // 4)
    gap = l0 - lafter
    with np.errstate(invalid="ignore"):
        return {
            "l0": _r(np.mean(l0)), "lprev": _r(np.mean(lprev)), "lafter": _r(np.mean(lafter)),
            "frac_l0_gt_lprev": _r(np.mean(l0[late] > lprev[late])) if late.any() else None,
            "frac_lprev_gt_lafter": _r(np.mean(lprev > lafter)),
            "max_abs_l0_minus_lprev": _r(np.max(np.abs(l0[late] - lprev[late]))) if late.any() else None,
            "gap_l0_lafter_first_quarter": _r(np.mean(gap[:q])), "gap_l0_lafter_last_quarter": _r(np.mean(gap[-q:])),
        }


def measure_checkpoint(path: str | Path, prompts: Sequence[str] = PROMPTS, rows: int = 8, length: int = 256) -> dict[str, Any]:
    """Every number the zoo records for one checkpoint (see the module docstring)."""
    adapter = ReferenceAdapter(path)
    inputs = adapter.default_teacher_forced_inputs(length=length, rows=rows)
    probe = Figure5Probe()
    learned = adapter.teacher_forced(inputs, probe=probe)
    figure5 = {}
    for info in adapter.ttt_layers():
        rec = probe.record(info.name)
        figure5[info.name] = {**figure5_stats(rec.l0, rec.lprev, rec.lafter, rec.positions, info.mini_batch_size),
                              "nonfinite": int(rec.nonfinite.sum())}
    with adapter.set_gate(0.0):
        gate0 = adapter.teacher_forced(inputs)
    token_by_token = adapter.teacher_forced(inputs, chunk=1)
    gates = {}
    for name, block in adapter.model.gated_blocks().items():
        t = torch.tanh(block.alpha.detach().double().clamp(-3, 3))
        gates[name] = {"tanh_mean": _r(float(t.mean())), "tanh_max": _r(float(t.max())), "tanh_min": _r(float(t.min()))}
    replies = {}
    for prompt in prompts:
        gens = adapter.generate(prompt, list(SWEEP), speak=False)
        replies[prompt] = {str(g.gate): {"text": g.text, "ended": g.extra["ended"], "tokens": len(g.tokens)} for g in gens}
    loss_learned = float(np.mean(learned.outer_loss))
    loss_gate0 = float(np.mean(gate0.outer_loss))
    summary = {
        "val_loss_learned": _r(loss_learned), "val_loss_gate0": _r(loss_gate0),
        "val_loss_token_by_token": _r(float(np.mean(token_by_token.outer_loss))),
        "outputs_finite": learned.outputs_finite,
        "gate_tanh_mean": _r(float(np.mean([g["tanh_mean"] for g in gates.values() if g["tanh_mean"] is not None]))),
        "missing_ttt_keys": len(adapter.loaded.missing_ttt_keys),
    }
    for name, f in figure5.items():
        summary[f"{name}.l0/lprev/lafter"] = [f["l0"], f["lprev"], f["lafter"]]
    return {"summary": summary, "figure5": figure5, "gates": gates, "replies": replies,
            "inputs": {"rows": rows, "length": length, "source": "validation split of the dialogue corpus"}}
