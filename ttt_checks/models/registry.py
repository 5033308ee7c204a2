"""Which adapter reads a checkpoint path: decided by what the path holds, not by flags.

- a reference checkpoint: a directory whose ``config.json`` has ``"format": "ttt-checks-reference/..."``;
- a moshi-finetune TTT checkpoint: a run dir (``checkpoints/checkpoint_NNNNNN``), a
  ``checkpoint_NNNNNN`` dir, or its ``consolidated/`` dir holding ``training_config.json``;
- no path: the embedded default, the healthy reference checkpoint shipped in ``fixtures/zoo``.

Adding a model family means adding one detector and one loader here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ttt_checks.audio.speech_input import MIMI_MIN_SAMPLES, MIMI_SAMPLE_RATE, load_speech_input
from ttt_checks.audio.wav import AudioError
from ttt_checks.models.base import Adapter, InputError
from ttt_checks.models.tensorfile import PICKLE_SUFFIXES
from ttt_checks.paths import DEFAULT_CHECKPOINT, ZOO_DIR


class CheckpointResolutionError(RuntimeError):
    """The path is not a checkpoint any adapter reads; the message says what was found."""


def default_checkpoint() -> Path:
    path = ZOO_DIR / DEFAULT_CHECKPOINT
    if not (path / "config.json").is_file():
        raise CheckpointResolutionError(
            f"the embedded default checkpoint is missing ({path}); it ships with a clone of ttt-checks. "
            "Pass --ckpt PATH, or rebuild it with `ttt-checks zoo build`."
        )
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointResolutionError(f"{path}: not readable JSON ({exc}); the checkpoint's config is corrupt") from exc
    return data if isinstance(data, dict) else None


def detect(ckpt: str | Path | None) -> tuple[str, Path]:
    """(family, path) for ``ckpt`` without loading anything: cheap enough to validate options.

    Raises :class:`CheckpointResolutionError` naming what the path holds when no adapter reads it.
    """
    path = default_checkpoint() if ckpt is None else Path(ckpt).expanduser()
    if not path.exists():
        raise CheckpointResolutionError(f"--ckpt {path}: no such file or directory")
    if not path.is_dir():
        # A file of a checkpoint (its weights, its config) stands for the directory holding it.
        if not any((path.parent / name).is_file() for name in ("config.json", "training_config.json")):
            hint = (" It looks like a pickle checkpoint: ttt-checks reads pickle only inside a checkpoint directory, "
                    "with --trust-pickle (pickle can run code)." if path.suffix.lower() in PICKLE_SUFFIXES else "")
            raise CheckpointResolutionError(f"--ckpt {path}: a file with no checkpoint config next to it; "
                                            f"pass the checkpoint directory.{hint}")
        path = path.parent
    config = _read_json(path / "config.json")
    if config and str(config.get("format", "")).startswith("ttt-checks-reference/"):
        return "reference", path
    from ttt_checks.models.moshi.checkpoint import is_moshi_checkpoint

    if is_moshi_checkpoint(path):
        return "moshi", path
    names = sorted(p.name for p in path.iterdir())
    _raise_if_config_missing(path, names)
    if (path / "checkpoints").is_dir():
        raise CheckpointResolutionError(
            f"--ckpt {path}: a training run dir whose checkpoints/ holds no checkpoint_NNNNNN yet "
            f"(it holds {sorted(p.name for p in (path / 'checkpoints').iterdir())[:12] or 'nothing'}); "
            "wait for the first save, or pass the run that wrote the checkpoint")
    contents = names[:12]
    raise CheckpointResolutionError(
        f"--ckpt {path}: not a checkpoint ttt-checks can read. Expected a reference checkpoint "
        f"(config.json with format ttt-checks-reference/*) or a moshi-finetune checkpoint (a run dir with "
        f"checkpoints/checkpoint_NNNNNN, a checkpoint_NNNNNN dir, or its consolidated/ dir); "
        f"the directory holds {contents or 'nothing'}."
    )


def _raise_if_config_missing(path: Path, names: list[str]) -> None:
    """Weights without the config that says how to read them: name the missing file."""
    stems = {Path(name).stem for name in names if Path(name).suffix.lower() in (".safetensors", *PICKLE_SUFFIXES)}
    if stems & {"ttt", "model"} and "config.json" not in names:
        raise CheckpointResolutionError(f"--ckpt {path}: config.json is missing (the directory holds {names[:12]}); "
                                        "copy the config.json saved with these weights")
    if stems & {"lora", "consolidated"} and "training_config.json" not in names:
        raise CheckpointResolutionError(f"--ckpt {path}: training_config.json is missing (the directory holds {names[:12]}); "
                                        "copy it from the moshi-finetune run, it says which blocks carry TTT")


def check_input(family: str, path: str | Path, max_positions: int | None = None) -> list[str]:
    """Validate an ``--input`` file for ``family`` without loading a model: the notes of what
    will be converted to feed it (resampled, downmixed), or an :class:`InputError` naming what is
    wrong and what to do. Cheap (no moshi import), so the plugin refuses a bad file before a
    checkpoint of several GB loads. The adapters apply the same rules when they read the file.
    """
    if family == "moshi":
        try:
            return list(load_speech_input(path, MIMI_SAMPLE_RATE, MIMI_MIN_SAMPLES).notes)
        except AudioError as exc:
            raise InputError(str(exc)) from exc
    if family == "reference":
        from ttt_checks.models.reference.adapter import DEFAULT_POSITIONS, read_dialogue_text

        read_dialogue_text(path, min_bytes=int(max_positions or DEFAULT_POSITIONS) + 1)
        return []
    raise ValueError(f"check_input: unknown model family {family!r}")


def resolve(ckpt: str | Path | None, device: str = "cpu", trust_pickle: bool = False, **moshi_options: Any) -> Adapter:
    """The adapter for ``ckpt`` (None: the embedded default), loaded on ``device``.

    ``trust_pickle`` lets a checkpoint whose weights are pickle (``ttt.pt``, ``lora.pt``) load,
    through torch.load(weights_only=True); without it they are refused (pickle can run code).
    ``moshi_options`` (hf_repo, moshi_weight, mimi_weight, tokenizer, mimi_config) say where a
    moshi-finetune checkpoint's base weights are; None values fall back to the environment.
    """
    family, path = detect(ckpt)
    if family == "reference":
        from ttt_checks.models.reference.adapter import ReferenceAdapter

        adapter = ReferenceAdapter(path, trust_pickle=trust_pickle)
        if device != "cpu":
            adapter.model.to(device)
        return adapter
    from ttt_checks.models.moshi.adapter import MoshiAdapter

    return MoshiAdapter(path, device=device, trust_pickle=trust_pickle,
                        **{k: v for k, v in moshi_options.items() if v is not None})
