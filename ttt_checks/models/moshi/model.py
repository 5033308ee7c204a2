"""Building the Moshi+TTT model of a checkpoint: base weights, LoRA, TTT injection, tensors.

Order follows the user's ``load_ttt_model``: base Moshi through moshi's CheckpointInfo (LoRA
off), LoRA adapters when the run trained them, TTT injected into the configured blocks, then
the checkpoint's tensors. Merged ``consolidated.safetensors`` always load with ``lora: false``
(with ``lora: true`` moshi would add random adapters on top of merged weights).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ttt_checks.models.moshi.checkpoint import (
    LAYER_RE,
    BaseWeights,
    CheckpointFiles,
    LayerKeys,
    MoshiCheckpointError,
    base_key,
    checkpoint_info,
    detect_inner,
    detect_layout,
    layer_keys,
    read_weights,
)
from ttt_checks.models.moshi.inject import TTTHybridLayer, inject_ttt
from ttt_checks.ttt import TTTConfig

# The user's TTT: video-DiT semantics (non-causal uniform mini-batches, LN target with unbiased
# std and eps 1e-5, L2-normalised q/k), inner LN eps 1e-8 as in video-DiT, no post_norm / wo.
USER_TTT_SEMANTICS: dict[str, Any] = dict(
    inner_norm=True, inner_residual=True, target="layernorm", eta_weighting="uniform", causal=False,
    l2_normalize_qk=True, output_projection=False, ln_eps=1e-8, target_eps=1e-5,
)


def ttt_config_for(width: int, num_heads: int, inner: str, mlp_layers: int, ttt: Any) -> TTTConfig:
    """Our TTTConfig for one of the user's layers (head_dim = width / num_heads: 128 for Moshi 7B)."""
    if width % num_heads:
        raise MoshiCheckpointError(f"config.json: dim {width} is not divisible by num_heads {num_heads}")
    hidden = ttt["ttt_mlp_hidden_dims"]
    return TTTConfig(
        width=width, num_heads=num_heads, head_dim=width // num_heads, inner=inner,
        mlp_layers=mlp_layers if inner == "mlp" else 2,
        mlp_expansion=float(ttt["ttt_mlp_expansion_factor"]),
        mlp_hidden=tuple(int(h) for h in hidden) if hidden and inner == "mlp" else None,
        mini_batch_size=int(ttt["mini_batch_size"]), base_lr=float(ttt["base_lr"]), **USER_TTT_SEMANTICS,
    )


@dataclass
class LoadReport:
    """What loading found: TTT tensors missing or unexpected, and what was ignored."""

    missing_ttt: list[str] = field(default_factory=list)
    unexpected_ttt: list[str] = field(default_factory=list)
    dropped_duplicates: int = 0
    layouts: dict[int, str] = field(default_factory=dict)  # layer -> "wrapper" | "direct" | "absent"
    load_seconds: float = 0.0


@dataclass
class LoadedMoshi:
    lm: Any
    mimi: Any
    tokenizer: Any
    info: Any
    hybrids: dict[int, TTTHybridLayer]
    keys: dict[int, LayerKeys]
    tensors: dict[str, torch.Tensor]
    report: LoadReport
    dtype: torch.dtype
    device: torch.device


def _lm_kwargs(info: Any) -> dict[str, Any]:
    from moshi.models import loaders

    return dict(info.lm_config if info.lm_config is not None else loaders._lm_kwargs)


