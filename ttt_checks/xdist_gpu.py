"""One GPU per pytest-xdist worker, chosen before CUDA starts.

With ``pytest -n N`` every worker is a separate process that would otherwise see (and load its
model onto) the same first GPU. :func:`pin_xdist_worker_gpu` runs at the top of the plugin's
``pytest_configure``, which in a worker runs before collection and so before anything touches
CUDA, and narrows ``CUDA_VISIBLE_DEVICES`` to one entry of the list the worker inherited:
worker ``gwK`` gets entry ``K mod len(list)``. Inside the worker that GPU is then ``cuda:0``.

It indexes the inherited list, never ``range(device_count())``: under Slurm ``--gres=gpu:N`` the
job sees a restricted set (``CUDA_VISIBLE_DEVICES=2,5`` say), and ``0`` would name a GPU the job
was not given. Entries may be indices or UUIDs (``GPU-...``, ``MIG-...``); they are passed on
as written. With no list (unset) or an empty one nothing is pinned: there is no set to divide,
and pinning to a guessed index could pick a GPU that belongs to someone else. More workers than
GPUs share GPUs round-robin.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from typing import MutableMapping

ORIGINAL_VAR = "TTT_CHECKS_XDIST_CUDA_VISIBLE_DEVICES"  # the worker's inherited list, kept for reports
_WORKER = re.compile(r"^gw(\d+)$")


def worker_index(worker_id: str | None) -> int | None:
    """``"gw3"`` -> 3; None for the controller or a run without xdist (``None``, ``"master"``)."""
    if not worker_id:
        return None
    match = _WORKER.match(worker_id.strip())
    return int(match.group(1)) if match else None


def parse_visible_devices(value: str | None) -> list[str]:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value, in order (``"0, 2"`` -> ``["0", "2"]``).

    CUDA stops reading the list at the first invalid entry; we keep every non-empty entry and
    let CUDA judge them, since a worker pinned to an invalid entry fails loudly on first use.
    """
    if value is None:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def device_for_worker(visible: str | None, worker_id: str | None) -> str | None:
    """The single ``CUDA_VISIBLE_DEVICES`` entry worker ``worker_id`` should see, or None to leave it be.

    ``device_for_worker("2,5", "gw1") == "5"``; ``device_for_worker("2,5", "gw2") == "2"``
    (round-robin when workers outnumber GPUs); None for the controller, a run without xdist,
    or an unset/empty list.
    """
    index = worker_index(worker_id)
    devices = parse_visible_devices(visible)
    if index is None or not devices:
        return None
    return devices[index % len(devices)]


def pin_xdist_worker_gpu(environ: MutableMapping[str, str] | None = None) -> str | None:
    """In an xdist worker, narrow ``CUDA_VISIBLE_DEVICES`` to this worker's GPU; return the entry.

    Idempotent: the inherited list is remembered in ``TTT_CHECKS_XDIST_CUDA_VISIBLE_DEVICES`` and
    re-read on a second call. Warns (and still sets the variable) when CUDA was already
    initialised in this process, since the pinning then comes too late to take effect.
    """
    env = os.environ if environ is None else environ
    worker = env.get("PYTEST_XDIST_WORKER")
    if worker_index(worker) is None:
        return None
    inherited = env.get(ORIGINAL_VAR, env.get("CUDA_VISIBLE_DEVICES"))
    device = device_for_worker(inherited, worker)
    if device is None:
        return None
    if environ is None and _cuda_initialised():
        warnings.warn(f"ttt-checks: xdist worker {worker}: CUDA was initialised before CUDA_VISIBLE_DEVICES was "
                      f"pinned to {device}; this worker may use another GPU", RuntimeWarning, stacklevel=2)
    env[ORIGINAL_VAR] = inherited or ""
    env["CUDA_VISIBLE_DEVICES"] = device
    return device


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # a torch without CUDA support: nothing was initialised
        return False
