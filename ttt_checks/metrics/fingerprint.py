"""A fingerprint of a model input, so a number measured on one input is only compared on the same one."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def input_fingerprint(inputs: Any) -> str | None:
    """A short hash of a teacher-forced input (tokens, codes or PCM): the same array gives the same
    string, any change of a value, the dtype or the shape another. None when the input is not an
    array (then no reference can be matched to it)."""
    if hasattr(inputs, "detach"):
        inputs = inputs.detach().cpu().numpy()
    if not isinstance(inputs, np.ndarray):
        return None
    arr = np.ascontiguousarray(inputs)
    digest = hashlib.sha256(f"{arr.dtype.str}:{arr.shape}:".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()[:16]
