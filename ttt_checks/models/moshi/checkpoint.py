"""Reading a moshi-finetune TTT checkpoint: where it is, what it declares, which tensors it holds.

moshi-finetune writes ``<run>/checkpoints/checkpoint_NNNNNN/consolidated/`` with
``lora.safetensors`` (only the trainable modules: TTT, LoRA, unfrozen attention) or
``consolidated.safetensors`` (every weight), plus ``config.json`` (LM kwargs and LoRA keys) and
``training_config.json`` (the full TrainArgs; its ``ttt`` section decides the TTT layers). Older
runs lack newer ``ttt`` keys, so every key has the default the training code used.

TTT tensor names changed over the user's history; they are matched by *suffix* within
``transformer.layers.L.seq_modeling_block.``, so the wrapper layout
(``ttt_layer.ttt.W1``) and the older direct layout (``W1`` on the block) both load.
See docs/moshi-checkpoints.md ("Layouts", "TTT tensor names") for the layouts.

Broken checkpoints fail in :func:`locate` (configs: JSON, key types, TTT layers the model lacks)
or :func:`read_weights` (the weights file, through :mod:`ttt_checks.models.tensorfile`), each
with a :class:`MoshiCheckpointError` naming the file, before any model is built.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ttt_checks.models.base import RecipeField
from ttt_checks.models.tensorfile import PICKLE_SUFFIXES, TensorFileError, check_trusted, load_tensors

DEFAULT_HF_REPO = "kyutai/moshiko-pytorch-bf16"

# Environment variables that name base weights, so `pytest --ckpt` works without extra flags.
ENV_MOSHI_WEIGHT = "TTT_CHECKS_MOSHI_WEIGHT"
ENV_MIMI_WEIGHT = "TTT_CHECKS_MIMI_WEIGHT"
ENV_TOKENIZER = "TTT_CHECKS_TOKENIZER"
ENV_HF_REPO = "TTT_CHECKS_HF_REPO"
ENV_MIMI_CONFIG = "TTT_CHECKS_MIMI_CONFIG"

CHECKPOINT_DIR_RE = re.compile(r"^checkpoint_(\d+)$")
LORA_FILE = "lora.safetensors"
CONSOLIDATED_FILE = "consolidated.safetensors"

# TTTArgs defaults of moshi-finetune (finetune/args.py); used when an older checkpoint lacks a key.
TTT_DEFAULTS: dict[str, Any] = {
    "enable": False,
    "layers": "middle",
    "base_lr": 1.0,
    "mini_batch_size": 16,
    "persistent_states": True,
    "initial_gating_alpha": 0.1,
    "ttt_mlp_layers": 2,
    "ttt_mlp_hidden_dims": None,
    "ttt_mlp_expansion_factor": 4.0,
    "use_rope": False,
    "rope_theta": 10000.0,
    "ttt_layer_context": None,
    "non_ttt_layer_context": None,
}


class MoshiCheckpointError(RuntimeError):
    """A moshi-finetune checkpoint that cannot be read; the message names the file and the fix."""


def is_moshi_checkpoint(path: Path) -> bool:
    """True when ``path`` is a run dir, a ``checkpoint_NNNNNN`` dir or its ``consolidated/`` dir."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "training_config.json").is_file():
        return True
    if CHECKPOINT_DIR_RE.match(path.name) and (path / "consolidated").is_dir():
        return True
    ckpts = path / "checkpoints"
    return ckpts.is_dir() and any(CHECKPOINT_DIR_RE.match(p.name) for p in ckpts.iterdir())


