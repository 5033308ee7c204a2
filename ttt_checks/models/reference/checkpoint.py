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

Whatever is wrong with a checkpoint ends in a :class:`CheckpointError` naming the file: tensor
files are read through :mod:`ttt_checks.models.tensorfile` (header checked, integer weights
refused, ``ttt.pt`` / ``model.pt`` only with ``trust_pickle``), config fields are type-checked,
and every stored shape is compared with a model of the config on the meta device before a real
model is built.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Mapping, Union, get_args, get_origin, get_type_hints

import torch
from safetensors.torch import save_file

from ttt_checks.models.reference.model import Decoder, DecoderConfig
from ttt_checks.models.tensorfile import PICKLE_SUFFIXES, TensorFileError, check_trusted, load_tensors
from ttt_checks.ttt import TTTConfig

if TYPE_CHECKING:
    from ttt_checks.models.reference.train import TTTInit

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
    notes: list[str] = field(default_factory=list)  # what loading changed (a DDP prefix stripped), for the report

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
    """The checkpoint directory for a directory, its config.json, or one of its weights files."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path}: not a reference checkpoint ({CONFIG_NAME} is missing); copy the {CONFIG_NAME} "
                              "saved with the weights, or pass a directory of the zoo, e.g. fixtures/zoo/healthy-seed0")
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json as a dict, checked to be this format's JSON object."""
    file = checkpoint_dir(path) / CONFIG_NAME
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers JSON and UTF-8 errors
        raise CheckpointError(f"{file}: not valid JSON ({exc}); restore the {CONFIG_NAME} saved with the checkpoint") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: a JSON {type(config).__name__}, not an object; restore the {CONFIG_NAME} saved with the checkpoint")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{file}: format {config.get('format')!r}, expected {FORMAT!r}; is this a ttt-checks reference checkpoint?")
    return config


# -- config fields: every value checked before a model is built from it ---------------------------

_RESTORE = "restore the config.json saved with the checkpoint"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a config field of type ``hint`` (sizes are positive)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if origin is tuple:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value) and value >= 1
    if hint is float:
        return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is TTTConfig:
        return isinstance(value, dict)  # its own fields are checked with TTTConfig's hints
    return True


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ')}s"
    names = {type(None): "null", bool: "true or false", int: "a positive integer", float: "a finite number",
             str: "a string", TTTConfig: "an object"}
    return names.get(hint, str(hint))


def _check_fields(data: Mapping[str, Any], cls: type, where: str, file: Path) -> None:
    hints = get_type_hints(cls)
    for name, value in data.items():
        if name in hints and name != "ttt_layers" and not _fits(value, hints[name]):
            raise CheckpointError(f"{file}: {where}.{name} is {value!r}, expected {_describe(hints[name])}; {_RESTORE}")


