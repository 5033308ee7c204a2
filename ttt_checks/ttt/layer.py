"""The TTT layer (projections, step sizes, mini-batch scan, streaming state) and its tanh gate.

``TTTLayer`` turns x [B, T, width] into per-head q, k, targets and step sizes, runs the inner
loop of ``inner.py`` over mini-batches in fp32 whatever the model dtype, and projects back.
``GatedTTT`` is the residual gate out = x + tanh(clamp(alpha, -3, 3)) * TTT(x) of the video
paper (Eq. 6) and the user's Moshi layers.

Streaming: inside ``with layer.stream():`` consecutive calls continue one sequence. The state
carried between calls is the inner weights at the last mini-batch boundary, the weights at the
start of the sequence (for l0), the absolute position, the sum of the committed targets (for
lmean), and the rows of a still-open
mini-batch, which the next call recomputes together with its own tokens. Causal layers thus
give exactly the one-pass outputs for any chunking; non-causal layers do when chunks are
multiples of b (otherwise a row's output depends on which future rows had arrived).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from ttt_checks.ttt import inner, step_probe
from ttt_checks.ttt.config import TTTConfig
from ttt_checks.ttt.gate import effective_gate
from ttt_checks.ttt.figure5 import Figure5Sink

# (q, k, positions) -> (q, k); q, k: [B, H, n, d], positions: [n] absolute token indices.
RopeHook = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def rope_within_minibatch(mini_batch_size: int, theta: float = 10000.0) -> RopeHook:
    """RoPE on q and k with positions taken modulo the mini-batch size (ttt-lm, the user's code)."""

    def apply(q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        d = q.shape[-1]
        if d % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {d}")
        pos = (positions % mini_batch_size).to(torch.float64)
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=q.device) / d)
        angles = pos[:, None] * freqs[None, :]
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)

        def rotate(x: Tensor) -> Tensor:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)

        return rotate(q), rotate(k)

    return apply


def _row_dim(t: Tensor) -> int:
    """Token rows are dim -2 of [B, H, n, d] features and dim -1 of [B, H, n] step sizes."""
    return -2 if t.dim() == 4 else -1


def _take_rows(t: Tensor, lo: int, hi: int) -> Tensor:
    return t.narrow(_row_dim(t), lo, hi - lo)


def _target_sum(prior: Tensor | None, targets: Tensor) -> Tensor:
    """``prior`` (None: zero) plus the sum of the rows of ``targets`` [B, H, r, d], as [B, H, 1, d] float64."""
    total = targets.detach().to(torch.float64).sum(dim=-2, keepdim=True)
    return total if prior is None else prior + total


