"""Issue 25: recipes for a reference model whose benefit is test-time training, measured.

Each run pretrains (or reuses) a local-attention base on the generated dialogue language
(``fact-sessions``), fine-tunes TTT with the base frozen, saves the checkpoint in the reference
format, and measures it with the suite's own health run (``HealthRun``: ``ttt_helps`` with the
inner steps off, Figure 5) on the adapter's default held-out input (validation sessions). One
JSON line per run is appended to ``--results``.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/fact_sessions_grid.py --work /tmp/ttt25 RUN [RUN ...]

``RUNS`` names the recipes (the grid of docs/health-checks.md, "A default whose benefit is
test-time training"). Runs on CPU with one thread; a base is reused across runs of the same
window and pretraining steps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ttt_checks.checks import load_thresholds
from ttt_checks.models.reference.adapter import ReferenceAdapter
from ttt_checks.models.reference.checkpoint import load_checkpoint, save_base, save_ttt, ttt_tensors
from ttt_checks.models.reference.corpus import FACT_SESSIONS, DialogueCorpus
from ttt_checks.models.reference.generate import streamed_loss
from ttt_checks.models.reference.model import DecoderConfig
from ttt_checks.models.reference.tokenizer import ByteTokenizer
from ttt_checks.models.reference.train import (
    FinetuneRecipe,
    PretrainRecipe,
    TTTInit,
    default_ttt_config,
    evaluate,
    finetune_ttt,
    insert_ttt,
    pretrain_base,
    round_to_bf16_,
    validation_windows,
)
from ttt_checks.run import HealthRun, RunOptions
from ttt_checks.ttt.layer import TTTLayer

DATA = "fact-sessions"
MEMORY = {"ttt": {"shift_keys": True, "base_lr": 10.0}, "init": {"inner_weight_std": 0.18, "tie_query_to_key": True}}

# name -> (attention window, pretraining steps, fine-tune recipe fields)
RUNS: dict[str, tuple[int, int, dict]] = {
    "w32-zoo-ttt": (32, 600, {"steps": 400}),
    "w32-memory": (32, 600, {"steps": 400, **MEMORY}),
    "w32-memory-800": (32, 600, {"steps": 800, **MEMORY}),
    "w32-memory-800-seed1": (32, 600, {"steps": 800, "seed": 1, "init_seed": 1001, **MEMORY}),
    "w32-zoo-ttt-800": (32, 600, {"steps": 800}),
    "w32-memory-lr1e-2": (32, 600, {"steps": 400, "lr": 1e-2, "alpha_lr": 1e-2, **MEMORY}),
    "w32-memory-lr3": (32, 600, {"steps": 400, "ttt": {"shift_keys": True, "base_lr": 3.0},
                                 "init": MEMORY["init"]}),
    "w32-memory-b8": (32, 600, {"steps": 400, "ttt": {**MEMORY["ttt"], "mini_batch_size": 8}, "init": MEMORY["init"]}),
    "w32-noshift": (32, 600, {"steps": 400, "ttt": {"base_lr": 10.0}, "init": {"inner_weight_std": 0.18}}),
    "w16-memory": (16, 600, {"steps": 400, **MEMORY}),
    "w32-base1200-memory": (32, 1200, {"steps": 400, **MEMORY}),
    # Issue 25, second half (mechanism sensitivity): one knob of w32-memory-800 changed at a time.
    "w32-memory-800-untied": (32, 600, {"steps": 800, "ttt": MEMORY["ttt"], "init": {"inner_weight_std": 0.18}}),
    "w32-memory-800-std06": (32, 600, {"steps": 800, "ttt": MEMORY["ttt"],
                                       "init": {"inner_weight_std": 0.06, "tie_query_to_key": True}}),
    "w32-memory-800-lr30": (32, 600, {"steps": 800, "ttt": {"shift_keys": True, "base_lr": 30.0}, "init": MEMORY["init"]}),
    # Cost (a zoo of ~13 fine-tunes in 20 min): half the tokens per step, and the outer lr that moves further.
    "w32-memory-b8x800": (32, 600, {"steps": 800, "batch": 8, **MEMORY}),
    "w32-memory-b8x800-lr6e-3": (32, 600, {"steps": 800, "batch": 8, "lr": 6e-3, **MEMORY}),
    "w32-memory-800-lr6e-3": (32, 600, {"steps": 800, "lr": 6e-3, **MEMORY}),
    "w32-memory-b8x800-fast": (32, 600, {"steps": 800, "batch": 8, "lr": 6e-3, "alpha_lr": 1e-2, **MEMORY}),
    "w32-memory-1600": (32, 600, {"steps": 1600, **MEMORY}),
    # The frozen prefix computed once per window of a pool (FinetuneRecipe.window_pool): 4 uses per window.
    "w32-memory-800-pool3200": (32, 600, {"steps": 800, "window_pool": 3200, **MEMORY}),
    # The 1600-step recipe again with another seed (data order, TTT init) and a pool (4 uses per window).
    "w32-memory-1600-seed1-pool6400": (32, 600, {"steps": 1600, "seed": 1, "init_seed": 1001, "window_pool": 6400,
                                                 **MEMORY}),
}


def base_for(work: Path, window: int, steps: int, corpus: DialogueCorpus, log) -> tuple[Path, dict]:
    d = work / f"base-w{window}-s{steps}"
    if (d / "config.json").is_file():
        return d, json.loads((d / "config.json").read_text())["training"]
    recipe = PretrainRecipe(seed=0, steps=steps, data=DATA)
    base, info = pretrain_base(corpus, recipe, DecoderConfig(attention_window=window), log=log)
    round_to_bf16_(base)
    info["val_loss_bf16"] = evaluate(base, validation_windows(corpus, data=DATA))
    save_base(base, d, extra={"name": d.name, "recipe": asdict(recipe), "training": info, "corpus_split_seed": 0,
                              "corpus_data": DATA})
    return d, info


def measure(ckpt: Path) -> dict:
    """ttt_helps and Figure 5 of the suite's health run on the default held-out input."""
    adapter = ReferenceAdapter(ckpt)
    with tempfile.TemporaryDirectory() as report:
        run = HealthRun(adapter, RunOptions(report_dir=Path(report), gates=[0.0, "learned"], thresholds=load_thresholds()))
        helps = run.judge("ttt_helps")[0]
        f5 = {}
        _, records, _ = run.teacher_forced
        for name, stats in run.figure5.items():
            rec = records[name]
            q = max(1, len(rec.lprev) // 4)
            f5[name] = {"l0": stats.mean_l0, "lprev": stats.mean_lprev, "lafter": stats.mean_lafter,
                        "lprev_first_quarter": float(np.mean(rec.lprev[:q])),
                        "lprev_last_quarter": float(np.mean(rec.lprev[-q:]))}
        verdicts = {c: [v.ok for v in run.judge(c)] for c in ("figure5_ordering", "figure5_improvement",
                                                                  "figure5_adaptation")}
    d = helps.details
    share = None
    if d.get("loss_no_inner_step") is not None and d["loss_gate0"] != d["loss_learned"]:
        share = (d["loss_no_inner_step"] - d["loss_learned"]) / (d["loss_gate0"] - d["loss_learned"])
    return {"ttt_helps_passed": helps.ok, "loss_learned": d["loss_learned"], "loss_gate0": d["loss_gate0"],
            "loss_no_inner_step": d.get("loss_no_inner_step"), "gain": d["relative_decrease"],
            "gain_from_updates": d.get("relative_decrease_from_inner_steps"), "share_from_updates": share,
            "standard_error_rel": d.get("standard_error_rel"), "figure5": f5, "verdicts": verdicts}


def run_one(name: str, work: Path, corpus: DialogueCorpus, log) -> dict:
    window, pre_steps, fields = RUNS[name]
    t0 = time.perf_counter()
    base_dir, base_info = base_for(work, window, pre_steps, corpus, log)
    recipe = FinetuneRecipe(**{"seed": 0, "init_seed": 1000, "data": DATA, **fields})
    ckpt = work / name
    if (ckpt / "config.json").is_file():  # trained by an earlier call (whose measurement failed): measure it
        info = json.loads((ckpt / "config.json").read_text())["training"]
        return _row(name, base_info, info, ckpt, t0)
    base = load_checkpoint(base_dir).model
    model = insert_ttt(base, default_ttt_config(base.config.width, **recipe.ttt), recipe.layers, recipe.alpha_init,
                       recipe.init_seed, init=TTTInit.from_dict(recipe.init))
    info = finetune_ttt(model, corpus, recipe, log=log)
    round_to_bf16_(model)
    info["val_loss"] = evaluate(model, validation_windows(corpus, data=DATA))
    init = TTTInit.from_dict(recipe.init).to_dict()
    save_ttt(None, ckpt, base_dir, recipe.init_seed, tensors=ttt_tensors(model), decoder_config=model.config,
             extra={"name": name, "recipe": asdict(recipe), "training": info, "corpus_split_seed": 0,
                    "corpus_data": DATA, **({"ttt_init": init} if init else {})})
    return _row(name, base_info, info, ckpt, t0)


def _row(name: str, base_info: dict, info: dict, ckpt: Path, t0: float) -> dict:
    window, pre_steps, fields = RUNS[name]
    t1 = time.perf_counter()
    measured = measure(ckpt)
    measured["where_gain_lands"] = where_gain_lands(ckpt)
    return {"run": name, "window": window, "pretrain_steps": pre_steps, "finetune": fields,
            "base_val_loss": base_info.get("val_loss_bf16"), "base_seconds": base_info["seconds"],
            "finetune_train_loss": info["train_loss"], "finetune_val_loss": info["val_loss"],
            "finetune_seconds": info["seconds"], "measure_seconds": time.perf_counter() - t1, **measured,
            "torch_threads": torch.get_num_threads(), "total_seconds": time.perf_counter() - t0}


VALUE_CATEGORIES = ((1, "recalled values"), (2, "stated values"), (0, "other bytes"))


def value_byte_labels(rows: int, length: int, offset: int) -> np.ndarray:
    """[rows, length] labels of the adapter's default held-out input (the validation sessions read back to
    back, cut into rows of ``length``), each row's shifted by ``offset`` bytes (1: the bytes its positions
    predict): 1 on the bytes of a recalled fact value, 2 on those of a stated one, 0 elsewhere."""
    corpus = DialogueCorpus.load(seed=0)
    tok = ByteTokenizer()
    labels: list[int] = []
    for session in corpus.language("val").sessions(FACT_SESSIONS["val"], "val", 0):
        for i, (user, reply) in enumerate(session.pairs):
            lab = [0] * len(tok.encode_pair(user, reply))
            for m in session.mentions:
                if m.pair == i and m.role in ("recall", "intro"):
                    at = (2 + len(user.encode()) + reply.encode().index(m.value.encode()) if m.role == "recall"
                          else 1 + user.encode().index(m.value.encode()))
                    lab[at:at + len(m.value.encode())] = [1 if m.role == "recall" else 2] * len(m.value.encode())
            labels += lab
    return np.stack([labels[i * length + offset: i * length + length + offset] for i in range(rows)])


def where_gain_lands(ckpt: Path, rows: int = 8, length: int = 256) -> dict:
    """Mean loss at gate 0, the learned gate and with the inner steps off, on the bytes of recalled values,
    of stated values and on all other bytes of the adapter's default held-out rows (validation sessions)."""
    adapter = ReferenceAdapter(ckpt)
    inputs = adapter.default_teacher_forced_inputs(length=length, rows=rows)
    cats = value_byte_labels(inputs.shape[0], length, offset=1)
    losses = {}
    with torch.no_grad():
        losses["learned"] = streamed_loss(adapter.model, inputs, 16).double().numpy()
        with adapter.set_gate(0.0):
            losses["gate0"] = streamed_loss(adapter.model, inputs, 16).double().numpy()
        with adapter.inner_steps_off():
            losses["steps_off"] = streamed_loss(adapter.model, inputs, 16).double().numpy()
    out = {}
    for k, name in VALUE_CATEGORIES:
        m = cats == k
        out[name] = {"share_of_bytes": float(m.mean()), **{g: float(v[m].mean()) for g, v in losses.items()}}
    return out


def step_selectivity(ckpt: Path, rows: int = 8, length: int = 256) -> dict:
    """What the per-token step-size projection writes: the mean of sigmoid(theta_lr . x_t + b) (the step
    over its maximum base_lr / head_dim) on the bytes of stated values, recalled values and all other bytes
    of the default held-out input, and stated over other (1 = no choice, as after resetting the projection,
    whose draw gives ~0.5 everywhere)."""
    adapter = ReferenceAdapter(ckpt)
    inputs = adapter.default_teacher_forced_inputs(length=length, rows=rows)
    cats = value_byte_labels(inputs.shape[0], length, offset=0)  # the write at t stores x_t as the value
    layers = [m for m in adapter.model.modules() if isinstance(m, TTTLayer)]
    steps: dict[int, list[torch.Tensor]] = {id(m): [] for m in layers}
    project = TTTLayer.project

    def recording(self: TTTLayer, *args, **kwargs):
        out = project(self, *args, **kwargs)
        steps[id(self)].append(out["sigma"].detach().double() * self.config.head_dim / self.config.base_lr)
        return out

    TTTLayer.project = recording
    try:
        with torch.no_grad():
            streamed_loss(adapter.model, inputs, 16)
    finally:
        TTTLayer.project = project
    result = {}
    for i, layer in enumerate(layers):
        s = torch.cat(steps[id(layer)], dim=-1).numpy()  # [rows, heads, length]
        means = {name: float(s.transpose(1, 0, 2)[:, cats == k].mean()) for k, name in VALUE_CATEGORIES}
        result[f"ttt layer {i}"] = {**means, "stated over other": means["stated values"] / means["other bytes"]}
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}%"


