"""Plots of a health run: Figure-5 curves per layer, outer loss per position, words per gate.

matplotlib with the Agg backend (no display); every figure is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ttt_checks.metrics.figure5 import SMOOTHING_WINDOW, smooth
from ttt_checks.ttt.figure5 import Figure5Record

COLORS = {"l0": "#1f77b4", "lprev": "#ff7f0e", "lafter": "#2ca02c", "lmean": "#7f7f7f"}
LABELS = {"l0": r"$\ell(W_0; x_t)$", "lprev": r"$\ell(W_{t-1}; x_t)$", "lafter": r"$\ell(W_t; x_t)$",
          "lmean": r"$\|\bar y_{t-1} - y_t\|^2/d$ (mean predictor)"}
LINESTYLES = {"lmean": "--"}  # the baseline is dashed: it is not a state of the inner model


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_figure5(record: Figure5Record, path: Path, window: int = SMOOTHING_WINDOW) -> Path:
    """Draw :func:`figure5_figure` into ``path`` (PNG, atomically)."""
    fig = figure5_figure(record, window)
    try:
        return _save(fig, path)
    finally:
        _pyplot().close(fig)


def figure5_figure(record: Figure5Record, window: int = SMOOTHING_WINDOW):
    """The Figure-5 curves smoothed over ``window`` positions with the raw curves faint behind: l0,
    lprev, lafter, and lmean dashed (the mean predictor, the scale of the other three; absent
    from records saved before it was captured), and a second panel with the gaps lprev - lafter
    (one step) and l0 - lafter (the whole context)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    x = record.positions
    for name in record.curves:
        raw = getattr(record, name)
        style = LINESTYLES.get(name, "-")
        top.plot(x, raw, color=COLORS[name], alpha=0.18, linewidth=0.8, linestyle=style)
        top.plot(x, smooth(raw, window), color=COLORS[name], linewidth=1.8, linestyle=style, label=LABELS[name])
    top.set_ylabel("TTT loss (MSE per dim)")
    top.set_title(f"Figure 5: {record.layer}  (smoothed over {window} positions; raw faint)")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    step = smooth(record.lprev - record.lafter, window)
    context = smooth(record.l0 - record.lafter, window)
    bottom.plot(x, step, color="#9467bd", label=r"$\ell(W_{t-1}) - \ell(W_t)$ (one step)")
    bottom.plot(x, context, color="#8c564b", label=r"$\ell(W_0) - \ell(W_t)$ (context)")
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_xlabel("position t")
    bottom.set_ylabel("gap")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    return fig


def plot_outer_loss(loss_learned: np.ndarray, loss_gate0: np.ndarray, path: Path, window: int = SMOOTHING_WINDOW) -> Path:
    """Teacher-forced outer loss per position at the learned gate and at gate 0, and their difference."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    x = np.arange(len(loss_learned))
    top.plot(x, smooth(loss_gate0, window), label=f"gate 0 (mean {np.mean(loss_gate0):.4f})", color="#7f7f7f")
    top.plot(x, smooth(loss_learned, window), label=f"learned gate (mean {np.mean(loss_learned):.4f})", color="#d62728")
    top.set_ylabel("outer loss (cross-entropy)")
    top.set_title("Does TTT help? Teacher-forced outer loss per position")
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(x, smooth(np.asarray(loss_learned) - np.asarray(loss_gate0), window), color="#d62728")
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_ylabel("learned - gate 0")
    bottom.set_xlabel("position")
    bottom.grid(alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_words_vs_gate(labels: Sequence[str], tanh_values: Sequence[float], words: Sequence[float], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    order = np.argsort(tanh_values)
    ax.plot(np.asarray(tanh_values)[order], np.asarray(words)[order], marker="o")
    for label, t, w in zip(labels, tanh_values, words):
        ax.annotate(label, (t, w), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("gate tanh(alpha)")
    ax.set_ylabel("words heard by Whisper")
    ax.set_title("Talkativeness over the gating sweep")
    ax.grid(alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
