"""The TTT inner loop: one function per equation, readable next to the paper.

Notation (docs/ttt-math.md). Per head, token t has q_t, k_t, y_t (the reconstruction target)
and a step size sigma_t = base_lr * sigmoid(theta_lr . x_t + b) / head_dim. The inner model is

    f(x; W) = x + LN(f_res(x; W))          f_res = xW_1 + b_1            (linear)
                                           f_res = ...gelu(xW_1 + b_1)W_2 + b_2 ...   (MLP)

and the self-supervised loss of token t under weights W is

    loss(W; x_t) = mean_d (LN(f_res(k_t; W)) - y_t)^2          (reported: Figure 5)
    grad  is that of  1/2 * sum_d (LN(f_res(k_t; W)) - y_t)^2   (the code's convention)

Mini-batch rule. Tokens are grouped in mini-batches of b. With W' the weights at the start of
a mini-batch and G_j = grad loss(W'; x_j) for its rows j,

    W(row i) = W' - sum_{j in S(i)} eta[i, j] * G_j

where S(i) = {j <= i} (causal) or the whole mini-batch (non-causal), and
eta[i, j] = sigma_j / (i + 1) (token_index) or sigma_j / b (uniform). The state carried to
the next mini-batch is W' - sum_j (sigma_j / b) G_j (the last row, in every variant).

Dual form (no per-token weights are materialised): for query rows h with eta matrix E,

    h W(row i) = h W' - sum_j E[i, j] (h . x_j) g_j      and   b(row i) = b' - sum_j E[i, j] g_j

so  Z = h W' + b' - (E * (h X^T + 1)) @ G,  layer by layer through the MLP, where X are the
start-of-mini-batch layer inputs and g the per-token gradients wrt each layer's output.

Figure 5 (per token t): l0 = loss(W_0; x_t) with W_0 the weights at the start of the
sequence; lprev = loss(W_{t-1}; x_t) with W_{t-1} the last state that has not seen x_t;
lafter = loss(W_t; x_t) with W_t the first state that has. Causal: W_{t-1} is row i-1's
weights (W' for row 0) and W_t row i's. Non-causal: x_t enters every row at once, so
W_{t-1} = W' and W_t = the end-of-mini-batch state. Both come from the same dual form
evaluated at k_t with the eta rows shifted (lprev) or not (lafter), in the same pass.

The fourth curve is a baseline that learns nothing but the target's mean: lmean =
mean_d (ybar_{t-1} - y_t)^2 with ybar_{t-1} = (1/t) sum_{s<t} y_s the running mean of the
targets *before* t (the zero vector at t = 0, an empty mean). It is causal, so it is known
when x_t arrives, in one pass and in streaming alike (ttt-lm-jax uses the whole sequence's
mean instead, known only once the sequence has ended; docs/ttt-math.md).

All functions work on tensors shaped [B, H, n, d] (batch, head, rows, features) in fp32 or
fp64, and never loop over tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ttt_checks.ttt.config import TTTConfig

_GELU_C = math.sqrt(2.0 / math.pi)


# ---------------------------------------------------------------------------------------------
# Elementwise pieces and their hand-written derivatives
# ---------------------------------------------------------------------------------------------


def gelu_tanh(x: Tensor) -> Tensor:
    """tanh-approximated GELU, as in the TTT code: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return torch.nn.functional.gelu(x, approximate="tanh")  # the same formula, one fused kernel


def gelu_tanh_grad(x: Tensor) -> Tensor:
    """d gelu_tanh / dx."""
    inner = _GELU_C * (x + 0.044715 * x**3)
    tanh_inner = torch.tanh(inner)
    d_inner = _GELU_C * (1.0 + 3 * 0.044715 * x**2)
    return 0.5 * (1.0 + tanh_inner) + 0.5 * x * (1.0 - tanh_inner**2) * d_inner


