"""Gating sweep: every gate in ONE batched generation vs one generation per gate.

Target (issue 5): batched >= 3x faster than sequential for 5 gates on CPU with the models at
hand. Measured on the embedded default (the reference model), tokens only (speech synthesis
and Whisper cost the same on both paths). Prints the ratio measured in this one run, and
checks the two paths give identical tokens.

    python benchmarks/bench_sweep.py [--repeats 3] [--ckpt fixtures/zoo/healthy-seed0]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ttt_checks.models.registry import resolve

GATES = (0.0, "learned", 0.3, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="reference checkpoint (default: the embedded default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = resolve(args.ckpt)
    prompts = adapter.load_inputs().prompts
    print(f"# machine: {platform.machine()} threads={args.threads} torch={torch.__version__} "
          f"checkpoint={adapter.checkpoint} prompts={len(prompts)} gates={list(GATES)}")

    def run(batched: bool):
        return [adapter.generate(p, GATES, batched=batched, speak=False) for p in prompts]

    best = {True: float("inf"), False: float("inf")}
    outputs = {}
    run(True)  # warm-up
    for _ in range(args.repeats):
        for batched in (True, False):
            t0 = time.perf_counter()
            outputs[batched] = run(batched)
            best[batched] = min(best[batched], time.perf_counter() - t0)
    same = all(a.tokens == b.tokens for ga, gb in zip(outputs[True], outputs[False]) for a, b in zip(ga, gb))
    print(f"batched {best[True]:.3f} s  sequential {best[False]:.3f} s  "
          f"speed-up {best[False] / best[True]:.2f}x (target >= 3x)  identical tokens: {same}")


if __name__ == "__main__":
    main()
