"""Cost of the inner step-size probe relative to the teacher-forced pass it rides on.

Target (issue 13, item 2): the line search (8 multipliers, ``step_probe.DEFAULT_MULTIPLIERS``)
adds at most 25% to the teacher-forced pass the health run already makes (the one with the
Figure-5 probe attached). Two measurements, each ratio within this one run:

- ``model``: the health run's own pass, ``adapter.teacher_forced`` on the adapter's default
  inputs, with ``Figure5Probe()`` vs ``Figure5Probe(step_multipliers=...)`` (default: the zoo's
  healthy-seed0, the embedded reference model; ``--ckpt`` for another checkpoint);
- ``layer``: one TTT-MLP layer alone (4 heads of 64, hidden 256, T = 2048), the worst case,
  where nothing but the inner loop costs time; b in {16, 64}, causal and not.

Times are the best of ``--repeats`` interleaved rounds (load from other processes hits both
sides of a ratio alike). ``--clock process`` times CPU seconds of this process instead of wall
time: on a machine shared with other work, with ``--threads 1``, it is the steadier measure.

    python benchmarks/bench_step_probe.py [--repeats 7] [--threads 2] [--clock wall|process] [--device cpu|cuda] [--ckpt PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from ttt_checks.ttt import Figure5Probe, TTTConfig, TTTLayer
from ttt_checks.ttt.step_probe import DEFAULT_MULTIPLIERS

REPO = Path(__file__).resolve().parents[1]


CLOCK: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCK["wall"]


def best_times(fns: list[Callable[[], None]], repeats: int, device: str) -> list[float]:
    """Minimum time of each function over interleaved rounds (after one warm-up each)."""
    def timed(fn: Callable[[], None]) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return clock() - t0

    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], timed(fn))
    return best


def bench_model(ckpt: Path, repeats: int, device: str) -> dict:
    from ttt_checks.models.registry import resolve

    adapter = resolve(ckpt, device=device)
    inputs = adapter.load_inputs().teacher_forced

    def figure5_only() -> None:
        adapter.teacher_forced(inputs, probe=Figure5Probe())

    def with_step_probe() -> None:
        probe = Figure5Probe(step_multipliers=DEFAULT_MULTIPLIERS)
        adapter.teacher_forced(inputs, probe=probe)
        for name in probe.layers:
            probe.step_record(name)

    base, probed = best_times([figure5_only, with_step_probe], repeats, device)
    return {"what": "model", "ckpt": str(ckpt), "teacher_forced_s": base, "with_step_probe_s": probed,
            "step_probe_cost": probed / base - 1.0}


def bench_layer(b: int, causal: bool, repeats: int, device: str, T: int = 2048) -> dict:
    config = TTTConfig(
        width=256, num_heads=4, head_dim=64, inner="mlp", mlp_layers=2, mini_batch_size=b,
        base_lr=1.0, causal=causal, eta_weighting="token_index" if causal else "uniform",
        target="plain" if causal else "layernorm", l2_normalize_qk=not causal, output_projection=False,
    )
    torch.manual_seed(0)
    layer = TTTLayer(config).to(device)
    x = torch.randn(1, T, config.width, device=device)

    def run(grid) -> Callable[[], None]:
        def fn() -> None:
            probe = Figure5Probe(step_multipliers=grid)
            with probe.attach({"ttt": layer}), torch.no_grad():
                layer(x)
            probe.record("ttt")
            if grid:
                probe.step_record("ttt")
        return fn

    base, probed = best_times([run(None), run(DEFAULT_MULTIPLIERS)], repeats, device)
    return {"what": "layer", "T": T, "mini_batch_size": b, "causal": causal, "capture_s": base,
            "with_step_probe_s": probed, "step_probe_cost": probed / base - 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCK))
    parser.add_argument("--ckpt", type=Path, default=REPO / "fixtures" / "zoo" / "healthy-seed0")
    parser.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    print(f"# machine: {platform.machine()} {platform.processor() or ''} threads={args.threads} device={args.device} clock={args.clock} "
          f"torch={torch.__version__}; multipliers {list(DEFAULT_MULTIPLIERS)}")
    results = [bench_model(args.ckpt, args.repeats, args.device)]
    results += [bench_layer(b, causal, args.repeats, args.device) for causal in (True, False) for b in (16, 64)]
    for r in results:
        if args.json:
            print(json.dumps(r))
        elif r["what"] == "model":
            print(f"model {r['ckpt']}: teacher-forced pass {r['teacher_forced_s']:.4f} s, with the step probe "
                  f"{r['with_step_probe_s']:.4f} s: +{r['step_probe_cost']:.1%} (target <= 25%)")
        else:
            print(f"layer b={r['mini_batch_size']:3d} causal={str(r['causal']):5s}: capture {r['capture_s']:.4f} s, "
                  f"with the step probe {r['with_step_probe_s']:.4f} s: +{r['step_probe_cost']:.1%}")


if __name__ == "__main__":
    main()
