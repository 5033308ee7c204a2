"""Broken checkpoints end in a short error naming the file, the fault and the fix; never a pass.

Reference checkpoints are copies of the zoo (``base`` + ``healthy-seed0``, side by side, as the
TTT config points at ``../base``) damaged in one way each. Moshi checkpoints are exercised at
the file level (configs + weights file, no model built): the directory layout moshi-finetune
writes, with a few TTT-shaped tensors. Property tests feed arbitrary bytes and JSON to the
readers: they either load or raise the reader's own error, never another exception.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
import moshi_fixtures as mf  # noqa: E402

from ttt_checks import checks as health  # noqa: E402
from ttt_checks.models.moshi.checkpoint import MoshiCheckpointError, locate, read_weights  # noqa: E402
from ttt_checks.models.reference.adapter import ReferenceAdapter  # noqa: E402
from ttt_checks.models.reference.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from ttt_checks.models.registry import CheckpointResolutionError, detect, resolve  # noqa: E402
from ttt_checks.models.tensorfile import TensorFileError, load_tensors, parse_safetensors_header  # noqa: E402

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "fixtures" / "zoo"
W1 = "layers.3.ttt.ttt.weights.0"
ALPHA = "layers.3.ttt.alpha"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- helpers ---------------------------------------------------------------------------------------


def copy_zoo(dst: Path) -> Path:
    """base/ + healthy/ under ``dst``; returns the TTT checkpoint directory."""
    shutil.copytree(ZOO / "base", dst / "base")
    shutil.copytree(ZOO / "healthy-seed0", dst / "healthy")
    return dst / "healthy"


def resave(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def rewrite_header(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit a safetensors header in place, keeping the tensor data as it is."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def edit_config(ckpt: Path, change: Callable[[dict[str, Any]], None], name: str = "config.json") -> None:
    config = json.loads((ckpt / name).read_text())
    change(config)
    (ckpt / name).write_text(json.dumps(config))


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:14] = b"\x00garb"  # the JSON header no longer parses
    path.write_bytes(bytes(data))


def wrong_dtype(path: Path) -> None:
    def change(t: dict[str, torch.Tensor]) -> None:
        t[ALPHA] = t[ALPHA].to(torch.int32)
    resave(path, change)


def to_pickle(path: Path, nested: bool = False) -> Path:
    """Replace ``x.safetensors`` by ``x.pt`` holding the same tensors (optionally under 'state_dict')."""
    tensors = load_file(str(path))
    target = path.with_suffix(".pt")
    torch.save({"state_dict": tensors, "step": 200} if nested else tensors, target)
    path.unlink()
    return target


@pytest.fixture(scope="module")
def healthy_tensors() -> dict[str, torch.Tensor]:
    return load_checkpoint(ZOO / "healthy-seed0").tensors


# -- reference: tensor files -----------------------------------------------------------------------


def test_bad_input_truncated_safetensors_says_copy_again(tmp_path):
    ckpt = copy_zoo(tmp_path)
    truncate(ckpt / "ttt.safetensors")
    with pytest.raises(CheckpointError, match=r"ttt\.safetensors: truncated: the header promises [\d,]+ bytes of tensor "
                                              r"data, the file holds [\d,]+; the copy is incomplete — copy it again"):
        load_checkpoint(ckpt)


def test_bad_input_truncated_base_weights_name_the_base_file(tmp_path):
    ckpt = copy_zoo(tmp_path)
    truncate(tmp_path / "base" / "model.safetensors", keep=0.9)
    with pytest.raises(CheckpointError, match=r"base/model\.safetensors: truncated"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("damage, message", [
    (corrupt_header, r"corrupt header: not JSON"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2**60) + p.read_bytes()[8:]), r"corrupt header: its length field says"),
    (lambda p: rewrite_header(p, lambda h: h[ALPHA].update(dtype="Q7")), r"tensor 'layers.3.ttt.alpha' has dtype 'Q7'"),
    (lambda p: rewrite_header(p, lambda h: h[ALPHA].update(shape=[-1])), r"has shape \[-1\], not a list of non-negative"),
    (lambda p: rewrite_header(p, lambda h: h[ALPHA].update(shape=[3])), r"spans [\d,]+ bytes, its shape \[3\] of BF16 needs 6"),
    (lambda p: rewrite_header(p, lambda h: h[ALPHA].update(data_offsets=[o + 2 for o in h[ALPHA]["data_offsets"]])),
     r"overlaps the previous one|leaves a gap"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 16), r"16 bytes follow the last tensor's data"),
], ids=["not-json", "absurd-length", "unknown-dtype", "negative-shape", "size-mismatch", "overlap", "trailing-bytes"])
def test_corrupt_safetensors_header_is_named_with_the_fault(tmp_path, damage, message):
    ckpt = copy_zoo(tmp_path)
    damage(ckpt / "ttt.safetensors")
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(ckpt)
    assert str(info.value).startswith(str(ckpt / "ttt.safetensors")) and "copy it again" in str(info.value)
    assert isinstance(info.value.__cause__, TensorFileError)


def test_invalid_integer_weights_name_the_tensor_and_the_expected_dtype(tmp_path):
    ckpt = copy_zoo(tmp_path)
    wrong_dtype(ckpt / "ttt.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'layers.3.ttt.alpha' is I32, weights must be floating point "
                                              r"\(bfloat16 as saved"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bad_input_other_float_dtypes_load_like_the_stored_bf16(tmp_path, healthy_tensors, dtype):
    ckpt = copy_zoo(tmp_path)
    resave(ckpt / "ttt.safetensors", lambda t: t.update({k: v.to(dtype) for k, v in t.items()}))
    loaded = load_checkpoint(ckpt)
    assert loaded.missing_ttt_keys == []
    for k, v in loaded.model.state_dict().items():
        if ".ttt." in k:  # bf16 -> fp16 is exact but for the smallest magnitudes
            torch.testing.assert_close(v, healthy_tensors[k].float(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("where", ["ttt", "base"])
def test_bad_input_shape_mismatch_names_tensor_and_config(tmp_path, where):
    ckpt = copy_zoo(tmp_path)
    if where == "ttt":
        resave(ckpt / "ttt.safetensors", lambda t: t.update({W1: t[W1][:, :, :64].contiguous()}))
        pattern = r"ttt\.safetensors: layers\.3\.ttt\.ttt\.weights\.0 has shape \(4, 32, 64\), .*config\.json needs \(4, 32, 128\)"
    else:
        resave(tmp_path / "base" / "model.safetensors", lambda t: t.update({"norm.weight": torch.ones(64, dtype=torch.bfloat16)}))
        pattern = r"model\.safetensors: norm\.weight has shape \(64,\), .*needs \(128,\)"
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(ckpt)


def test_bad_input_missing_ttt_keys_load_and_fail_checkpoint_keys(tmp_path):
    ckpt = copy_zoo(tmp_path)
    resave(ckpt / "ttt.safetensors", lambda t: [t.pop(k) for k in list(t) if ".weights." in k])
    adapter = ReferenceAdapter(ckpt)
    assert W1 in adapter.loaded.missing_ttt_keys
    verdict = health.checkpoint_keys(adapter.expected_ttt_keys(), adapter.state().keys())
    assert not verdict.ok and "missing TTT keys" in verdict.explanation and W1 in verdict.explanation


def test_bad_input_unexpected_ttt_keys_are_an_error(tmp_path):
    ckpt = copy_zoo(tmp_path)
    resave(ckpt / "ttt.safetensors", lambda t: t.update({"layers.1.ttt.alpha": t[ALPHA].clone()}))
    with pytest.raises(CheckpointError, match=r"tensors \['layers\.1\.ttt\.alpha'\] do not belong to the configured TTT layers \[3\]"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["ttt", "base"])
def test_bad_input_nonfinite_weights_load_and_fail_checkpoint_finite(tmp_path, value, where):
    ckpt = copy_zoo(tmp_path)
    path, key = (ckpt / "ttt.safetensors", W1) if where == "ttt" else (tmp_path / "base" / "model.safetensors", "norm.weight")

    def poison(t: dict[str, torch.Tensor]) -> None:
        t[key] = t[key].clone()
        t[key].view(-1)[3] = value
    resave(path, poison)
    verdict = health.checkpoint_finite(ReferenceAdapter(ckpt).state())
    assert not verdict.ok and key in verdict.explanation


# -- reference: configs ----------------------------------------------------------------------------


def test_bad_input_missing_config_json_is_named_by_detect_and_the_loader(tmp_path):
    ckpt = copy_zoo(tmp_path)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointResolutionError, match=r"config\.json is missing .*copy the config\.json saved with these weights"):
        detect(ckpt)
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("text, message", [
    ("{ not json", r"config\.json: not valid JSON"),
    ("\xff\xfe", r"config\.json: not valid JSON"),
    ("[1, 2]", r"config\.json: a JSON list, not an object"),
])
def test_malformed_config_json_is_named(tmp_path, text, message):
    ckpt = copy_zoo(tmp_path)
    (ckpt / "config.json").write_text(text, encoding="latin-1")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda c: c.pop(key)


def _set(value: Any, *path: str) -> Callable[[dict[str, Any]], None]:
    def change(c: dict[str, Any]) -> None:
        for p in path[:-1]:
            c = c[p]
        c[path[-1]] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_drop("kind"), r"'kind' is None, expected 'base' or 'ttt'"),
    (_set("lora", "kind"), r"'kind' is 'lora', expected 'base' or 'ttt'"),
    (_drop("decoder"), r"'decoder' is missing, expected an object"),
    (_set([128], "decoder"), r"'decoder' is \[128\], expected an object"),
    (_drop("base"), r"'base' is None, expected the base checkpoint's directory"),
    (_set("../nowhere", "base"), r"'base' '\.\./nowhere' is not a directory"),
    (_drop("ttt_init_seed"), r"'ttt_init_seed' is None, expected a non-negative integer"),
    (_set("1000", "ttt_init_seed"), r"'ttt_init_seed' is '1000'"),
    (_set("128", "decoder", "width"), r"decoder\.width is '128', expected a positive integer"),
    (_set(0, "decoder", "num_heads"), r"decoder\.num_heads is 0, expected a positive integer"),
    (_set(True, "decoder", "num_layers"), r"decoder\.num_layers is True, expected a positive integer"),
    (_set("yes", "decoder", "ttt_reset_each_call"), r"decoder\.ttt_reset_each_call is 'yes', expected true or false"),
    (_set(float("nan"), "decoder", "alpha_init"), r"decoder\.alpha_init is nan, expected a finite number"),
    (_set("sgd", "decoder", "ttt", "inner"), r"decoder\.ttt\.inner is 'sgd', expected one of 'linear', 'mlp'"),
    (_set(3, "decoder", "ttt_layers"), r"decoder\.ttt_layers is 3, expected a list of block indices"),
    (_set(96, "decoder", "width"), r"the decoder config is rejected \(ttt\.width 128 must equal the model width 96\)"),
    (_set(1, "decoder", "depth"), r"the decoder config is rejected \(unknown decoder config field\(s\) \['depth'\]"),
    (_set(3, "decoder", "ttt", "mlp_layers"), r"(weights|biases)\.1 has shape .* needs"),
    (_set([], "decoder", "ttt_layers"), r"kind 'ttt' with decoder\.ttt_layers \[\]; a TTT checkpoint needs TTT layers"),
], ids=["no-kind", "bad-kind", "no-decoder", "decoder-list", "no-base", "base-nowhere", "no-seed", "seed-str",
        "width-str", "heads-zero", "layers-bool", "reset-str", "alpha-nan", "inner-unknown", "ttt-layers-int",
        "width-mismatch", "unknown-field", "mlp-layers-3", "ttt-layers-empty"])
def test_malformed_config_fields_are_named(tmp_path, change, message):
    ckpt = copy_zoo(tmp_path)
    edit_config(ckpt, change)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(ckpt)
    assert str(info.value).startswith(str(ckpt))


@pytest.mark.parametrize("layers, lacking", [([3, 7], "[7]"), ([-1], "[-1]")])
def test_invalid_ttt_layers_the_model_lacks_are_named(tmp_path, layers, lacking):
    ckpt = copy_zoo(tmp_path)
    edit_config(ckpt, _set(layers, "decoder", "ttt_layers"))
    with pytest.raises(CheckpointError, match=rf"decoder\.ttt_layers lists block\(s\) {re.escape(lacking)}, the model has 4 \(0\.\.3\)"):
        load_checkpoint(ckpt)


# -- reference: pickle -----------------------------------------------------------------------------


def test_bad_input_pickle_refused_without_trust_pickle(tmp_path):
    ckpt = copy_zoo(tmp_path)
    to_pickle(ckpt / "ttt.safetensors")
    assert detect(ckpt) == ("reference", ckpt)  # found cheaply; refused when loading
    with pytest.raises(CheckpointError, match=r"ttt\.pt: a pickle checkpoint, and pickle can run code when read; "
                                              r"pass --trust-pickle .*safetensors\.torch"):
        resolve(ckpt)


@pytest.mark.parametrize("nested", [False, True], ids=["state-dict", "nested-state-dict"])
def test_bad_input_trusted_pickle_loads_the_same_tensors(tmp_path, healthy_tensors, nested):
    ckpt = copy_zoo(tmp_path)
    to_pickle(ckpt / "ttt.safetensors", nested=nested)
    to_pickle(tmp_path / "base" / "model.safetensors")
    adapter = resolve(ckpt, trust_pickle=True)
    state = adapter.state()
    assert state.keys() == healthy_tensors.keys()
    for k, v in healthy_tensors.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k


class _Code:
    """Stands for what pickle can smuggle in: weights_only refuses to build it."""

    def __reduce__(self):
        return (os.getpid, ())


@pytest.mark.parametrize("content, message", [
    ([torch.ones(2)], r"holds a list, not a mapping of tensor names to tensors"),
    ({"layers.3.ttt.alpha": 0.1}, r"entry 'layers\.3\.ttt\.alpha' is a float, not a tensor"),
    ({}, r"holds an empty mapping"),
    ({"w": _Code()}, r"torch\.load\(weights_only=True\) refuses it \(UnpicklingError: .*GLOBAL"),
    (b"\x80\x05not a pickle", r"torch\.load\(weights_only=True\) refuses it"),
], ids=["list", "non-tensor", "empty", "code", "garbage"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the garbage bytes
def test_bad_input_trusted_pickle_that_is_not_a_tensor_mapping(tmp_path, content, message):
    ckpt = copy_zoo(tmp_path)
    (ckpt / "ttt.safetensors").unlink()
    if isinstance(content, bytes):
        (ckpt / "ttt.pt").write_bytes(content)
    else:
        torch.save(content, ckpt / "ttt.pt")
    with pytest.raises(CheckpointError, match=r"ttt\.pt: " + message):
        load_checkpoint(ckpt, trust_pickle=True)


def test_bad_input_ckpt_file_inside_a_checkpoint_resolves_to_its_directory(tmp_path):
    ckpt = copy_zoo(tmp_path)
    assert detect(ckpt / "ttt.safetensors") == ("reference", ckpt)
    pt = to_pickle(ckpt / "ttt.safetensors")
    assert detect(pt) == ("reference", ckpt)
    lone = tmp_path / "elsewhere" / "ttt.pt"
    lone.parent.mkdir()
    shutil.copy(pt, lone)
    with pytest.raises(CheckpointResolutionError, match=r"a file with no checkpoint config next to it.*--trust-pickle"):
        detect(lone)


# -- property tests: bytes and JSON ----------------------------------------------------------------


def _valid_file_bytes() -> bytes:
    buf = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16),
           "c": torch.zeros(0, 2)}
    from safetensors.torch import save

    return save(buf, metadata={"format": "pt"})


VALID = _valid_file_bytes()


def _header_of(data: bytes) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_files(draw) -> bytes:
    """A valid file with one header field replaced by any JSON value, or its bytes cut or flipped."""
    kind = draw(st.sampled_from(["field", "cut", "flip", "length"]))
    if kind == "cut":
        return VALID[: draw(st.integers(0, len(VALID)))]
    if kind == "flip":
        i = draw(st.integers(0, len(VALID) - 1))
        return VALID[:i] + bytes([draw(st.integers(0, 255))]) + VALID[i + 1:]
    if kind == "length":
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + VALID[8:]
    header = _header_of(VALID)
    name = draw(st.sampled_from(sorted(header)))
    if name == "__metadata__" or draw(st.booleans()):
        header[name] = draw(json_values)
    else:
        header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(json_values)
    raw = json.dumps(header).encode()
    (n,) = struct.unpack("<Q", VALID[:8])
    return struct.pack("<Q", len(raw)) + raw + VALID[8 + n:]


@SETTINGS
@given(data=st.binary(max_size=300) | mutated_files())
def test_corrupt_bytes_parse_or_raise_tensor_file_error(data):
    try:
        header = parse_safetensors_header(data)
    except TensorFileError as exc:
        assert str(exc).startswith("<bytes>: ")
        return
    assert 8 + header.header_bytes + header.data_bytes == len(data)


@SETTINGS
@given(data=st.binary(max_size=300) | mutated_files())
def test_corrupt_files_load_or_raise_tensor_file_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("st") / "w.safetensors"
    path.write_bytes(data)
    try:
        tensors = load_tensors(path, floating=None)
    except TensorFileError as exc:
        assert str(exc).startswith(str(path))
        return
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())


@st.composite
def reference_configs(draw) -> Any:
    """Any JSON value, or the healthy config with one field (top, decoder, decoder.ttt) replaced or removed."""
    if draw(st.integers(0, 3)) == 0:
        return draw(json_values)
    config = json.loads((ZOO / "healthy-seed0" / "config.json").read_text())
    target = draw(st.sampled_from([config, config["decoder"], config["decoder"]["ttt"]]))
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.integers(0, 4)) == 0:
        del target[key]
    else:
        target[key] = draw(json_values)
    return config


@pytest.fixture(scope="module")
def zoo_copy(tmp_path_factory) -> Path:
    return copy_zoo(tmp_path_factory.mktemp("zoo"))


@SETTINGS
@given(config=reference_configs())
def test_malformed_reference_config_loads_or_raises_checkpoint_error(zoo_copy, config):
    (zoo_copy / "config.json").write_text(json.dumps(config))
    try:
        loaded = load_checkpoint(zoo_copy)
    except CheckpointError as exc:
        assert str(exc).startswith(str(zoo_copy.parent))
        return
    assert loaded.model is not None and loaded.config == config


# -- moshi, at the file level ----------------------------------------------------------------------

MOSHI_LM = {"dim": 64, "num_heads": 4, "num_layers": 2, "lora": False, "lora_rank": 4, "lora_scaling": 2.0}
LORA_KEY = "transformer.layers.0.seq_modeling_block.ttt_layer.ttt.W1"


def moshi_tensors() -> dict[str, torch.Tensor]:
    out = {}
    for i in (0, 1):
        p = f"transformer.layers.{i}.seq_modeling_block."
        out[p + "ttt_layer.ttt.W1"] = torch.randn(4, 16, 64).to(torch.bfloat16)
        out[p + "ttt_layer.ttt.b1"] = torch.zeros(4, 1, 64, dtype=torch.bfloat16)
        out[p + "forward_ssm_gating.gating_alpha"] = torch.full((64,), 0.1, dtype=torch.bfloat16)
    return out


def moshi_checkpoint(root: Path) -> Path:
    """<root>/checkpoints/checkpoint_000300/consolidated/ with lora.safetensors and both configs."""
    cons = root / "checkpoints" / "checkpoint_000300" / "consolidated"
    cons.mkdir(parents=True)
    (cons / "config.json").write_text(json.dumps(MOSHI_LM))
    (cons / "training_config.json").write_text(json.dumps(mf.training_config()))
    save_file(moshi_tensors(), str(cons / "lora.safetensors"))
    return cons


def test_bad_input_moshi_healthy_files_read(tmp_path):
    cons = moshi_checkpoint(tmp_path)
    files = locate(tmp_path)
    assert files.weights == cons / "lora.safetensors" and files.ttt.layer_indices(2) == [0, 1]
    assert read_weights(files).keys() == moshi_tensors().keys()
    assert detect(cons / "lora.safetensors") == ("moshi", cons)  # a file of the checkpoint stands for its directory


@pytest.mark.parametrize("damage, message", [
    (truncate, r"lora\.safetensors: truncated: the header promises [\d,]+ bytes of tensor data, the file holds [\d,]+; "
               r"the copy is incomplete — copy it again"),
    (corrupt_header, r"lora\.safetensors: corrupt header: not JSON"),
    (lambda p: resave(p, lambda t: t.update({LORA_KEY: t[LORA_KEY].to(torch.int16)})),
     r"lora\.safetensors: tensor '.*ttt\.W1' is I16, weights must be floating point \(bfloat16 as saved"),
], ids=["truncated", "corrupt-header", "wrong-dtype"])
def test_corrupt_moshi_lora_safetensors_is_named(tmp_path, damage, message):
    cons = moshi_checkpoint(tmp_path)
    damage(cons / "lora.safetensors")
    files = locate(tmp_path)  # configs are fine: the weights fail when read
    with pytest.raises(MoshiCheckpointError, match=message):
        read_weights(files)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_bad_input_moshi_nonfinite_weights_are_read_as_stored(tmp_path, value):
    cons = moshi_checkpoint(tmp_path)
    resave(cons / "lora.safetensors", lambda t: t[LORA_KEY].view(-1).__setitem__(0, value))
    verdict = health.checkpoint_finite(read_weights(locate(tmp_path)))
    assert not verdict.ok and LORA_KEY in verdict.explanation


@pytest.mark.parametrize("name, text, message", [
    ("training_config.json", None, r"training_config\.json: missing\. moshi-finetune writes"),
    ("training_config.json", "{ nope", r"training_config\.json: not readable JSON"),
    ("training_config.json", "[]", r"training_config\.json: expected a JSON object, found list"),
    ("training_config.json", '{"ttt": "all"}', r"training_config\.json: 'ttt' is a str, expected an object"),
    ("training_config.json", '{"optim": {}}', r"training_config\.json: no 'ttt' section"),
    ("config.json", None, r"config\.json: missing"),
    ("config.json", "\x00", r"config\.json: not readable JSON"),
    ("config.json", '{"dim": 64, "num_heads": 4}', r"config\.json: 'num_layers' is missing"),
    ("config.json", '{"dim": 64, "num_heads": 4, "num_layers": "2"}', r"config\.json: num_layers is '2', expected a positive integer"),
    ("config.json", '{"dim": 64, "num_heads": 4, "num_layers": 2, "lora": "no"}', r"config\.json: lora is 'no', expected true or false"),
], ids=["tc-missing", "tc-not-json", "tc-list", "tc-ttt-str", "tc-no-ttt", "cfg-missing", "cfg-not-json",
        "cfg-no-layers", "cfg-layers-str", "cfg-lora-str"])
def test_malformed_moshi_configs_are_named(tmp_path, name, text, message):
    cons = moshi_checkpoint(tmp_path)
    if text is None:
        (cons / name).unlink()
    else:
        (cons / name).write_text(text)
    with pytest.raises(MoshiCheckpointError, match=message) as info:
        locate(tmp_path)
    assert str(cons) in str(info.value)


@pytest.mark.parametrize("ttt, message", [
    ({"layers": "0,7"}, r"ttt\.layers names blocks \[7\], the model has 2 \(0\.\.1\)"),
    ({"layers": [0, -1]}, r"ttt\.layers names blocks \[-1\]"),
    ({"layers": "0,x"}, r"ttt\.layers = '0,x', expected all, middle, none or '29,30,31'"),
    ({"layers": [0, "1"]}, r"ttt\.layers is \[0, '1'\], expected all, middle, none"),
    ({"mini_batch_size": "64"}, r"ttt\.mini_batch_size is '64', expected a positive integer"),
    ({"ttt_mlp_layers": 1}, r"ttt\.ttt_mlp_layers is 1, expected an integer >= 2"),
    ({"enable": "true"}, r"ttt\.enable is 'true', expected true or false"),
    ({"base_lr": None}, r"ttt\.base_lr is None, expected a number >= 0"),
], ids=["layer-7", "layer-neg", "layers-unparseable", "layers-str-in-list", "mbs-str", "mlp-1", "enable-str", "lr-null"])
def test_invalid_moshi_ttt_section_is_named(tmp_path, ttt, message):
    cons = moshi_checkpoint(tmp_path)
    (cons / "training_config.json").write_text(json.dumps(mf.training_config(**ttt)))
    with pytest.raises(MoshiCheckpointError, match=message) as info:
        locate(tmp_path)
    assert str(info.value).startswith(str(cons / "training_config.json"))


def test_bad_input_moshi_missing_training_config_is_named_by_detect(tmp_path):
    cons = moshi_checkpoint(tmp_path)
    (cons / "training_config.json").unlink()
    with pytest.raises(CheckpointResolutionError, match=r"training_config\.json is missing"):
        detect(cons)


def test_bad_input_moshi_pickle_refused_then_trusted(tmp_path):
    cons = moshi_checkpoint(tmp_path)
    want = load_file(str(cons / "lora.safetensors"))
    pt = to_pickle(cons / "lora.safetensors")
    with pytest.raises(MoshiCheckpointError, match=r"lora\.pt: a pickle checkpoint.*--trust-pickle"):
        locate(tmp_path)
    files = locate(tmp_path, trust_pickle=True)
    assert files.weights == pt and not files.full
    got = read_weights(files)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    torch.save([1, 2, 3], pt)
    with pytest.raises(MoshiCheckpointError, match=r"lora\.pt: holds a list, not a mapping"):
        read_weights(locate(tmp_path, trust_pickle=True))


@st.composite
def training_configs(draw) -> Any:
    """Any JSON value, or a valid TrainArgs dump whose ttt section has one key replaced or removed."""
    if draw(st.integers(0, 3)) == 0:
        return draw(json_values)
    config = mf.training_config()
    if draw(st.integers(0, 5)) == 0:
        config["ttt"] = draw(json_values)
        return config
    key = draw(st.sampled_from(sorted(config["ttt"])))
    if draw(st.integers(0, 4)) == 0:
        del config["ttt"][key]
    else:
        config["ttt"][key] = draw(json_values)
    return config


@pytest.fixture(scope="module")
def moshi_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("moshi")
    moshi_checkpoint(root)
    return root


@SETTINGS
@given(config=training_configs())
def test_malformed_training_config_locates_or_raises_moshi_error(moshi_copy, config):
    cons = moshi_copy / "checkpoints" / "checkpoint_000300" / "consolidated"
    (cons / "training_config.json").write_text(json.dumps(config))
    try:
        files = locate(moshi_copy)
    except MoshiCheckpointError as exc:
        assert str(cons) in str(exc)
        return
    files.ttt.layer_indices(MOSHI_LM["num_layers"])  # checked once: never raises afterwards
    assert read_weights(files).keys() == moshi_tensors().keys()


# -- end to end: the health run fails with the cause, never passes, never a traceback ---------------


def _damage_for_e2e(kind: str, ckpt: Path) -> str:
    """Damage ``ckpt`` one way; returns the words the user must see."""
    path = ckpt / "ttt.safetensors"
    if kind == "truncated":
        truncate(path)
        return "the copy is incomplete — copy it again"
    if kind == "corrupt-header":
        corrupt_header(path)
        return "corrupt header: not JSON"
    if kind == "wrong-dtype":
        wrong_dtype(path)
        return "weights must be floating point"
    to_pickle(path)
    return "--trust-pickle"


@pytest.mark.parametrize("kind", ["truncated", "corrupt-header", "wrong-dtype", "pickle-untrusted"])
def test_bad_input_health_run_fails_with_the_cause_and_no_traceback(pytester, tmp_path, monkeypatch, kind):
    ckpt = copy_zoo(tmp_path / "zoo")
    cause = _damage_for_e2e(kind, ckpt)
    for var in [v for v in os.environ if v.startswith("PYTEST_XDIST") or v == "PYTEST_CURRENT_TEST"]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(REPO)
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-m", "gpu", str(REPO / "tests_gpu"), "--ckpt", str(ckpt), "--device", "cpu",
        "--report-dir", str(tmp_path / "report"), f"--junitxml={junit}", "-q", "--rootdir", str(REPO), timeout=300,
    )
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 1, out[-3000:]
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) > 0 and "passed" not in outcomes, outcomes
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert cases and all(c.find("failure") is not None or c.find("error") is not None for c in cases)
    assert cause in out and str(ckpt / "ttt") in out
    assert "Traceback" not in out
