"""Reading tensor files safely: safetensors checked before they are read, pickle only on request.

Checkpoints reach us by rsync from clusters, half-written by a job that was killed, or as the
``.pt`` a colleague saved. Every such file must end in a short error that names the file, what
is wrong and what to do, never in a bare traceback from deep inside a library. So:

- a safetensors header is parsed here, by us, before safetensors reads the data: a truncated
  copy, a damaged header or inconsistent offsets are reported in words; whatever safetensors
  still refuses afterwards is wrapped too, keeping the original as the cause;
- pickle (``.pt``/``.pth``/``.bin``/``.ckpt``) can run code when it is read, so it is refused
  unless the caller trusts it, and even then it is read with ``torch.load(weights_only=True)``
  and must turn out to be a mapping of names to tensors;
- weights must be floating point; an integer or bool tensor where a weight belongs means the
  file is not the checkpoint it claims to be.

Nothing here knows a model family; the loaders choose the file names and the expected dtype.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

# Bytes per element of every dtype a safetensors header may name (the format's own spelling).
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F16", "BF16", "F32", "F64"})

# safetensors itself refuses headers above 100 MB; a larger length field is damage, not data.
MAX_HEADER_BYTES = 100_000_000

COPY_AGAIN = "the copy is incomplete — copy it again"
DAMAGED = "the file is damaged or not safetensors — copy it again from where training wrote it"


class TensorFileError(RuntimeError):
    """A tensor file that cannot be read; the message names the file, the fault and the fix."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; offsets are relative to the end of the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors file promises: its tensors, its metadata and how many bytes they take."""

    name: str
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)
    header_bytes: int = 0  # the JSON header's length (the 8-byte length field not included)
    data_bytes: int = 0  # what the tensors need after the header


def is_pickle(path: str | os.PathLike[str]) -> bool:
    """True for the suffixes torch.save files usually carry."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def pickle_refusal(path: str | os.PathLike[str]) -> TensorFileError:
    """The error for a pickle read without trust: why, how to allow it, how to convert it once."""
    path = Path(path)
    target = path.with_suffix(".safetensors")
    return TensorFileError(
        f"{path}: a pickle checkpoint, and pickle can run code when read; pass --trust-pickle "
        "(it is then read with torch.load(weights_only=True)), or convert it once: "
        f"python -c \"import torch, safetensors.torch as s; s.save_file({{k: v.contiguous().clone() for k, v in "
        f"torch.load('{path}', weights_only=True).items()}}, '{target}')\""
    )


def _fail(name: str, what: str, todo: str = DAMAGED) -> TensorFileError:
    return TensorFileError(f"{name}: {what}; {todo}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_safetensors_header(source: str | os.PathLike[str] | bytes) -> SafetensorsHeader:
    """Check a safetensors file's header against its size, without reading the tensor data.

    ``source`` is a path, or the whole content of a file as bytes. Raises
    :class:`TensorFileError` for a truncated file, a header that is not the format's JSON,
    unknown dtypes, bad shapes and offsets that overlap, leave gaps or run past the file.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)

        def header_of_bytes(n: int) -> bytes:
            return data[8:8 + n]
        return _parse("<bytes>", len(data), data[:8], header_of_bytes)
    path = Path(source)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            return _parse(str(path), size, prefix, lambda n: fh.read(n))
    except OSError as exc:
        raise _fail(str(path), f"cannot be read ({exc.strerror or exc})", "check the path and its permissions") from exc


