"""Statistics of a Figure-5 record: the numbers the health rules compare with thresholds.

Curves are smoothed with a trailing moving average over ``window`` positions (10, as in the
paper's figure) before orderings are counted, so a single noisy token does not decide; means,
gaps and maxima are also reported raw. NaN is never dropped: a non-finite value makes the
statistics it touches NaN, and the health rules treat NaN as a failure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ttt_checks.ttt.figure5 import Figure5Record

SMOOTHING_WINDOW = 10


def smooth(values: np.ndarray, window: int = SMOOTHING_WINDOW) -> np.ndarray:
    """Trailing moving average of the same length (position i averages i-window+1 .. i)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values.copy()
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


@dataclass(frozen=True)
class Figure5Stats:
    """Summary of one layer's Figure-5 curves (every field is a plain float or int)."""

    layer: str
    positions: int
    expected_positions: int
    coverage: float  # positions / expected_positions
    nonfinite: int
    mean_l0: float
    mean_lprev: float
    mean_lafter: float
    max_smoothed_loss: float
    frac_l0_gt_lprev: float  # on smoothed curves
    frac_lprev_gt_lafter: float
    frac_ordered: float  # l0 > lprev > lafter at once
    improvement_abs: float  # mean(lprev - lafter): what one inner step buys
    improvement_rel: float  # improvement_abs / mean(lprev)
    context_gain_abs: float  # mean(l0 - lafter): what the whole context buys
    lprev_first_quarter: float
    lprev_last_quarter: float
    lafter_first_quarter: float
    lafter_last_quarter: float
    gap_first_quarter: float  # mean(l0 - lafter) over the first quarter of positions
    gap_last_quarter: float

    @property
    def gap_growth(self) -> float:
        return self.gap_last_quarter - self.gap_first_quarter

    def to_dict(self) -> dict[str, float | int | str]:
        data = asdict(self)
        data["gap_growth"] = self.gap_growth
        return data


def figure5_stats(record: Figure5Record, expected_positions: int | None = None, window: int = SMOOTHING_WINDOW) -> Figure5Stats:
    """Compute :class:`Figure5Stats`; ``expected_positions`` defaults to the last position + 1."""
    l0, lprev, lafter = (np.asarray(getattr(record, c), dtype=np.float64) for c in ("l0", "lprev", "lafter"))
    expected = int(expected_positions if expected_positions is not None else record.positions[-1] + 1)
    s0, sp, sa = smooth(l0, window), smooth(lprev, window), smooth(lafter, window)

    def frac(mask: np.ndarray, *curves: np.ndarray) -> float:
        finite = np.all([np.isfinite(c) for c in curves], axis=0)
        return float(mask[finite].mean()) if finite.all() else float("nan")

    n = len(l0)
    quarter = max(1, n // 4)
    gap = l0 - lafter
    mean_lprev = float(np.mean(lprev))
    improvement = float(np.mean(lprev - lafter))
    return Figure5Stats(
        layer=record.layer,
        positions=n,
        expected_positions=expected,
        coverage=n / expected if expected else 0.0,
        nonfinite=int(record.nonfinite.sum()),
        mean_l0=float(np.mean(l0)),
        mean_lprev=mean_lprev,
        mean_lafter=float(np.mean(lafter)),
        max_smoothed_loss=float(np.max([s0.max(), sp.max(), sa.max()])) if n else float("nan"),
        frac_l0_gt_lprev=frac(s0 > sp, s0, sp),
        frac_lprev_gt_lafter=frac(sp > sa, sp, sa),
        frac_ordered=frac((s0 > sp) & (sp > sa), s0, sp, sa),
        improvement_abs=improvement,
        improvement_rel=improvement / mean_lprev if mean_lprev else float("nan"),
        context_gain_abs=float(np.mean(gap)),
        lprev_first_quarter=float(np.mean(lprev[:quarter])),
        lprev_last_quarter=float(np.mean(lprev[-quarter:])),
        lafter_first_quarter=float(np.mean(lafter[:quarter])),
        lafter_last_quarter=float(np.mean(lafter[-quarter:])),
        gap_first_quarter=float(np.mean(gap[:quarter])),
        gap_last_quarter=float(np.mean(gap[-quarter:])),
    )
