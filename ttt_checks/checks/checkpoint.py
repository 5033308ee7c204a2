"""Is the checkpoint itself sane? Keys, finite tensors, a recipe that agrees with itself, and
trainable TTT tensors that moved from their initial values."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch

from ttt_checks.ttt.config import is_inner_initial_state
from ttt_checks.verdict import Verdict, cannot_measure, name_list


def checkpoint_keys(expected: Sequence[str], present: Iterable[str], unexpected: Sequence[str] = ()) -> Verdict:
    """Every TTT tensor the config implies is in the file, and no TTT tensor the config lacks."""
    present = set(present)
    missing = [k for k in expected if k not in present]
    if not expected:
        return cannot_measure("checkpoint_keys", "the adapter lists no expected TTT keys")

    problems = []
    if missing:
        problems.append(f"missing TTT keys: {name_list(missing, 8)}")
    if unexpected:
        problems.append(f"unexpected TTT keys (no layer of the config takes them): {name_list(list(unexpected), 8)}")
    return Verdict("checkpoint_keys", not problems, len(missing) + len(unexpected), 0,
                   "; ".join(problems) or f"all {len(expected)} TTT keys present",
                   details={"missing": missing, "unexpected": list(unexpected)})


def checkpoint_finite(state: Mapping[str, Any], ttt_keys: Iterable[str] | None = None) -> Verdict:
    """Every floating-point tensor is finite. With ``ttt_keys`` (the TTT tensors the config implies)
    the non-finite ones are split into TTT and base tensors: a base the TTT fine-tune never updates
    cannot diverge in it, so NaN there has another cause than NaN in the TTT weights."""
    if not state:
        return cannot_measure("checkpoint_finite", "the checkpoint holds no tensors")
    bad = [name for name, t in state.items() if torch.is_floating_point(t) and not torch.isfinite(t).all()]
    shown = name_list(bad, 8)
    details: dict[str, Any] = {"nonfinite": bad}
    if ttt_keys is not None:
        ttt = set(ttt_keys)
        details.update(nonfinite_ttt=[n for n in bad if n in ttt], nonfinite_base=[n for n in bad if n not in ttt])
    return Verdict("checkpoint_finite", not bad, len(bad), 0,
                   f"NaN/Inf in {shown}" if bad else f"all {len(state)} tensors finite", details=details)


def config_consistency(fields: Sequence[Any] | None, notes: Sequence[str] = ()) -> Verdict:
    """The recipe a checkpoint carries vs what it was trained with, where both are stated.

    ``fields``: :class:`ttt_checks.models.base.RecipeField` rows (name, the value the loader
    builds the model with and where it reads it, the other statement and where). A contradiction
    fails and names which value wins (the one the loader uses), because every other verdict
    measures the model at that value: a checkpoint trained at mini_batch_size 16 whose config.json
    says 64 is judged at 64 and its one-step improvement drops for no visible reason."""
    notes = list(notes)
    tail = ("; " + "; ".join(notes)) if notes else ""
    if not fields:
        return Verdict("config_consistency", True, 0, 0,
                       "nothing to compare: the checkpoint states its recipe once (no second record of the training settings)" + tail,
                       details={"compared": [], "contradictions": [], "notes": notes, "severity": "warning"})
    bad = [f for f in fields if not f.agrees]
    rows = [{"name": f.name, "loaded": f.loaded, "loaded_from": f.loaded_from, "trained": f.trained, "trained_from": f.trained_from,
             "agrees": f.agrees} for f in fields]
    if bad:
        parts = [f"{f.name}: {f.loaded_from} says {f.loaded!r} but {f.trained_from} says {f.trained!r}; the loader uses "
                 f"{f.loaded!r} ({f.loaded_from} wins)" for f in bad]
        why = ("CONFIG CONTRADICTS ITSELF OR ITS WEIGHTS: " + "; ".join(parts) + ". One of the two was edited after training "
               "or copied from another run, and every check measures the model at the value the loader uses; restore the "
               "files saved with the weights" + tail)
    else:
        why = f"{len(fields)} settings stated twice agree ({', '.join(f.name for f in fields)})" + tail
    return Verdict("config_consistency", not bad, len(bad), 0, why,
                   details={"compared": rows, "contradictions": [f.name for f in bad], "notes": notes})


INIT_MATCH_ULPS = 2.0
INIT_MATCH_ABS_ULPS = 8.0


def at_initial_value(current: Any, initial: Any) -> bool:
    """Is a stored tensor still its initial value, up to the rounding of another machine?

    The initial value is re-created from its seed on the machine that runs the check, and torch's
    CPU random kernels differ in their last bits between SIMD paths (``ATEN_CPU_CAPABILITY``).
    Measured: of 131,072 ``randn * 0.02`` draws rounded to bf16, 12 differ between the AVX-512 and
    the scalar kernels, by one bf16 unit in the last place, or, near 0 (Box-Muller's ``r cos(theta)``
    with a cosine a few fp32 ulp apart), by ~1e-8 absolute. So "untouched" means every element
    within ``INIT_MATCH_ULPS`` units in the last place of the coarser dtype (bf16: 1.6 %) plus
    ``INIT_MATCH_ABS_ULPS`` fp32 ulp of the tensor's largest element (the kernels' absolute error);
    an element initialised to exactly 0 must still be exactly 0. An optimiser step moves the
    small elements of a trained tensor by ~its learning rate (>= 1e-6), far beyond both.
    """
    if tuple(current.shape) != tuple(initial.shape):
        return False
    eps = max(torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0 for t in (current, initial))
    a, b = current.detach().double().cpu(), initial.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return bool(torch.equal(a, b))
    scale = float(b.abs().max()) if b.numel() else 0.0
    slack = INIT_MATCH_ULPS * eps * b.abs() + INIT_MATCH_ABS_ULPS * torch.finfo(torch.float32).eps * scale
    return bool(((a - b).abs() <= slack).all())


def zeroed_tensor(current: Any, initial: Any) -> bool:
    """Every element exactly 0 where the initialisation was not: a tensor that passes no signal.

    No optimiser lands every element of a randomly initialised matrix on exactly 0.0; such a
    tensor was zeroed (an edit after training, or a zero-init the optimiser never saw)."""
    if tuple(current.shape) != tuple(initial.shape) or not current.numel():
        return False
    a, b = current.detach().cpu(), initial.detach().cpu()
    return bool((a == 0).all()) and bool((b != 0).any())


# A fresh draw of a random init has the init's spread up to sampling noise: the std of n samples
# varies by about 1/sqrt(2n) (relative); 5 of those is the band of "as if drawn again".
FRESH_DRAW_SIGMAS = 5.0


def _constant(tensor: Any) -> bool:
    """Every element equal (zeros, ones, a fill value): a deterministic initialisation."""
    flat = tensor.detach().reshape(-1)
    return flat.numel() > 0 and bool((flat == flat[0]).all())


def init_signature(current: Mapping[str, Any], initial: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """How a checkpoint's TTT tensors relate to the initialisation, beyond bit-for-bit equality.

    ``constant_init``: the tensors initialised deterministically (biases at 0, norm weights at 1,
    lr biases at 0), whose initial value any seed reproduces; ``constant_init_unchanged``: those
    still exactly there. ``fresh_draw_like``: randomly initialised tensors that differ from the
    stated init but have its spread, std(current) / std(init) within ``FRESH_DRAW_SIGMAS`` sampling
    standard errors of 1. Training moves every deterministic part (a bias at 0 takes the first
    gradient step); a checkpoint saved from a fresh initialisation with another seed keeps all of
    them and only its random tensors differ, each as a new draw of the same distribution."""
    constant, unchanged, fresh, ratios = [], [], [], {}
    for name in names:
        cur, init = current[name], initial[name]
        if not (torch.is_floating_point(cur) and torch.is_floating_point(init)) or cur.shape != init.shape:
            continue
        if _constant(init):
            constant.append(name)
            if at_initial_value(cur, init):
                unchanged.append(name)
            continue
        init_std = float(init.double().std()) if init.numel() > 1 else 0.0
        if init_std == 0.0 or at_initial_value(cur, init):
            continue
        ratio = float(cur.double().std()) / init_std
        ratios[name] = ratio
        if abs(ratio - 1.0) <= FRESH_DRAW_SIGMAS / math.sqrt(2.0 * cur.numel()):
            fresh.append(name)
    return {"constant_init": constant, "constant_init_unchanged": unchanged, "fresh_draw_like": fresh,
            "std_ratio_to_init": ratios}


def dead_parameters(current: Mapping[str, Any], initial: Mapping[str, Any], used: Iterable[str] | None, th: Mapping[str, float]) -> Verdict:
    """Trainable TTT tensors still at their initial value were never trained; tensors zeroed
    everywhere (initialised non-zero) pass no signal. Both count as dead.

    Only tensors the forward uses count: one the forward never applies (the user's Moshi code
    skips post_norm, wo.bias and the backward gate) cannot be trained by any recipe, so its being
    at init says nothing about this checkpoint's training. It is named as a warning (dead weight
    in the code), not a failure; the Moshi-specific check reports the same tensors as a fact."""
    if not initial:
        return cannot_measure("dead_parameters", "the adapter knows no initial values of the TTT parameters")
    used = set(current) if used is None else set(used)
    unchanged, unused, zeroed, compared = [], [], [], 0
    for name, init in initial.items():
        if name not in current:
            continue
        compared += 1
        if at_initial_value(current[name], init):
            (unchanged if name in used else unused).append(name)
        elif name in used and zeroed_tensor(current[name], init):
            zeroed.append(name)
    if compared == 0:
        return cannot_measure("dead_parameters", "none of the known initial tensors is in the checkpoint")
    judged = compared - len(unused)
    frac = (len(unchanged) + len(zeroed)) / judged if judged else 0.0
    ok = frac <= th["dead_max_fraction"]
    parts = []
    if zeroed:
        parts.append(f"ZEROED (every element exactly 0, initialised non-zero: it passes no signal): {name_list(zeroed, 6)}")
    if unchanged:
        parts.append(f"still at init though used in the forward: {name_list(unchanged, 6)}")
    if unused:
        parts.append(f"never used by the forward (so never trained; dead weight in the code, not a training fault): "
                     f"{name_list(unused, 6)}")
    details: dict[str, Any] = {"unchanged": unchanged, "unused": unused, "zeroed": zeroed, "compared": compared,
                               "inner_initial_state": [n for n in initial if n in current and is_inner_initial_state(n)],
                               "inner_initial_state_unchanged": [n for n in unchanged if is_inner_initial_state(n)],
                               **init_signature(current, initial, [n for n in initial if n in current and n in used])}
    if ok and unused:
        details["severity"] = "warning"
    moved = f"all {judged} TTT tensors the forward uses moved from their initial values, none is zeroed"
    return Verdict("dead_parameters", ok, frac, th["dead_max_fraction"],
                   "; ".join(parts) if not ok else "; ".join([moved, *parts]), details=details)
