"""Moshi-specific checks: each returns :class:`~ttt_checks.verdict.Verdict` objects.

- :func:`gate0_matches_vanilla`: with every gate at 0 the injected model gives the logits of the
  same Moshi with the TTT blocks taken out (the base path is intact; NaN in TTT weights breaks
  even this, because 0 * NaN = NaN).
- :func:`unused_parameters_at_init`: the tensors the user's forward never applies (post_norm,
  wo, backward gate) must still be at their initial values; if they moved, the checkpoint came
  from code that did apply them, and this adapter (which skips them, like the user's code) would
  misreport the model.
- :func:`state_carried`: fed frame by frame (as many frames as the layer's mini_batch_size needs),
  the TTT inner weights move away from W_0 once a mini-batch completes and keep moving (the
  state is carried across streaming steps); weights that stay put are told apart from a reset.
- :func:`causality_leak`: how much a non-causal TTT layer's output at a frame changes when only
  later frames of its mini-batch change; a warning verdict with the size, since the user's layers
  are non-causal by construction (training sees up to b-1 future frames, streaming does not).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from ttt_checks.verdict import Verdict, cannot_measure
from ttt_checks.ttt import causality


@contextlib.contextmanager
def ttt_removed(adapter: Any):
    """Put every block's original layer back in place of its hybrid (non-streaming use only)."""
    layers = adapter.lm.transformer.layers
    hybrids = adapter.loaded.hybrids
    for i, h in hybrids.items():
        layers[i] = h.original_layer
    try:
        yield
    finally:
        for i, h in hybrids.items():
            layers[i] = h


@torch.no_grad()
def gate0_matches_vanilla(adapter: Any, inputs: Any, tolerance: float | None = None) -> Verdict:
    """Max |logit difference| between gate 0 and the model without TTT blocks (text and audio)."""
    name = "moshi_gate0_is_vanilla"
    if not adapter.loaded.hybrids:
        return cannot_measure(name, "the model has no TTT layers")
    tol = tolerance if tolerance is not None else (1e-5 if adapter.loaded.dtype == torch.float32 else 1e-2)
    codes = adapter.lm_codes(inputs)
    with adapter.set_gate(0.0):
        a_logits, a_mask, t_logits, t_mask = adapter.logits(codes)
    with ttt_removed(adapter):
        va, _, vt, _ = adapter.logits(codes)
    diffs = [(a_logits[a_mask] - va[a_mask]).abs(), (t_logits[t_mask] - vt[t_mask]).abs()]
    flat = torch.cat([d.reshape(-1).float() for d in diffs])
    if not torch.isfinite(flat).all():
        return Verdict(name, False, "nan", tol,
                       "logits at gate 0 are not finite: 0 * TTT(x) is NaN when TTT(x) is (NaN/Inf in TTT weights or inputs)")
    worst = float(flat.max()) if flat.numel() else 0.0
    ok = worst <= tol
    return Verdict(name, ok, worst, tol,
                   f"gate 0 reproduces Moshi without TTT to {worst:.3g} (max |logit diff|)" if ok else
                   f"gate 0 does NOT reproduce Moshi without TTT: logits differ by up to {worst:.3g}; the injection changes the base path")


def unused_parameters_at_init(adapter: Any) -> Verdict:
    """Every tensor of ``unused_ttt_keys()`` with a known initial value is still at it."""
    name = "moshi_unused_parameters"
    unused = adapter.unused_ttt_keys()
    state, init = adapter.state(), adapter.initial_state()
    compared = [k for k in unused if k in state and k in init]
    if not compared:
        return cannot_measure(name, "no unused TTT tensor with a known initial value is in the checkpoint")
    moved = [k for k in compared if not torch.equal(state[k].float(), init[k].float())]
    absent = [k for k in unused if k not in state]
    ok = not moved
    if ok:
        why = (f"{len(compared)} tensors the forward never applies (post_norm, wo.bias, backward gate) are still at init, "
               "as the user's code leaves them: dead weight, never trained")
    else:
        why = (f"{len(moved)} tensors this adapter treats as unused have moved from init ({', '.join(moved[:4])}): the checkpoint "
               "was trained by code that applies them, so skipping post_norm/wo misreports this model")
    return Verdict(name, ok, len(moved), 0, why, details={"at_init": [k for k in compared if k not in moved],
                                                           "moved": moved, "absent": absent})


