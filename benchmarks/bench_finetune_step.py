"""Issue 25: time of one TTT fine-tune step of the recall recipe, before and after the speed-ups, in one run.

On main the speed-ups (commits e911a77, bfc9050 of branch issue25-recipe) are not applied yet: they change
float rounding, and the zoo is rebuilt bit-for-bit-in-behaviour from today's inner loop (benchmarks/RESULTS.md),
so they land with issue 25's zoo rebuild; until then "before" and "after" run the same code here.

"after" is ``finetune_ttt`` as committed. "before" is the same call with the TTT inner loop of commit
184da59 patched back in (copied below, the training path only: no Figure-5 capture; the running target sum
that main's lmean added to the scan later is carried in both):

- ``_scan`` sliced every mini-batch out of the [B, H, n, d] rows (``narrow``): the backward of each slice
  fills a zero tensor of the full size, n/b fills and additions per step;
- ``gelu_tanh`` was autograd's own tanh-GELU, whose CPU backward is ~10x slower on the transposed gradients
  the dual form's backward hands it;
- the inner gradient multiplied by ``gelu_tanh_grad`` spelled out (~12 elementwise graph nodes);
- ``layer_norm`` and ``reconstruction_target`` used ``var`` / ``std`` over the 32-wide head dim.

Both run on the same model, data stream and optimizer code, interleaved round by round (``--rounds``
rounds of ``--steps`` steps each), so machine load hits both alike; each round's time is the loop time
``finetune_ttt`` reports (data sampling, forward, backward, clipping, AdamW; not the stream's set-up), in this process's CPU seconds unless ``--wall`` (on a shared machine wall time
mostly measures the other jobs).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_finetune_step.py [--base /tmp/ttt25/base-w32-s600]

``--pool N`` adds a third variant, "after" with ``FinetuneRecipe.window_pool = N`` (a recipe change: the frozen
prefix computed once per window of a pool of N, reported apart from the steps).

Without ``--base`` the frozen base is a fresh random one of the recall recipe's shape (the step's cost does
not depend on the weights' values). ``--batch`` / ``--seq-len`` time a recipe of another shape.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from ttt_checks.models.reference.checkpoint import load_checkpoint
from ttt_checks.models.reference.corpus import DialogueCorpus
from ttt_checks.models.reference.model import Decoder, DecoderConfig
from ttt_checks.models.reference.train import TTTInit, default_ttt_config, finetune_ttt, insert_ttt
from ttt_checks.models.reference.zoo import HEALTHY_RECALL, RECALL_WINDOW
from ttt_checks.ttt import inner
from ttt_checks.ttt.config import TTTConfig
from ttt_checks.ttt.layer import TTTLayer, TTTState, _take_rows, _target_sum


# -- the inner loop of commit 184da59 (training path), for the "before" timing -------------------------------

def _old_gelu_tanh(x: Tensor) -> Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def _old_layer_norm(z: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    mu = z.mean(dim=-1, keepdim=True)
    var = z.var(dim=-1, keepdim=True, unbiased=False)
    inv_std = torch.rsqrt(var + eps)
    x_hat = (z - mu) * inv_std
    return gamma[:, None, :] * x_hat + beta[:, None, :], x_hat, inv_std


def _old_reconstruction_target(xk: Tensor, xv: Tensor, config: TTTConfig, gamma: Tensor, beta: Tensor) -> Tensor:
    if not config.inner_residual:
        return xv
    diff = xv - xk
    if config.target == "plain":
        return diff
    centred = diff - diff.mean(dim=-1, keepdim=True)
    std = diff.std(dim=-1, keepdim=True, unbiased=True)
    return gamma[:, None, :] * (centred / (std + config.target_eps)) + beta[:, None, :]


def _old_inner_output_grads(acts: inner.InnerActivations, target: Tensor, params: inner.InnerParams,
                            gamma: Tensor) -> list[Tensor]:
    residual = acts.prediction - target
    g = inner.layer_norm_l2_grad(acts.x_hat, acts.inv_std, gamma, residual) if acts.x_hat is not None else residual
    grads = [g]
    for layer in range(len(params.weights) - 1, 0, -1):
        g = (g @ params.weights[layer].transpose(-1, -2)) * inner.gelu_tanh_grad(acts.preacts[layer - 1])
        grads.append(g)
    grads.reverse()
    return grads


def _old_scan(self: TTTLayer, rows: dict[str, Tensor], state: TTTState) -> tuple[Tensor, TTTState]:
    if self.figure5_sink is not None:
        raise RuntimeError("the 'before' scan of this benchmark is the training path only (no Figure-5 capture)")
    c = self.config
    b = c.mini_batch_size
    dtype = rows["xk"].dtype
    gamma, beta = self.ttt_norm_weight.to(dtype), self.ttt_norm_bias.to(dtype)
    n = rows["xk"].shape[-2]
    full = (n // b) * b
    # The running target sum for lmean (main after 184da59): carried exactly as the current scan does, so
    # "before" and "after" differ only by this branch's changes.
    target_sum = _target_sum(_target_sum(state.target_sum, rows["target"][..., :0, :]), rows["target"][..., :full, :])
    params = state.params
    outputs = []
    for lo in range(0, n, b):
        hi = min(lo + b, n)
        chunk = {k: _take_rows(v, lo, hi) for k, v in rows.items()}
        res = inner.minibatch_step(params, chunk["xq"], chunk["xk"], chunk["target"], chunk["sigma"], c, gamma, beta)
        outputs.append(res.output)
        if res.end_params is not None:
            params = res.end_params
    tail = None if full == n else {k: _take_rows(v, full, n) for k, v in rows.items()}
    new_state = TTTState(params=params, init_params=state.init_params, position=state.position + full, pending=tail,
                         target_sum=target_sum)
    z = torch.cat(outputs, dim=-2)
    if c.inner_residual:
        z = rows["xq"] + z
    return z, new_state


@contextlib.contextmanager
def before() -> Iterator[None]:
    """Patch the inner loop of commit 184da59 back in for the duration of the block."""
    saved = {name: getattr(inner, name) for name in ("gelu_tanh", "layer_norm", "reconstruction_target",
                                                       "inner_output_grads")}
    saved_scan = TTTLayer._scan
    inner.gelu_tanh, inner.layer_norm = _old_gelu_tanh, _old_layer_norm
    inner.reconstruction_target, inner.inner_output_grads = _old_reconstruction_target, _old_inner_output_grads
    TTTLayer._scan = _old_scan
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(inner, name, fn)
        TTTLayer._scan = saved_scan


# -- the benchmark ------------------------------------------------------------------------------------------

def recall_model(base_path: Path | None) -> Decoder:
    """The recall recipe's model at insertion: its base (given, or fresh of the same shape) plus TTT in block 3."""
    if base_path is not None:
        base = load_checkpoint(base_path).model
    else:
        torch.manual_seed(0)
        base = Decoder(DecoderConfig(attention_window=RECALL_WINDOW))
    r = HEALTHY_RECALL
    return insert_ttt(base, default_ttt_config(base.config.width, **r.ttt), r.layers, r.alpha_init, r.init_seed,
                      init=TTTInit.from_dict(r.init))