def consolidated_dir(path: Path) -> Path:
    """The ``consolidated/`` directory ``path`` points at (the latest step of a run dir)."""
    path = Path(path).expanduser()
    if (path / "training_config.json").is_file() or ((path / "config.json").is_file() and path.name == "consolidated"):
        return path
    if CHECKPOINT_DIR_RE.match(path.name):
        return path / "consolidated"
    ckpts = path / "checkpoints"
    if ckpts.is_dir():
        steps = sorted(
            (int(m.group(1)), p) for p in ckpts.iterdir() if (m := CHECKPOINT_DIR_RE.match(p.name)) and p.is_dir()
        )
        if not steps:
            raise MoshiCheckpointError(f"{ckpts}: no checkpoint_NNNNNN directory; the run has not saved a checkpoint yet")
        return steps[-1][1] / "consolidated"
    raise MoshiCheckpointError(
        f"{path}: not a moshi-finetune checkpoint. Pass the run dir (holding checkpoints/), "
        "a checkpoints/checkpoint_NNNNNN dir, or its consolidated/ dir"
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise MoshiCheckpointError(
            f"{path}: missing. moshi-finetune writes {path.name} ({what}) next to the weights; "
            "copy it from the training run, without it the TTT layers cannot be rebuilt"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers JSON and UTF-8 errors
        raise MoshiCheckpointError(f"{path}: not readable JSON ({exc}); copy it again from the training run") from exc
    if not isinstance(data, dict):
        raise MoshiCheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}; copy it again from the training run")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# What each ttt key must hold (after defaults), as (test, description): a wrong type fails here,
# with the key named, instead of as a ValueError deep inside model building.
_TTT_KEY_TYPES: dict[str, tuple[Any, str]] = {
    "enable": (lambda v: isinstance(v, bool), "true or false"),
    "layers": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(_is_int(i) for i in v)),
               "all, middle, none, '29,30,31' or a list of block indices"),
    "base_lr": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "mini_batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "persistent_states": (lambda v: isinstance(v, bool), "true or false"),
    "initial_gating_alpha": (_is_number, "a finite number"),
    "ttt_mlp_layers": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "ttt_mlp_hidden_dims": (lambda v: v is None or (isinstance(v, list) and all(_is_int(i) and i >= 1 for i in v)),
                            "null or a list of positive integers"),
    "ttt_mlp_expansion_factor": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "use_rope": (lambda v: isinstance(v, bool), "true or false"),
    "rope_theta": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "ttt_layer_context": (lambda v: v is None or (_is_int(v) and v >= 1), "null or a positive integer"),
    "non_ttt_layer_context": (lambda v: v is None or (_is_int(v) and v >= 1), "null or a positive integer"),
}

# config.json: the LM kwargs the TTT layers are built from, and the LoRA switches.
_CONFIG_KEY_TYPES: dict[str, tuple[Any, str]] = {
    "dim": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "num_heads": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "num_layers": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
}
_CONFIG_OPTIONAL_TYPES: dict[str, tuple[Any, str]] = {
    "lora": (lambda v: isinstance(v, bool), "true or false"),
    "lora_rank": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "lora_scaling": (_is_number, "a finite number"),
}


def check_lm_config(config: Mapping[str, Any], path: Path) -> None:
    """config.json holds the LM kwargs (dim, num_heads, num_layers) the TTT layers are sized from."""
    for key, (ok, want) in _CONFIG_KEY_TYPES.items():
        if key not in config:
            raise MoshiCheckpointError(f"{path}: {key!r} is missing; moshi-finetune writes the LM kwargs here, "
                                       "copy the run's own config.json")
        if not ok(config[key]):
            raise MoshiCheckpointError(f"{path}: {key} is {config[key]!r}, expected {want}; copy the run's own config.json")
    for key, (ok, want) in _CONFIG_OPTIONAL_TYPES.items():
        if key in config and not ok(config[key]):
            raise MoshiCheckpointError(f"{path}: {key} is {config[key]!r}, expected {want}; copy the run's own config.json")