def _parse(name: str, size: int, prefix: bytes, read_header: Callable[[int], bytes]) -> SafetensorsHeader:
    """The checks themselves; ``read_header(n)`` returns the n header bytes after the length field."""
    if len(prefix) < 8:
        raise _fail(name, f"truncated: {size:,} bytes, less than the 8-byte length field that starts a safetensors file",
                    COPY_AGAIN)
    (n,) = struct.unpack("<Q", prefix)
    if n == 0 or n > MAX_HEADER_BYTES:
        raise _fail(name, f"corrupt header: its length field says {n:,} bytes")
    if 8 + n > size:
        raise _fail(name, f"truncated: the header promises {n:,} bytes of header, the file holds {size - 8:,} after the "
                    "length field", COPY_AGAIN)
    raw = read_header(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(name, f"corrupt header: not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(name, f"corrupt header: a JSON {type(header).__name__}, not an object of tensors")

    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(name, "corrupt header: __metadata__ must map names to strings")

    tensors: dict[str, TensorEntry] = {}
    for key, info in header.items():
        where = f"corrupt header: tensor {key!r}"
        if not isinstance(info, dict):
            raise _fail(name, f"{where} is described by a {type(info).__name__}, not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise _fail(name, f"{where} has dtype {dtype!r}, not one of {', '.join(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _fail(name, f"{where} has shape {shape!r}, not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets)
                or offsets[1] < offsets[0]):
            raise _fail(name, f"{where} has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
        need = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if offsets[1] - offsets[0] != need:
            raise _fail(name, f"{where} spans {offsets[1] - offsets[0]:,} bytes, its shape {shape} of {dtype} needs {need:,}")
        tensors[key] = TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])

    expected_begin = 0
    for key, entry in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if entry.begin != expected_begin:
            gap = "overlaps the previous one" if entry.begin < expected_begin else "leaves a gap after the previous one"
            raise _fail(name, f"corrupt header: tensor {key!r} starts at data byte {entry.begin:,} and {gap} "
                              f"(which ends at {expected_begin:,})")
        expected_begin = entry.end
    have = size - 8 - n
    if expected_begin > have:
        raise _fail(name, f"truncated: the header promises {expected_begin:,} bytes of tensor data, the file holds {have:,}",
                    COPY_AGAIN)
    if expected_begin < have:
        raise _fail(name, f"{have - expected_begin:,} bytes follow the last tensor's data, which safetensors refuses")
    return SafetensorsHeader(name, tensors, dict(metadata), n, expected_begin)


def check_trusted(path: str | os.PathLike[str], trust_pickle: bool) -> None:
    """Refuse a pickle file unless trusted: called before anything else about the file is read."""
    if is_pickle(path) and not trust_pickle:
        raise pickle_refusal(path)


def load_tensors(path: str | os.PathLike[str], trust_pickle: bool = False, floating: str | None = "bfloat16") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors (or, trusted, pickle) file, on the CPU, in its stored dtype.

    ``floating``: the dtype the weights were saved in, for the message when a tensor is not
    floating point (every tensor must be); None accepts any dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(str(path), "no such file", "check the path (was it copied?)")
    if is_pickle(path):
        check_trusted(path, trust_pickle)
        tensors = _load_pickle(path)
        if floating is not None:
            for key, value in tensors.items():
                if not value.is_floating_point():
                    raise _wrong_dtype(path, key, str(value.dtype).replace("torch.", ""), floating)
        return tensors
    header = parse_safetensors_header(path)
    if floating is not None:
        for key, entry in header.tensors.items():
            if entry.dtype not in FLOAT_DTYPES:
                raise _wrong_dtype(path, key, entry.dtype, floating)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except BaseException as exc:  # pyo3 panics derive from BaseException; the user gets words either way
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise _fail(str(path), f"safetensors cannot read it ({type(exc).__name__}: {exc})") from exc


def _wrong_dtype(path: Path, key: str, dtype: str, floating: str) -> TensorFileError:
    return _fail(str(path), f"tensor {key!r} is {dtype}, weights must be floating point ({floating} as saved; "
                            "float16/float32 also load)", "is this the checkpoint's own file? export it again")


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except BaseException as exc:  # weights_only refusals, broken zips, EOF: all the same to the user
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise _fail(str(path), f"torch.load(weights_only=True) refuses it ({type(exc).__name__}: {_gist(exc)})",
                    "it holds objects besides tensors, or is damaged; save model.state_dict() as safetensors") from exc
    return _tensor_mapping(path, obj)


_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _gist(exc: BaseException) -> str:
    """The informative line of torch.load's long weights_only message (which global, which opcode)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(_BOILERPLATE)]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _tensor_mapping(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping inside a loaded pickle: itself, or its 'state_dict' / 'model'."""
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for nested in ("state_dict", "model"):
            if isinstance(obj.get(nested), Mapping):
                obj = obj[nested]
                break
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty mapping" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise _fail(str(path), f"holds {what}, not a mapping of tensor names to tensors",
                    "save model.state_dict() (or convert to safetensors)")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise _fail(str(path), f"entry {key!r} is a {type(value).__name__}, not a tensor",
                        "save model.state_dict() (or convert to safetensors)")
        out[key] = value
    return out
