#!/usr/bin/env python3
"""`make test-gpu`: the whole GPU check of ttt-checks, one command, a JSON summary at the end.

On a CUDA node (designed to finish in under 8 minutes on one H100/H200-class GPU); step 3 runs
first, so a run stopped by a time limit still has the 7B numbers (the JSON is saved after each step):

1. ``cuda_tests``: ``pytest tests/test_cuda.py --require-gpu`` (reference model and tiny Moshi on
   cuda: health suite, Figure-5 cuda vs cpu in fp32, greedy sweep tokens, ``-n 2`` pinning).
2. ``tiny_moshi_health``: a tiny Moshi with trained TTT layers (tests/moshi_fixtures.py, 300 outer
   steps on CPU) saved in the moshi-finetune layout, then ``pytest -m gpu tests_gpu`` on it with
   ``--device cuda`` (bf16, as users run it) and ``--device cpu`` (fp32): every check must give
   the same outcome; ``not_passing`` lists the checks expected to pass (as on CPU in
   tests/test_moshi_adapter.py) that did not.
3. A 7B-shaped Moshi: moshi's own 7B LM config with random bf16 weights, Mimi with its real
   config and random weights, TTT injected in blocks 29-31 with the user's TTT config (2-layer
   TTT-MLP, mini-batch 64, base_lr 1, carried state, attention context 3000). Phases:
   ``figure5_pass`` (teacher-forced, 3000 frames, Figure-5 capture on every TTT layer),
   ``gate0_pass`` (the same at gate 0, no capture), ``streamed_pass`` (frame by frame, the TTT
   state must be carried past the first mini-batch), ``sweep`` (5 gates batched, 100 frames, LMGen
   + Mimi). Per phase: wall time, ``torch.cuda.max_memory_allocated`` and the estimate of
   ``ttt_checks.models.moshi.memory`` (docs/moshi.md), their ratio.
4. ``bench_figure5``: benchmarks/bench_figure5.py --device cuda (capture overhead at b = 16, 64).

Generation and streamed passes run with moshi's CUDA graphs off (``no_cuda_graph()``, see
docs/moshi.md "CUDA graphs"). The summary is printed as JSON, written to ``--json``, and a
results section (GPU name, per-phase table) is appended to ``--results`` (benchmarks/RESULTS.md).

On a machine without CUDA it refuses (exit 2) with the reason, unless ``--device cpu`` is given
with ``--shape tiny``: the 7B phases then run on a tiny shape on CPU, which is how the CPU test
suite exercises this script (tests/test_cuda_gpu_check.py).

On a bare GPU machine without the project's venv (only torch): carry wheels of moshi==0.2.13,
sphn==0.2.1, chatterbot-corpus==1.3.3, soundfile==0.13.1 (WAV I/O, libsndfile inside; it needs a cffi
wheel for the machine's Python) and junitparser==5.0.3 (ttt_checks.report.junit reads the JUnit with it)
(``pip download --no-deps``), install them with ``pip install --no-deps --target /tmp/site``, then
``PYTHONPATH=/tmp/site:$PWD NO_TORCH_COMPILE=1 HF_HUB_OFFLINE=1 python3
scripts/gpu_check.py --json $OUT/gpu_check.json --results $OUT/RESULTS-gpu.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported (moshi compiles lazily otherwise)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

# The checks that pass on the trained tiny Moshi on CPU (tests/test_moshi_adapter.py,
# test_health_suite_on_the_healthy_tiny_checkpoint), reported when one does not pass on cuda.
TINY_HEALTH_PASSING = (
    "test_checkpoint_has_every_ttt_key", "test_checkpoint_tensors_are_finite",
    "test_figure5_data_collected_for_every_ttt_layer", "test_inner_losses_are_finite",
    "test_inner_losses_are_bounded", "test_inner_losses_are_ordered_l0_lprev_lafter",
    "test_each_inner_step_improves_the_loss", "test_inner_model_adapts_over_the_context",
    "test_gates_have_not_collapsed", "test_ttt_does_not_hurt_the_outer_loss",
    "test_ttt_state_persists_across_streaming_calls",
)
GATES: tuple[Any, ...] = (0.0, "learned", 0.3, 0.5, 1.0)


@dataclass(frozen=True)
class Shape:
    """A model shape and the lengths of each phase."""

    name: str
    ttt_layers: tuple[int, ...]
    mini_batch_size: int
    frames: int  # teacher-forced passes
    stream_frames: int  # streamed persistence pass
    sweep_frames: int  # batched gating sweep


def lm_kwargs_for(shape: str) -> dict[str, Any]:
    from moshi.models import loaders

    kwargs = dict(loaders._lm_kwargs)
    if shape == "tiny":  # tests/moshi_fixtures.py's LM with moshi's 7B text card and Mimi's codebooks
        kwargs.update(dim=64, num_heads=4, num_layers=4, context=200, depformer_dim=32, depformer_dim_feedforward=64,
                      depformer_num_heads=2, depformer_num_layers=1)
    return kwargs


def mimi_config_for(shape: str) -> dict[str, Any] | None:
    """None: Mimi's real config (moshi.models.loaders._mimi_config)."""
    if shape != "tiny":
        return None
    from moshi.models import loaders

    cfg = json.loads(json.dumps(loaders._mimi_config))
    cfg["seanet"].update(dimension=32, n_filters=4)
    cfg["quantizer"].update(dimension=16, input_dimension=32, output_dimension=32)
    cfg["transformer"].update(d_model=32, num_heads=2, num_layers=1, dim_feedforward=64, input_dimension=32,
                              output_dimensions=[32])
    return cfg