def layer_norm(z: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-head LayerNorm over the last dim. Returns (output, x_hat, 1/std) for the backward.

    gamma, beta: [H, d], broadcast over batch and rows.
    """
    mu = z.mean(dim=-1, keepdim=True)
    var = z.var(dim=-1, keepdim=True, unbiased=False)
    inv_std = torch.rsqrt(var + eps)
    x_hat = (z - mu) * inv_std
    return gamma[:, None, :] * x_hat + beta[:, None, :], x_hat, inv_std


def layer_norm_l2_grad(x_hat: Tensor, inv_std: Tensor, gamma: Tensor, residual: Tensor) -> Tensor:
    """Gradient wrt z of 1/2 * ||gamma * x_hat(z) + beta - y||^2, with residual = output - y.

    The LayerNorm backward: dz = inv_std * (dx - mean(dx) - x_hat * mean(dx * x_hat)),
    dx = residual * gamma. It scales with 1/std(z), which is why small inner activations make
    large inner steps (docs/ttt-math.md, "Inner LayerNorm gradient scale").
    """
    dx = residual * gamma[:, None, :]
    return inv_std * (
        dx - dx.mean(dim=-1, keepdim=True) - x_hat * (dx * x_hat).mean(dim=-1, keepdim=True)
    )


def reconstruction_target(
    xk: Tensor, xv: Tensor, config: TTTConfig, gamma: Tensor, beta: Tensor
) -> Tensor:
    """y_t: what f_res must reproduce from k_t.

    With the residual inside f, ||k + LN(f_res(k)) - v||^2 = ||LN(f_res(k)) - (v - k)||^2, so the
    target is v - k; ``layernorm`` normalises it with the inner LN's affine (unbiased std, as in
    the video/Moshi code). Without the residual the target is v itself.
    """
    if not config.inner_residual:
        return xv
    diff = xv - xk
    if config.target == "plain":
        return diff
    centred = diff - diff.mean(dim=-1, keepdim=True)
    std = diff.std(dim=-1, keepdim=True, unbiased=True)
    return gamma[:, None, :] * (centred / (std + config.target_eps)) + beta[:, None, :]


# ---------------------------------------------------------------------------------------------
# Inner model: forward, loss, gradients at the start of a mini-batch
# ---------------------------------------------------------------------------------------------


@dataclass
class InnerParams:
    """Inner-model weights per batch element and head: weights[l] [B, H, d_l, d_{l+1}], biases[l] [B, H, 1, d_{l+1}]."""

    weights: list[Tensor]
    biases: list[Tensor]

    def map(self, fn) -> "InnerParams":
        return InnerParams([fn(w) for w in self.weights], [fn(b) for b in self.biases])


@dataclass
class InnerActivations:
    """What the backward needs from a forward: layer inputs X_l, pre-activations Z_l, LN cache."""

    inputs: list[Tensor]
    preacts: list[Tensor]
    x_hat: Tensor | None
    inv_std: Tensor | None
    prediction: Tensor


def inner_forward(
    x: Tensor, params: InnerParams, config: TTTConfig, gamma: Tensor, beta: Tensor
) -> InnerActivations:
    """prediction = LN(f_res(x; W)) (or f_res(x; W) without the inner norm), keeping activations."""
    inputs, preacts = [], []
    h = x
    last = len(params.weights) - 1
    for layer, (w, b) in enumerate(zip(params.weights, params.biases)):
        inputs.append(h)
        z = h @ w + b
        preacts.append(z)
        h = gelu_tanh(z) if layer < last else z
    if config.inner_norm:
        pred, x_hat, inv_std = layer_norm(h, gamma, beta, config.ln_eps)
        return InnerActivations(inputs, preacts, x_hat, inv_std, pred)
    return InnerActivations(inputs, preacts, None, None, h)


def reconstruction_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Figure-5 loss per row: mean over head_dim of the squared error. [B, H, n]."""
    return (prediction - target).pow(2).mean(dim=-1)


def inner_output_grads(acts: InnerActivations, target: Tensor, params: InnerParams, gamma: Tensor) -> list[Tensor]:
    """g_l = d(1/2 ||pred - y||^2) / dZ_l for every layer l and row (backprop through the MLP)."""
    residual = acts.prediction - target
    if acts.x_hat is not None:
        g = layer_norm_l2_grad(acts.x_hat, acts.inv_std, gamma, residual)
    else:
        g = residual
    grads = [g]
    for layer in range(len(params.weights) - 1, 0, -1):
        g = (g @ params.weights[layer].transpose(-1, -2)) * gelu_tanh_grad(acts.preacts[layer - 1])
        grads.append(g)
    grads.reverse()
    return grads


# ---------------------------------------------------------------------------------------------
# Step sizes inside a mini-batch
# ---------------------------------------------------------------------------------------------


def eta_matrix(sigma: Tensor, config: TTTConfig, rows: int | None = None) -> Tensor:
    """E[i, j]: weight of row j's gradient in row i's weights. sigma: [B, H, n] -> [B, H, n, n].

    ``rows`` (default n) lets a partial mini-batch keep the 1/b of a full one: missing rows
    simply contribute no gradient.
    """
    return row_weights(sigma.shape[-1], config, sigma.dtype, sigma.device) * sigma[..., None, :]