def breakdown(model: Decoder, corpus: DialogueCorpus, batch: int, seq_len: int, rounds: int,
              clock=time.perf_counter) -> dict[str, dict[str, float]]:
    """Median ms of the step's parts, before and after, interleaved: the frozen prefix (embedding, blocks
    0-2, block 3's attention: no graph, the base is frozen), the gated TTT block forward and backward, and
    the rest (block 3's feed-forward, the tied head, the cross-entropy, forward and backward)."""
    import torch.nn.functional as F

    from ttt_checks.models.reference.corpus import sample_windows
    from ttt_checks.models.reference.tokenizer import ByteTokenizer

    stream = corpus.tokens("train", ByteTokenizer(), seed=0, data=HEALTHY_RECALL.data)
    windows = sample_windows(stream, batch, seq_len, torch.Generator().manual_seed(0))
    tokens, targets = windows[:, :-1], windows[:, 1:]
    ttt_block = model.layers[3]
    for name, p in model.named_parameters():
        p.requires_grad_(".ttt." in name)

    def prefix() -> Tensor:
        x = model.embed(tokens)
        for block in model.layers[:3]:
            x = block(x)
        return x + ttt_block.attn(ttt_block.attn_norm(x))

    x3 = prefix().detach()

    def ttt() -> None:
        ttt_block.ttt(x3).sum().backward()

    x4 = x3.clone().requires_grad_(True)

    def rest() -> None:
        x = x4 + ttt_block.ffn(ttt_block.ffn_norm(x4))
        logits = F.linear(model.norm(x), model.embed.weight)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()

    parts = {"prefix": prefix, "ttt": ttt, "rest": rest}
    times: dict[str, dict[str, list[float]]] = {k: {p: [] for p in parts} for k in ("before", "after")}
    for _ in range(rounds):
        for variant in ("before", "after"):
            with before() if variant == "before" else contextlib.nullcontext():
                for part, fn in parts.items():
                    fn()  # warm
                    t0 = clock()
                    fn()
                    times[variant][part].append(1e3 * (clock() - t0))
    return {v: {p: statistics.median(ts) for p, ts in d.items()} for v, d in times.items()}