# |W_t - W_0| / |W_0| at or below this is no movement. fp32 keeps 24 bits: an update smaller than
# ~6e-8 of an element vanishes in the sum W_0 - update, so any change at all is >= ~1e-7; 1e-6 is
# 10x above that granularity, and a trained layer moves by orders of magnitude more (tiny Moshi
# at b = 64: 0.24 and 0.42, tests/test_moshi_b64.py).
MIN_REL_WEIGHT_CHANGE = 1e-6


def _relative_change(params: Any, initial: Any) -> float:
    """|W - W_0| / |W_0| over every inner weight matrix (Frobenius norms, per batch row, max)."""
    num = den = None
    for w, w0 in zip(params.weights, initial):
        w0 = w0.to(w.dtype)[None] if w0.dim() == w.dim() - 1 else w0.to(w.dtype)
        d = (w - w0).double().flatten(1).pow(2).sum(1)
        n = w0.double().expand_as(w).flatten(1).pow(2).sum(1)
        num, den = (d, n) if num is None else (num + d, den + n)
    return float((num.sqrt() / den.sqrt().clamp_min(1e-30)).max())


@torch.no_grad()
def state_carried(adapter: Any, inputs: Any, max_frames: int | None = None) -> list[Verdict]:
    """Stream the input frame by frame; per TTT layer, the fraction of frames after the first
    mini-batch at which the carried inner weights differ from W_0 (1.0 when carried).

    Frames: ``positions_needed`` of the largest mini_batch_size a layer names (two mini-batches
    past the first, read from the layer's config, never assumed), or ``max_frames``. Weights that
    never move are told apart from a state that is not carried by the open mini-batch: a carried
    state keeps its rows across calls (it grows to b - 1 frames), a reset one never holds more
    than the frame of the current call.
    """
    from ttt_checks.metrics.figure5 import positions_needed

    name = "moshi_state_carried"
    hybrids = adapter.loaded.hybrids
    if not hybrids:
        return [cannot_measure(name, "the model has no TTT layers")]
    needed = {i: positions_needed(h.ttt.config.mini_batch_size, h.ttt.config.causal) for i, h in hybrids.items()}
    frames = max_frames if max_frames is not None else max(needed.values())
    codes = adapter.lm_codes(inputs)[..., :frames]
    lm = adapter.lm
    from moshi.models.lm import _delay_sequence

    B, K, T = codes.shape
    initial = lm._get_initial_token().expand(B, -1, -1)
    seq = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], dim=2)[:, :, :-1]
    change: dict[int, list[float]] = {i: [] for i in hybrids}
    open_rows: dict[int, int] = {i: 0 for i in hybrids}
    with lm.streaming(B):
        for t in range(T):
            lm.forward_text(seq[:, :, t: t + 1])
            for i, h in hybrids.items():
                st = h.ttt.state
                if st is None:
                    change[i].append(0.0)
                    continue
                if st.pending is not None:
                    open_rows[i] = max(open_rows[i], int(st.pending["xk"].shape[-2]))
                change[i].append(_relative_change(st.params, h.ttt.weights))
    out = []
    for i, values in change.items():
        c = hybrids[i].ttt.config
        b = c.mini_batch_size
        after = np.asarray(values[b:])
        layer = f"transformer.layers.{i}"
        details = {"carry_state_flag": hybrids[i].carry_state, "mini_batch_size": b, "frames": T,
                   "max_open_minibatch_rows": open_rows[i]}
        if T < needed[i]:
            out.append(cannot_measure(name, f"{T} frames do not give two mini-batches past the first of {b} "
                                            f"(non-causal: the first is W_0 by construction); give a longer --input: "
                                            f"{needed[i]} frames needed at mini_batch_size {b}", layer))
            continue
        if not np.isfinite(after).all():
            out.append(Verdict(name, False, "nan", 0.99, "the carried inner weights are not finite", layer, details))
            continue
        moved = after > MIN_REL_WEIGHT_CHANGE
        frac = float(moved.mean())
        largest = float(after.max())
        details["max_rel_weight_change"] = largest
        ok = frac >= 0.99
        details["cause"] = None if ok else "updates_zero" if open_rows[i] > 1 else "reset"
        if ok:
            why = (f"inner weights differ from W_0 at {frac:.0%} of streamed frames after the first mini-batch of {b} "
                   f"(|W_t - W_0| / |W_0| up to {largest:.3g}): the state is carried")
        elif open_rows[i] > 1:
            why = (f"the inner updates are ~0 (|W_t - W_0| / |W_0| = {largest:.3g} at most, floor {MIN_REL_WEIGHT_CHANGE:g}): "
                   f"the state is carried (the open mini-batch kept {open_rows[i]} frames across calls) but does not move")
        else:
            why = (f"inner weights differ from W_0 at only {frac:.0%} of streamed frames after the first mini-batch of {b}, and the "
                   "open mini-batch never held more than the current frame: the TTT state is NOT carried across streaming "
                   "steps (weights reset every step)")
        out.append(Verdict(name, ok, frac, 0.99, why, layer, details))
    return out


