"""On-disk format of the reference model: safetensors + a JSON config, base and TTT apart.

Like the user's Moshi checkpoints (``lora.safetensors`` holds only the trainable TTT modules,
the base comes from elsewhere), a reference TTT checkpoint stores only its TTT tensors and
points at a shared base checkpoint::

    <zoo>/base/model.safetensors   the pretrained decoder (no TTT)
    <zoo>/base/config.json         {"format": ..., "kind": "base", "decoder": {...}, ...}
    <zoo>/<name>/ttt.safetensors   TTT tensors and gate alphas only (bf16, as the user's)
    <zoo>/<name>/config.json       {"kind": "ttt", "base": "../base", "decoder": {...},
                                    "ttt_init_seed": ..., "expected": {...}, ...}

Loading follows the user's ``load_state_dict(strict=False)``: TTT tensors a checkpoint lacks
keep their seeded initial values, and the loader reports them instead of failing, so the
key-completeness check can see the gap. Unknown tensor names are an error.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from ttt_checks.models.reference.model import Decoder, DecoderConfig

FORMAT = "ttt-checks-reference/1"
CONFIG_NAME = "config.json"
BASE_WEIGHTS = "model.safetensors"
TTT_WEIGHTS = "ttt.safetensors"
STORE_DTYPE = torch.bfloat16


class CheckpointError(RuntimeError):
    """A reference checkpoint that cannot be read; the message names the file and the fix."""


def is_ttt_key(name: str) -> bool:
    """TTT tensors live under ``layers.<i>.ttt.`` (GatedTTT: alpha and the TTTLayer's tensors)."""
    return ".ttt." in name


@dataclass
class LoadedCheckpoint:
    """A reference model ready to run, with what was (and was not) in its files."""

    path: Path
    config: dict[str, Any]
    decoder_config: DecoderConfig
    model: Decoder
    tensors: dict[str, torch.Tensor]  # every tensor as stored (base + TTT), stored dtype
    missing_ttt_keys: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.path.name))


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; checkpoints are meant to be shared
    os.replace(tmp, path)


def _save_tensors_atomic(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_base(model: Decoder, out_dir: Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the base decoder (bf16) and its config."""
    if model.config.ttt_layers:
        raise CheckpointError("save_base() got a model with TTT blocks; save it with save_ttt()")
    out_dir = Path(out_dir)
    tensors = {k: v.to(STORE_DTYPE) for k, v in model.state_dict().items()}
    _save_tensors_atomic(tensors, out_dir / BASE_WEIGHTS, {"format": FORMAT})
    _write_json_atomic(out_dir / CONFIG_NAME, {"format": FORMAT, "kind": "base", "decoder": model.config.to_dict(), **(extra or {})})
    return out_dir


def ttt_tensors(model: Decoder) -> dict[str, torch.Tensor]:
    """The TTT tensors of a model, in the stored dtype."""
    return {k: v.to(STORE_DTYPE) for k, v in model.state_dict().items() if is_ttt_key(k)}


def save_ttt(
    model: Decoder | None, out_dir: Path, base_dir: Path, init_seed: int, extra: Mapping[str, Any] | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None, decoder_config: DecoderConfig | None = None,
) -> Path:
    """Write a TTT checkpoint: its TTT tensors (from ``model`` or given) and a config naming the base."""
    out_dir = Path(out_dir)
    if tensors is None:
        if model is None:
            raise CheckpointError("save_ttt() needs a model or explicit tensors")
        tensors = ttt_tensors(model)
    cfg = decoder_config or (model.config if model is not None else None)
    if cfg is None or not cfg.ttt_layers:
        raise CheckpointError("save_ttt() needs a decoder config with TTT layers")
    bad = [k for k in tensors if not is_ttt_key(k)]
    if bad:
        raise CheckpointError(f"TTT checkpoints hold TTT tensors only; got base tensors {bad[:3]}...")
    _save_tensors_atomic(tensors, out_dir / TTT_WEIGHTS, {"format": FORMAT})
    base_rel = os.path.relpath(Path(base_dir).resolve(), out_dir.resolve())
    _write_json_atomic(out_dir / CONFIG_NAME, {
        "format": FORMAT, "kind": "ttt", "base": base_rel, "decoder": cfg.to_dict(), "ttt_init_seed": init_seed,
        **(extra or {}),
    })
    return out_dir


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory for a directory, its config.json, or one of its safetensors."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path}: not a reference checkpoint (no {CONFIG_NAME}); pass a directory of the zoo, e.g. fixtures/zoo/healthy-seed0")
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    d = checkpoint_dir(path)
    try:
        config = json.loads((d / CONFIG_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{d / CONFIG_NAME}: not valid JSON ({exc})") from exc
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{d / CONFIG_NAME}: format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    return load_file(str(path))


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load a base or TTT checkpoint into an fp32 model in eval mode."""
    from ttt_checks.models.reference.train import build_with_ttt_init

    d = checkpoint_dir(path)
    config = read_config(d)
    dcfg = DecoderConfig.from_dict(config["decoder"])
    if config["kind"] == "base":
        tensors = _load_weights(d / BASE_WEIGHTS)
        model = Decoder(dcfg)
        _load_strict_base(model, tensors, d / BASE_WEIGHTS)
        return LoadedCheckpoint(d, config, dcfg, model.eval(), tensors)
    if config["kind"] != "ttt":
        raise CheckpointError(f"{d / CONFIG_NAME}: unknown checkpoint kind {config['kind']!r}")
    base_dir = (d / config["base"]).resolve()
    base_tensors = _load_weights(base_dir / BASE_WEIGHTS)
    ttt = _load_weights(d / TTT_WEIGHTS)
    model = build_with_ttt_init(dcfg, int(config["ttt_init_seed"]))
    _load_strict_base(model, base_tensors, base_dir / BASE_WEIGHTS)
    expected = [k for k in model.state_dict() if is_ttt_key(k)]
    unexpected = sorted(set(ttt) - set(expected))
    if unexpected:
        raise CheckpointError(f"{d / TTT_WEIGHTS}: tensors {unexpected[:5]} do not belong to the configured TTT layers {list(dcfg.ttt_layers)}")
    with torch.no_grad():
        params = model.state_dict()
        for k, v in ttt.items():
            if params[k].shape != v.shape:
                raise CheckpointError(f"{d / TTT_WEIGHTS}: {k} has shape {tuple(v.shape)}, the config needs {tuple(params[k].shape)}")
            params[k].copy_(v.to(params[k].dtype))
    missing = [k for k in expected if k not in ttt]
    return LoadedCheckpoint(d, config, dcfg, model.eval(), {**base_tensors, **ttt}, missing)


def _load_strict_base(model: Decoder, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    params = model.state_dict()
    base_keys = [k for k in params if not is_ttt_key(k)]
    missing = sorted(set(base_keys) - set(tensors))
    unexpected = sorted(set(tensors) - set(base_keys))
    if missing or unexpected:
        raise CheckpointError(f"{path}: base weights do not match the decoder config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        for k in base_keys:
            params[k].copy_(tensors[k].to(params[k].dtype))
