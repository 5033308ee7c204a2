"""The one definition of the Figure-5 statistics (ttt_checks/metrics/figure5.py).

Which positions are judged, what counts as ordered vs overlapping, and how many positions a run
needs, on hand-made curves and on curves drawn by hypothesis. Tolerances: fractions are counts
over positions, so equalities are exact; scaling by a power of 2 is exact in floating point.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttt_checks.metrics import figure5 as f5
from ttt_checks.metrics.figure5 import figure5_stats, positions_needed, smooth, smooth_over
from ttt_checks.ttt.figure5 import Figure5Error, Figure5Record


def record(l0, lprev, lafter, positions=None, meta=None, layer="layers.0.ttt", lmean=None) -> Figure5Record:
    """``lmean`` None: 0.5 at every position; "absent": a record saved before lmean was captured."""
    n = len(l0)
    if lmean is None:
        lmean = np.full(n, 0.5)
    return Figure5Record(layer=layer, positions=np.arange(n) if positions is None else np.asarray(positions),
                         l0=np.asarray(l0, float), lprev=np.asarray(lprev, float), lafter=np.asarray(lafter, float),
                         counts=np.ones(n, int), nonfinite=np.zeros(n, int), meta=dict(meta or {}),
                         lmean=None if isinstance(lmean, str) else np.asarray(lmean, float))


def healthy(n: int, b: int, causal: bool, seed: int = 0):
    """l0 > lprev > lafter by wide margins, except where l0 == lprev by construction."""
    rng = np.random.default_rng(seed)
    l0 = 1.0 + 0.05 * rng.random(n)
    lprev = 0.5 + 0.05 * rng.random(n)
    lprev = np.where(f5.l0_equals_lprev_by_construction(np.arange(n), b, causal), l0, lprev)
    return l0, lprev, lprev - 0.2


# -- which positions are judged ---------------------------------------------------------------------


def test_noncausal_b64_over_302_frames_judges_238_positions_and_three_minibatches():
    stats = figure5_stats(record(*healthy(302, 64, False)), mini_batch_size=64, causal=False)
    assert stats.judged_l0_lprev == 238 and stats.judged_lprev_lafter == 302
    assert stats.judged_minibatches == 3 and stats.positions_needed == 192 and stats.enough_context
    assert stats.frac_l0_gt_lprev == 1.0 and stats.frac_lprev_gt_lafter == 1.0 and stats.frac_ordered == 1.0
    assert stats.judged_note == ("judged 238 of 302 positions for l0 vs lprev; the first mini-batch of 64 is "
                                 "l0 == lprev by construction (non-causal: W_{t-1} = W_0 there)")


def test_causal_layer_leaves_out_only_position_zero():
    stats = figure5_stats(record(*healthy(64, 16, True)), mini_batch_size=16, causal=True)
    assert stats.judged_l0_lprev == 63 and stats.judged_minibatches == 4 and stats.frac_l0_gt_lprev == 1.0
    assert "position 0 is l0 == lprev by construction" in stats.judged_note


@pytest.mark.parametrize("b, causal, needed", [(64, False, 192), (16, False, 48), (16, True, 32), (1, True, 3), (1, False, 3)])
def test_positions_needed_for_two_judged_minibatches(b, causal, needed):
    assert positions_needed(b, causal) == needed
    enough = figure5_stats(record(*healthy(needed, b, causal)), mini_batch_size=b, causal=causal)
    short = figure5_stats(record(*healthy(needed - 1, b, causal)), mini_batch_size=b, causal=causal)
    assert enough.judged_minibatches == 2 and enough.enough_context
    assert short.judged_minibatches == 1 and not short.enough_context


@given(n=st.integers(2, 400), b=st.sampled_from([1, 2, 8, 16, 64, 128]), causal=st.booleans())
def test_judged_counts_follow_the_definitions(n, b, causal):
    stats = figure5_stats(record(*healthy(n, b, causal)), mini_batch_size=b, causal=causal)
    excluded = 1 if causal else min(n, b)
    assert stats.judged_l0_lprev == n - excluded
    complete = n // b
    assert stats.judged_minibatches == max(0, complete - f5.first_judged_minibatch(b, causal))


@given(n=st.integers(130, 300), seed=st.integers(0, 10_000), junk=st.floats(-5.0, 5.0))
def test_values_at_positions_equal_by_construction_do_not_change_the_l0_lprev_ordering(n, seed, junk):
    """Whatever sits in the first non-causal mini-batch (there l0 == lprev by definition), the
    l0-vs-lprev statistics are those of the judged positions alone."""
    b = 64
    l0, lprev, lafter = healthy(n, b, False, seed)
    base = figure5_stats(record(l0, lprev, lafter), mini_batch_size=b, causal=False)
    edited = lprev.copy()
    edited[:b] = l0[:b] + junk  # impossible in a real record: it proves the positions are not read
    other = figure5_stats(record(l0, edited, lafter), mini_batch_size=b, causal=False)
    for key in ("frac_l0_gt_lprev", "frac_l0_lprev_overlap", "mean_gap_l0_lprev", "judged_l0_lprev"):
        assert getattr(other, key) == getattr(base, key), key


# -- margin: ordered, overlapping, reversed ---------------------------------------------------------


@given(k=st.integers(-20, 20), seed=st.integers(0, 10_000))
def test_fractions_do_not_depend_on_the_loss_scale(k, seed):
    """The margin is relative: scaling every curve by 2**k (exact in floating point) changes nothing."""
    l0, lprev, lafter = healthy(120, 16, True, seed)
    rng = np.random.default_rng(seed)
    lafter = lprev * (1 + rng.choice([-1e-5, 1e-5, -0.1, 0.1], size=len(lprev)))  # some overlap, some not
    a = figure5_stats(record(l0, lprev, lafter), mini_batch_size=16, causal=True)
    c = 2.0 ** k
    s = figure5_stats(record(l0 * c, lprev * c, lafter * c), mini_batch_size=16, causal=True)
    for key in ("frac_l0_gt_lprev", "frac_l0_lprev_overlap", "frac_lprev_gt_lafter", "frac_lprev_lafter_overlap", "frac_ordered"):
        assert getattr(s, key) == getattr(a, key), key


@given(rel=st.floats(0.0, 0.9e-4), seed=st.integers(0, 10_000))
def test_curves_within_the_margin_overlap_at_every_position(rel, seed):
    l0, _, _ = healthy(100, 16, True, seed)
    stats = figure5_stats(record(l0, l0 * (1 - rel), l0 * (1 - rel) ** 2), mini_batch_size=16, causal=True)
    assert stats.frac_l0_lprev_overlap == 1.0 and stats.frac_lprev_lafter_overlap == 1.0
    assert stats.frac_l0_gt_lprev == 0.0 and stats.frac_lprev_gt_lafter == 0.0 and stats.frac_ordered == 0.0


@given(seed=st.integers(0, 10_000))
def test_ordered_overlapping_and_reversed_partition_the_judged_positions(seed):
    rng = np.random.default_rng(seed)
    n = 160
    lprev = 0.5 + rng.random(n)
    lafter = lprev * (1 + rng.choice([-0.2, -1e-6, 0.0, 1e-6, 0.2], size=n))
    l0 = lprev + rng.choice([-0.3, 0.0, 0.3], size=n)
    fwd = figure5_stats(record(l0, lprev, lafter), window=1, mini_batch_size=16, causal=True)
    back = figure5_stats(record(l0, lafter, lprev), window=1, mini_batch_size=16, causal=True)
    reversed_frac = 1.0 - fwd.frac_lprev_gt_lafter - fwd.frac_lprev_lafter_overlap
    assert back.frac_lprev_gt_lafter == pytest.approx(reversed_frac, abs=1e-12)
    assert back.frac_lprev_lafter_overlap == fwd.frac_lprev_lafter_overlap
    assert fwd.frac_ordered <= min(fwd.frac_l0_gt_lprev, 1.0)


def test_a_larger_margin_turns_small_gaps_into_overlap():
    l0, lprev, _ = healthy(100, 16, True)
    lafter = lprev * (1 - 1e-3)
    assert figure5_stats(record(l0, lprev, lafter), mini_batch_size=16, causal=True).frac_lprev_gt_lafter == 1.0
    wide = figure5_stats(record(l0, lprev, lafter), mini_batch_size=16, causal=True, min_rel_gap=1e-2)
    assert wide.frac_lprev_lafter_overlap == 1.0 and wide.ordering_min_rel_gap == 1e-2


def test_exact_zeros_overlap_and_leave_the_relative_improvement_undefined():
    z = np.zeros(80)
    stats = figure5_stats(record(z, z, z), mini_batch_size=16, causal=True)
    assert stats.max_abs_loss == 0.0 and stats.frac_lprev_lafter_overlap == 1.0 and stats.frac_lprev_gt_lafter == 0.0
    assert stats.improvement_abs == 0.0 and np.isnan(stats.improvement_rel)


def test_nan_makes_the_fractions_nan_never_a_pass():
    l0, lprev, lafter = healthy(100, 16, True)
    lafter[50] = np.nan
    stats = figure5_stats(record(l0, lprev, lafter), mini_batch_size=16, causal=True)
    assert np.isnan(stats.frac_lprev_gt_lafter) and np.isnan(stats.frac_l0_gt_lprev) and np.isnan(stats.max_abs_loss)


# -- smoothing ----------------------------------------------------------------------------------------


@given(values=st.lists(st.floats(-10, 10), min_size=1, max_size=60), window=st.integers(1, 12))
def test_smooth_over_an_all_true_mask_is_the_plain_trailing_mean(values, window):
    v = np.asarray(values)
    np.testing.assert_allclose(smooth_over(v, np.ones(len(v), bool), window), smooth(v, window), rtol=1e-9, atol=1e-9)


def test_smooth_over_averages_only_kept_positions():
    v = np.array([100.0, 100.0, 1.0, 3.0, 5.0])
    keep = np.array([False, False, True, True, True])
    out = smooth_over(v, keep, 3)
    assert np.isnan(out[0]) and np.isnan(out[1])
    np.testing.assert_allclose(out[2:], [1.0, 2.0, 3.0])


# -- where mini_batch_size and causal come from ---------------------------------------------------------


def test_layer_facts_come_from_the_adapter_or_the_record_and_must_agree():
    l0, lprev, lafter = healthy(200, 64, False)
    with_meta = record(l0, lprev, lafter, meta={"mini_batch_size": 64, "causal": False})
    assert figure5_stats(with_meta) == figure5_stats(with_meta, mini_batch_size=64, causal=False)
    with pytest.raises(Figure5Error, match="mini_batch_size = 16 but the layer recorded 64"):
        figure5_stats(with_meta, mini_batch_size=16, causal=False)
    with pytest.raises(Figure5Error, match="mini_batch_size is unknown"):
        figure5_stats(record(l0, lprev, lafter))


def test_the_zoo_measurement_reads_the_same_statistics():
    """models/reference/measure.py keeps no second definition: its numbers are these fields."""
    from ttt_checks.models.reference import measure

    stats = figure5_stats(record(*healthy(302, 64, False)), mini_batch_size=64, causal=False)
    summary = measure.figure5_summary(stats)
    assert summary["frac_l0_gt_lprev"] == round(stats.frac_l0_gt_lprev, 4) == 1.0
    assert summary["judged_l0_lprev"] == 238 and summary["l0"] == round(stats.mean_l0, 4)
    assert not hasattr(measure, "figure5_stats") or measure.figure5_stats is f5.figure5_stats


# -- the mean predictor: lmean and the ratio figure5_bounded judges --------------------------------------


@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), k=st.integers(-20, 20))
def test_l0_to_lmean_is_the_ratio_of_the_means_and_blind_to_a_common_scale(seed, n, k):
    """mean l0 / mean lmean over the same positions; scaling both curves by 2^k (exact in floating
    point) leaves it bit for bit, as a loss scale shared by prediction and target must."""
    rng = np.random.default_rng(seed)
    l0, lprev, lafter = healthy(n, 4, True, seed)
    lmean = 0.1 + rng.random(n)
    stats = figure5_stats(record(l0, lprev, lafter, lmean=lmean), mini_batch_size=4, causal=True)
    assert stats.mean_lmean == float(np.mean(lmean))
    assert stats.l0_to_lmean == pytest.approx(np.mean(l0) / np.mean(lmean), rel=1e-15)
    scaled = figure5_stats(record(l0 * 2.0**k, lprev * 2.0**k, lafter * 2.0**k, lmean=lmean * 2.0**k),
                           mini_batch_size=4, causal=True)
    assert scaled.l0_to_lmean == stats.l0_to_lmean


def test_a_record_without_lmean_or_with_a_constant_target_has_no_ratio_never_a_made_up_one():
    l0, lprev, lafter = healthy(64, 4, True)
    old = figure5_stats(record(l0, lprev, lafter, lmean="absent"), mini_batch_size=4, causal=True)
    assert np.isnan(old.mean_lmean) and np.isnan(old.l0_to_lmean)
    constant = figure5_stats(record(l0, lprev, lafter, lmean=np.zeros(64)), mini_batch_size=4, causal=True)
    assert constant.mean_lmean == 0.0 and np.isnan(constant.l0_to_lmean)
    assert np.isnan(f5.record_summary(record(l0, lprev, lafter, lmean="absent"))["lmean"])