SHAPES = {
    "7b": Shape("7b", (29, 30, 31), 64, 3000, 300, 100),
    "tiny": Shape("tiny", (2, 3), 8, 120, 40, 12),
}


def user_ttt_section(mini_batch_size: int, mlp_layers: int) -> dict[str, Any]:
    """The user's TTT run (docs/moshi-checkpoints.md): TTT-MLP, base_lr 1, carried state, alpha 0.1."""
    return {"enable": True, "mini_batch_size": mini_batch_size, "base_lr": 1.0, "persistent_states": True,
            "initial_gating_alpha": 0.1, "ttt_mlp_layers": mlp_layers, "ttt_mlp_expansion_factor": 4.0,
            "ttt_mlp_hidden_dims": None, "use_rope": False}


class _PieceTokenizer:
    """Text pieces for random-weight generation (no tokenizer file for a random 7B): '<id>'."""

    def id_to_piece(self, token: int) -> str:
        return f"<{token}>"


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype, mlp_layers: int):
    """(adapter, memory model) of a random-weight Moshi of ``shape`` with TTT injected."""
    from moshi.models import loaders

    from ttt_checks.models.moshi.adapter import MoshiAdapter
    from ttt_checks.models.moshi.inject import inject_ttt
    from ttt_checks.models.moshi.memory import MoshiMemoryModel, require_fits
    from ttt_checks.models.moshi.model import LoadedMoshi, LoadReport, ttt_config_for

    kwargs = lm_kwargs_for(shape.name)
    ttt = user_ttt_section(shape.mini_batch_size, mlp_layers)
    configs = {i: ttt_config_for(int(kwargs["dim"]), int(kwargs["num_heads"]), "mlp", mlp_layers, ttt)
               for i in shape.ttt_layers}
    memory = MoshiMemoryModel(kwargs, configs, dtype_bytes=torch.finfo(dtype).bits // 8, mimi_config=mimi_config_for(shape.name))
    require_fits(memory.load(), device, resident=0, fix="a GPU with more free memory, or --shape tiny")
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=device, dtype=dtype, lm_kwargs_overrides={"lora": False})
    hybrids = inject_ttt(lm, list(shape.ttt_layers), configs, ttt["initial_gating_alpha"])
    lm.eval()
    mimi = loaders.get_mimi(None, mimi_config_for(shape.name), device=device,
                            num_codebooks=max(int(kwargs["dep_q"]), int(kwargs["n_q"]) - int(kwargs["dep_q"])))
    for module in mimi.modules():  # a fresh Mimi has all-zero codebooks (k-means init is a training step)
        if hasattr(module, "embedding_sum"):
            module.embedding_sum.normal_()
            module._initialized.fill_(1.0)
    mimi.eval()
    loaded = LoadedMoshi(lm=lm, mimi=mimi, tokenizer=_PieceTokenizer(), info=None, hybrids=hybrids, keys={},
                         tensors={}, report=LoadReport(), dtype=dtype, device=device)
    adapter = MoshiAdapter.from_model(loaded, memory, carry_state=True, sampling=False, reply_seconds=0.0)
    return adapter, memory