def load_moshi(files: CheckpointFiles, base: BaseWeights, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, carry_state: bool = True) -> LoadedMoshi:
    """The injected model of ``files`` on ``device`` (bf16 on GPU, fp32 on CPU unless ``dtype``)."""
    from moshi.models import loaders
    from moshi.modules.lora import replace_all_linear_with_lora

    t0 = time.perf_counter()
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    info = checkpoint_info(files, base)
    kwargs = _lm_kwargs(info)
    num_layers, width, num_heads = int(kwargs["num_layers"]), int(kwargs["dim"]), int(kwargs["num_heads"])
    tensors = read_weights(files)  # checked: truncation, damage, dtype, untrusted pickle

    if files.full:
        lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="meta", dtype=dtype, lm_kwargs_overrides={"lora": False})
    else:
        try:
            lm = info.get_moshi(device=device, dtype=dtype, load_weight=True, lm_kwargs_overrides={"lora": False})
        except (RuntimeError, KeyError) as exc:
            raise MoshiCheckpointError(
                f"base Moshi weights {info.moshi_weights} do not fit {files.consolidated / 'config.json'}: {exc}. "
                "Pass the base model the run was trained from (TTT_CHECKS_MOSHI_WEIGHT / TTT_CHECKS_HF_REPO)"
            ) from exc
    lora = bool(files.config.get("lora", False)) and not files.full
    if lora:
        replace_all_linear_with_lora(lm, int(files.config.get("lora_rank", 128)), float(files.config.get("lora_scaling", 2.0)),
                                     device=None if files.full else device)

    ttt = files.ttt
    if not ttt["enable"]:
        raise MoshiCheckpointError(f"{files.consolidated / 'training_config.json'}: ttt.enable is false; this run has no TTT layers to check")
    indices = ttt.layer_indices(num_layers)
    names = list(tensors)
    keys: dict[int, LayerKeys] = {}
    configs: dict[int, TTTConfig] = {}
    report = LoadReport()
    for i in indices:
        wrapper = detect_layout(names, i)
        report.layouts[i] = {True: "wrapper", False: "direct", None: "absent"}[wrapper]
        probe_keys = layer_keys(i, "mlp", 2, wrapper=wrapper is not False)
        inner, depth = detect_inner(tensors, probe_keys, ttt)
        keys[i] = layer_keys(i, inner, depth, wrapper=wrapper is not False)
        configs[i] = ttt_config_for(width, num_heads, inner, depth, ttt)

    hybrids = inject_ttt(lm, indices, configs, float(ttt["initial_gating_alpha"]),
                         use_rope=bool(ttt["use_rope"]), rope_theta=float(ttt["rope_theta"]))

    # Split the checkpoint: TTT tensors by name map, base tensors by their (normalised) names.
    ttt_state: dict[str, torch.Tensor] = {}
    base_state: dict[str, torch.Tensor] = {}
    known_ttt = {}
    unused = set()
    for i, lk in keys.items():
        known_ttt.update({k: (i, v) for k, v in lk.mapping.items()})
        unused.update(lk.unused)
    for name, value in tensors.items():
        if name in known_ttt:
            i, ours = known_ttt[name]
            ttt_state[f"transformer.layers.{i}.ttt_block.{ours}"] = value
            continue
        if name in unused:
            continue
        if LAYER_RE.match(name) and not name.split("seq_modeling_block.", 1)[1].startswith("original_layer."):
            report.unexpected_ttt.append(name)
            continue
        target = base_key(name, set(indices))
        if target is None:
            report.dropped_duplicates += 1
            continue
        base_state[target] = value
    report.missing_ttt = [k for lk in keys.values() for k in lk.expected if k not in tensors]

    # Shapes: every TTT tensor against the module the config builds.
    model_state = lm.state_dict(keep_vars=True)
    for ours, value in ttt_state.items():
        want = model_state[ours]
        have = value
        if ours.endswith("ttt.lr_weight") and have.dim() == 3:
            have = have.reshape(have.shape[0], have.shape[-1])  # [H, 1, width] -> [H, width]
        if ours.endswith("ttt.lr_bias") and have.dim() == 2:
            have = have.reshape(-1)  # [H, 1] -> [H]
        if tuple(have.shape) != tuple(want.shape):
            src = next(k for k, (i, v) in known_ttt.items() if f"transformer.layers.{i}.ttt_block.{v}" == ours)
            raise MoshiCheckpointError(
                f"{files.weights}: {src} has shape {tuple(value.shape)}, the config implies {tuple(want.shape)} "
                f"(dim {width}, num_heads {num_heads}, ttt_mlp_layers {ttt['ttt_mlp_layers']}, "
                f"ttt_mlp_expansion_factor {ttt['ttt_mlp_expansion_factor']}). The checkpoint and its "
                "config.json / training_config.json do not belong together"
            )
        ttt_state[ours] = have

    state = {**base_state, **ttt_state}
    if files.full:
        result = lm.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                                    strict=False, assign=True)
        lm.to(device)
        missing_base = [k for k in result.missing_keys if ".ttt_block." not in k]
        if missing_base:
            raise MoshiCheckpointError(
                f"{files.weights}: a consolidated checkpoint must hold every base weight; missing "
                f"{missing_base[:6]}{' ...' if len(missing_base) > 6 else ''} ({len(missing_base)} in all)"
            )
        still_meta = [n for n, p in lm.named_parameters() if p.is_meta]
        if still_meta:  # TTT tensors the checkpoint lacks: give them their initial values
            _materialise(lm, hybrids, still_meta, device, dtype, float(ttt["initial_gating_alpha"]))
    else:
        with torch.no_grad():
            result = lm.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
    if result.unexpected_keys:
        raise MoshiCheckpointError(
            f"{files.weights}: tensors that fit no module of the model: {result.unexpected_keys[:8]}"
            f"{' ...' if len(result.unexpected_keys) > 8 else ''}. Is config.json (lora: {files.config.get('lora')}) the run's own?"
        )
    for h in hybrids.values():
        h.carry_state = carry_state
    for i, h in hybrids.items():  # per-layer attention contexts the user's inference sets
        if ttt["ttt_layer_context"] is not None:
            h.original_layer.self_attn.context = int(ttt["ttt_layer_context"])
    if ttt["non_ttt_layer_context"] is not None:
        for j, layer in enumerate(lm.transformer.layers):
            if j not in hybrids:
                layer.self_attn.context = int(ttt["non_ttt_layer_context"])
    lm.eval()
    lm.to(device=device)
    mimi = info.get_mimi(device=device)
    mimi.eval()
    tokenizer = info.get_text_tokenizer()
    report.load_seconds = time.perf_counter() - t0
    return LoadedMoshi(lm=lm, mimi=mimi, tokenizer=tokenizer, info=info, hybrids=hybrids, keys=keys,
                       tensors=tensors, report=report, dtype=dtype, device=device)