def table(results: Path) -> str:
    """The results as the markdown table of docs/health-checks.md (one row per recorded run)."""
    lines = ["| data | run | window | base steps | fine-tune | base val loss | TTT val loss | gain (learned vs gate 0) "
             "| +- SE | from the updates | share | l0 / lprev / lafter | lprev 1st / last quarter | ttt_helps "
             "| fine-tune s |", "|" + "---|" * 15]
    for line in results.read_text().splitlines():
        r = json.loads(line)
        f = next(iter(r["figure5"].values()))
        ft = ", ".join(f"{k}={v}" for k, v in r["finetune"].items() if k not in ("ttt", "init"))
        ft += "".join(f", {k}={v}" for part in ("ttt", "init") for k, v in r["finetune"].get(part, {}).items())
        share = "-" if r["share_from_updates"] is None else f"{100 * r['share_from_updates']:.0f}%"
        lines.append(f"| {r.get('data', '')} | {r['run']} | {r['window']} | {r['pretrain_steps']} | {ft} | {r['base_val_loss']:.4f} | "
                     f"{r['finetune_val_loss']:.4f} | {_pct(r['gain'])} | {100 * r['standard_error_rel']:.2f}% | "
                     f"{_pct(r['gain_from_updates'])} | {share} | {f['l0']:.3f} / {f['lprev']:.3f} / {f['lafter']:.3f} | "
                     f"{f['lprev_first_quarter']:.3f} / {f['lprev_last_quarter']:.3f} | "
                     f"{'pass' if r['ttt_helps_passed'] else 'FAIL'} | {r['finetune_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help=f"recipes to run, of {sorted(RUNS)}")
    ap.add_argument("--table", action="store_true", help="print the results as a markdown table and exit")
    ap.add_argument("--where", type=Path, help="print where the gain of this checkpoint lands (JSON) and exit")
    ap.add_argument("--step-selectivity", type=Path, metavar="CKPT",
                    help="print the per-token step size on value bytes and on the rest of the default input (JSON) and exit")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ttt25"))
    ap.add_argument("--results", type=Path, default=Path("/tmp/ttt25/results.jsonl"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-label", default="", help="a label of the language version, stored in each row as 'data'")
    args = ap.parse_args()
    if args.table:
        print(table(args.results))
        return
    if args.where:
        torch.set_num_threads(args.threads)
        print(json.dumps(where_gain_lands(args.where), indent=1))
        return
    if args.step_selectivity:
        torch.set_num_threads(args.threads)
        print(json.dumps(step_selectivity(args.step_selectivity), indent=1))
        return
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        ap.error(f"unknown runs {unknown}; known: {sorted(RUNS)}")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = DialogueCorpus.load(seed=0)
    for name in args.runs:
        row = {"data": args.data_label, **run_one(name, args.work, corpus, lambda m: print(m, flush=True))}
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