def inner_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The inner loop runs in fp32 for bf16/fp16/fp32 models, and in fp64 for fp64 ones."""
    return torch.promote_types(model_dtype, torch.float32)


@dataclass
class TTTState:
    """Everything a streaming TTT layer carries from one call to the next (per batch element)."""

    params: inner.InnerParams  # at the start of the open mini-batch
    init_params: inner.InnerParams  # at the start of the sequence: W_0 of l0
    position: int  # absolute index of the open mini-batch's first row
    pending: dict[str, Tensor] | None = None  # xq, xk, target, sigma of the open mini-batch's rows
    # Sum of the targets of positions 0 .. position-1 [B, H, 1, d], float64: lmean's running mean
    # (inner.mean_predictor_loss). None: no target yet (a zero sum). Carried whether or not a
    # probe listens, so a probe attached mid-stream still gets the mean of the whole sequence.
    target_sum: Tensor | None = None
    last_input: Tensor | None = None  # x of the last token seen [B, 1, width] (keys of shift_keys read it)

    @property
    def next_position(self) -> int:
        return self.position + (0 if self.pending is None else int(self.pending["xk"].shape[-2]))


class TTTLayer(nn.Module):
    """One TTT layer: per-head inner model trained online on the sequence it reads."""

    def __init__(self, config: TTTConfig, rope: RopeHook | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        inner_width = c.num_heads * c.head_dim
        self.wq = nn.Linear(c.width, inner_width)
        self.wk = nn.Linear(c.width, inner_width)
        self.wv = nn.Linear(c.width, inner_width)
        self.lr_weight = nn.Parameter(torch.randn(c.num_heads, c.width) * 0.02)
        self.lr_bias = nn.Parameter(torch.zeros(c.num_heads))
        self.ttt_norm_weight = nn.Parameter(torch.ones(c.num_heads, c.head_dim))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(c.num_heads, c.head_dim))
        dims = c.inner_dims
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(c.num_heads, dims[i], dims[i + 1]) * 0.02) for i in range(len(dims) - 1)]
        )
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.zeros(c.num_heads, 1, dims[i + 1])) for i in range(len(dims) - 1)]
        )
        if c.output_projection:
            self.post_norm = nn.LayerNorm(inner_width, eps=1e-6)
            self.wo = nn.Linear(inner_width, c.width)
        self.rope = rope
        self.figure5_sink: Figure5Sink | None = None
        self.reset_state_each_call = False  # True reproduces the "state not carried" bug
        # Multiplies every inner step size. 0 keeps W_t = W_0 at every token: the TTT branch as a
        # static layer, so comparing outer losses tells what the test-time updates themselves buy.
        self.inner_step_scale = 1.0
        self._streaming = False
        self._state: TTTState | None = None

    # -- streaming ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def stream(self) -> Iterator["TTTLayer"]:
        """Consecutive forward calls inside the block continue one sequence."""
        self._close_sequence()
        self._streaming, self._state = True, None
        try:
            yield self
        finally:
            self._close_sequence()
            self._streaming, self._state = False, None

    def reset_stream(self) -> None:
        """Start a new sequence at the next call (streaming mode stays on)."""
        self._close_sequence()
        self._state = None

    @property
    def state(self) -> TTTState | None:
        return self._state

    def _close_sequence(self) -> None:
        if self.figure5_sink is not None:
            self.figure5_sink.close_sequence()

    def initial_state(self, batch: int, dtype: torch.dtype = torch.float32) -> TTTState:
        """The state at the start of a sequence: the learned W_0, b_0 for every batch element.

        W_0 stays attached to the graph so the outer loop can train it (learnable W_0, §2.7).
        """
        params = inner.InnerParams(
            [w.to(dtype)[None].expand(batch, *w.shape) for w in self.weights],
            [b.to(dtype)[None].expand(batch, *b.shape) for b in self.biases],
        )
        return TTTState(params=params, init_params=params, position=0)

    # -- forward --------------------------------------------------------------------------------

    def project(self, x: Tensor, positions: Tensor, previous: Tensor | None = None) -> dict[str, Tensor]:
        """Per-head q, k, target and step size sigma for x [B, T, width], in fp32.

        ``previous`` [B, 1, width] is the input just before x (for ``shift_keys``; None at the
        start of a sequence, where the key input is zero).
        """
        c = self.config
        B, T, _ = x.shape

        dtype = inner_dtype(x.dtype)

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, c.num_heads, c.head_dim).transpose(1, 2).to(dtype)

        key_input = x
        if c.shift_keys:
            before = torch.zeros_like(x[:, :1]) if previous is None else previous.to(x.dtype)
            key_input = torch.cat([before, x[:, :-1]], dim=1)
        xq, xk, xv = heads(self.wq(x)), heads(self.wk(key_input)), heads(self.wv(x))
        if c.l2_normalize_qk:
            xq = nn.functional.normalize(xq, dim=-1)
            xk = nn.functional.normalize(xk, dim=-1)
        if self.rope is not None:
            xq, xk = self.rope(xq, xk, positions)
        gamma, beta = self.ttt_norm_weight.to(dtype), self.ttt_norm_bias.to(dtype)
        target = inner.reconstruction_target(xk, xv, c, gamma, beta)
        logits = torch.einsum("btc,hc->bht", x.to(dtype), self.lr_weight.to(dtype)) + self.lr_bias.to(dtype)[:, None]
        sigma = c.base_lr * torch.sigmoid(logits) / c.head_dim
        if self.inner_step_scale != 1.0:
            sigma = sigma * self.inner_step_scale
        return {"xq": xq, "xk": xk, "target": target, "sigma": sigma}

    def forward(self, x: Tensor) -> Tensor:
        """TTT(x) for x [B, T, width]: the inner output, projected back to the model width."""
        c = self.config
        B, T, _ = x.shape
        if self._state is None or not self._streaming:
            self._close_sequence()
            state = self.initial_state(B, inner_dtype(x.dtype))
        elif self.reset_state_each_call:
            # The bug this flag reproduces: positions run on, the inner weights restart at W_0.
            self._close_sequence()
            state = self.initial_state(B, inner_dtype(x.dtype))
            state.position = self._state.next_position
            state.last_input = self._state.last_input
            # lmean is a baseline of the sequence, not of the model: it keeps its running mean, over
            # every position the dropped state had seen (its open rows are committed as final).
            old = self._state
            state.target_sum = old.target_sum if old.pending is None else _target_sum(old.target_sum, old.pending["target"])
        else:
            state = self._state
            if state.params.weights[0].shape[0] != B:
                raise ValueError(f"streaming TTT layer got batch {B}, the stream was started with {state.params.weights[0].shape[0]}")
        start = state.next_position
        positions = torch.arange(start, start + T, device=x.device)
        new = self.project(x, positions, previous=state.last_input)
        rows = new if state.pending is None else {k: torch.cat([state.pending[k], new[k]], dim=_row_dim(new[k])) for k in new}
        z, new_state = self._scan(rows, state)
        new_state.last_input = x[:, -1:]
        z = z[..., -T:, :]

        if not self._streaming:
            self._close_sequence()
            self._state = None
        else:
            self._state = new_state
        out = z.transpose(1, 2).reshape(B, T, c.num_heads * c.head_dim).to(x.dtype)
        if c.output_projection:
            out = self.wo(self.post_norm(out))
        return out

    def _scan(self, rows: dict[str, Tensor], state: TTTState) -> tuple[Tensor, TTTState]:
        """Run the mini-batches of ``rows`` (which start at ``state.position``) in order."""
        c = self.config
        b = c.mini_batch_size
        dtype = rows["xk"].dtype
        gamma, beta = self.ttt_norm_weight.to(dtype), self.ttt_norm_bias.to(dtype)
        sink = self.figure5_sink
        capture = sink is not None
        n = rows["xk"].shape[-2]
        full = (n // b) * b
        prior_sum = _target_sum(state.target_sum, rows["target"][..., :0, :])
        if not capture:  # nobody reads lmean now; carry the sum for a probe that may attach later
            target_sum = _target_sum(prior_sum, rows["target"][..., :full, :])
        else:
            lmean_all, target_sum = inner.mean_predictor_loss(rows["target"], prior_sum, state.position, full)
            sink.set_meta(mini_batch_size=b, causal=c.causal, num_heads=c.num_heads, head_dim=c.head_dim,
                          inner=c.inner, eta_weighting=c.eta_weighting, base_lr=c.base_lr)
            l0_all = inner.predict_loss(rows["xk"], rows["target"], state.init_params, c, gamma, beta)
        params = state.params
        outputs, waiting = [], []
        curves: dict[str, list[Tensor]] = {"lprev": [], "lafter": [], "step_0": []}
        for lo in range(0, n, b):
            hi = min(lo + b, n)
            chunk = {k: _take_rows(v, lo, hi) for k, v in rows.items()}
            res = inner.minibatch_step(params, chunk["xq"], chunk["xk"], chunk["target"], chunk["sigma"], c, gamma, beta)
            outputs.append(res.output)
            if capture:
                waiting.append((res, chunk["xk"], chunk["target"]))
                if len(waiting) == self.CAPTURE_GROUP or hi == n:
                    self._figure5_losses(waiting, gamma, beta, curves)
                    waiting = []
            if res.end_params is not None:
                params = res.end_params
        if capture:
            self._report(sink, state.position, b, full, l0_all, torch.cat(curves["lprev"], -1),
                         torch.cat(curves["lafter"], -1), lmean_all, curves["step_0"])

        tail = None if full == n else {k: _take_rows(v, full, n) for k, v in rows.items()}
        new_state = TTTState(params=params, init_params=state.init_params, position=state.position + full, pending=tail,
                             target_sum=target_sum)
        z = torch.cat(outputs, dim=-2)
        if c.inner_residual:
            z = rows["xq"] + z
        return z, new_state

    CAPTURE_GROUP = 32  # complete mini-batches evaluated together (bounds the memory kept)

    def _figure5_losses(self, group: list, gamma: Tensor, beta: Tensor, curves: dict[str, list[Tensor]]) -> None:
        """Append lprev and lafter of every row of ``group`` (in order) and step_0 of each
        complete mini-batch to ``curves``.

        The scan keeps references to up to CAPTURE_GROUP mini-batches; their Figure-5 dual
        forms then run as one batched evaluation (stacked along the batch dimension), so capture
        adds a few large operations instead of many small ones per mini-batch.
        """
        c = self.config
        complete = [g for g in group if g[0].end_params is not None]
        if complete:
            params, acts, grads, eta = inner.stack_minibatches([r for r, _, _ in complete])
            xk = torch.cat([x for _, x, _ in complete], dim=0)
            target = torch.cat([t for _, _, t in complete], dim=0)
            lprev, lafter, lstart = inner.figure5_losses(params, xk, target, acts, grads, eta, c, gamma, beta)
            curves["lprev"] += list(lprev.chunk(len(complete), dim=0))
            curves["lafter"] += list(lafter.chunk(len(complete), dim=0))
            curves["step_0"] += [s[..., -1] for s in lstart.chunk(len(complete), dim=0)]
            multipliers = getattr(self.figure5_sink, "step_multipliers", None)
            if multipliers:  # the step-size line search, on the same stacked tensors (step_probe.py)
                scaled = step_probe.line_search_losses(lafter, params, xk, target, acts, grads, eta, c, gamma, beta,
                                                       multipliers=multipliers)
                self.figure5_sink.add_step_losses(scaled, lstart, c.base_lr)
        for res, xk, target in group[len(complete):]:  # the open mini-batch comes last, if any
            lprev, lafter, _ = inner.figure5_losses(res.start_params, xk, target, res.acts, res.grads, res.eta, c, gamma, beta)
            curves["lprev"].append(lprev)
            curves["lafter"].append(lafter)

    @staticmethod
    def _report(sink: Figure5Sink, start: int, b: int, full: int, l0: Tensor, lprev: Tensor, lafter: Tensor,
                lmean: Tensor, step0s: list[Tensor]) -> None:
        """Commit the rows of complete mini-batches once; keep the open mini-batch's rows pending."""
        n = l0.shape[-1]
        curves = {"l0": l0, "lprev": lprev, "lafter": lafter, "lmean": lmean}
        positions = np.arange(start, start + n)
        if full:
            sink.commit(positions[:full], {k: v[..., :full] for k, v in curves.items()})
            ends = np.arange(b - 1, full, b)  # last row of each complete mini-batch
            sink.add_minibatches(positions[ends], l0[..., ends], torch.stack(step0s, -1), lafter[..., ends])
        if full < n:
            sink.set_pending(positions[full:], {k: v[..., full:] for k, v in curves.items()})
        else:
            sink.set_pending(positions[:0], None)


