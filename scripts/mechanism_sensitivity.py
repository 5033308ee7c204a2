"""Issue 25: break one part of a checkpoint's inner loop at a time and measure how much of its benefit is left.

Each edit is a copy of the checkpoint with one part of the TTT inner loop changed (its initial state
W_0, keys, values, queries, output projection, step size, reconstruction target); the copy is
measured with the suite's own ``ttt_helps`` on the default held-out input, and the benefit it keeps
is its gain (learned gate vs gate 0) over the unedited checkpoint's. A TTT that does real work
loses at least half of it to every edit (the issue's target).

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/mechanism_sensitivity.py CKPT --out /tmp/ttt25/edits.jsonl

``--rows N`` measures on the first N held-out rows instead of the suite's default 8 (the gain's standard
error falls as 1/sqrt(rows); every row count's first 8 rows are the default input). ``--step-sweep``
adds the inner step size multiplied by each of ``STEP_SWEEP`` (the benefit as a function of base_lr).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ttt_checks.checks import load_thresholds
from ttt_checks.models.reference.adapter import ReferenceAdapter
from ttt_checks.models.reference.checkpoint import is_ttt_key, load_checkpoint, save_ttt
from ttt_checks.models.reference.model import DecoderConfig
from ttt_checks.models.reference.zoo import redrawn_at_std
from ttt_checks.run import HealthRun, RunOptions

Tensors = dict[str, torch.Tensor]
P = "layers.3.ttt.ttt."


def _tensor_edit(fn: Callable[[Tensors, Tensors], None]) -> Callable[[Tensors, Tensors, dict], tuple[Tensors, dict]]:
    def edit(tensors: Tensors, initial: Tensors, decoder: dict) -> tuple[Tensors, dict]:
        out = {k: v.clone() for k, v in tensors.items()}
        fn(out, initial)
        return out, decoder
    return edit


def _config_edit(**ttt) -> Callable[[Tensors, Tensors, dict], tuple[Tensors, dict]]:
    def edit(tensors: Tensors, initial: Tensors, decoder: dict) -> tuple[Tensors, dict]:
        d = dict(decoder)
        d["ttt"] = {**d["ttt"], **{k: (v(d["ttt"][k]) if callable(v) else v) for k, v in ttt.items()}}
        return dict(tensors), d
    return edit


def _set(names: tuple[str, ...], value: Callable[[str, torch.Tensor, Tensors], torch.Tensor]):
    def fn(t: Tensors, initial: Tensors) -> None:
        for n in names:
            t[P + n] = value(n, t[P + n], initial)
    return fn


INNER = ("weights.0", "weights.1", "biases.0", "biases.1")
EDITS: dict[str, tuple[str, Callable]] = {
    "W0 untrained": ("initial state W_0 (weights, biases) reset to its seeded initial draw",
                     _tensor_edit(_set(INNER, lambda n, v, init: init[P + n].clone()))),
    "W0 heads rolled": ("initial state W_0 of each head given to the next head",
                        _tensor_edit(_set(INNER, lambda n, v, init: torch.roll(v, 1, dims=0)))),
    "keys random": ("wk redrawn at its trained std", _tensor_edit(_set(("wk.weight", "wk.bias"), lambda n, v, i: redrawn_at_std(v, 1)))),
    "keys unshifted": ("keys read x_t instead of x_(t-1) (shift_keys off)", _config_edit(shift_keys=False)),
    "values random": ("wv redrawn at its trained std", _tensor_edit(_set(("wv.weight", "wv.bias"), lambda n, v, i: redrawn_at_std(v, 2)))),
    "queries random": ("wq redrawn at its trained std", _tensor_edit(_set(("wq.weight", "wq.bias"), lambda n, v, i: redrawn_at_std(v, 3)))),
    "queries = keys": ("wq set equal to wk", _tensor_edit(lambda t, i: t.update({P + "wq.weight": t[P + "wk.weight"].clone(),
                                                                                P + "wq.bias": t[P + "wk.bias"].clone()}))),
    "output random": ("wo redrawn at its trained std", _tensor_edit(_set(("wo.weight", "wo.bias"), lambda n, v, i: redrawn_at_std(v, 4)))),
    "step x0.1": ("inner step size (base_lr) divided by 10", _config_edit(base_lr=lambda v: v * 0.1)),
    "step x10": ("inner step size (base_lr) multiplied by 10", _config_edit(base_lr=lambda v: v * 10.0)),
    "step gate untrained": ("per-token step-size projection (lr_weight, lr_bias) reset to its initial draw",
                            _tensor_edit(_set(("lr_weight", "lr_bias"), lambda n, v, init: init[P + n].clone()))),
    "target norm reset": ("reconstruction target's LayerNorm (ttt_norm weight, bias) reset to 1, 0",
                          _tensor_edit(_set(("ttt_norm_weight", "ttt_norm_bias"),
                                            lambda n, v, i: torch.ones_like(v) if n.endswith("weight") else torch.zeros_like(v)))),
}


# Probes of the per-token step-size projection (not counted among EDITS): what its selection is worth.
STEP_GATE_PROBES: dict[str, tuple[str, Callable]] = {
    "step gate inverted (probe)": ("lr_weight and lr_bias negated: each token's step sigmoid(z) becomes 1 - sigmoid(z)",
                                   _tensor_edit(_set(("lr_weight", "lr_bias"), lambda n, v, i: -v))),
    "step gate bias only (probe)": ("lr_weight zeroed, trained lr_bias kept: one step size per head, no per-token choice",
                                    _tensor_edit(_set(("lr_weight",), lambda n, v, i: torch.zeros_like(v)))),
}
STEP_SWEEP = (0.03, 0.3, 3.0, 30.0)  # with the edits x0.1 and x10: six points


class RowsAdapter(ReferenceAdapter):
    """The reference adapter with ``rows`` held-out rows as its default teacher-forced input."""

    rows = 8

    def default_teacher_forced_inputs(self, length: int = 256, rows: int | None = None) -> torch.Tensor:
        return super().default_teacher_forced_inputs(length=length, rows=rows or self.rows)


def helps(ckpt: Path, rows: int = 8) -> dict:
    adapter = RowsAdapter(ckpt)
    adapter.rows = rows
    with tempfile.TemporaryDirectory() as report:
        run = HealthRun(adapter, RunOptions(report_dir=Path(report), gates=[0.0, "learned"], thresholds=load_thresholds()))
        v = run.judge("ttt_helps")[0]
    d = v.details
    return {"passed": v.ok, "rows": rows, "gain": d.get("relative_decrease"),
            "gain_from_updates": d.get("relative_decrease_from_inner_steps"), "standard_error_rel": d.get("standard_error_rel"),
            "loss_learned": d.get("loss_learned"), "loss_gate0": d.get("loss_gate0"),
            "loss_no_inner_step": d.get("loss_no_inner_step")}


def table(results: Path) -> str:
    """The rows of ``results`` as the markdown table of docs/health-checks.md."""
    lines = ["| edit | what it breaks | gain (learned vs gate 0) | from the updates | benefit kept | lost at least half |",
             "|---|---|---|---|---|---|"]
    for line in results.read_text().splitlines():
        r = json.loads(line)
        upd = "-" if r["gain_from_updates"] is None else f"{100 * r['gain_from_updates']:+.2f}%"
        lost = "-" if r["edit"] == "none" else ("yes" if r["kept"] <= 0.5 else "**no**")
        lines.append(f"| {r['edit']} | {r['what']} | {100 * r['gain']:+.2f}% | {upd} | {100 * r['kept']:.0f}% | {lost} |")
    return "\n".join(lines)


def compare(results: list[Path]) -> str:
    """Benefit kept by each edit (rows) on each checkpoint (columns: one --out file each), a markdown table;
    the last row counts the edits of ``EDITS`` that lose at least half (sweep points are shown, not counted)."""
    runs = [[json.loads(line) for line in r.read_text().splitlines()] for r in results]
    names = [r.stem for r in results]
    edits = list(dict.fromkeys(row["edit"] for rows in runs for row in rows))
    lines = ["| edit | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for edit in edits:
        cells = []
        for rows in runs:
            row = next((r for r in rows if r["edit"] == edit), None)
            if row is None:
                cells.append("")
            elif edit == "none":
                se = row.get("standard_error_rel")
                cells.append(f"{100 * row['gain']:+.2f}%" + ("" if se is None else f" +- {100 * se:.2f}%")
                             + f" ({row.get('rows', 8)} rows)")
            else:
                kept = row["kept"]
                cells.append("-" if kept is None else (f"{100 * kept:.0f}%" if kept <= 0.5 else f"**{100 * kept:.0f}%**"))
        lines.append(f"| {edit} | " + " | ".join(cells) + " |")
    counts = []
    for rows in runs:
        listed = [r for r in rows if r["edit"] in EDITS]
        counts.append(f"{sum(1 for r in listed if r['kept'] is not None and r['kept'] <= 0.5)} of {len(listed)}")
    lines.append("| lose at least half | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, nargs="?")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="print the rows of --out as a markdown table and exit")
    ap.add_argument("--compare", type=Path, nargs="+", help="print the benefit kept per edit of these --out files, side by side")
    ap.add_argument("--rows", type=int, default=8, help="held-out rows of 256 tokens to measure on (suite default 8)")
    ap.add_argument("--step-sweep", action="store_true", help="also measure base_lr times each of STEP_SWEEP")
    ap.add_argument("--step-gate-probes", action="store_true", help="also measure STEP_GATE_PROBES")
    args = ap.parse_args()
    if args.compare:
        print(compare(args.compare))
        return
    if args.out is None:
        ap.error("--out is required")
    if args.table:
        print(table(args.out))
        return
    if args.checkpoint is None:
        ap.error("give a checkpoint to edit")
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    base_dir = (loaded.path / loaded.config["base"]).resolve()
    initial = dict(ReferenceAdapter(args.checkpoint).initial_state())
    extra = {k: v for k, v in loaded.config.items() if k not in ("format", "kind", "base", "decoder", "ttt_init_seed")}
    reference = helps(args.checkpoint, args.rows)
    edits = dict(EDITS)
    if args.step_gate_probes:
        edits.update(STEP_GATE_PROBES)
    if args.step_sweep:
        edits.update({f"step x{m:g} (sweep)": (f"inner step size (base_lr) multiplied by {m:g}",
                                               _config_edit(base_lr=lambda v, m=m: v * m)) for m in STEP_SWEEP})
    rows = [{"edit": "none", "what": "the checkpoint as trained", **reference, "kept": 1.0}]
    print(json.dumps(rows[0]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (what, edit) in edits.items():
            t0 = time.perf_counter()
            tensors, decoder = edit({k: v for k, v in loaded.tensors.items() if is_ttt_key(k)}, initial, loaded.decoder_config.to_dict())
            d = Path(tmp) / name.replace(" ", "-").replace("=", "eq")
            save_ttt(None, d, base_dir, int(loaded.config.get("ttt_init_seed", 0)), extra=extra, tensors=tensors,
                     decoder_config=DecoderConfig.from_dict(decoder))
            m = helps(d, args.rows)
            row = {"edit": name, "what": what, **m, "kept": m["gain"] / reference["gain"] if m["gain"] is not None else None,
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
