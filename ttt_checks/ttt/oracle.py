"""A naive, per-token, float64 TTT inner loop: the ground truth for tests and benchmarks.

It shares nothing with ``inner.py`` but the configuration: gradients come from autograd, the
weights W(row i) of every token are materialised explicitly from the definition

    W(row i) = W' - sum_{j in S(i)} eta[i, j] * grad loss(W'; x_j)

and every loss is evaluated by a plain forward pass; the mean predictor's ybar_{t-1} is the
plain average of the targets y_0 .. y_{t-1} (zero when there are none). It is slow on purpose (a Python loop over
tokens and rows): the dual form in ``inner.py`` must match it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ttt_checks.ttt.config import TTTConfig


@dataclass
class OracleResult:
    output: Tensor  # [B, H, T, d]: f(q_t; W(row of t)), residual included when configured
    l0: Tensor  # [B, H, T]
    lprev: Tensor
    lafter: Tensor
    lmean: Tensor  # loss of the mean of the targets before t (docs/ttt-math.md, "Figure 5 losses")


def _f_res(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    h = x
    for layer, (w, b) in enumerate(zip(weights, biases)):
        z = h @ w + b
        h = torch.nn.functional.gelu(z, approximate="tanh") if layer < len(weights) - 1 else z
    return h


def _predict(x: Tensor, weights: list[Tensor], biases: list[Tensor], config: TTTConfig, gamma: Tensor, beta: Tensor) -> Tensor:
    z = _f_res(x, weights, biases)
    if config.inner_norm:
        z = torch.nn.functional.layer_norm(z, z.shape[-1:], eps=config.ln_eps) * gamma + beta
    return z


def _loss(x: Tensor, y: Tensor, weights, biases, config, gamma, beta) -> Tensor:
    return (_predict(x, weights, biases, config, gamma, beta) - y).pow(2).mean(dim=-1)


def _step_weight(i: int, j: int, sigma_j: Tensor, config: TTTConfig) -> Tensor | float:
    """eta[i, j] from its definition (0 where row i may not use row j)."""
    if config.causal and j > i:
        return 0.0
    scale = 1.0 / (i + 1) if config.eta_weighting == "token_index" else 1.0 / config.mini_batch_size
    return scale * sigma_j


def oracle_inner(
    xq: Tensor,
    xk: Tensor,
    target: Tensor,
    sigma: Tensor,
    weights0: list[Tensor],
    biases0: list[Tensor],
    gamma: Tensor,
    beta: Tensor,
    config: TTTConfig,
    create_graph: bool = False,
) -> OracleResult:
    """Per-token ground truth for one sequence, looping over batch rows, heads and tokens.

    xq, xk, target: [B, H, T, d]; sigma: [B, H, T]; weights0[l]: [H, d_l, d_{l+1}];
    biases0[l]: [H, 1, d_{l+1}]; gamma, beta: [H, d].

    ``create_graph`` keeps the inner gradients differentiable (autograd's double backward), so the
    outer loop's gradients of the oracle's outputs wrt every input can be compared with the layer's
    hand-written inner loop: the outer loop trains through that code, not through the values alone.
    """
    f64 = torch.float64
    B, H, T, d = xk.shape
    b = config.mini_batch_size
    out = torch.zeros(B, H, T, d, dtype=f64)
    curves = {name: torch.zeros(B, H, T, dtype=f64) for name in ("l0", "lprev", "lafter", "lmean")}
    for bi in range(B):
        for h in range(H):
            g, be = gamma[h].to(f64), beta[h].to(f64)
            w_init = [w[h].to(f64) for w in weights0]
            b_init = [x[h, 0].to(f64) for x in biases0]
            w_cur, b_cur = list(w_init), list(b_init)
            for t in range(T):
                seen = target[bi, h, :t].to(f64)
                ybar = seen.mean(dim=0) if t else torch.zeros(d, dtype=f64)
                curves["lmean"][bi, h, t] = (ybar - target[bi, h, t].to(f64)).pow(2).mean()
            for start in range(0, T, b):
                rows = range(start, min(start + b, T))
                # Gradient of 1/2 ||pred - y||^2 of every row at the mini-batch start W'.
                grads = []
                for t in rows:
                    ws = [w.clone().requires_grad_(True) for w in w_cur]
                    bs = [x.clone().requires_grad_(True) for x in b_cur]
                    pred = _predict(xk[bi, h, t].to(f64), ws, bs, config, g, be)
                    loss = 0.5 * (pred - target[bi, h, t].to(f64)).pow(2).sum()
                    gw = torch.autograd.grad(loss, ws + bs, create_graph=create_graph)
                    grads.append((gw[: len(ws)], gw[len(ws) :]))

                def weights_of_row(i: int) -> tuple[list[Tensor], list[Tensor]]:
                    ws, bs = [w.clone() for w in w_cur], [x.clone() for x in b_cur]
                    if i < 0:
                        return ws, bs
                    for j, t in enumerate(rows):
                        e = _step_weight(i, j, sigma[bi, h, t].to(f64), config)
                        for layer in range(len(ws)):
                            ws[layer] = ws[layer] - e * grads[j][0][layer]
                            bs[layer] = bs[layer] - e * grads[j][1][layer]
                    return ws, bs

                for i, t in enumerate(rows):
                    k_t, y_t = xk[bi, h, t].to(f64), target[bi, h, t].to(f64)
                    w_row, b_row = weights_of_row(i)
                    # Non-causal: x_t enters every row together, so "before x_t" is W'.
                    w_prev, b_prev = weights_of_row(i - 1 if config.causal else -1)
                    z = _predict(xq[bi, h, t].to(f64), w_row, b_row, config, g, be)
                    out[bi, h, t] = (xq[bi, h, t].to(f64) + z) if config.inner_residual else z
                    curves["l0"][bi, h, t] = _loss(k_t, y_t, w_init, b_init, config, g, be)
                    curves["lprev"][bi, h, t] = _loss(k_t, y_t, w_prev, b_prev, config, g, be)
                    curves["lafter"][bi, h, t] = _loss(k_t, y_t, w_row, b_row, config, g, be)
                if len(rows) == b:
                    w_cur, b_cur = weights_of_row(b - 1) if config.causal else weights_of_row(0)
    return OracleResult(out, curves["l0"], curves["lprev"], curves["lafter"], curves["lmean"])