class GatedTTT(nn.Module):
    """out = x + tanh(clamp(alpha, -3, 3)) * TTT(x), alpha per channel.

    ``gate_override`` replaces the learned alpha by raw values per batch row ([B] or [B, width])
    or one value for all rows (a 0-d tensor or float), so a gating sweep is one batched pass.
    """

    def __init__(self, config: TTTConfig, alpha_init: float = 0.1, rope: RopeHook | None = None) -> None:
        super().__init__()
        self.ttt = TTTLayer(config, rope=rope)
        self.alpha = nn.Parameter(torch.full((config.width,), float(alpha_init)))
        self.gate_override: Tensor | float | None = None

    def gate(self, batch: int) -> Tensor:
        """tanh(clamp(alpha)) broadcastable to [B, T, width]."""
        if self.gate_override is None:
            alpha = self.alpha[None, None, :]
        else:
            alpha = torch.as_tensor(self.gate_override, dtype=self.alpha.dtype, device=self.alpha.device)
            if alpha.dim() == 0:
                alpha = alpha.expand(1)[:, None, None]
            elif alpha.dim() == 1:
                if alpha.shape[0] != batch:
                    raise ValueError(f"gate_override has {alpha.shape[0]} rows for a batch of {batch}")
                alpha = alpha[:, None, None]
            else:
                alpha = alpha[:, None, :]
        return effective_gate(alpha)

    @contextlib.contextmanager
    def override_gate(self, values: Tensor | float | None) -> Iterator[None]:
        previous = self.gate_override
        self.gate_override = values
        try:
            yield
        finally:
            self.gate_override = previous

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gate(x.shape[0]).to(x.dtype) * self.ttt(x)


__all__ = ["TTTLayer", "GatedTTT", "TTTState", "rope_within_minibatch"]