def _materialise(lm: Any, hybrids: dict[int, TTTHybridLayer], names: list[str], device: torch.device,
                 dtype: torch.dtype, alpha_init: float) -> None:
    """Give meta TTT parameters (absent from a consolidated checkpoint) real initial values."""
    for i, h in hybrids.items():
        prefix = f"transformer.layers.{i}.ttt_block."
        if not any(n.startswith(prefix) for n in names):
            continue
        fresh = type(h.ttt_block)(h.ttt.config, alpha_init=alpha_init, rope=h.ttt.rope).to(device=device, dtype=dtype)
        for n, p in h.ttt_block.named_parameters():
            if p.is_meta:
                module_path, _, leaf = n.rpartition(".")
                owner = h.ttt_block.get_submodule(module_path) if module_path else h.ttt_block
                setattr(owner, leaf, torch.nn.Parameter(fresh.get_parameter(n).detach().clone(), requires_grad=False))
    left = [n for n, p in lm.named_parameters() if p.is_meta]
    if left:
        raise MoshiCheckpointError(f"parameters never loaded: {left[:6]}")


def export_ttt_tensors(hybrids: dict[int, TTTHybridLayer], keys: dict[int, LayerKeys], initial_alpha: float,
                       dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict[str, torch.Tensor]:
    """The TTT tensors of ``hybrids`` under the user's checkpoint names (``keys`` picks the layout).

    The tensors the user's forward never applies are written at their initial values, as a
    real checkpoint has them: post_norm (1, 0), wo (random, seeded), backward gate (alpha init).
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for i, lk in keys.items():
        block = hybrids[i].ttt_block
        params = dict(block.named_parameters())
        c = block.ttt.config
        for ckpt, ours in lk.mapping.items():
            t = params[ours].detach().float().clone()
            if ours == "ttt.lr_weight":
                t = t[:, None, :]
            elif ours == "ttt.lr_bias":
                t = t[:, None]
            out[ckpt] = t.to(dtype).contiguous()
        inner_width = c.num_heads * c.head_dim
        p = lk.ttt_prefix
        out[p + "wo.weight"] = (torch.randn(c.width, inner_width, generator=gen) * 0.02).to(dtype)
        out[p + "wo.bias"] = torch.zeros(c.width, dtype=dtype)
        out[p + "post_norm.weight"] = torch.ones(inner_width, dtype=dtype)
        out[p + "post_norm.bias"] = torch.zeros(inner_width, dtype=dtype)
        out[lk.block_prefix + "backward_ssm_gating.gating_alpha"] = torch.full((c.width,), initial_alpha).to(dtype)
    return out