def random_codes(adapter, frames: int, seed: int = 1) -> torch.Tensor:
    """[1, 1 + n_q, T]: padding text, random audio codes in both streams (a random model has no speech)."""
    lm = adapter.lm
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randint(0, lm.card, (1, lm.n_q, frames), generator=gen)
    text = torch.full((1, 1, frames), lm.text_padding_token_id, dtype=torch.long)
    return torch.cat([text, audio], dim=1).to(adapter.device)


def measure(device: torch.device, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn``; wall seconds and (CUDA) the peak bytes PyTorch allocated during it."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize(device)
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    out["max_memory_allocated"] = int(torch.cuda.max_memory_allocated(device)) if cuda else None
    return out


def model_phases(shape: Shape, device: torch.device, dtype: torch.dtype, mlp_layers: int) -> dict[str, Any]:
    """The four phases on the random-weight model; every phase's result is kept even when one fails."""
    from ttt_checks.models.moshi.adapter import graphs_disabled
    from ttt_checks.ttt import Figure5Probe

    phases: dict[str, Any] = {}
    t0 = time.perf_counter()
    adapter, memory = build_model(shape, device, dtype, mlp_layers)
    phases["build"] = {"wall_s": round(time.perf_counter() - t0, 3), "ok": True,
                       "max_memory_allocated": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
                       "estimate_bytes": memory.load().total, "lm_params": memory.lm_params, "ttt_params": memory.ttt_params}
    codes = random_codes(adapter, shape.frames)
    names = [f"transformer.layers.{i}" for i in shape.ttt_layers]

    def figure5() -> dict[str, Any]:
        probe = Figure5Probe()
        result = adapter.teacher_forced_codes(codes, probe=probe)
        layers = {}
        for name in names:
            rec = probe.record(name)  # raises when a layer collected nothing: never silently empty
            layers[name] = {k: float(getattr(rec, k)[rec.counts > 0].mean()) for k in ("l0", "lprev", "lafter")}
            layers[name]["positions"] = int((rec.counts > 0).sum())
        ok = result.outputs_finite and all(v["positions"] == shape.frames for v in layers.values())
        return {"ok": bool(ok), "frames": shape.frames, "finite": result.outputs_finite, "layers": layers,
                "mean_outer_loss": float(result.outer_loss.mean())}

    def gate0() -> dict[str, Any]:
        with adapter.set_gate(0.0):
            result = adapter.teacher_forced_codes(codes)
        return {"ok": bool(result.outputs_finite), "frames": shape.frames, "mean_outer_loss": float(result.outer_loss.mean())}

    def streamed() -> dict[str, Any]:
        """Frame by frame in moshi streaming mode; the inner weights must have moved from W_0."""
        from moshi.models.lm import _delay_sequence

        lm = adapter.lm
        part = codes[..., : shape.stream_frames]
        initial = lm._get_initial_token().expand(1, -1, -1)
        seq = torch.cat([initial, _delay_sequence(lm.delays, part, initial)], dim=2)[:, :, :-1]
        moved = {}
        with torch.no_grad(), graphs_disabled(), lm.streaming(1):
            for t in range(seq.shape[-1]):
                lm.forward_text(seq[:, :, t: t + 1])
            for i, h in adapter.loaded.hybrids.items():
                st = h.ttt.state
                moved[f"transformer.layers.{i}"] = bool(st is not None and (st.params.weights[0] - h.ttt.weights[0].to(st.params.weights[0].dtype)[None]).abs().max() > 0)
        return {"ok": all(moved.values()), "frames": shape.stream_frames, "state_carried": moved}

    def sweep() -> dict[str, Any]:
        t = torch.arange(shape.sweep_frames * 1920) / 24000.0
        prompt = (0.3 * torch.sin(2 * torch.pi * 220.0 * t)).numpy()
        gens = adapter.generate(prompt, list(GATES))
        frames = [len(g.tokens) for g in gens]
        finite = all(bool(g.extra["finite"]) for g in gens)
        return {"ok": finite and all(f == shape.sweep_frames for f in frames), "gates": [str(g) for g in GATES],
                "frames": frames, "finite_audio": finite}

    estimates = {"figure5_pass": memory.teacher_forced(shape.frames, 1, figure5=True),
                 "gate0_pass": memory.teacher_forced(shape.frames, 1, figure5=False),
                 "streamed_pass": memory.streaming(1), "sweep": memory.streaming(len(GATES))}
    for name, fn in (("figure5_pass", figure5), ("gate0_pass", gate0), ("streamed_pass", streamed), ("sweep", sweep)):
        try:
            with torch.no_grad():
                phases[name] = measure(device, fn)
        except Exception as exc:  # the summary says which phase failed and why; the others still run
            phases[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        est = estimates[name]
        phases[name]["estimate_bytes"] = est.total
        phases[name]["estimate"] = est.describe()
        peak = phases[name].get("max_memory_allocated")
        phases[name]["measured_over_estimate"] = round(peak / est.total, 3) if peak else None
        print(f"[gpu-check] {name}: {json.dumps({k: v for k, v in phases[name].items() if k != 'estimate'})}", flush=True)
    return phases


def _plugin_args() -> list[str]:
    """``-p ttt_checks.pytest_plugin`` when the package is not installed (a bare GPU machine)."""
    from importlib.metadata import entry_points

    registered = any(ep.value.startswith("ttt_checks") for ep in entry_points(group="pytest11"))
    return [] if registered else ["-p", "ttt_checks.pytest_plugin"]


def run_pytest(args: list[str], xml: Path, timeout: int) -> dict[str, Any]:
    """A pytest subprocess; outcomes per test from its JUnit XML."""
    cmd = [sys.executable, "-m", "pytest", *args, *_plugin_args(), "-p", "no:cacheprovider", f"--junitxml={xml}", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s", "cmd": " ".join(cmd)}
    from ttt_checks.report.junit import JUnitError, cases_by_name

    outcomes: dict[str, str] = {}  # test name -> passed / failed / error / skipped
    unreadable: dict[str, str] = {}
    if xml.is_file():
        try:
            outcomes = {name: case.outcome for name, case in cases_by_name(xml).items()}
        except JUnitError as exc:  # no outcomes, so not ok; the summary says why
            unreadable = {"error": str(exc)}
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1), "outcomes": outcomes,
            "cmd": " ".join(cmd), "tail": (proc.stdout + proc.stderr)[-1500:], **unreadable}


def cuda_tests(tmp: Path) -> dict[str, Any]:
    res = run_pytest(["tests/test_cuda.py", "--require-gpu", "-rs"], tmp / "cuda_tests.xml", timeout=300)
    res["ok"] = res.get("rc") == 0 and bool(res.get("outcomes"))
    return res


def bench_figure5(device: str) -> dict[str, Any]:
    """benchmarks/bench_figure5.py on the GPU: Figure-5 capture overhead of the TTT layer alone
    (b = 16 and 64, causal and not; target <= 1.5x). A measurement, reported, not judged."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_figure5.py"), "--device", device, "--json",
           "--oracle-tokens", "128", "--repeats", "5", "--threads", str(min(8, os.cpu_count() or 1))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timed out after 240 s"}
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {"ok": proc.returncode == 0 and len(rows) == 4, "wall_s": round(time.perf_counter() - t0, 1),
            "rows": [{k: r[k] for k in ("mini_batch_size", "causal", "forward_s", "capture_s", "capture_overhead")} for r in rows],
            **({} if proc.returncode == 0 else {"error": proc.stderr[-800:]})}


def tiny_moshi_health(tmp: Path, device: str) -> dict[str, Any]:
    """Train the tiny Moshi's TTT layers on CPU (as tests/test_moshi_adapter.py does), save it,
    run the health suite on ``device``."""
    import moshi_fixtures as mf

    from ttt_checks.models.moshi.adapter import MoshiAdapter
    from ttt_checks.models.moshi.model import export_ttt_tensors

    t0 = time.perf_counter()
    base = mf.build_base(tmp / "tiny_base")
    adapter = MoshiAdapter(mf.write_run(tmp / "tiny_untrained", base, {}, mf.training_config()), **base.options)
    mf.train_ttt(adapter, steps=300)
    tensors = export_ttt_tensors(adapter.loaded.hybrids, adapter.loaded.keys, 0.1)
    ckpt = mf.write_run(tmp / "tiny_healthy", base, tensors, mf.training_config())
    train_s = round(time.perf_counter() - t0, 1)
    for key, value in base.env.items():
        os.environ[key] = value
    res = run_pytest(["-m", "gpu", "tests_gpu", "--ckpt", str(ckpt), "--device", device,
                      "--report-dir", str(tmp / "tiny_report")], tmp / "tiny_health.xml", timeout=300)
    cpu = run_pytest(["-m", "gpu", "tests_gpu", "--ckpt", str(ckpt), "--device", "cpu",
                      "--report-dir", str(tmp / "tiny_report_cpu")], tmp / "tiny_health_cpu.xml", timeout=300)
    outcomes, cpu_outcomes = res.get("outcomes", {}), cpu.get("outcomes", {})
    differ = {k: (cpu_outcomes.get(k), outcomes.get(k)) for k in set(outcomes) | set(cpu_outcomes)
              if outcomes.get(k) != cpu_outcomes.get(k)}
    missing = [t for t in TINY_HEALTH_PASSING if outcomes.get(t) != "passed"]
    res.update(train_s=train_s, cpu_wall_s=cpu.get("wall_s"), differs_from_cpu=differ, not_passing=missing,
               ok=bool(outcomes) and not differ)
    return res


def results_section(summary: dict[str, Any]) -> str:
    """Markdown for benchmarks/RESULTS.md: one table of the model phases, plus the test outcomes."""
    lines = [f"\n## GPU check (`make test-gpu`, scripts/gpu_check.py), {summary['date']}\n",
             f"{summary['device_name']} ({summary['device']}), torch {summary['torch']}, shape `{summary['shape']}`"
             f" (TTT in blocks {', '.join(map(str, summary['ttt_layers']))}, mini-batch {summary['mini_batch_size']},"
             f" {summary['dtype']}), CUDA graphs off for generation and streamed passes (moshi `no_cuda_graph()`)."
             f" Peak = `torch.cuda.max_memory_allocated` during the phase; estimate = docs/moshi.md's model.\n",
             "| phase | ok | wall s | peak GiB | estimate GiB | peak / estimate |", "|---|---|---|---|---|---|"]
    for name, ph in summary["phases"].items():
        peak, est = ph.get("max_memory_allocated"), ph.get("estimate_bytes")
        ok = "yes" if ph.get("ok") else "NO: " + str(ph.get("error", "a check of the phase failed"))[:160].replace("|", "/")
        cells = [name, ok, ph.get("wall_s", "-"), f"{peak / 2**30:.2f}" if peak else "-", f"{est / 2**30:.2f}" if est else "-",
                 ph.get("measured_over_estimate") or "-"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for key in ("cuda_tests", "tiny_moshi_health"):
        if key in summary:
            r = summary[key]
            counts: dict[str, int] = {}
            for outcome in r.get("outcomes", {}).values():
                counts[outcome] = counts.get(outcome, 0) + 1
            lines.append(f"\n`{key}`: {'ok' if r.get('ok') else 'NOT ok'}, {counts or r.get('error', 'no outcomes')}, "
                         f"{r.get('wall_s', '-')} s" + (f"; not passing: {r['not_passing']}" if r.get("not_passing") else "")
                         + (f"; cuda vs cpu differ (cpu, cuda): {r['differs_from_cpu']}" if r.get("differs_from_cpu") else ""))
    if summary.get("bench_figure5", {}).get("rows"):
        lines += ["\nFigure-5 capture overhead of the TTT layer alone on this GPU (`bench_figure5.py --device cuda`, "
                  "T = 2048, 4 heads of 64, fp32; target <= 1.5x):\n", "| b | causal | forward_s | capture_s | overhead |",
                  "|---|---|---|---|---|"]
        for r in summary["bench_figure5"]["rows"]:
            lines.append(f"| {r['mini_batch_size']} | {r['causal']} | {r['forward_s']:.4f} | {r['capture_s']:.4f} | "
                         f"{r['capture_overhead']:.2f}x |")
    lines.append(f"\nTotal wall time {summary['wall_s']} s. Verdict: **{'all ok' if summary['ok'] else 'NOT all ok'}**.\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu only with --shape tiny)")
    parser.add_argument("--frames", type=int, default=None, help="teacher-forced frames (default: 3000 for 7b)")
    parser.add_argument("--mlp-layers", type=int, default=2, help="TTT-MLP depth (the user's runs: 2, 3, 5, 10)")
    parser.add_argument("--skip-tests", action="store_true", help="skip the CUDA tests and the tiny-Moshi health suite")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here (default reports/gpu-check-<time>.json)")
    parser.add_argument("--results", type=Path, default=None,
                        help="append the results section to this markdown file ('-' to skip; default on CUDA "
                             "benchmarks/RESULTS.md, on CPU none: a CPU run of the tiny shape is no GPU result)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "no CUDA GPU is visible: this check measures the suite on a GPU; run it on a "
                          "GPU node (or `--shape tiny --device cpu` to exercise the script on CPU)"}))
        return 2
    if device.type == "cpu" and args.shape != "tiny":
        print(json.dumps({"ok": False, "error": "--device cpu runs only --shape tiny (a 7B on CPU is not what this check measures)"}))
        return 2
    shape = SHAPES[args.shape]
    if args.frames:
        shape = Shape(shape.name, shape.ttt_layers, shape.mini_batch_size, args.frames, shape.stream_frames, shape.sweep_frames)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    summary: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}",
        "torch": torch.__version__, "shape": shape.name, "ttt_layers": list(shape.ttt_layers),
        "mini_batch_size": shape.mini_batch_size, "mlp_layers": args.mlp_layers, "dtype": str(dtype).replace("torch.", ""),
        "cuda_graphs": "off for generation and streamed passes (moshi no_cuda_graph())",
    }
    out = args.json or REPO / "reports" / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save_partial() -> None:  # a run killed at a time limit still leaves what it measured
        out.write_text(json.dumps({**summary, "complete": False, "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        # The 7B measurements first: if a time limit stops the run, the numbers that matter exist.
        try:
            summary["phases"] = model_phases(shape, device, dtype, args.mlp_layers)
        except Exception as exc:  # e.g. GPUMemoryError before loading: said, not a traceback
            summary["phases"] = {"build": {"ok": False, "error": f"{type(exc).__name__}: {exc}"}}
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save_partial()
        if not args.skip_tests and device.type == "cuda":
            summary["cuda_tests"] = cuda_tests(tmp)
            print(f"[gpu-check] cuda_tests ok={summary['cuda_tests']['ok']} ({summary['cuda_tests'].get('wall_s')} s)", flush=True)
            save_partial()
            summary["tiny_moshi_health"] = tiny_moshi_health(tmp, str(device))
            print(f"[gpu-check] tiny_moshi_health ok={summary['tiny_moshi_health']['ok']}", flush=True)
            save_partial()
            summary["bench_figure5"] = bench_figure5(str(device))
            print(f"[gpu-check] bench_figure5 {summary['bench_figure5']}", flush=True)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    parts = [summary["phases"][p].get("ok", False) for p in summary["phases"]]
    parts += [summary[k]["ok"] for k in ("cuda_tests", "tiny_moshi_health", "bench_figure5") if k in summary]
    summary["ok"] = bool(parts) and all(parts)
    summary["complete"] = True
    out.write_text(json.dumps(summary, indent=1))
    results = args.results if args.results is not None else (REPO / "benchmarks" / "RESULTS.md" if device.type == "cuda" else None)
    if results is not None and str(results) != "-":
        with open(results, "a") as fh:
            fh.write(results_section(summary))
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