@dataclass(frozen=True)
class TTTArgs:
    """The ``ttt`` section of training_config.json with moshi-finetune's defaults filled in."""

    raw: dict[str, Any]
    defaults_used: tuple[str, ...]
    source: str = "training_config.json"  # the file, for messages

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def layer_indices(self, num_layers: int) -> list[int]:
        """Which transformer blocks carry TTT: 'all', 'middle' (L//4 .. 3L//4), 'none', or a list."""
        spec = self.raw["layers"]
        if isinstance(spec, str):
            s = spec.strip().lower()
            if s == "all":
                return list(range(num_layers))
            if s == "middle":
                return list(range(num_layers // 4, 3 * num_layers // 4))
            if s in ("none", ""):
                return []
            try:
                indices = [int(t) for t in s.split(",") if t.strip()]
            except ValueError:
                raise MoshiCheckpointError(f"{self.source}: ttt.layers = {spec!r}, expected all, middle, none or '29,30,31'; "
                                           "copy the run's own training_config.json") from None
        elif isinstance(spec, (list, tuple)) and all(_is_int(t) for t in spec):
            indices = list(spec)
        else:
            raise MoshiCheckpointError(f"{self.source}: ttt.layers = {spec!r}, expected all, middle, none or a list of block "
                                       "indices; copy the run's own training_config.json")
        bad = [i for i in indices if not 0 <= i < num_layers]
        if bad:
            raise MoshiCheckpointError(f"{self.source}: ttt.layers names blocks {bad}, the model has {num_layers} "
                                       f"(0..{num_layers - 1}); is config.json the run's own?")
        return sorted(set(indices))


def read_ttt_args(training_config: Mapping[str, Any], source: str | Path = "training_config.json") -> TTTArgs:
    """The ``ttt`` section with defaults filled in and every key the loader reads type-checked."""
    section = training_config.get("ttt")
    if section is None:
        raise MoshiCheckpointError(f"{source}: no 'ttt' section: this is not a TTT run (or not a moshi-finetune TrainArgs dump)")
    if not isinstance(section, dict):
        raise MoshiCheckpointError(f"{source}: 'ttt' is a {type(section).__name__}, expected an object; "
                                   "copy the run's own training_config.json")
    raw = dict(TTT_DEFAULTS)
    raw.update(section)
    for key, (ok, want) in _TTT_KEY_TYPES.items():
        if not ok(raw[key]):
            raise MoshiCheckpointError(f"{source}: ttt.{key} is {raw[key]!r}, expected {want}; "
                                       "copy the run's own training_config.json")
    used = tuple(sorted(k for k in TTT_DEFAULTS if k not in section))
    return TTTArgs(raw=raw, defaults_used=used, source=str(source))


@dataclass
class CheckpointFiles:
    """Where everything of one checkpoint lies, and its two configs."""

    root: Path  # the --ckpt path as given
    consolidated: Path
    weights: Path  # lora.safetensors or consolidated.safetensors
    full: bool  # True: consolidated.safetensors holds every weight
    config: dict[str, Any]
    training_config: dict[str, Any]
    ttt: TTTArgs
    trust_pickle: bool = False  # weights is lora.pt / consolidated.pt and the user allowed pickle
    notes: list[str] = field(default_factory=list)  # what loading changed (a DDP prefix stripped), for the report

    @property
    def step(self) -> int | None:
        m = CHECKPOINT_DIR_RE.match(self.consolidated.parent.name)
        return int(m.group(1)) if m else None


def _weights_in(cons: Path, trust_pickle: bool) -> tuple[Path, bool]:
    """(weights file, is it the full model): safetensors first, then a pickle sibling if trusted."""
    candidates = [(cons / LORA_FILE, False), (cons / CONSOLIDATED_FILE, True)]
    candidates += [((cons / name).with_suffix(suffix), name == CONSOLIDATED_FILE)
                   for name in (LORA_FILE, CONSOLIDATED_FILE) for suffix in PICKLE_SUFFIXES]
    for path, full in candidates:
        if path.is_file():
            try:
                check_trusted(path, trust_pickle)
            except TensorFileError as exc:
                raise MoshiCheckpointError(str(exc)) from exc
            return path, full
    raise MoshiCheckpointError(
        f"{cons}: neither {LORA_FILE} nor {CONSOLIDATED_FILE}; moshi-finetune writes one of them, copy it from the run "
        f"(holds: {sorted(p.name for p in cons.iterdir())})"
    )


def locate(path: str | Path, trust_pickle: bool = False) -> CheckpointFiles:
    """Resolve ``--ckpt`` to its files and checked configs, with errors that say what to do.

    Reads only the two JSON files: their keys are type-checked and the TTT layers they name are
    checked against the model's depth, so a broken config fails here, before any weights load.
    ``trust_pickle`` allows ``lora.pt`` / ``consolidated.pt`` where the safetensors are missing.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise MoshiCheckpointError(f"{root}: no such file or directory")
    if root.is_file():  # a file of the checkpoint: lora.safetensors, training_config.json, ...
        root = root.parent
    cons = consolidated_dir(root)
    if not cons.is_dir():
        raise MoshiCheckpointError(f"{cons}: missing; a moshi-finetune checkpoint_NNNNNN dir holds consolidated/ with the weights")
    weights, is_full = _weights_in(cons, trust_pickle)
    config = _read_json(cons / "config.json", "the LM kwargs and LoRA settings")
    check_lm_config(config, cons / "config.json")
    training = _read_json(cons / "training_config.json", "the TrainArgs with the ttt section")
    ttt = read_ttt_args(training, cons / "training_config.json")
    ttt.layer_indices(int(config["num_layers"]))  # layers the model lacks fail now, not mid-load
    return CheckpointFiles(root=root, consolidated=cons, weights=weights, full=is_full, config=config,
                           training_config=training, ttt=ttt, trust_pickle=trust_pickle)


DDP_PREFIX = "module."


def read_weights(files: CheckpointFiles) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's weights file, checked by tensorfile (CPU, stored dtype).

    A state dict saved from a DDP-wrapped model has every key prefixed ``module.``: the prefix is
    stripped as torch's ``consume_prefix_in_state_dict_if_present`` does (what users expect), and
    a note in ``files.notes`` says so (the report shows it)."""
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    stored = files.training_config.get("param_dtype")
    try:
        tensors = dict(load_tensors(files.weights, trust_pickle=files.trust_pickle,
                                    floating=stored if isinstance(stored, str) else "bfloat16"))
    except TensorFileError as exc:
        raise MoshiCheckpointError(str(exc)) from exc
    prefixed = sum(1 for k in tensors if k.startswith(DDP_PREFIX))
    if prefixed:
        consume_prefix_in_state_dict_if_present(tensors, DDP_PREFIX)
        note = (f"{files.weights.name}: {prefixed} of {len(tensors)} tensor names carried the DDP prefix {DDP_PREFIX!r} "
                "(saved from a DistributedDataParallel-wrapped model); stripped on load as "
                "torch.nn.modules.utils.consume_prefix_in_state_dict_if_present does")
        if note not in files.notes:
            files.notes.append(note)
    return tensors


# TTT settings a config.json may also carry (a "ttt" object, or top-level keys): config.json name -> ttt key.
_CONFIG_TTT_ALIASES = {"mini_batch_size": "mini_batch_size", "base_lr": "base_lr", "ttt_mlp_layers": "ttt_mlp_layers",
                       "ttt_layers": "layers", "initial_gating_alpha": "initial_gating_alpha",
                       "ttt_mlp_expansion_factor": "ttt_mlp_expansion_factor", "persistent_states": "persistent_states",
                       "use_rope": "use_rope"}


ARGS_YAML = "args.yaml"


def _args_yaml_ttt(files: CheckpointFiles) -> dict[str, Any]:
    """The ``ttt`` section of ``<run>/args.yaml`` (moshi-finetune writes the TrainArgs there at
    launch), or {} where the run dir has none. Without pyyaml a note says it was not compared."""
    run_dir = files.consolidated.parent.parent.parent  # <run>/checkpoints/checkpoint_N/consolidated
    path = run_dir / ARGS_YAML
    if not path.is_file():
        return {}
    try:
        import yaml
    except ImportError:
        note = f"{path}: not compared with training_config.json (pyyaml is not installed: pip install pyyaml)"
        if note not in files.notes:
            files.notes.append(note)
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    section = data.get("ttt") if isinstance(data, dict) else None
    return dict(section) if isinstance(section, dict) else {}


def recipe_fields(files: CheckpointFiles, built_inner: Mapping[int, tuple[str, int]]) -> list[RecipeField]:
    """Settings this checkpoint states twice, each as (what the loader uses, the other statement).

    The loader builds the TTT layers from training_config.json (the TrainArgs the run was trained
    with), so it wins over config.json. Compared where both are stated: config.json's LoRA keys
    vs training_config ``lora``; TTT keys a config.json carries (a ``ttt`` object or top-level
    ``mini_batch_size`` / ``base_lr`` / ``ttt_mlp_layers`` / ``ttt_layers`` ...) vs its ``ttt``
    section; the ``ttt`` section of the run's ``args.yaml`` (the TrainArgs at launch) vs the
    checkpoint's training_config.json; and the TTT-MLP depth the weights hold (``built_inner``:
    block -> (inner, depth) as built) vs ``ttt.ttt_mlp_layers``, where the weights win."""
    out: list[RecipeField] = []
    cfg, training, ttt = files.config, files.training_config, files.ttt
    lora = training.get("lora") if isinstance(training.get("lora"), dict) else {}
    for cfg_key, lora_key in (("lora", "enable"), ("lora_rank", "rank"), ("lora_scaling", "scaling")):
        if cfg_key in cfg and lora_key in lora:
            out.append(RecipeField(cfg_key, lora[lora_key], f"training_config.json lora.{lora_key}",
                                   cfg[cfg_key], f"config.json {cfg_key}"))
    stated: dict[str, tuple[Any, str]] = {}
    if isinstance(cfg.get("ttt"), dict):
        stated.update({k: (v, f"config.json ttt.{k}") for k, v in cfg["ttt"].items() if k in TTT_DEFAULTS and k != "enable"})
    stated.update({key: (cfg[name], f"config.json {name}") for name, key in _CONFIG_TTT_ALIASES.items() if name in cfg})
    for key, (value, where) in stated.items():
        source = f"training_config.json ttt.{key}" + (" (absent: moshi-finetune's default)" if key in ttt.defaults_used else "")
        mine = ttt[key]
        if key == "layers":  # compare block lists, not spellings ("29,30,31" vs [29, 30, 31])
            num_layers = int(cfg["num_layers"])
            try:
                mine = ttt.layer_indices(num_layers)
                value = TTTArgs(raw={**ttt.raw, "layers": value}, defaults_used=(), source=where).layer_indices(num_layers)
            except MoshiCheckpointError:
                pass
        out.append(RecipeField(key, mine, source, value, where))
    launched = _args_yaml_ttt(files)
    for key, value in sorted(launched.items()):
        if key in TTT_DEFAULTS and key not in ttt.defaults_used and key not in ("enable", "layers"):
            out.append(RecipeField(key, ttt[key], f"training_config.json ttt.{key}", value, f"{ARGS_YAML} ttt.{key} (the run's launch)"))
    depth_cfg = int(ttt["ttt_mlp_layers"])
    for index, (inner, depth) in sorted(built_inner.items()):
        if inner == "mlp" and depth != depth_cfg:
            out.append(RecipeField(f"ttt_mlp_layers (transformer.layers.{index})", depth,
                                   f"{files.weights.name} (weights.0..{depth - 1} of the layer; the weights win)",
                                   depth_cfg, "training_config.json ttt.ttt_mlp_layers"))
    return out


# ---------------------------------------------------------------------------------------------
# TTT key names
# ---------------------------------------------------------------------------------------------

LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.seq_modeling_block\.(.+)$")
WRAPPER = "ttt_layer.ttt."

# checkpoint suffix (after the TTT prefix) -> our GatedTTT.ttt parameter (None: not used by the forward)
_PROJECTION_SUFFIXES = {f"{p}.{w}": f"{p}.{w}" for p in ("wq", "wk", "wv") for w in ("weight", "bias")}
_UNUSED_TTT_SUFFIXES = ("wo.weight", "wo.bias", "post_norm.weight", "post_norm.bias")


def inner_suffixes(inner: str, mlp_layers: int) -> list[tuple[str, str]]:
    """(checkpoint suffix, our name) of the inner model's tensors in the user's naming.

    2-layer TTT-MLP: W1 b1 W2 b2; N >= 3: weights.k / biases.k; TTT-Linear: W1 b1.
    """
    if inner == "linear":
        return [("W1", "weights.0"), ("b1", "biases.0")]
    if mlp_layers == 2:
        return [("W1", "weights.0"), ("b1", "biases.0"), ("W2", "weights.1"), ("b2", "biases.1")]
    return [(f"{kind}.{k}", f"{kind}.{k}") for k in range(mlp_layers) for kind in ("weights", "biases")]


@dataclass
class LayerKeys:
    """The checkpoint names of one TTT layer's tensors and where each goes in our module."""

    index: int
    ttt_prefix: str  # e.g. transformer.layers.3.seq_modeling_block.ttt_layer.ttt.
    block_prefix: str  # transformer.layers.3.seq_modeling_block.
    mapping: dict[str, str] = field(default_factory=dict)  # checkpoint key -> GatedTTT param name
    unused: list[str] = field(default_factory=list)  # present in the user's module, never applied

    @property
    def expected(self) -> list[str]:
        return sorted([*self.mapping, *self.unused])


def layer_keys(index: int, inner: str, mlp_layers: int, wrapper: bool = True) -> LayerKeys:
    block = f"transformer.layers.{index}.seq_modeling_block."
    prefix = block + (WRAPPER if wrapper else "")
    keys = LayerKeys(index=index, ttt_prefix=prefix, block_prefix=block)
    m = keys.mapping
    for suffix, ours in _PROJECTION_SUFFIXES.items():
        m[prefix + suffix] = "ttt." + ours
    m[prefix + "learnable_ttt_lr_weight"] = "ttt.lr_weight"
    m[prefix + "learnable_ttt_lr_bias"] = "ttt.lr_bias"
    m[prefix + "ttt_norm_weight"] = "ttt.ttt_norm_weight"
    m[prefix + "ttt_norm_bias"] = "ttt.ttt_norm_bias"
    for suffix, ours in inner_suffixes(inner, mlp_layers):
        m[prefix + suffix] = "ttt." + ours
    m[block + "forward_ssm_gating.gating_alpha"] = "alpha"
    keys.unused = [prefix + s for s in _UNUSED_TTT_SUFFIXES] + [block + "backward_ssm_gating.gating_alpha"]
    return keys


def detect_layout(keys: list[str], index: int) -> bool | None:
    """True: wrapper layout (``ttt_layer.ttt.*``); False: older direct layout; None: no TTT tensors."""
    block = f"transformer.layers.{index}.seq_modeling_block."
    mine = [k[len(block):] for k in keys if k.startswith(block)]
    if any(k.startswith(WRAPPER) for k in mine):
        return True
    direct = ("W1", "weights.0", "wq.weight", "ttt_norm_weight", "learnable_ttt_lr_weight")
    if any(k in direct for k in mine):
        return False
    return None


def detect_inner(tensors: Mapping[str, torch.Tensor], keys: LayerKeys, ttt: TTTArgs) -> tuple[str, int]:
    """TTT-Linear vs TTT-MLP, and the MLP depth, from the tensors (falling back to the config).

    TTTLinear is not selectable from TTTArgs, so only its tensors reveal it: W1 without W2.
    """
    p = keys.ttt_prefix
    if p + "W1" in tensors and p + "W2" not in tensors and p + "weights.0" not in tensors:
        w1 = tensors[p + "W1"]
        if w1.dim() == 3 and w1.shape[-1] == w1.shape[-2]:
            return "linear", 1
    if p + "weights.0" in tensors:
        depth = 0
        while p + f"weights.{depth}" in tensors:
            depth += 1
        return "mlp", max(depth, int(ttt["ttt_mlp_layers"]))
    return "mlp", int(ttt["ttt_mlp_layers"])


def base_key(key: str, ttt_layers: set[int]) -> str | None:
    """The name a non-TTT checkpoint tensor has in our injected model, or None to drop it.

    ``transformer.layers.L.original_layer.X`` (a TTT layer's base weights) keeps its name (our
    hybrid layer calls that child ``original_layer`` too); the duplicate
    ``…seq_modeling_block.original_layer.X`` is dropped; a plain ``transformer.layers.L.X`` of a
    TTT layer (checkpoints saved before the wrapper existed) gains ``original_layer.``.
    """
    m = re.match(r"^transformer\.layers\.(\d+)\.(.+)$", key)
    if not m:
        return key
    index, rest = int(m.group(1)), m.group(2)
    if rest.startswith("seq_modeling_block.original_layer."):
        return None
    if index in ttt_layers and not rest.startswith("original_layer.") and not rest.startswith("seq_modeling_block."):
        return f"transformer.layers.{index}.original_layer.{rest}"
    return key


# ---------------------------------------------------------------------------------------------
# Base weights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseWeights:
    """Where the base Moshi, Mimi and tokenizer come from (explicit paths win over the repo)."""

    hf_repo: str = DEFAULT_HF_REPO
    moshi_weight: Path | None = None
    mimi_weight: Path | None = None
    tokenizer: Path | None = None
    mimi_config: Path | None = None

    @classmethod
    def from_options(cls, hf_repo: str | None = None, moshi_weight: str | Path | None = None,
                     mimi_weight: str | Path | None = None, tokenizer: str | Path | None = None,
                     mimi_config: str | Path | None = None) -> "BaseWeights":
        """Constructor options first, then the TTT_CHECKS_* environment variables, then defaults."""
        def pick(value: Any, env: str) -> Path | None:
            value = value if value is not None else os.environ.get(env) or None
            return Path(value).expanduser() if value is not None else None

        out = cls(
            hf_repo=hf_repo or os.environ.get(ENV_HF_REPO) or DEFAULT_HF_REPO,
            moshi_weight=pick(moshi_weight, ENV_MOSHI_WEIGHT),
            mimi_weight=pick(mimi_weight, ENV_MIMI_WEIGHT),
            tokenizer=pick(tokenizer, ENV_TOKENIZER),
            mimi_config=pick(mimi_config, ENV_MIMI_CONFIG),
        )
        for name, env in (("moshi_weight", ENV_MOSHI_WEIGHT), ("mimi_weight", ENV_MIMI_WEIGHT),
                          ("tokenizer", ENV_TOKENIZER), ("mimi_config", ENV_MIMI_CONFIG)):
            p = getattr(out, name)
            if p is not None and not p.is_file():
                raise MoshiCheckpointError(f"{name} {p} (option or ${env}): no such file")
        return out


def checkpoint_info(files: CheckpointFiles, base: BaseWeights):
    """moshi's CheckpointInfo for this checkpoint: its own config.json, base files from ``base``.

    Files not given explicitly are looked up in the local Hugging Face cache of ``base.hf_repo``;
    with HF_HUB_OFFLINE=1 a file that is not cached fails at once, and the error says which
    option or environment variable supplies it.
    """
    from moshi.models import loaders

    try:
        info = loaders.CheckpointInfo.from_hf_repo(
            base.hf_repo,
            moshi_weights=base.moshi_weight,
            mimi_weights=base.mimi_weight,
            tokenizer=base.tokenizer,
            config_path=files.consolidated / "config.json",
            mimi_config_path=base.mimi_config,
        )
    except Exception as exc:  # huggingface_hub raises several types for "not cached / offline"
        raise MoshiCheckpointError(
            f"base weights for {files.consolidated}: cannot resolve them from the Hugging Face cache of "
            f"{base.hf_repo!r} (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {type(exc).__name__}: {exc}. "
            f"Download the repo once on a machine with network (huggingface-cli download {base.hf_repo}), "
            f"or give the files: ${ENV_MOSHI_WEIGHT} (model.safetensors), ${ENV_MIMI_WEIGHT} "
            f"(tokenizer-e351c8d8-checkpoint125.safetensors), ${ENV_TOKENIZER} (tokenizer_spm_32k_3.model), "
            f"or ${ENV_HF_REPO} for another cached repo"
        ) from exc
    # TTT settings a config.json may carry next to the LM kwargs are not LM kwargs (moshi's
    # get_moshi_lm would raise "unexpected keyword argument"): the TTT layers are built from
    # training_config.json, and the config_consistency check compares the two statements.
    if isinstance(info.lm_config, dict):
        for key in ("ttt", *_CONFIG_TTT_ALIASES):
            info.lm_config.pop(key, None)
    return info