def row_weights(n: int, config: TTTConfig, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[n, n]: eta[i, j] / sigma_j, i.e. 1/(i+1) or 1/b, times the causal mask (tril) when causal."""
    key = (n, config.mini_batch_size, config.eta_weighting, config.causal, dtype, str(device))
    cached = _ROW_WEIGHTS.get(key)
    if cached is None:
        if config.eta_weighting == "token_index":
            scale = 1.0 / torch.arange(1, n + 1, dtype=dtype, device=device)
        else:
            scale = torch.full((n,), 1.0 / config.mini_batch_size, dtype=dtype, device=device)
        cached = scale[:, None].expand(n, n).clone()
        if config.causal:
            cached = cached.tril()
        _ROW_WEIGHTS[key] = cached
    return cached


_ROW_WEIGHTS: dict[tuple, Tensor] = {}


def shift_rows_down(eta: Tensor) -> Tensor:
    """Row i of the result is row i-1 of ``eta`` (row 0 is zero): the weights before token i."""
    return torch.cat([torch.zeros_like(eta[..., :1, :]), eta[..., :-1, :]], dim=-2)


# ---------------------------------------------------------------------------------------------
# Dual form and the carried state
# ---------------------------------------------------------------------------------------------


def dual_form(
    queries: Tensor,
    eta: Tensor,
    params: InnerParams,
    acts: InnerActivations,
    grads: list[Tensor],
    config: TTTConfig,
    gamma: Tensor,
    beta: Tensor,
    first_layer: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """LN(f_res(query_i; W(row i))) for every query row, without materialising W(row i).

    ``first_layer`` = (h W_1' + b_1', h X_1^T) when the caller already has them (the rows' own
    keys, whose forward at W' the gradient step computed), saving the first layer's products.

    queries: [B, H, r, d]; eta: [B, H, r, n] (row i's weights over the n mini-batch rows).
    Layer l sees the query's own activation h (computed with the *updated* earlier layers) but
    the start-of-mini-batch inputs X_l and gradients g_l of the rows, as the gradient of layer l
    at W' is X_l^T g_l.
    """
    h = queries
    last = len(params.weights) - 1
    for layer, (w, b) in enumerate(zip(params.weights, params.biases)):
        if layer == 0 and first_layer is not None:
            preact, gram = first_layer
        else:
            preact, gram = h @ w + b, h @ acts.inputs[layer].transpose(-1, -2)
        z = preact - (eta * (gram + 1.0)) @ grads[layer]
        h = gelu_tanh(z) if layer < last else z
    if config.inner_norm:
        return layer_norm(h, gamma, beta, config.ln_eps)[0]
    return h


def end_of_minibatch_params(
    params: InnerParams, acts: InnerActivations, grads: list[Tensor], eta_last: Tensor
) -> InnerParams:
    """W' - sum_j eta_last[j] X_j^T g_j: the state carried to the next mini-batch. eta_last: [B, H, n]."""
    weights, biases = [], []
    for w, b, x, g in zip(params.weights, params.biases, acts.inputs, grads):
        scaled = g * eta_last[..., None]
        weights.append(w - x.transpose(-1, -2) @ scaled)
        biases.append(b - scaled.sum(dim=-2, keepdim=True))
    return InnerParams(weights, biases)


@dataclass
class MiniBatchResult:
    """One (possibly partial) mini-batch: its outputs, its carried state, and what the Figure-5
    losses need (the start weights, activations, gradients and step sizes), kept by reference."""

    output: Tensor  # [B, H, r, d]: f(q) without the residual q (added by the caller)
    end_params: InnerParams | None  # None for a partial mini-batch (state not committed)
    start_params: InnerParams
    acts: InnerActivations
    grads: list[Tensor]
    eta: Tensor


def minibatch_step(
    params: InnerParams,
    xq: Tensor,
    xk: Tensor,
    target: Tensor,
    sigma: Tensor,
    config: TTTConfig,
    gamma: Tensor,
    beta: Tensor,
) -> MiniBatchResult:
    """One mini-batch of r <= b rows: gradients at its start W', outputs, the carried state."""
    rows = xk.shape[-2]
    acts = inner_forward(xk, params, config, gamma, beta)
    grads = inner_output_grads(acts, target, params, gamma)
    eta = eta_matrix(sigma, config)
    out = dual_form(xq, eta, params, acts, grads, config, gamma, beta)
    end = None
    if rows == config.mini_batch_size:
        end = end_of_minibatch_params(params, acts, grads, sigma / config.mini_batch_size)
    return MiniBatchResult(out, end, params, acts, grads, eta)


def figure5_losses(
    params: InnerParams,
    xk: Tensor,
    target: Tensor,
    acts: InnerActivations,
    grads: list[Tensor],
    eta: Tensor,
    config: TTTConfig,
    gamma: Tensor,
    beta: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """(lprev, lafter, lstart) per row, each [B, H, r], from the mini-batch's own gradients.

    lafter evaluates the dual form at k with the rows' own eta; lprev (causal) with the eta rows
    shifted by one, i.e. the weights before the row's token; non-causal lprev is the loss at the
    mini-batch start. The keys' first-layer products at W' are already in ``acts``. Several
    mini-batches can be evaluated at once by stacking them along the batch dimension.
    """
    rows = xk.shape[-2]
    copies = 2 if config.causal else 1
    gram = xk @ xk.transpose(-1, -2)
    queries = torch.cat([xk] * copies, -2)
    etas = torch.cat([eta] + ([shift_rows_down(eta)] if config.causal else []), -2)
    preact = torch.cat([acts.preacts[0]] * copies, -2)
    stacked = dual_form(queries, etas, params, acts, grads, config, gamma, beta,
                        first_layer=(preact, torch.cat([gram] * copies, -2)))
    lstart = reconstruction_loss(acts.prediction, target)
    lafter = reconstruction_loss(stacked[..., :rows, :], target)
    lprev = reconstruction_loss(stacked[..., rows:, :], target) if config.causal else lstart
    return lprev, lafter, lstart


def stack_minibatches(results: list[MiniBatchResult]) -> tuple[InnerParams, InnerActivations, list[Tensor], Tensor]:
    """Concatenate complete mini-batches along the batch dimension for one batched evaluation."""
    cat = lambda ts: torch.cat(ts, dim=0)  # noqa: E731
    params = InnerParams(
        [cat([r.start_params.weights[i] for r in results]) for i in range(len(results[0].start_params.weights))],
        [cat([r.start_params.biases[i] for r in results]) for i in range(len(results[0].start_params.biases))],
    )
    a0 = results[0].acts
    acts = InnerActivations(
        inputs=[cat([r.acts.inputs[i] for r in results]) for i in range(len(a0.inputs))],
        preacts=[cat([r.acts.preacts[i] for r in results]) for i in range(len(a0.preacts))],
        x_hat=None if a0.x_hat is None else cat([r.acts.x_hat for r in results]),
        inv_std=None if a0.inv_std is None else cat([r.acts.inv_std for r in results]),
        prediction=cat([r.acts.prediction for r in results]),
    )
    grads = [cat([r.grads[i] for r in results]) for i in range(len(results[0].grads))]
    return params, acts, grads, cat([r.eta for r in results])


def mean_predictor_loss(target: Tensor, prior_sum: Tensor, prior_count: int, carry_rows: int) -> tuple[Tensor, Tensor]:
    """lmean per row: the loss of predicting y_t by the running mean of the targets before it.

    Row i sees ``prior_count`` + i earlier targets: those summed in ``prior_sum`` [B, H, 1, d]
    (earlier calls of a stream) and rows 0 .. i-1 of ``target`` [B, H, n, d]. Computed in
    float64 whatever the target's dtype, so a sum carried over thousands of positions is the
    one-pass prefix sum to float64 rounding, not to fp32's. The mean of no target is the zero
    vector, so lmean at position 0 is mean_d y_0^2.

    Returns (lmean [B, H, n] float64, the sum to carry [B, H, 1, d]: ``prior_sum`` plus rows
    0 .. carry_rows-1, i.e. the committed rows, taken from the same running sum as lmean).
    Two float64 tensors of the target's size are alive at once (``models/moshi/memory.py``).
    """
    y = target.detach().to(torch.float64)
    running = torch.cumsum(y, dim=-2).add_(prior_sum)  # row i: prior_sum + rows 0 .. i
    carried = running[..., carry_rows - 1 : carry_rows, :].clone() if carry_rows else prior_sum
    counts = prior_count + torch.arange(1, y.shape[-2], dtype=torch.float64, device=y.device)
    first = reconstruction_loss(prior_sum / max(prior_count, 1), y[..., :1, :])
    # Rows 1 .. n-1: running[i-1] / (prior_count + i) is the mean before row i (in place: one copy less).
    rest = running[..., :-1, :].div_(counts[:, None]).sub_(y[..., 1:, :]).pow_(2).mean(dim=-1)
    return torch.cat([first, rest], dim=-1), carried


def predict_loss(xk: Tensor, target: Tensor, params: InnerParams, config: TTTConfig, gamma: Tensor, beta: Tensor) -> Tensor:
    """loss(W; x_t) for every row at fixed weights W (used for l0 with the sequence-initial W_0)."""
    return reconstruction_loss(inner_forward(xk, params, config, gamma, beta).prediction, target)
