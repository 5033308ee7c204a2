"""A training run's checkpoints: where they are, what each is called, and when one has settled.

A run directory holds checkpoints in one of these shapes (first match wins):

- ``RUN_DIR/checkpoints/checkpoint_<step>/`` or ``RUN_DIR/checkpoint_<step>/`` (moshi-finetune
  writes ``checkpoints/checkpoint_033000/consolidated/``; the ``consolidated/`` folder is the
  checkpoint when present), in order of the step number;
- zoo-style: every subdirectory holding a ``config.json``, in name order.

A directory that is itself a checkpoint (``config.json`` or ``consolidated/`` inside) is listed
as the only one. ``watch`` and ``trend`` both read runs through this module.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

CHECKPOINT_PREFIX = "checkpoint_"


STATE_FILE = "watch-state.json"


def is_checkpoint(path: Path) -> bool:
    """A directory the health suite can be pointed at: it holds config.json or consolidated/."""
    return (path / "config.json").is_file() or (path / "consolidated").is_dir()


def _step(path: Path) -> tuple[int, str]:
    """Sort key of ``checkpoint_<step>`` folders: the step as a number, then the name."""
    match = re.search(r"(\d+)$", path.name)
    return (int(match.group(1)) if match else -1, path.name)


def _consolidated(path: Path) -> Path:
    return path / "consolidated" if (path / "consolidated").is_dir() else path


def find_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of a run directory, oldest first (see the module docstring for the shapes)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such directory")
    if is_checkpoint(run_dir):
        return [_consolidated(run_dir)]
    stepped = [p for parent in (run_dir / "checkpoints", run_dir) if parent.is_dir()
               for p in parent.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    if stepped:
        return [_consolidated(p) for p in sorted(stepped, key=_step)]
    return sorted((p for p in run_dir.iterdir() if p.is_dir() and (p / "config.json").is_file()),
                  key=lambda p: p.name)


def checkpoint_name(checkpoint: Path) -> str:
    """``.../checkpoint_001000/consolidated`` -> ``checkpoint_001000``; other paths: their folder name."""
    return checkpoint.parent.name if checkpoint.name == "consolidated" else checkpoint.name


def newest_mtime(path: Path) -> float:
    """The latest modification time of the folder or anything in it (following links)."""
    latest = path.stat().st_mtime
    for item in path.rglob("*"):
        try:
            latest = max(latest, item.stat().st_mtime)
        except FileNotFoundError:  # removed while we looked: it is still being written or pruned
            latest = time.time()
    return latest


def is_settled(checkpoint: Path, settle_s: float, now: float | None = None) -> bool:
    """True when the checkpoint has its config.json and nothing in it changed for ``settle_s`` seconds."""
    if not (checkpoint / "config.json").is_file():
        return False
    now = time.time() if now is None else now
    return now - newest_mtime(checkpoint) >= settle_s
