"""The gate check: is tanh(alpha) still open, measured against its initial value?"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from ttt_checks.ttt.gate import effective_gate, mean_effective_gate
from ttt_checks.verdict import Verdict, cannot_measure


# bf16 keeps 8 significant bits: a stored init is within 2^-8 (relative) of the configured one.
_STORED_ROUNDING = 2.0 ** -8


def _exactly_at_init(alpha: np.ndarray, init: float) -> bool:
    """Every channel holds the same value, the configured init up to its storage rounding: the
    outer loop never moved the gate (a trained gate spreads over channels)."""
    return alpha.size > 0 and float(np.ptp(alpha)) == 0.0 and abs(float(alpha.flat[0]) - init) <= _STORED_ROUNDING * max(abs(init), 1e-30)


def gate_stats(gates: Mapping[str, np.ndarray], th: Mapping[str, float],
               initial: Mapping[str, float | None] | None = None,
               disputed: Mapping[str, float | None] | None = None) -> list[Verdict]:
    """tanh(clamp(alpha)) per layer, judged against where the gate started.

    Collapse: mean |tanh(alpha)| fell below ``gate_min_fraction_of_init`` of |tanh(init)| (the
    user's run: init 0.3, learned 0.02-9 %, i.e. 0.07-31 % of it) or below the absolute floor
    ``gate_min_mean_tanh`` (which also judges a gate whose init is unknown). A gate still exactly
    at its init was never trained (its own message: a collapse it is not). A gate whose sign
    flipped from a positive init is reported (it went through zero: "off" on its way).

    ``disputed``: per layer, a second init the checkpoint states (its training record) that
    contradicts ``initial``. Which of the two was edited cannot be told, so the gate is judged
    against both, and a fall from only one of them is not called a collapse: a config edited from
    alpha_init 0.1 to 0.5 made a healthy gate at 0.108 read "23% of its init, GATING COLLAPSE"
    while the model still gained 0.21% from TTT. ``config_consistency`` fails on the contradiction.
    """
    if not gates:
        return [cannot_measure("gate_stats", "the model reports no TTT gates")]
    initial, disputed = initial or {}, disputed or {}
    out = []
    for layer, alpha in gates.items():
        alpha = np.asarray(alpha, dtype=np.float64)
        verdict = _gate_verdict(layer, alpha, initial.get(layer), th)
        other = disputed.get(layer)
        if other is not None and math.isfinite(other) and verdict.details.get("fraction_of_init") is not None:
            verdict = _judged_against_both(verdict, _gate_verdict(layer, alpha, other, th), initial[layer], other)
        out.append(verdict)
    return out


def _judged_against_both(loaded: Verdict, recorded: Verdict, init: float, other: float) -> Verdict:
    """Combine the verdicts of one gate against the init the loader reads (``init``) and the
    contradicting one of the training record (``other``): it collapsed only if it fell from both;
    alpha exactly at either init was never trained, whichever init is right."""
    def share(v: Verdict) -> str:
        fraction = v.details.get("fraction_of_init")
        return "an unknown share" if fraction is None else f"{fraction:.0%}"
    dispute = (f"the checkpoint states two inits (alpha {init:g}, which the loader reads, and {other:g} in its training "
               "record; see config_consistency)")
    untrained = [v for v in (loaded, recorded) if v.details.get("untrained")]
    if untrained:
        chosen, note = untrained[0], dispute
    elif loaded.ok == recorded.ok:
        chosen, note = loaded, f"{dispute}: against {other:g} it is at {share(recorded)} of its init"
    else:
        chosen = loaded if loaded.ok else recorded
        against, fell = (other, recorded) if loaded.ok else (init, loaded)
        note = (f"{dispute}: against {against:g} it would be at {share(fell)} of its init, so a collapse is not "
                "established: restore the config saved with the weights and run again")
    details = {**chosen.details, "alpha_init_disputed": other}
    if chosen.ok and loaded.ok != recorded.ok:
        details["severity"] = "warning"
    return replace(chosen, explanation=f"{chosen.explanation}; {note}", details=details)


def _gate_verdict(layer: str, alpha: np.ndarray, init: float | None, th: Mapping[str, float]) -> Verdict:
    """One layer's gate against one stated init (None: the absolute floor only)."""
    floor, min_frac = th["gate_min_mean_tanh"], th["gate_min_fraction_of_init"]
    gate = effective_gate(alpha)
    if alpha.size == 0 or not np.isfinite(gate).all():
        return Verdict("gate_stats", False, "nan", floor, "gate alpha holds NaN/Inf" if alpha.size else "gate alpha is empty", layer)
    mean, peak, signed = float(np.abs(gate).mean()), float(np.abs(gate).max()), float(gate.mean())
    details: dict[str, Any] = {"mean_tanh": mean, "max_tanh": peak, "signed_mean_tanh": signed, "mean_alpha": float(alpha.mean()),
                               "alpha_init": init, "min_fraction_of_init": min_frac, "floor": floor}
    head = f"mean |tanh(alpha)| {mean:.4g} ({mean:.1%} of TTT(x) reaches the residual), max {peak:.4g}"
    if init is None or not math.isfinite(init):
        ok = mean >= floor
        details["fraction_of_init"] = None
        return Verdict("gate_stats", ok, mean, floor,
                       f"{head}; the initial alpha is not stated by the checkpoint, so the gate is judged by the absolute floor "
                       f"{floor:g} only" + ("" if ok else f": GATING COLLAPSE in {layer}, TTT is effectively switched off"),
                       layer, details)
    init_tanh = abs(mean_effective_gate(init))
    if init_tanh == 0.0 and not _exactly_at_init(alpha, init):
        # A zero-initialised gate (the zero-init trick: TTT starts switched off) cannot fall from its init;
        # only the absolute floor can say it never opened.
        ok = mean >= floor
        details.update(fraction_of_init=None, severity="info")
        return Verdict("gate_stats", ok, mean, floor,
                       f"{head}; the gate was initialised at alpha 0 (TTT off), so it is judged by the absolute floor "
                       f"{floor:g} only: " + (f"it opened to {mean:.4g}" if ok else
                                              f"GATING NEVER OPENED in {layer}, TTT is effectively switched off"),
                       layer, details)
    fraction = mean / init_tanh if init_tanh > 0 else float("inf")
    details["fraction_of_init"] = fraction
    flipped = float(np.mean(gate < 0)) if init > 0 else float(np.mean(gate > 0)) if init < 0 else 0.0
    details["fraction_sign_flipped"] = flipped
    flip = (f"; SIGN FLIPPED: tanh(alpha) has the opposite sign of the init in {flipped:.0%} of channels "
            f"(signed mean {signed:+.4g} vs init tanh {math.tanh(init):+.4g}): the outer loop drove the gate through zero") \
        if flipped > 0.5 else ""
    if _exactly_at_init(alpha, init):
        return Verdict("gate_stats", False, mean, floor,
                       f"gate alpha is exactly its initial value {init:g} in every channel: the gate was never trained "
                       f"(mean |tanh(alpha)| {mean:.4g} = tanh of the init)", layer, {**details, "untrained": True})
    collapsed_rel, collapsed_abs = fraction < min_frac, mean < floor
    ok = not (collapsed_rel or collapsed_abs)
    if ok:
        why = f"{head}: {fraction:.0%} of its initial |tanh({init:g})| = {init_tanh:.4g} (collapse below {min_frac:.0%})" + flip
    else:
        causes = []
        if collapsed_rel:
            causes.append(f"{fraction:.0%} of its initial |tanh({init:g})| = {init_tanh:.4g}, below {min_frac:.0%}")
        if collapsed_abs:
            causes.append(f"below the absolute floor {floor:g}")
        why = f"{head}: GATING COLLAPSE in {layer}, TTT is effectively switched off ({'; '.join(causes)})" + flip
    details["severity"] = "warning" if (ok and flip) else "info"
    return Verdict("gate_stats", ok, fraction, min_frac, why, layer, details)
