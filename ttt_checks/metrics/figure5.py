"""Statistics of a Figure-5 record: the one definition the health rules, the zoo measurements
(``models/reference/measure.py``) and the reports read. Nothing else computes an ordering.

Definitions (``ttt/inner.py``): l0 = loss(W_0; x_t), lprev = loss(W_{t-1}; x_t), lafter =
loss(W_t; x_t), lmean = the loss of predicting y_t by the mean of the targets before t.

lmean is the scale the others are read against: ``l0_to_lmean = mean l0 / mean lmean`` says
whether W_0 predicts the target better than a constant (< 1) and by how much it is off scale
(a prediction at the target's scale that is unrelated to it gives ~2, docs/health-checks.md).
A record without lmean (saved before it was captured) gives NaN for both: never a made-up scale.

Where an equality holds *by construction* a comparison says nothing about the
checkpoint, so those positions are left out of that comparison ("judged" positions):

- l0 vs lprev, non-causal layer: x_t enters every row of its mini-batch at once, so W_{t-1} is
  the mini-batch's start state, which is W_0 for the whole first mini-batch: l0 == lprev at
  positions 0 .. b-1.
- l0 vs lprev, causal layer: W_{t-1} is the previous row's weights, W_0 only for position 0.
- lprev vs lafter: no position. W_t always includes x_t's own gradient step (causal: row i adds
  eta[i, i] G_i to row i-1's sums; non-causal: the end-of-mini-batch state differs from its
  start), so lprev == lafter only when the step is zero, which is a fault, never construction.

Orderings are counted on curves smoothed by a trailing moving average over ``window`` positions
(10, as in the paper's figure; for l0 vs lprev the average runs over judged positions only, so
the excluded equal values do not dilute the first judged window). A pair is *ordered* at a
position when the smoothed gap exceeds ``min_rel_gap`` times the larger of the two smoothed
values there (the local loss scale, the scale fp32 rounding is relative to), *reversed* when it
is below minus that, and *overlapping* in between: curves equal within the margin are never
called ordered.

Why the default margin is 1e-4: the inner loop runs in fp32 (``ttt/layer.py``), whose rounding
of a loss is ~1e-6 relative, so 1e-4 is 100x above that noise; the smallest healthy gap, per
smoothed position (1st percentile), is 5.3e-2 relative (zoo healthy-seed1, lprev vs lafter;
trained tiny Moshi at b = 64: 1.7e-1), 500x above the margin. The geometric middle of 1e-6 and
5.3e-2 is 2.3e-4, rounded down to 1e-4 (``docs/health-checks.md`` records both sides).

Adaptation over the context is judged on what the carried state buys, ``benefit_t =
log(l0_t / lprev_t)`` at judged positions: how much better W_{t-1}, which has seen x_1..x_{t-1},
predicts x_t's target than W_0 does. The paper's claim is that this grows as context
accumulates (lprev falls away from l0). The log ratio, not a difference, because l0 itself moves
along the context (harder or easier inputs scale both losses alike) and because a memory close
to saturation (lprev -> 0) still grows in it. ``l0 - lafter`` is *not* an adaptation signal:
lafter includes x_t's own step, which fits x_t from the first mini-batch on, so that gap is
bounded by l0 and shrinks whenever l0 does, however well the state adapts (measured: a trained
tiny Moshi whose lprev/l0 falls from 0.14 to 0.001 had l0 - lafter go 1.383 -> 1.357).
Its standard error comes from ``BENEFIT_BLOCKS`` contiguous blocks per quarter (neighbouring
positions are correlated; block means are nearly independent).

A run judges the inner loop over its context only when it has at least ``MIN_JUDGED_MINIBATCHES``
complete mini-batches with judged positions; ``positions_needed`` says how many positions that
takes at a given mini-batch size. NaN is never dropped: a non-finite value makes the statistics
it touches NaN, and the health rules treat NaN as a failure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ttt_checks.ttt.figure5 import Figure5Error, Figure5Record

SMOOTHING_WINDOW = 10
# Default of the health threshold ``ordering_min_rel_gap`` (health.THRESHOLDS takes it from here,
# pyproject's [tool.ttt_checks] repeats it): see the module docstring for its derivation.
ORDERING_MIN_REL_GAP = 1e-4
MIN_JUDGED_MINIBATCHES = 2
BENEFIT_BLOCKS = 8  # contiguous blocks per quarter for the standard error of the benefit's change


def smooth(values: np.ndarray, window: int = SMOOTHING_WINDOW) -> np.ndarray:
    """Trailing moving average of the same length (position i averages i-window+1 .. i)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values.copy()
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def smooth_over(values: np.ndarray, mask: np.ndarray, window: int = SMOOTHING_WINDOW) -> np.ndarray:
    """Trailing moving average over the positions where ``mask`` holds (NaN where the window has
    none of them). Masked-out positions neither count nor dilute; a NaN at a kept position stays."""
    values = np.asarray(values, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    kept = np.where(mask, values, 0.0)
    total = smooth(kept, window) * _window_sizes(len(values), window)
    count = smooth(mask.astype(np.float64), window) * _window_sizes(len(values), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0.5, total / np.maximum(count, 1.0), np.nan)


def _window_sizes(n: int, window: int) -> np.ndarray:
    idx = np.arange(1, n + 1)
    return (idx - np.maximum(idx - max(window, 1), 0)).astype(np.float64)


def l0_equals_lprev_by_construction(positions: np.ndarray, mini_batch_size: int, causal: bool) -> np.ndarray:
    """Mask of positions where W_{t-1} = W_0 by definition (see the module docstring)."""
    positions = np.asarray(positions)
    return positions < mini_batch_size if not causal else positions == 0


def first_judged_minibatch(mini_batch_size: int, causal: bool) -> int:
    """Index of the first mini-batch with a judged l0-vs-lprev position (causal b = 1: position 0
    is the whole first mini-batch)."""
    return 1 if (not causal or mini_batch_size <= 1) else 0


def positions_needed(mini_batch_size: int, causal: bool, minibatches: int = MIN_JUDGED_MINIBATCHES) -> int:
    """Positions (Moshi frames, reference tokens) a run needs for ``minibatches`` judged ones."""
    return int(mini_batch_size) * (first_judged_minibatch(mini_batch_size, causal) + minibatches)


def exclusion_note(mini_batch_size: int, causal: bool) -> str:
    """Which positions are l0 == lprev by construction, in words."""
    if causal:
        return "position 0 is l0 == lprev by construction (W_{t-1} = W_0 there)"
    return f"the first mini-batch of {mini_batch_size} is l0 == lprev by construction (non-causal: W_{{t-1}} = W_0 there)"


def classify_gap(upper: np.ndarray, lower: np.ndarray, min_rel_gap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ordered, overlapping, reversed) masks of ``upper`` > ``lower`` with the margin
    ``min_rel_gap * max(|upper|, |lower|)``: the pair's own local loss scale, the scale fp32
    rounding is relative to. Two exact zeros overlap."""
    gap = upper - lower
    margin = min_rel_gap * np.maximum(np.abs(upper), np.abs(lower))
    return gap > margin, np.abs(gap) <= margin, gap < -margin


@dataclass(frozen=True)
class Figure5Stats:
    """Summary of one layer's Figure-5 curves (every field a plain float, int, bool or str)."""

    layer: str
    mini_batch_size: int
    causal: bool
    positions: int
    expected_positions: int
    coverage: float  # positions / expected_positions
    nonfinite: int
    mean_l0: float
    mean_lprev: float
    mean_lafter: float
    mean_lmean: float  # loss of the running mean of the targets before t; NaN: the record has no lmean
    l0_to_lmean: float  # mean_l0 / mean_lmean; NaN without lmean or when mean_lmean is 0 (a constant target)
    max_abs_loss: float  # max |value| of the raw curves: 0 means the inner loss is identically 0
    max_smoothed_loss: float
    ordering_min_rel_gap: float  # the margin the fractions below were counted with
    judged_l0_lprev: int  # positions where l0 vs lprev is not equal by construction
    judged_lprev_lafter: int  # every position (no by-construction equality)
    judged_minibatches: int  # complete mini-batches with judged l0-vs-lprev positions
    positions_needed: int  # positions that give MIN_JUDGED_MINIBATCHES judged mini-batches
    frac_l0_gt_lprev: float  # smoothed, judged positions, gap above the margin
    frac_l0_lprev_overlap: float  # smoothed, judged positions, |gap| within the margin
    frac_lprev_gt_lafter: float
    frac_lprev_lafter_overlap: float
    frac_ordered: float  # l0 > lprev > lafter at once, at positions judged for both
    mean_gap_l0_lprev: float  # mean(l0 - lprev) over judged positions: what the context buys
    improvement_abs: float  # mean(lprev - lafter): what one inner step buys
    improvement_rel: float  # improvement_abs / mean(lprev); NaN when mean lprev is exactly 0
    context_gain_abs: float  # mean(l0 - lafter): what the whole context buys
    l0_first_quarter: float
    l0_last_quarter: float
    lprev_first_quarter: float
    lprev_last_quarter: float
    lafter_first_quarter: float
    lafter_last_quarter: float
    gap_first_quarter: float  # mean(l0 - lafter) over the first quarter of positions (shown, not judged)
    gap_last_quarter: float
    benefit_first_quarter: float  # mean log(l0 / lprev) over the first quarter of judged positions
    benefit_last_quarter: float  # ... over the last quarter: what the carried state buys late in the context
    benefit_growth_se: float  # standard error of benefit_last_quarter - benefit_first_quarter (NaN: too few positions)

    @property
    def gap_growth(self) -> float:
        return self.gap_last_quarter - self.gap_first_quarter

    @property
    def benefit_growth(self) -> float:
        """How much more W_{t-1} beats W_0 late in the context than early (log units, > 0: adapting)."""
        return self.benefit_last_quarter - self.benefit_first_quarter

    @property
    def exclusion_note(self) -> str:
        return exclusion_note(self.mini_batch_size, self.causal)

    @property
    def enough_context(self) -> bool:
        return self.judged_minibatches >= MIN_JUDGED_MINIBATCHES

    @property
    def judged_note(self) -> str:
        """'judged 238 of 302 positions; the first mini-batch of 64 is l0 == lprev by construction'."""
        return f"judged {self.judged_l0_lprev} of {self.positions} positions for l0 vs lprev; {self.exclusion_note}"

    def to_dict(self) -> dict[str, float | int | str | bool]:
        data = asdict(self)
        data["gap_growth"] = self.gap_growth
        data["benefit_growth"] = self.benefit_growth
        return data


def l0_to_lmean(mean_l0: float, mean_lmean: float) -> float:
    """mean l0 / mean lmean: how W_0 compares with predicting the target's running mean. NaN when
    lmean is missing, not finite or exactly 0 (a target constant over positions has no scale)."""
    if not (math.isfinite(mean_lmean) and math.isfinite(mean_l0)) or mean_lmean <= 0.0:
        return float("nan")
    return mean_l0 / mean_lmean


def _block_se(values: np.ndarray, blocks: int = BENEFIT_BLOCKS) -> float:
    """Standard error of the mean of ``values`` from the means of up to ``blocks`` contiguous blocks."""
    blocks = min(blocks, len(values) // 2)
    if blocks < 2:
        return float("nan")
    means = np.array([chunk.mean() for chunk in np.array_split(values, blocks)])
    return float(means.std(ddof=1) / np.sqrt(blocks))


def carried_benefit(l0: np.ndarray, lprev: np.ndarray, judged: np.ndarray) -> tuple[float, float, float]:
    """(first-quarter mean, last-quarter mean, standard error of their difference) of
    log(l0 / lprev) over judged positions. Exact zeros (a loss identically 0) give log 1 = 0."""
    l0_j, lprev_j = l0[judged], lprev[judged]
    if l0_j.size == 0:
        return float("nan"), float("nan"), float("nan")
    tiny = np.finfo(np.float64).tiny
    benefit = np.log(np.maximum(l0_j, tiny)) - np.log(np.maximum(lprev_j, tiny))
    benefit[(l0_j == 0) & (lprev_j == 0)] = 0.0
    quarter = max(1, benefit.size // 4)
    first, last = benefit[:quarter], benefit[-quarter:]
    return float(first.mean()), float(last.mean()), float(np.hypot(_block_se(first), _block_se(last)))


def _layer_facts(record: Figure5Record, mini_batch_size: int | None, causal: bool | None) -> tuple[int, bool]:
    """The layer's mini-batch size and causal flag: as given (the adapter's TTTLayerInfo), else as
    the layer wrote them into the record; a disagreement or an unknown value is an error."""
    meta = record.meta or {}
    facts = {}
    for key, given in (("mini_batch_size", mini_batch_size), ("causal", causal)):
        stated = meta.get(key)
        if given is not None and stated is not None and (int(stated) if key == "mini_batch_size" else bool(stated)) != given:
            raise Figure5Error(f"layer {record.layer!r}: the adapter says {key} = {given!r} but the layer recorded {stated!r}")
        value = given if given is not None else stated
        if value is None:
            raise Figure5Error(f"layer {record.layer!r}: {key} is unknown (pass it from the layer's TTTLayerInfo): "
                               "which positions are equal by construction depends on it")
        facts[key] = value
    b = int(facts["mini_batch_size"])
    if b < 1:
        raise Figure5Error(f"layer {record.layer!r}: mini_batch_size {b} < 1")
    return b, bool(facts["causal"])


def figure5_stats(record: Figure5Record, expected_positions: int | None = None, window: int = SMOOTHING_WINDOW, *,
                  mini_batch_size: int | None = None, causal: bool | None = None,
                  min_rel_gap: float = ORDERING_MIN_REL_GAP) -> Figure5Stats:
    """Compute :class:`Figure5Stats`; ``expected_positions`` defaults to the last position + 1.

    ``mini_batch_size`` and ``causal`` come from the adapter's ``TTTLayerInfo``; left out, they
    are read from the record's meta (every TTT layer writes them there); ``min_rel_gap`` is the
    ``ordering_min_rel_gap`` threshold.
    """
    b, is_causal = _layer_facts(record, mini_batch_size, causal)
    pos = np.asarray(record.positions)
    l0, lprev, lafter = (np.asarray(getattr(record, c), dtype=np.float64) for c in ("l0", "lprev", "lafter"))
    expected = int(expected_positions if expected_positions is not None else pos[-1] + 1)
    n = len(l0)
    judged = ~l0_equals_lprev_by_construction(pos, b, is_causal)

    s0_all = smooth(l0, window)
    sp_all, sa_all = smooth(lprev, window), smooth(lafter, window)
    s0_j, sp_j = smooth_over(l0, judged, window), smooth_over(lprev, judged, window)
    ord01, ovl01, _ = classify_gap(s0_j, sp_j, min_rel_gap)
    ord12, ovl12, _ = classify_gap(sp_all, sa_all, min_rel_gap)
    all_finite = bool(np.isfinite(l0).all() and np.isfinite(lprev).all() and np.isfinite(lafter).all())

    def frac(mask: np.ndarray, where: np.ndarray) -> float:
        if not all_finite or not where.any():
            return float("nan")
        return float(mask[where].mean())

    every = np.ones(n, dtype=bool)
    minibatch = pos // b
    complete = [m for m in np.unique(minibatch) if np.count_nonzero(minibatch == m) == b]
    judged_mbs = sum(1 for m in complete if judged[minibatch == m].any())

    quarter = max(1, n // 4)
    gap = l0 - lafter
    with np.errstate(invalid="ignore", divide="ignore"):
        benefit_first, benefit_last, benefit_se = carried_benefit(l0, lprev, judged)
    mean_lprev = float(np.mean(lprev))
    mean_l0 = float(np.mean(l0))
    mean_lmean = float(np.mean(record.lmean)) if record.lmean is not None else float("nan")
    improvement = float(np.mean(lprev - lafter))
    with np.errstate(invalid="ignore"):
        max_abs = float(np.max(np.abs(np.concatenate([l0, lprev, lafter])))) if all_finite else float("nan")
    return Figure5Stats(
        layer=record.layer,
        mini_batch_size=b,
        causal=is_causal,
        positions=n,
        expected_positions=expected,
        coverage=n / expected if expected else 0.0,
        nonfinite=int(record.nonfinite.sum()),
        mean_l0=mean_l0,
        mean_lprev=mean_lprev,
        mean_lafter=float(np.mean(lafter)),
        mean_lmean=mean_lmean,
        l0_to_lmean=l0_to_lmean(mean_l0, mean_lmean),
        max_abs_loss=max_abs,
        max_smoothed_loss=float(np.max([s0_all.max(), sp_all.max(), sa_all.max()])),
        ordering_min_rel_gap=float(min_rel_gap),
        judged_l0_lprev=int(judged.sum()),
        judged_lprev_lafter=n,
        judged_minibatches=int(judged_mbs),
        positions_needed=positions_needed(b, is_causal),
        frac_l0_gt_lprev=frac(ord01, judged),
        frac_l0_lprev_overlap=frac(ovl01, judged),
        frac_lprev_gt_lafter=frac(ord12, every),
        frac_lprev_lafter_overlap=frac(ovl12, every),
        frac_ordered=frac(ord01 & ord12, judged),
        mean_gap_l0_lprev=float(np.mean((l0 - lprev)[judged])) if judged.any() else float("nan"),
        improvement_abs=improvement,
        improvement_rel=improvement / mean_lprev if mean_lprev != 0 else float("nan"),
        context_gain_abs=float(np.mean(gap)),
        l0_first_quarter=float(np.mean(l0[:quarter])),
        l0_last_quarter=float(np.mean(l0[-quarter:])),
        lprev_first_quarter=float(np.mean(lprev[:quarter])),
        lprev_last_quarter=float(np.mean(lprev[-quarter:])),
        lafter_first_quarter=float(np.mean(lafter[:quarter])),
        lafter_last_quarter=float(np.mean(lafter[-quarter:])),
        gap_first_quarter=float(np.mean(gap[:quarter])),
        gap_last_quarter=float(np.mean(gap[-quarter:])),
        benefit_first_quarter=benefit_first,
        benefit_last_quarter=benefit_last,
        benefit_growth_se=benefit_se,
    )


def record_summary(record: Figure5Record) -> dict[str, float]:
    """A saved record in a few numbers (``ttt-checks figure5``): means of the curves and the
    ordering fractions of :func:`figure5_stats` (the one definition: judged positions, margin).
    It needs the layer's mini_batch_size and causal flag, which every TTT layer writes into
    ``meta``; a record without them gets NaN fractions, never a second answer."""
    out = {
        "positions": float(record.num_positions),
        "l0": float(np.mean(record.l0)),
        "lprev": float(np.mean(record.lprev)),
        "lafter": float(np.mean(record.lafter)),
        "lmean": float(np.mean(record.lmean)) if record.lmean is not None else float("nan"),
        "frac_l0_gt_lprev": float("nan"),
        "frac_lprev_gt_lafter": float("nan"),
        "nonfinite": float(record.nonfinite.sum()),
    }
    try:
        stats = figure5_stats(record)
    except Figure5Error:
        return out
    out.update(frac_l0_gt_lprev=stats.frac_l0_gt_lprev, frac_lprev_gt_lafter=stats.frac_lprev_gt_lafter,
               judged_l0_lprev=float(stats.judged_l0_lprev))
    return out
