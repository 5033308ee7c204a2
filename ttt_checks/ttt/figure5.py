"""Figure-5 capture: per-token l0 / lprev / lafter / lmean of every TTT layer, exactly as defined.

A :class:`Figure5Probe` is attached to TTT layers; each layer reports, in the same pass as its
forward, the four losses of every token it processes (see ``inner.py`` for the definitions;
lmean, the loss of the running mean of the targets before t, is the baseline the other three
are judged against).
Rows of complete mini-batches are committed once; rows of a still-open mini-batch are kept as
*pending* and replaced when a later streaming call completes it, so streamed capture equals a
one-pass capture. Values are summed over batch rows, heads and sequences per absolute position,
together with counts, and a NaN stays a NaN (and is counted) instead of being averaged away.

The ttt-lm-jax per-mini-batch view is kept too: for the last token of each complete mini-batch,
``init`` (W_0), ``step_0`` (the mini-batch start) and ``step_1`` (after its update).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ttt_checks.ttt.step_probe import StepSizeAccumulator, StepSizeRecord

CURVES = ("l0", "lprev", "lafter", "lmean")  # what a TTT layer reports per token
# Records saved before lmean was captured have only these; such a record reads back with lmean None.
REQUIRED_CURVES = ("l0", "lprev", "lafter")
MINIBATCH_CURVES = ("init", "step_0", "step_1")


class Figure5Error(RuntimeError):
    """Figure-5 data is missing, empty or malformed; the message says which layer and why."""


@dataclass
class Figure5Record:
    """One layer's Figure-5 curves: per position the mean of l0, lprev, lafter, lmean over batch
    and heads.

    ``counts[p]`` is how many (sequence, batch row, head) values position p averages;
    ``nonfinite[p]`` how many of them were NaN or Inf (the mean is then NaN too). ``lmean`` is
    None only for a record saved before the mean-predictor curve existed: nothing that judges
    against it may then pass (``metrics/figure5.py`` makes its statistics NaN).
    """

    layer: str
    positions: np.ndarray
    l0: np.ndarray
    lprev: np.ndarray
    lafter: np.ndarray
    counts: np.ndarray
    nonfinite: np.ndarray
    minibatch_end: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    init: np.ndarray = field(default_factory=lambda: np.zeros(0))
    step_0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    step_1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    meta: dict[str, Any] = field(default_factory=dict)
    lmean: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.positions)
        if n == 0:
            raise Figure5Error(
                f"layer {self.layer!r}: no Figure-5 data collected (0 positions). The layer never "
                "reported a token: is it in the model's forward path and was the probe attached to it?"
            )
        for name in (*self.curves, "counts", "nonfinite"):
            if len(getattr(self, name)) != n:
                raise Figure5Error(f"layer {self.layer!r}: {name} has {len(getattr(self, name))} values for {n} positions")
        for name in MINIBATCH_CURVES:
            if len(getattr(self, name)) != len(self.minibatch_end):
                raise Figure5Error(f"layer {self.layer!r}: per-mini-batch {name} does not match minibatch_end")

    @property
    def curves(self) -> tuple[str, ...]:
        """The curves this record holds: every one of CURVES, or REQUIRED_CURVES for an old record."""
        return CURVES if self.lmean is not None else REQUIRED_CURVES

    @property
    def num_positions(self) -> int:
        return int(len(self.positions))

    @property
    def finite(self) -> bool:
        """True when no averaged value, and no value behind an average, was NaN or Inf."""
        return bool(
            self.nonfinite.sum() == 0 and all(np.isfinite(getattr(self, c)).all() for c in self.curves)
        )

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (atomically: temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        arrays = {name: np.asarray(getattr(self, name)) for name in ("positions", *self.curves, "counts", "nonfinite", "minibatch_end", *MINIBATCH_CURVES)}
        np.savez(tmp, layer=np.array(self.layer), meta=np.array(json.dumps(self.meta)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Figure5Record":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise Figure5Error(f"{path}: no such Figure-5 record") from None
        except (ValueError, OSError) as exc:
            raise Figure5Error(f"{path}: not a readable Figure-5 .npz record ({exc})") from exc
        missing = {"layer", "positions", *REQUIRED_CURVES, "counts", "nonfinite"} - set(fields)
        if missing:
            raise Figure5Error(f"{path}: not a Figure-5 record, missing arrays {sorted(missing)}")
        layer = str(fields.pop("layer"))
        meta = json.loads(str(fields.pop("meta"))) if "meta" in fields else {}
        return cls(layer=layer, meta=meta, **fields)


class _LayerAccumulator:
    """Sums per absolute position for one layer; committed rows plus the open mini-batch's rows."""

    def __init__(self) -> None:
        self.sums = {c: np.zeros(0) for c in CURVES}
        self.counts = np.zeros(0, dtype=np.int64)
        self.nonfinite = np.zeros(0, dtype=np.int64)
        self.pending: dict[str, np.ndarray] | None = None  # positions + per-curve sums
        self.minibatch: dict[int, np.ndarray] = {}  # end position -> [sum init, step_0, step_1, count]
        self.meta: dict[str, Any] = {}

    def _grow(self, size: int) -> None:
        if size <= len(self.counts):
            return
        pad = size - len(self.counts)
        for c in CURVES:
            self.sums[c] = np.concatenate([self.sums[c], np.zeros(pad)])
        self.counts = np.concatenate([self.counts, np.zeros(pad, dtype=np.int64)])
        self.nonfinite = np.concatenate([self.nonfinite, np.zeros(pad, dtype=np.int64)])

    @staticmethod
    def _reduce(values: Mapping[str, Tensor]) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """[B, H, n] tensors -> per-row sums over (B, H) (NaN kept), non-finite counts, values per row."""
        sums, bad = {}, None
        for c in CURVES:
            v = values[c].detach().to(torch.float64)
            flat = v.reshape(-1, v.shape[-1])
            sums[c] = flat.sum(dim=0).cpu().numpy()
            row_bad = (~torch.isfinite(flat)).sum(dim=0).cpu().numpy()
            bad = row_bad if bad is None else np.maximum(bad, row_bad)
        per_row = int(values[CURVES[0]].numel() // max(values[CURVES[0]].shape[-1], 1))
        return sums, bad, per_row

    def commit(self, positions: np.ndarray, values: Mapping[str, Tensor]) -> None:
        if len(positions) == 0:
            return
        sums, bad, per_row = self._reduce(values)
        self._grow(int(positions.max()) + 1)
        for c in CURVES:
            np.add.at(self.sums[c], positions, sums[c])
        np.add.at(self.counts, positions, per_row)
        np.add.at(self.nonfinite, positions, bad)

    def set_pending(self, positions: np.ndarray, values: Mapping[str, Tensor] | None) -> None:
        if values is None or len(positions) == 0:
            self.pending = None
            return
        sums, bad, per_row = self._reduce(values)
        self.pending = {"positions": positions.copy(), "nonfinite": bad, "per_row": np.array(per_row), **sums}

    def close_sequence(self) -> None:
        """The sequence ended: an open mini-batch's rows are final, commit them."""
        if self.pending is not None:
            p = self.pending
            self._grow(int(p["positions"].max()) + 1)
            for c in CURVES:
                np.add.at(self.sums[c], p["positions"], p[c])
            np.add.at(self.counts, p["positions"], int(p["per_row"]))
            np.add.at(self.nonfinite, p["positions"], p["nonfinite"])
            self.pending = None

    def add_minibatches(self, end_positions: np.ndarray, init: Tensor, step_0: Tensor, step_1: Tensor) -> None:
        """Per-mini-batch view; init, step_0, step_1: [B, H, m] for m complete mini-batches."""
        stacked = torch.stack([init, step_0, step_1]).detach().to(torch.float64)
        sums = stacked.reshape(3, -1, stacked.shape[-1]).sum(dim=1).cpu().numpy()
        per_row = stacked[0].numel() // stacked.shape[-1]
        for i, end in enumerate(end_positions):
            entry = self.minibatch.setdefault(int(end), np.zeros(4))
            entry[:3] += sums[:, i]
            entry[3] += per_row

    def record(self, layer: str) -> Figure5Record:
        sums = {c: self.sums[c].copy() for c in CURVES}
        counts = self.counts.copy()
        nonfinite = self.nonfinite.copy()
        if self.pending is not None:
            p = self.pending
            size = max(len(counts), int(p["positions"].max()) + 1)
            if size > len(counts):
                pad = size - len(counts)
                sums = {c: np.concatenate([sums[c], np.zeros(pad)]) for c in CURVES}
                counts = np.concatenate([counts, np.zeros(pad, dtype=np.int64)])
                nonfinite = np.concatenate([nonfinite, np.zeros(pad, dtype=np.int64)])
            for c in CURVES:
                np.add.at(sums[c], p["positions"], p[c])
            np.add.at(counts, p["positions"], int(p["per_row"]))
            np.add.at(nonfinite, p["positions"], p["nonfinite"])
        seen = np.flatnonzero(counts > 0)
        means = {c: sums[c][seen] / counts[seen] for c in CURVES}
        ends = np.array(sorted(self.minibatch), dtype=np.int64)
        mb = np.array([self.minibatch[e] for e in ends]).reshape(-1, 4)
        mb_means = {name: mb[:, i] / np.maximum(mb[:, 3], 1) for i, name in enumerate(MINIBATCH_CURVES)}
        return Figure5Record(
            layer=layer, positions=seen.astype(np.int64), counts=counts[seen], nonfinite=nonfinite[seen],
            minibatch_end=ends, meta=dict(self.meta), **means, **mb_means,
        )


class Figure5Sink:
    """What a TTT layer talks to while a probe is attached (one per layer)."""

    def __init__(self, probe: "Figure5Probe", layer: str) -> None:
        self._probe = probe
        self.layer = layer

    @property
    def _acc(self) -> _LayerAccumulator:
        return self._probe._accumulators[self.layer]

    def set_meta(self, **meta: Any) -> None:
        self._acc.meta.update(meta)

    def commit(self, positions: np.ndarray, values: Mapping[str, Tensor]) -> None:
        self._acc.commit(positions, values)

    def set_pending(self, positions: np.ndarray, values: Mapping[str, Tensor] | None) -> None:
        self._acc.set_pending(positions, values)

    def close_sequence(self) -> None:
        self._acc.close_sequence()

    def add_minibatches(self, end_positions: np.ndarray, init: Tensor, step_0: Tensor, step_1: Tensor) -> None:
        self._acc.add_minibatches(end_positions, init, step_0, step_1)

    @property
    def step_multipliers(self) -> tuple[float, ...] | None:
        """The step-size probe's grid when the probe asks for it (``step_probe.py``), else None."""
        return self._probe.step_multipliers

    def add_step_losses(self, losses: Tensor, start: Tensor, base_lr: float) -> None:
        """Scaled-step losses [M, ...] of complete mini-batches and their loss at m = 0."""
        acc = self._probe._steps.setdefault(self.layer, StepSizeAccumulator(self._probe.step_multipliers))
        acc.base_lr = base_lr
        acc.add(losses, start)


class Figure5Probe:
    """Collects Figure-5 records from the TTT layers it is attached to.

    >>> probe = Figure5Probe()
    >>> with probe.attach({"layers.3.ttt": layer}):
    ...     model(x)
    >>> probe.record("layers.3.ttt").save("figure5_layer3.npz")
    """

    def __init__(self, step_multipliers: Sequence[float] | None = None) -> None:
        """``step_multipliers``: also run the inner step-size line search (``step_probe.py``) on
        that grid of multipliers of every complete mini-batch's step, in the same pass."""
        self._accumulators: dict[str, _LayerAccumulator] = {}
        self.step_multipliers = None if step_multipliers is None else tuple(float(m) for m in step_multipliers)
        self._steps: dict[str, StepSizeAccumulator] = {}

    @contextlib.contextmanager
    def attach(self, layers: Mapping[str, torch.nn.Module]) -> Iterator["Figure5Probe"]:
        """Route every named layer's Figure-5 values to this probe while the block runs."""
        if not layers:
            raise Figure5Error("no TTT layers to attach the Figure-5 probe to: the model reports none")
        previous = {}
        for name, layer in layers.items():
            if not hasattr(layer, "figure5_sink"):
                raise Figure5Error(f"{name!r} ({type(layer).__name__}) is not a TTT layer: it has no figure5_sink")
            self._accumulators.setdefault(name, _LayerAccumulator())
            previous[name] = layer.figure5_sink
            layer.figure5_sink = Figure5Sink(self, name)
        try:
            yield self
        finally:
            for name, layer in layers.items():
                layer.figure5_sink = previous[name]

    @property
    def layers(self) -> list[str]:
        return list(self._accumulators)

    def record(self, layer: str) -> Figure5Record:
        """The layer's record so far; raises :class:`Figure5Error` when it has no data."""
        if layer not in self._accumulators:
            raise Figure5Error(
                f"layer {layer!r}: no Figure-5 data collected; the probe was never attached to it "
                f"(attached: {self.layers or 'none'})"
            )
        return self._accumulators[layer].record(layer)

    def records(self) -> dict[str, Figure5Record]:
        """Every attached layer's record; one empty layer is an error naming it."""
        return {name: self.record(name) for name in self._accumulators}

    def step_record(self, layer: str) -> StepSizeRecord:
        """The layer's step-size line search; raises :class:`Figure5Error` when it has none."""
        if self.step_multipliers is None:
            raise Figure5Error("this Figure5Probe was made without step_multipliers: no step-size line search was run")
        acc = self._steps.get(layer)
        if acc is None or acc.count == 0:
            raise Figure5Error(
                f"layer {layer!r}: no complete mini-batch reached the step-size probe "
                f"(attached: {self.layers or 'none'}); is the input at least one mini-batch long?"
            )
        return acc.record(layer)