def decoder_config(config: Mapping[str, Any], file: Path) -> DecoderConfig:
    """The DecoderConfig of a config.json, or a CheckpointError naming the field that is wrong."""
    kind = config.get("kind")
    if kind not in ("base", "ttt"):
        raise CheckpointError(f"{file}: 'kind' is {kind!r}, expected 'base' or 'ttt'; {_RESTORE}")
    dec = config.get("decoder")
    if not isinstance(dec, dict):
        raise CheckpointError(f"{file}: 'decoder' is {'missing' if dec is None else repr(dec)}, expected an object; {_RESTORE}")
    if kind == "ttt":
        base = config.get("base")
        if not isinstance(base, str) or not base or "\0" in base:
            raise CheckpointError(f"{file}: 'base' is {base!r}, expected the base checkpoint's directory, e.g. \"../base\"; {_RESTORE}")
        seed = config.get("ttt_init_seed")
        if not _is_int(seed) or not 0 <= seed < 2**62:
            raise CheckpointError(f"{file}: 'ttt_init_seed' is {seed!r}, expected a non-negative integer; {_RESTORE}")
        ttt_init_of(config, file)
    _check_fields(dec, DecoderConfig, "decoder", file)
    if isinstance(dec.get("ttt"), dict):
        _check_fields(dec["ttt"], TTTConfig, "decoder.ttt", file)
    layers = dec.get("ttt_layers", [])
    if not isinstance(layers, list) or not all(_is_int(i) for i in layers):
        raise CheckpointError(f"{file}: decoder.ttt_layers is {layers!r}, expected a list of block indices; {_RESTORE}")
    num_layers = dec.get("num_layers", DecoderConfig.num_layers)
    lacking = [i for i in layers if not 0 <= i < num_layers]
    if lacking:
        raise CheckpointError(f"{file}: decoder.ttt_layers lists block(s) {lacking}, the model has {num_layers} "
                              f"(0..{num_layers - 1}); {_RESTORE}")
    if (kind == "ttt") != bool(layers):
        want = "a TTT checkpoint needs TTT layers" if kind == "ttt" else "a base checkpoint has no TTT layers"
        raise CheckpointError(f"{file}: kind {kind!r} with decoder.ttt_layers {layers}; {want}; {_RESTORE}")
    try:
        return DecoderConfig.from_dict(dec)
    except (ValueError, TypeError) as exc:  # ModelConfigError / TTTConfigError are ValueErrors
        raise CheckpointError(f"{file}: the decoder config is rejected ({exc}); {_RESTORE}") from exc


