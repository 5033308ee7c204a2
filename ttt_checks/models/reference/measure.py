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

from ttt_checks.metrics.figure5 import Figure5Stats, figure5_stats
from ttt_checks.metrics.fingerprint import input_fingerprint
from ttt_checks.models.reference.adapter import ReferenceAdapter
from ttt_checks.ttt import Figure5Probe, effective_gate

SWEEP = (0.0, "learned", 1.0)
PROMPTS_MEASURED = 3  # the first of the checkpoint's default prompts whose replies are recorded


def _r(x: float, digits: int = 4) -> float | None:
    return None if not math.isfinite(x) else round(float(x), digits)


def figure5_summary(stats: Figure5Stats) -> dict[str, Any]:
    """The zoo's rounded view of :func:`ttt_checks.metrics.figure5.figure5_stats` (the one
    definition the health rules judge with; nothing here recomputes an ordering): means, the
    smoothed ordering and overlap fractions over judged positions (for l0 vs lprev the positions
    equal by construction are left out), and the l0 - lafter gap early vs late."""
    return {
        "l0": _r(stats.mean_l0), "lprev": _r(stats.mean_lprev), "lafter": _r(stats.mean_lafter),
        "frac_l0_gt_lprev": _r(stats.frac_l0_gt_lprev), "frac_lprev_gt_lafter": _r(stats.frac_lprev_gt_lafter),
        "frac_l0_lprev_overlap": _r(stats.frac_l0_lprev_overlap), "frac_lprev_lafter_overlap": _r(stats.frac_lprev_lafter_overlap),
        "judged_l0_lprev": stats.judged_l0_lprev, "positions": stats.positions,
        "gap_l0_lafter_first_quarter": _r(stats.gap_first_quarter), "gap_l0_lafter_last_quarter": _r(stats.gap_last_quarter),
        "nonfinite": stats.nonfinite,
    }


def measure_checkpoint(path: str | Path, prompts: Sequence[str] | None = None, rows: int = 8,
                       length: int = 256) -> dict[str, Any]:
    """Every number the zoo records for one checkpoint (see the module docstring); replies to
    ``prompts``, by default the first three of the checkpoint's own default prompts."""
    adapter = ReferenceAdapter(path)
    if prompts is None:
        prompts = adapter.default_prompts()[:PROMPTS_MEASURED]
    inputs = adapter.default_teacher_forced_inputs(length=length, rows=rows)
    probe = Figure5Probe()
    learned = adapter.teacher_forced(inputs, probe=probe)
    figure5 = {}
    for info in adapter.ttt_layers():
        rec = probe.record(info.name)
        figure5[info.name] = figure5_summary(figure5_stats(rec, mini_batch_size=info.mini_batch_size, causal=info.causal))
        # Figure 5 of the paper: lprev falls along the sequence as the inner model accumulates context.
        quarter = max(1, len(rec.lprev) // 4)
        figure5[info.name]["lprev_first_quarter"] = _r(float(np.mean(rec.lprev[:quarter])))
        figure5[info.name]["lprev_last_quarter"] = _r(float(np.mean(rec.lprev[-quarter:])))
    with adapter.set_gate(0.0):
        gate0 = adapter.teacher_forced(inputs)
    token_by_token = adapter.teacher_forced(inputs, chunk=1)
    gates = {}
    for name, block in adapter.model.gated_blocks().items():
        t = effective_gate(block.alpha.detach().double())
        gates[name] = {"tanh_mean": _r(float(t.mean())), "tanh_max": _r(float(t.max())), "tanh_min": _r(float(t.min()))}
    replies = {}
    for prompt in prompts:
        gens = adapter.generate(prompt, list(SWEEP), speak=False)
        replies[prompt] = {str(g.gate): {"text": g.text, "ended": g.extra["ended"], "tokens": len(g.tokens)} for g in gens}
    loss_learned = float(np.mean(learned.outer_loss))
    loss_gate0 = float(np.mean(gate0.outer_loss))
    summary = {
        "val_loss_learned": _r(loss_learned), "val_loss_gate0": _r(loss_gate0),
        "ttt_gain_rel": _r((loss_gate0 - loss_learned) / loss_gate0) if loss_gate0 else None,
        "val_loss_token_by_token": _r(float(np.mean(token_by_token.outer_loss))),
        "outputs_finite": learned.outputs_finite,
        "gate_tanh_mean": _r(float(np.mean([g["tanh_mean"] for g in gates.values() if g["tanh_mean"] is not None]))),
        "gate_alpha_init": adapter.loaded.config.get("decoder", {}).get("alpha_init"),
        "gate_tanh_init": _r(math.tanh(float(adapter.loaded.config.get("decoder", {}).get("alpha_init", float("nan"))))),
        "missing_ttt_keys": len(adapter.loaded.missing_ttt_keys),
    }
    for name, f in figure5.items():
        summary[f"{name}.l0/lprev/lafter"] = [f["l0"], f["lprev"], f["lafter"]]
    return {"summary": summary, "figure5": figure5, "gates": gates, "replies": replies,
            "inputs": {"rows": rows, "length": length,
                       "source": f"validation split ({adapter.corpus_data()})"}}


def base_reference_loss(base_dir: str | Path, rows: int = 8, length: int = 256) -> dict[str, Any]:
    """The base's loss on the default held-out input of every TTT checkpoint built on it (the same
    tokens, fingerprinted), stored in the base's config.json as ``reference_loss``: the health
    check ``base_model`` compares a checkpoint's gate-0 loss with it."""
    adapter = ReferenceAdapter(base_dir)
    inputs = adapter.default_teacher_forced_inputs(length=length, rows=rows)
    loss = float(np.mean(adapter.teacher_forced(inputs).outer_loss))
    return {"loss": loss, "fingerprint": input_fingerprint(inputs),
            "input": f"default held-out input: validation split ({adapter.corpus_data()}), {rows} rows x {length} tokens"}
