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

from ttt_checks.models.base import Adapter

REPO_ROOT = Path(__file__).resolve().parents[2]
ZOO_DIR = REPO_ROOT / "fixtures" / "zoo"
DEFAULT_CHECKPOINT = "healthy-seed0"


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
        hint = (" It looks like a pickle checkpoint: ttt-checks loads safetensors only (pickle can run code)."
                if path.suffix in (".pt", ".pth", ".bin", ".ckpt") else "")
        raise CheckpointResolutionError(f"--ckpt {path}: a file; pass the checkpoint directory that contains it.{hint}")
    config = _read_json(path / "config.json")
    if config and str(config.get("format", "")).startswith("ttt-checks-reference/"):
        return "reference", path
    from ttt_checks.models.moshi.checkpoint import is_moshi_checkpoint

    if is_moshi_checkpoint(path):
        return "moshi", path
    contents = sorted(p.name for p in path.iterdir())[:12]
    raise CheckpointResolutionError(
        f"--ckpt {path}: not a checkpoint ttt-checks can read. Expected a reference checkpoint "
        f"(config.json with format ttt-checks-reference/*) or a moshi-finetune checkpoint (a run dir with "
        f"checkpoints/checkpoint_NNNNNN, a checkpoint_NNNNNN dir, or its consolidated/ dir); "
        f"the directory holds {contents or 'nothing'}."
    )


def resolve(ckpt: str | Path | None, device: str = "cpu", **moshi_options: Any) -> Adapter:
    """The adapter for ``ckpt`` (None: the embedded default), loaded on ``device``.

    ``moshi_options`` (hf_repo, moshi_weight, mimi_weight, tokenizer, mimi_config) say where a
    moshi-finetune checkpoint's base weights are; None values fall back to the environment.
    """
    family, path = detect(ckpt)
    if family == "reference":
        from ttt_checks.models.reference.adapter import ReferenceAdapter

        adapter = ReferenceAdapter(path)
        if device != "cpu":
            adapter.model.to(device)
        return adapter
    from ttt_checks.models.moshi.adapter import MoshiAdapter

    return MoshiAdapter(path, device=device, **{k: v for k, v in moshi_options.items() if v is not None})
