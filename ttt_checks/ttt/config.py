"""Configuration of one TTT layer: which member of the TTT family it is.

The family covers the LM papers (ttt-lm-jax / ttt-lm-pytorch: causal mini-batches, 1/i
token-index weighting) and the video-DiT code the user's Moshi layers were copied from
(non-causal mini-batches, uniform 1/b weighting, L2-normalised Q/K, layer-normalised target).
See docs/ttt-math.md ("TTTConfig fields") for the formulas each field selects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

InnerKind = Literal["linear", "mlp"]
EtaWeighting = Literal["token_index", "uniform"]
TargetKind = Literal["plain", "layernorm"]


class TTTConfigError(ValueError):
    """A TTT configuration that cannot describe a layer (the message says which field)."""


@dataclass(frozen=True)
class TTTConfig:
    """Static description of a TTT layer.

    Attributes:
        width: model width (input and output channels of the layer).
        num_heads, head_dim: the inner loop runs per head on ``head_dim``-sized vectors.
        inner: ``linear`` (f_res(x) = xW + b) or ``mlp`` (``mlp_layers`` >= 2 linear maps with
            tanh-GELU between them).
        mlp_hidden: hidden sizes of the MLP; default ``head_dim * mlp_expansion`` for each.
        inner_norm / inner_residual: f(x) = x + LN(f_res(x)) (the paper's §2.7) when both are
            true; switching them off gives the bare model of Theorem 1 (used by tests).
        target: ``plain`` regresses onto v - k; ``layernorm`` onto LN(v - k) with the inner
            LayerNorm's per-head affine (video-DiT and the user's Moshi code).
        mini_batch_size: b. Gradients inside a mini-batch are taken at its start.
        base_lr: eta_base in eta_j = base_lr * sigmoid(theta_lr . x_j + b) / head_dim.
        eta_weighting: ``token_index`` scales row i of a mini-batch by 1/(i+1) (the LM code);
            ``uniform`` by 1/b (video-DiT, the user's code).
        causal: row i of a mini-batch uses gradients of rows j <= i only (tril); when false
            every row uses the whole mini-batch (a leak of up to b-1 future tokens).
        l2_normalize_qk: normalise each head's q and k to unit length.
        shift_keys: k_t (also inside the target v_t - k_t) is projected from x_(t-1), zeros before
            the first token, while q_t and v_t read x_t. The inner model then stores "what came
            after this context", so a query can recall the token that followed an earlier
            occurrence of its context (induction). It is the simplest case of the causal
            convolution before the keys in the LM paper's Mamba-backbone layers; the user's
            Moshi layers do not have it (default off).
        output_projection: apply post_norm and wo to the inner output (the papers' layer);
            the user's Moshi code skips both.
        ln_eps: epsilon of the inner LayerNorm; target_eps: of the target normalisation.
    """

    width: int
    num_heads: int
    head_dim: int
    inner: InnerKind = "mlp"
    mlp_layers: int = 2
    mlp_expansion: float = 4.0
    mlp_hidden: tuple[int, ...] | None = None
    inner_norm: bool = True
    inner_residual: bool = True
    target: TargetKind = "plain"
    mini_batch_size: int = 16
    base_lr: float = 1.0
    eta_weighting: EtaWeighting = "token_index"
    causal: bool = True
    l2_normalize_qk: bool = False
    shift_keys: bool = False
    output_projection: bool = True
    ln_eps: float = 1e-6
    target_eps: float = 1e-5
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise TTTConfigError(f"invalid TTT config: {msg}")

        for name in ("width", "num_heads", "head_dim", "mini_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                bad(f"{name} must be a positive integer, got {value!r}")
        if self.inner not in ("linear", "mlp"):
            bad(f"inner must be 'linear' or 'mlp', got {self.inner!r}")
        if self.inner == "mlp" and self.mlp_layers < 2:
            bad(f"an MLP inner model needs mlp_layers >= 2, got {self.mlp_layers}")
        if self.mlp_hidden is not None and len(self.mlp_hidden) != self.mlp_layers - 1:
            bad(f"mlp_hidden has {len(self.mlp_hidden)} sizes, mlp_layers={self.mlp_layers} needs {self.mlp_layers - 1}")
        if self.target not in ("plain", "layernorm"):
            bad(f"target must be 'plain' or 'layernorm', got {self.target!r}")
        if self.target == "layernorm" and not self.inner_residual:
            bad("target='layernorm' normalises v - k, which needs inner_residual=True")
        if self.eta_weighting not in ("token_index", "uniform"):
            bad(f"eta_weighting must be 'token_index' or 'uniform', got {self.eta_weighting!r}")
        if self.eta_weighting == "token_index" and not self.causal:
            bad("eta_weighting='token_index' (1/i running mean) is only defined for causal mini-batches")
        if not (self.base_lr >= 0.0):
            bad(f"base_lr must be >= 0, got {self.base_lr!r}")
        if self.ln_eps <= 0 or self.target_eps <= 0:
            bad("ln_eps and target_eps must be > 0")

    @property
    def inner_dims(self) -> tuple[int, ...]:
        """Sizes of the inner model's activations: (head_dim, hidden..., head_dim)."""
        if self.inner == "linear":
            return (self.head_dim, self.head_dim)
        hidden = self.mlp_hidden or (int(round(self.head_dim * self.mlp_expansion)),) * (self.mlp_layers - 1)
        return (self.head_dim, *hidden, self.head_dim)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        if not data["shift_keys"]:
            data.pop("shift_keys")  # configs written before the field existed stay byte-identical
        if data["mlp_hidden"] is not None:
            data["mlp_hidden"] = list(data["mlp_hidden"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TTTConfig":
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TTTConfigError(f"invalid TTT config: unknown field(s) {unknown}; known fields: {sorted(known)}")
        kwargs = dict(data)
        if kwargs.get("mlp_hidden") is not None:
            kwargs["mlp_hidden"] = tuple(kwargs["mlp_hidden"])
        return cls(**kwargs)


def is_inner_initial_state(name: str) -> bool:
    """Is the parameter (or state-dict key) ``name`` part of the inner model's initial state W_0?
    ``TTTLayer.weights.<i>`` / ``TTTLayer.biases.<i>`` (also the user's multi-layer TTT-MLP keys),
    or ``W1``, ``b1``, ``W2``, ``b2`` (the user's two-layer TTT-MLP and older checkpoints).

    These are the tensors a trainable-parameter filter most often misses (it matched ``ttt`` or
    ``wq``, not ``weights.``), and then every sequence starts from the random W_0 of the init."""
    parts = name.split(".")
    last = parts[-1]
    if len(last) >= 2 and last[0] in "Wb" and last[1:].isdigit():
        return True
    return len(parts) >= 2 and parts[-2] in ("weights", "biases") and last.isdigit()