def _expected_shapes(dcfg: DecoderConfig, file: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape under ``dcfg``, from a model on the meta device (no memory used).

    The config is checked against the stored tensors before a real model is built, so a config
    that asks for an enormous model fails with a message instead of exhausting memory.
    """
    try:
        with torch.device("meta"):
            model = Decoder(dcfg)
    except Exception as exc:  # noqa: BLE001 - any failure to build is the config's fault here
        raise CheckpointError(f"{file}: the decoder config describes no model that can be built "
                              f"({type(exc).__name__}: {exc}); {_RESTORE}") from exc
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# -- weights --------------------------------------------------------------------------------------


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def weights_file(directory: Path, name: str, trust_pickle: bool = False) -> Path:
    """``directory/name``, or its pickle sibling (``ttt.pt``, ...) when trusted; else a CheckpointError."""
    path = directory / name
    if _is_file(path):
        return path
    for suffix in PICKLE_SUFFIXES:
        sibling = path.with_suffix(suffix)
        if _is_file(sibling):
            try:
                check_trusted(sibling, trust_pickle)
            except TensorFileError as exc:
                raise CheckpointError(str(exc)) from exc
            return sibling
    raise CheckpointError(f"{path}: missing weights file; copy it with the checkpoint's {CONFIG_NAME}")


DDP_PREFIX = "module."


def strip_ddp_prefix(tensors: dict[str, torch.Tensor], path: Path) -> str | None:
    """Strip the ``module.`` prefix a DDP-wrapped model puts on every key (in place), with torch's
    ``consume_prefix_in_state_dict_if_present`` (what users expect: every key that starts with it
    loses it); returns a note for the report, or None when no key had it."""
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    prefixed = sum(1 for k in tensors if k.startswith(DDP_PREFIX))
    if not prefixed:
        return None
    consume_prefix_in_state_dict_if_present(tensors, DDP_PREFIX)
    return (f"{path.name}: {prefixed} of {len(tensors)} tensor names carried the DDP prefix {DDP_PREFIX!r} "
            "(saved from a DistributedDataParallel-wrapped model); stripped on load as "
            "torch.nn.modules.utils.consume_prefix_in_state_dict_if_present does")


def _load_weights(path: Path, trust_pickle: bool = False, notes: list[str] | None = None) -> dict[str, torch.Tensor]:
    try:
        tensors = dict(load_tensors(path, trust_pickle=trust_pickle, floating=str(STORE_DTYPE).removeprefix("torch.")))
    except TensorFileError as exc:
        raise CheckpointError(str(exc)) from exc
    note = strip_ddp_prefix(tensors, path)
    if note and notes is not None:
        notes.append(note)
    return tensors


def _check_shapes(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], path: Path, file: Path) -> None:
    for k, v in tensors.items():
        if tuple(v.shape) != shapes[k]:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, {file} needs {shapes[k]}; "
                                  "the weights and the config do not belong together")


def ttt_init_of(config: Mapping[str, Any], file: Path | str = CONFIG_NAME) -> "TTTInit":
    """How the checkpoint's TTT parameters were drawn (``ttt_init``; absent = the defaults)."""
    from ttt_checks.models.reference.train import TTTInit

    data = config.get("ttt_init")
    if data is not None and not isinstance(data, dict):
        raise CheckpointError(f"{file}: 'ttt_init' is {data!r}, expected an object; {_RESTORE}")
    try:
        return TTTInit.from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: 'ttt_init' {data!r} is invalid ({err}); {_RESTORE}") from err


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> LoadedCheckpoint:
    """Load a base or TTT checkpoint into an fp32 model in eval mode.

    Everything is checked before a real model is built: the config's fields, then every stored
    tensor's name and shape against a model of that config on the meta device. ``trust_pickle``
    allows ``ttt.pt`` / ``model.pt`` in place of the safetensors (read with weights_only).
    """
    from ttt_checks.models.reference.train import build_with_ttt_init

    d = checkpoint_dir(path)
    config = read_config(d)
    file = d / CONFIG_NAME
    dcfg = decoder_config(config, file)
    shapes = _expected_shapes(dcfg, file)
    base_dir = d if config["kind"] == "base" else (d / config["base"])
    try:
        found = base_dir.is_dir()
    except OSError:  # e.g. a name longer than the file system allows
        found = False
    if not found:
        raise CheckpointError(f"{file}: 'base' {config['base']!r} is not a directory ({base_dir}); copy the base checkpoint "
                              "next to this one, as the zoo lays them out")
    base_path = weights_file(base_dir, BASE_WEIGHTS, trust_pickle)
    notes: list[str] = []
    base_tensors = _load_weights(base_path, trust_pickle, notes)
    base_keys = [k for k in shapes if not is_ttt_key(k)]
    missing = sorted(set(base_keys) - set(base_tensors))
    unexpected = sorted(set(base_tensors) - set(base_keys))
    if missing or unexpected:
        raise CheckpointError(f"{base_path}: base weights do not match the decoder config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}); is it the base this checkpoint was trained from?")
    _check_shapes(base_tensors, shapes, base_path, file)
    if config["kind"] == "base":
        model = Decoder(dcfg)
        _copy_into(model, base_tensors)
        return LoadedCheckpoint(d, config, dcfg, model.eval(), base_tensors, notes=notes)

    ttt_path = weights_file(d, TTT_WEIGHTS, trust_pickle)
    ttt = _load_weights(ttt_path, trust_pickle, notes)
    expected = [k for k in shapes if is_ttt_key(k)]
    unexpected = sorted(set(ttt) - set(expected))
    if unexpected:
        raise CheckpointError(f"{ttt_path}: tensors {unexpected[:5]} do not belong to the configured TTT layers "
                              f"{list(dcfg.ttt_layers)}; is {CONFIG_NAME} the one saved with these weights?")
    _check_shapes(ttt, shapes, ttt_path, file)
    model = build_with_ttt_init(dcfg, int(config["ttt_init_seed"]), ttt_init_of(config, file))
    _copy_into(model, {**base_tensors, **ttt})
    missing = [k for k in expected if k not in ttt]
    return LoadedCheckpoint(d, config, dcfg, model.eval(), {**base_tensors, **ttt}, missing, notes)


def _copy_into(model: Decoder, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy checked tensors (any float dtype) into the model's fp32 parameters."""
    params = model.state_dict()
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v.to(params[k].dtype))
