"""The Figure-5 plot draws every curve a record holds: l0, lprev, lafter solid, the mean
predictor's lmean dashed and labelled; a record saved before lmean existed gets the three."""

from __future__ import annotations

import dataclasses

import numpy as np

from ttt_checks.report.plots import figure5_figure, plot_figure5
from ttt_checks.ttt.figure5 import Figure5Record


def _record(n: int = 40) -> Figure5Record:
    t = np.arange(n, dtype=float)
    return Figure5Record(layer="layers.3.ttt", positions=np.arange(n), l0=1.15 + 0 * t, lprev=0.9 - t / 200,
                         lafter=0.8 - t / 200, lmean=0.6 + 0.1 / (t + 1), counts=np.full(n, 8), nonfinite=np.zeros(n, int))


def test_plot_has_four_labelled_curves_with_lmean_dashed(tmp_path):
    fig = figure5_figure(_record())
    top = fig.axes[0]
    labelled = {line.get_label(): line for line in top.get_lines() if not line.get_label().startswith("_")}
    assert len(labelled) == 4, list(labelled)
    [mean_line] = [line for label, line in labelled.items() if "mean predictor" in label]
    assert mean_line.get_linestyle() == "--"
    assert all(line.get_linestyle() == "-" for line in labelled.values() if line is not mean_line)
    np.testing.assert_allclose(mean_line.get_ydata()[-1], np.mean(_record().lmean[-10:]), rtol=1e-12)
    assert {t.get_text() for t in top.get_legend().get_texts()} == set(labelled)
    assert plot_figure5(_record(), tmp_path / "f5.png").stat().st_size > 0


def test_a_record_without_lmean_plots_its_three_curves():
    fig = figure5_figure(dataclasses.replace(_record(), lmean=None))
    labels = [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert len(labels) == 3 and not any("mean predictor" in label for label in labels)
