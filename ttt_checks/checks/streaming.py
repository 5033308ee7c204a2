"""Streaming: the TTT state is carried across calls, and a pass fed one token per call (inference)
scores like the teacher-forced pass (no reading ahead)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ttt_checks.metrics.figure5 import exclusion_note, l0_equals_lprev_by_construction, positions_needed
from ttt_checks.verdict import Verdict, all_finite, cannot_measure


def state_persistence(records: Mapping[str, Any], layers: Mapping[str, Any], th: Mapping[str, float]) -> list[Verdict]:
    """In a streamed run (one token per call) lprev must depart from l0 where W_{t-1} is not W_0
    by construction (``metrics/figure5.py``): the state is carried and moves.

    ``layers`` maps each record's layer to its ``TTTLayerInfo`` (mini_batch_size, causal). When
    lprev stays at l0 the cause is told apart by what else the record shows: losses identically
    0 (nothing to learn), lafter == lprev too (the inner updates are ~0: a carried state would
    not move either), or lafter != lprev (the step moves within a call, but the next call starts
    from W_0 again: the state is reset). ``details["cause"]`` names which: None (it passes),
    "loss_zero", "updates_zero" or "reset".
    """
    gap = th["persistence_min_rel_change"]
    min_frac = th["persistence_min_fraction"]
    out = []
    for layer, rec in records.items():
        info = layers.get(layer)
        if info is None:
            out.append(cannot_measure("state_persistence", "the model states no mini_batch_size/causal flag for this layer", layer))
            continue
        b, causal = int(info.mini_batch_size), bool(info.causal)
        positions = np.asarray(rec.positions)
        judged = ~l0_equals_lprev_by_construction(positions, b, causal)
        needed = positions_needed(b, causal)
        if not judged.any():
            out.append(cannot_measure("state_persistence", f"the streamed run has {len(positions)} positions, none past where "
                                      f"{exclusion_note(b, causal)}; give a longer --input: {needed} positions (frames) needed at "
                                      f"mini_batch_size {b} (and --max-positions at least {needed})", layer))
            continue
        l0_all, lprev_all, lafter_all = (np.asarray(getattr(rec, c), dtype=np.float64) for c in ("l0", "lprev", "lafter"))
        if not (np.isfinite(l0_all).all() and np.isfinite(lprev_all).all() and np.isfinite(lafter_all).all()):
            out.append(cannot_measure("state_persistence", "streamed losses are not finite (see figure5_finite)", layer))
            continue
        l0, lprev = l0_all[judged], lprev_all[judged]
        departs = np.abs(lprev - l0) > gap * np.maximum(np.abs(l0), np.abs(lprev))
        frac = float(departs.mean())
        steps = np.abs(lafter_all - lprev_all) > gap * np.maximum(np.abs(lafter_all), np.abs(lprev_all))
        step_frac = float(steps.mean())
        ok = frac >= min_frac
        where = f"{int(judged.sum())} of {len(positions)} streamed positions judged ({exclusion_note(b, causal)})"
        zero = max(np.abs(l0_all).max(), np.abs(lprev_all).max(), np.abs(lafter_all).max()) == 0.0
        cause = None if ok else "loss_zero" if zero else "updates_zero" if step_frac < min_frac else "reset"
        if ok:
            why = f"lprev departs from l0 (by more than {gap:g} relative) at {frac:.0%} of judged positions: the state is carried; {where}"
        elif cause == "loss_zero":
            why = (f"l0, lprev and lafter are exactly 0 at every streamed position: the inner loss is identically 0, nothing moves "
                   f"the inner weights, so whether the state is carried cannot be seen; {where}")
        elif cause == "updates_zero":
            why = (f"lprev equals l0 at {1 - frac:.0%} of judged positions, and lafter equals lprev (within {gap:g}) at "
                   f"{1 - step_frac:.0%} of all positions: the inner updates are ~0 (learning rate ~0, or saturated inner weights "
                   f"where the gradient vanishes): the state may be carried but does not move; {where}")
        else:
            why = (f"lprev equals l0 at {1 - frac:.0%} of judged positions while one inner step changes the loss at {step_frac:.0%} "
                   f"of positions: the TTT state is NOT carried across calls (weights reset every step); {where}")
        out.append(Verdict("state_persistence", ok, frac, min_frac, why, layer,
                           {"cause": cause, "frac_lprev_departs": frac, "frac_step_moves": step_frac, "judged": int(judged.sum()),
                            "positions": len(positions), "mini_batch_size": b, "causal": causal}))
    return out


def streaming_consistency(loss_teacher_forced: np.ndarray, loss_streamed: np.ndarray, th: Mapping[str, float],
                          loss_gate0: np.ndarray | None = None, causal: bool | None = None) -> Verdict:
    """The outer loss the model gets token by token (as it runs at inference) vs the loss of the
    teacher-forced pass over the same positions. A causal TTT layer gives the same numbers; a
    non-causal one that reads up to b-1 tokens ahead inside its mini-batch scores better in the
    teacher-forced pass than it ever can at inference, and that gap is the leak's cost.

    For a layer that is non-causal by design (the user's recipe) the leak is expected: it is a
    documented warning as long as TTT still earns its place at inference, i.e. the learned gate fed
    one token per call stays below the gate-0 loss (``loss_gate0``, same positions; TTT off is
    causal) by ``help_min_loss_decrease``. It fails when the benefit exists only with future
    tokens. For a causal layer any gap beyond ``leak_max_loss_gap`` is a bug: it fails."""
    a, b = float(np.mean(loss_streamed)), float(np.mean(loss_teacher_forced))
    if not all_finite(a, b):
        return Verdict("streaming_consistency", False, "nan", th["leak_max_loss_gap"],
                       f"outer loss is not finite (streamed {a}, teacher-forced {b})")
    gap = (a - b) / abs(b) if b else float("inf")
    details: dict[str, Any] = {"loss_streamed": a, "loss_teacher_forced": b, "causal": causal}
    core = f"outer loss {a:.4f} fed one token per call vs {b:.4f} teacher-forced ({gap:+.2%})"
    if gap <= th["leak_max_loss_gap"]:
        return Verdict("streaming_consistency", True, gap, th["leak_max_loss_gap"], core, details=details)
    g0 = float(np.mean(loss_gate0)) if loss_gate0 is not None and np.size(loss_gate0) else None
    if causal is False and g0 is not None and all_finite(g0) and g0:
        benefit = (g0 - a) / abs(g0)
        details.update(loss_gate0=g0, streamed_benefit=benefit, severity="warning")
        leak = (f"{core}: the non-causal mini-batches read up to b-1 tokens ahead in the teacher-forced pass, "
                "which inference cannot give them")
        if benefit >= th["help_min_loss_decrease"]:
            return Verdict("streaming_consistency", True, gap, th["leak_max_loss_gap"],
                           f"{leak}; expected for a non-causal layer (a warning): fed one token per call TTT still lowers "
                           f"the loss by {benefit:.2%} vs gate 0 ({g0:.4f})", details=details)
        del details["severity"]
        return Verdict("streaming_consistency", False, gap, th["leak_max_loss_gap"],
                       f"{leak}; and fed one token per call the learned gate gives {a:.4f} vs {g0:.4f} at gate 0 "
                       f"({-benefit:+.2%}): TTT's benefit exists only with future tokens", details=details)
    why = ("the TTT layer uses future tokens of its mini-batch in the teacher-forced pass (non-causal mini-batches), "
           "which inference cannot give it")
    if causal is True:
        why = "the layer is declared causal, yet the teacher-forced pass scores better than inference: future tokens leak in"
    return Verdict("streaming_consistency", False, gap, th["leak_max_loss_gap"], f"{core}: {why}", details=details)