class _CpuClock:
    """Stands in for the ``time`` module inside train.py: ``finetune_ttt``'s loop timer then reads this
    process's CPU time, which a machine shared with other jobs does not inflate (one thread: CPU time is
    the step's compute; cache and memory-bandwidth sharing still show)."""

    perf_counter = staticmethod(time.process_time)


@contextlib.contextmanager
def cpu_clock(enabled: bool) -> Iterator[None]:
    from ttt_checks.models.reference import train

    saved = train.time
    if enabled:
        train.time = _CpuClock  # type: ignore[assignment]
    try:
        yield
    finally:
        train.time = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="a base checkpoint of the recall recipe (default: a fresh random one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="fine-tune steps per round and variant")
    ap.add_argument("--batch", type=int, default=HEALTHY_RECALL.batch)
    ap.add_argument("--seq-len", type=int, default=HEALTHY_RECALL.seq_len)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--breakdown", action="store_true", help="also time the step's parts (prefix, TTT, rest)")
    ap.add_argument("--pool", type=int, default=0, help="also time steps drawn from a window pool of this size")
    ap.add_argument("--wall", action="store_true", help="time wall-clock seconds instead of this process's CPU seconds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    corpus = DialogueCorpus.load(seed=0)
    model = recall_model(args.base)
    # Fresh windows every step for "before" and "after" (the candidate's own recipe draws from a pool: timed
    # apart with --pool).
    recipe = replace(HEALTHY_RECALL, steps=args.steps, warmup=1, batch=args.batch, seq_len=args.seq_len, window_pool=0)
    times: dict[str, list[float]] = {"before": [], "after": []}
    finetune_ttt(model, corpus, recipe)  # warm-up (allocator, kernels)
    pooled = replace(recipe, window_pool=args.pool)
    if args.pool:
        times["after + pool"] = []
    with cpu_clock(not args.wall):
        for _ in range(args.rounds):
            with before():
                times["before"].append(finetune_ttt(model, corpus, recipe)["seconds"] / args.steps)
            times["after"].append(finetune_ttt(model, corpus, recipe)["seconds"] / args.steps)
            if args.pool:  # the steps alone: the pool's one-off prefixes are reported apart
                info = finetune_ttt(model, corpus, pooled)
                times["after + pool"].append((info["seconds"] - info["pool_seconds"]) / args.steps)
                pool_s = info["pool_seconds"]
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"recall fine-tune step, batch {args.batch} x {args.seq_len} tokens, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds of {args.steps} steps, {'wall' if args.wall else 'CPU'} seconds")
    for k in times:
        print(f"  {k:6s}: median {med[k]:.3f} s/step, best {best[k]:.3f} s/step  "
              f"(rounds: {', '.join(f'{t:.3f}' for t in times[k])})")
    print(f"  speed-up (median before / median after): {med['before'] / med['after']:.2f}x; "
          f"best/best {best['before'] / best['after']:.2f}x")
    if args.pool:
        print(f"  with a window pool of {args.pool} (a recipe change): {med['before'] / med['after + pool']:.2f}x "
              f"before / after + pool; the pool's prefixes cost {pool_s:.2f} s once ({pool_s / args.pool * 1e3:.1f} ms "
              f"a window)")
    if args.breakdown:
        parts = breakdown(model, corpus, args.batch, args.seq_len, args.rounds, time.perf_counter if args.wall else time.process_time)
        print("  parts of one step, median ms (forward + backward where there is a graph):")
        for part in ("prefix", "ttt", "rest"):
            b, a = parts["before"][part], parts["after"][part]
            print(f"    {part:6s}: before {b:7.1f}  after {a:7.1f}  ({b / a:.2f}x)")


if __name__ == "__main__":
    main()
