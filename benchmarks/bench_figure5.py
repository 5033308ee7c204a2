"""Figure-5 capture speed: against the naive per-token oracle, and against a forward without capture.

Targets (issue 2): capture >= 50x faster than the naive float64 oracle at T = 2048, 4 heads of
64, b = 16 and 64; capture overhead <= 1.5x the same TTT-layer forward without capture.
Every ratio printed is measured within this one run, on this machine.

    python benchmarks/bench_figure5.py [--T 2048] [--oracle-tokens 2048] [--repeats 5] [--device cpu|cuda]

``--device cuda`` times the layer forward with and without capture on the GPU (fp32, synchronised
before each clock read), at b = 16 and 64; the oracle (a float64 per-token Python loop, the
reference the capture must beat) always runs on CPU, so ``speedup_vs_oracle`` there compares a GPU
capture with the CPU oracle and the output says so. The overhead target (<= 1.5x) is the ratio
that matters on GPU.

``--oracle-tokens`` times the oracle on a prefix of whole mini-batches when the full sequence
would take too long; its per-token cost is constant (each mini-batch costs the same), so the
full-length time is the prefix time scaled by T / prefix, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ttt_checks.ttt import Figure5Probe, TTTConfig, TTTLayer
from ttt_checks.ttt.oracle import oracle_inner


def best_times(fns, repeats: int, device: torch.device = torch.device("cpu")) -> list[float]:
    """Minimum wall time of each function, measured in interleaved rounds so that load from
    other processes hits both sides of a ratio alike. On CUDA the device is synchronised before
    each clock read, so a time covers the kernels, not only their launch."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns:
        fn()  # warm-up (and, on CUDA, kernel selection)
    sync()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def bench(T: int, b: int, oracle_tokens: int, repeats: int, causal: bool, device: torch.device = torch.device("cpu")) -> dict:
    config = TTTConfig(
        width=256, num_heads=4, head_dim=64, inner="mlp", mlp_layers=2, mini_batch_size=b,
        base_lr=1.0, causal=causal, eta_weighting="token_index" if causal else "uniform",
        target="plain" if causal else "layernorm", l2_normalize_qk=not causal, output_projection=False,
    )
    torch.manual_seed(0)
    layer = TTTLayer(config)
    x = torch.randn(1, T, config.width)
    cpu_layer, cpu_x = layer, x  # the oracle's inputs (CPU, float64 inside)
    if device.type != "cpu":
        layer, x = TTTLayer(config).to(device), x.to(device)
        layer.load_state_dict(cpu_layer.state_dict())

    def forward_plain() -> None:
        with torch.no_grad():
            layer(x)

    def forward_capture() -> None:
        probe = Figure5Probe()
        with probe.attach({"ttt": layer}), torch.no_grad():
            layer(x)
        probe.record("ttt")

    t_plain, t_capture = best_times([forward_plain, forward_capture], repeats, device)

    prefix = min(T, max(b, (oracle_tokens // b) * b))
    with torch.no_grad():
        rows = cpu_layer.project(cpu_x[:, :prefix], torch.arange(prefix))
    weights = [w.detach() for w in cpu_layer.weights]
    biases = [v.detach() for v in cpu_layer.biases]
    t0 = time.perf_counter()
    oracle_inner(rows["xq"], rows["xk"], rows["target"], rows["sigma"], weights, biases,
                 cpu_layer.ttt_norm_weight.detach(), cpu_layer.ttt_norm_bias.detach(), config)
    t_oracle = (time.perf_counter() - t0) * T / prefix
    return {
        "T": T, "mini_batch_size": b, "causal": causal, "heads": 4, "head_dim": 64, "device": str(device),
        "oracle_device": "cpu",
        "forward_s": t_plain, "capture_s": t_capture, "oracle_s": t_oracle,
        "oracle_tokens_timed": prefix,
        "speedup_vs_oracle": t_oracle / t_capture,
        "capture_overhead": t_capture / t_plain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=2048)
    parser.add_argument("--oracle-tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object per configuration")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where the layer runs (the oracle runs on CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is visible")
    gpu = f" device={torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"# machine: {platform.machine()} {platform.processor() or ''} threads={args.threads} "
          f"torch={torch.__version__}{gpu}" + ("  (speedup_vs_oracle: GPU capture vs the CPU oracle)" if gpu else ""))
    print("# b   causal  forward_s  capture_s  oracle_s  speedup_vs_oracle(>=50)  capture_overhead(<=1.5)")
    for causal in (True, False):
        for b in (16, 64):
            r = bench(args.T, b, args.oracle_tokens, args.repeats, causal, device)
            if args.json:
                print(json.dumps(r))
            else:
                note = "" if r["oracle_tokens_timed"] == args.T else f"  (oracle timed on {r['oracle_tokens_timed']} tokens, scaled)"
                print(f"{b:4d}  {str(causal):6s}  {r['forward_s']:9.4f}  {r['capture_s']:9.4f}  {r['oracle_s']:8.2f}"
                      f"  {r['speedup_vs_oracle']:10.1f}x  {r['capture_overhead']:10.2f}x{note}")


if __name__ == "__main__":
    main()
