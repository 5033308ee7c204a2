"""The reference decoder: a small byte-level transformer with optional gated TTT blocks.

Block layout (the user's Moshi hybrid layer): pre-norm self-attention, then the gated TTT
block ``x + tanh(alpha) * TTT(x)`` on the residual stream, then the pre-norm feed-forward::

    x = x + Attn(LN(x))
    x = GatedTTT(x)            # only in the blocks listed in ``ttt_layers``
    x = x + FFN(LN(x))

Streaming (``with model.stream():``) keeps an attention KV cache and the TTT layers' inner
state across calls, so a sequence can be fed in chunks (teacher forcing the way Moshi streams)
or one token at a time (generation).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttt_checks.models.reference.tokenizer import PAD, VOCAB_SIZE
from ttt_checks.ttt import GatedTTT, TTTConfig, TTTLayer


class ModelConfigError(ValueError):
    """A decoder configuration that cannot be built (the message names the field)."""


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of the decoder and where its TTT blocks are.

    ``ttt_reset_each_call`` reproduces the user's 2-layer code, whose TTT inner weights
    restarted from W_0 at every forward call instead of being carried along the stream.

    ``attention_window`` limits every block's self-attention to the last ``attention_window``
    positions (the query's own included), as the user's Moshi runs restrict attention around TTT
    layers (``ttt_layer_context``): context further back reaches the model only through the TTT
    memory. ``None`` is full causal attention, the format's original model (configs saved
    before the field existed load as that).
    """

    vocab_size: int = VOCAB_SIZE
    width: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_hidden: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    ttt_layers: tuple[int, ...] = ()
    ttt: TTTConfig | None = None
    alpha_init: float = 0.1
    ttt_reset_each_call: bool = False
    attention_window: int | None = None

    def __post_init__(self) -> None:
        if self.attention_window is not None and self.attention_window < 1:
            raise ModelConfigError(f"attention_window must be a positive number of positions or None, got {self.attention_window}")
        if self.width % self.num_heads:
            raise ModelConfigError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if (self.width // self.num_heads) % 2:
            raise ModelConfigError("attention head_dim must be even for RoPE")
        bad = [i for i in self.ttt_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ModelConfigError(f"ttt_layers {bad} are outside 0..{self.num_layers - 1}")
        if self.ttt_layers and self.ttt is None:
            raise ModelConfigError("ttt_layers are given but no ttt config")
        if self.ttt is not None and self.ttt.width != self.width:
            raise ModelConfigError(f"ttt.width {self.ttt.width} must equal the model width {self.width}")

    def with_ttt(self, ttt: TTTConfig, layers: tuple[int, ...], alpha_init: float = 0.1) -> "DecoderConfig":
        return DecoderConfig(**{**self._plain_fields(), "ttt": ttt, "ttt_layers": tuple(layers), "alpha_init": alpha_init})

    def _plain_fields(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def to_dict(self) -> dict[str, Any]:
        data = self._plain_fields()
        data["ttt_layers"] = list(self.ttt_layers)
        data["ttt"] = None if self.ttt is None else self.ttt.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecoderConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown decoder config field(s) {unknown}; known: {sorted(known)}")
        kwargs = dict(data)
        kwargs["ttt_layers"] = tuple(kwargs.get("ttt_layers", ()))
        if kwargs.get("ttt") is not None:
            kwargs["ttt"] = TTTConfig.from_dict(kwargs["ttt"])
        return cls(**kwargs)


def apply_rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary position embedding on x [B, H, T, D] at absolute ``positions`` [T]."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


@dataclass
class KVCache:
    """Keys and values of the positions a streaming attention layer can still attend to.

    With full attention it holds every position seen; with a local window it is trimmed to the
    last ``window`` positions after each call, so ``start`` (the absolute position of its first
    entry) can move on while ``next_position`` counts every position of the stream.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    start: int = 0

    @property
    def length(self) -> int:
        """Positions stored now."""
        return 0 if self.k is None else int(self.k.shape[-2])

    @property
    def next_position(self) -> int:
        """Absolute position of the next token fed to the stream."""
        return self.start + self.length

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            if k.shape[0] != self.k.shape[0]:
                raise ValueError(f"streaming attention got batch {k.shape[0]}, the stream started with {self.k.shape[0]}")
            self.k, self.v = torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2)
        return self.k, self.v

    def trim(self, keep: int) -> None:
        """Forget all but the last ``keep`` positions (those a later query can still attend to)."""
        drop = self.length - keep
        if drop > 0 and self.k is not None and self.v is not None:
            self.k, self.v = self.k[..., drop:, :], self.v[..., drop:, :]
            self.start += drop


def local_attention_mask(query_positions: Tensor, key_positions: Tensor, window: int | None) -> Tensor:
    """[Tq, Tk] bool: key j is visible to query i when j <= i and (with a window) i - j < window."""
    q, k = query_positions[:, None], key_positions[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    return allowed


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE, an optional local window and an optional KV cache."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.theta = config.rope_theta
        self.window = config.attention_window
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.out = nn.Linear(config.width, config.width, bias=False)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        B, T, C = x.shape
        H = self.num_heads
        q, k, v = self.qkv(x).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
        start = 0 if cache is None else cache.next_position
        positions = torch.arange(start, start + T, device=x.device)
        q, k = apply_rope(q, positions, self.theta), apply_rope(k, positions, self.theta)
        key_start = start
        if cache is not None:
            key_start = cache.start
            k, v = cache.append(k, v)
        if start == 0 and self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            keys = torch.arange(key_start, start + T, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=local_attention_mask(positions, keys, self.window))
        if cache is not None and self.window is not None:
            cache.trim(self.window - 1)  # the next query (at start + T) sees keys from start + T - window + 1 on
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.width, config.ffn_hidden, bias=False)
        self.down = nn.Linear(config.ffn_hidden, config.width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Attention, optional gated TTT, feed-forward (see the module docstring for the order)."""

    def __init__(self, config: DecoderConfig, with_ttt: bool) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.attn = Attention(config)
        self.ttt: GatedTTT | None = None
        if with_ttt:
            assert config.ttt is not None
            self.ttt = GatedTTT(config.ttt, alpha_init=config.alpha_init)
            self.ttt.ttt.reset_state_each_call = config.ttt_reset_each_call
        self.ffn_norm = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cache)
        if self.ttt is not None:
            x = self.ttt(x)
        return x + self.ffn(self.ffn_norm(x))


class Decoder(nn.Module):
    """Byte-level decoder LM; the output head is tied to the embedding (half the bytes on disk)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.width)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList([Block(config, i in config.ttt_layers) for i in range(config.num_layers)])
        self.norm = nn.LayerNorm(config.width, eps=config.norm_eps)
        self._caches: list[KVCache] | None = None

    # -- TTT access -----------------------------------------------------------------------------

    def gated_blocks(self) -> dict[str, GatedTTT]:
        """The GatedTTT modules by their TTT-layer name (``layers.<i>.ttt``), in block order."""
        return {f"layers.{i}.ttt": blk.ttt for i, blk in enumerate(self.layers) if blk.ttt is not None}

    def ttt_layers(self) -> dict[str, TTTLayer]:
        """The TTT layers (what a Figure5Probe attaches to), by the same names."""
        return {name: g.ttt for name, g in self.gated_blocks().items()}

    @contextlib.contextmanager
    def override_gates(self, alpha: Tensor | float | None) -> Iterator[None]:
        """Replace every TTT gate's learned alpha: a float, [B] per batch row, or [B, width]."""
        with contextlib.ExitStack() as stack:
            for g in self.gated_blocks().values():
                stack.enter_context(g.override_gate(alpha))
            yield

    # -- forward --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def stream(self) -> Iterator["Decoder"]:
        """Consecutive forward calls continue one sequence (KV cache + carried TTT state)."""
        if self._caches is not None:
            raise RuntimeError("the decoder is already streaming; streams cannot be nested")
        with contextlib.ExitStack() as stack:
            for layer in self.ttt_layers().values():
                stack.enter_context(layer.stream())
            self._caches = [KVCache() for _ in self.layers]
            try:
                yield self
            finally:
                self._caches = None

    def frozen_prefix(self, tokens: Tensor) -> Tensor:
        """The residual stream [B, T, width] entering the first TTT block's gated TTT (the embedding, the
        blocks before it and its own attention), for a one-pass forward (no streaming).

        Fine-tuning with the base frozen trains nothing before that point, so the prefix of a window is
        the same at every step: ``finetune_ttt`` with a window pool computes it once per window
        (``forward_from_prefix(frozen_prefix(t))`` is ``forward(t)``).
        """
        first = self._first_ttt_block()
        x = self.embed(tokens)
        for block in self.layers[:first]:
            x = block(x)
        block = self.layers[first]
        return x + block.attn(block.attn_norm(x))

    def forward_from_prefix(self, x: Tensor) -> Tensor:
        """Logits [B, T, vocab] from the output of ``frozen_prefix`` (one pass, no streaming)."""
        first = self._first_ttt_block()
        block = self.layers[first]
        x = block.ttt(x)
        x = x + block.ffn(block.ffn_norm(x))
        for later in self.layers[first + 1:]:
            x = later(x)
        return F.linear(self.norm(x), self.embed.weight)

    def _first_ttt_block(self) -> int:
        if self._caches is not None:
            raise RuntimeError("frozen_prefix / forward_from_prefix are one-pass forwards; the decoder is streaming")
        if not self.config.ttt_layers:
            raise ValueError("the decoder has no TTT block, so it has no frozen prefix before one")
        return min(self.config.ttt_layers)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits [B, T, vocab] for token ids [B, T]."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tuple(tokens.shape)}")
        x = self.embed(tokens)
        for i, block in enumerate(self.layers):
            x = block(x, None if self._caches is None else self._caches[i])
        return F.linear(self.norm(x), self.embed.weight)


def lm_loss(model: Decoder, windows: Tensor, reduction: str = "mean") -> Tensor:
    """Next-token cross-entropy of windows [B, T+1]: a scalar, or [B, T] with ``reduction="none"``.

    PAD targets are ignored (they get 0 in the per-position form).
    """
    return next_token_loss(model(windows[:, :-1]), windows[:, 1:], reduction)


def next_token_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """``lm_loss`` from logits [B, T, vocab] and their targets [B, T] (PAD ignored)."""
    logits = logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD, reduction="none")
    if reduction == "none":
        return loss.view_as(targets)
    mask = (targets != PAD).reshape(-1)
    return loss.sum() / mask.sum().clamp_min(1)