@torch.no_grad()
def causality_leak(adapter: Any, inputs: Any, position: int | None = None) -> list[Verdict]:
    """Per TTT layer: change of outputs at frames <= ``position`` when later frames change.

    The layer's real input (the residual stream after attention, captured in a teacher-forced
    pass) is used; ``position`` defaults to the middle of the first mini-batch.
    """
    name = "moshi_causality_leak"
    hybrids = adapter.loaded.hybrids
    if not hybrids:
        return [cannot_measure(name, "the model has no TTT layers")]
    captured: dict[int, torch.Tensor] = {}
    handles = [h.ttt_block.register_forward_pre_hook(lambda m, args, i=i: captured.__setitem__(i, args[0].detach().clone()))
               for i, h in hybrids.items()]
    try:
        adapter.transformer_outputs(adapter.lm_codes(inputs))
    finally:
        for hd in handles:
            hd.remove()
    out = []
    for i, h in hybrids.items():
        layer = f"transformer.layers.{i}"
        x = captured.get(i)
        b = h.ttt.config.mini_batch_size
        if x is None or x.shape[1] < 2:
            out.append(cannot_measure(name, "the layer saw no input", layer))
            continue
        pos = position if position is not None else max(0, min(b // 2 - 1, x.shape[1] - 2))
        scale = float(x[:, pos + 1:].float().std())
        leak = causality.causality_leak(lambda z: h.ttt(z).float(), x, pos, scale=scale)
        causal_cfg = h.ttt.config.causal
        ok = leak.causal or not causal_cfg  # a leak is a failure only for a layer that claims to be causal
        kind = "causal" if leak.causal else f"NON-CAUSAL: outputs at frames <= {pos} move by {leak.max_abs_change:.3g} ({leak.relative_change:.1%} of their size) when only later frames change"
        out.append(Verdict(name, ok, leak.relative_change, 0.0,
                           (f"WARNING: {kind}; mini-batches of {b} frames let training see up to {b - 1} future frames, "
                            "streaming inference cannot, so training and inference differ") if not leak.causal else kind,
                           layer, {"severity": "warning" if ok and not leak.causal else ("ok" if ok else "error"),
                                   "max_abs_change": leak.max_abs_change, "position": pos,
                                   "changed_positions": list(leak.changed_positions), "mini_batch_size": b}))
    return out
