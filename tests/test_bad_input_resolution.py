"""Bad --ckpt paths are refused before any model loads, with what was found and what to do."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttt_checks.models.registry import CheckpointResolutionError, detect

pytest_plugins = ["pytester"]


def test_bad_input_missing_path(tmp_path):
    with pytest.raises(CheckpointResolutionError, match="no such file or directory"):
        detect(tmp_path / "nope")


def test_bad_input_empty_directory(tmp_path):
    with pytest.raises(CheckpointResolutionError, match="holds nothing"):
        detect(tmp_path)


def test_bad_input_run_dir_without_checkpoints(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "args.yaml").write_text("run_dir: x\n")
    with pytest.raises(CheckpointResolutionError, match="checkpoints/ holds no checkpoint_NNNNNN yet"):
        detect(tmp_path)


def test_bad_input_pickle_file_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "consolidated.pt"
    path.write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointResolutionError, match="pickle"):
        detect(path)


def test_bad_input_malformed_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{ this is not json")
    with pytest.raises(CheckpointResolutionError, match="not readable JSON"):
        detect(tmp_path)


@given(text=st.text(max_size=200))
def test_malformed_config_never_resolves_silently(tmp_path_factory, text):
    """Whatever config.json holds, detect() either names a family or raises its own error."""
    d = tmp_path_factory.mktemp("cfg")
    (d / "config.json").write_text(text)
    try:
        family, _ = detect(d)
    except CheckpointResolutionError:
        return
    assert family == "reference" and json.loads(text)["format"].startswith("ttt-checks-reference/")


def test_bad_input_ckpt_is_a_usage_error_not_a_traceback(pytester, tmp_path):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--device", "cpu", "--ckpt", str(tmp_path / "missing"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ckpt*missing: no such file or directory*"])
    assert "Traceback" not in result.stderr.str()


def test_bad_input_report_dir_not_writable(pytester, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--device", "cpu", "--report-dir", str(blocker / "sub"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--report-dir*not writable*"])


def test_bad_input_asr_model_missing(pytester, tmp_path):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--device", "cpu", "--asr", f"faster-whisper:{tmp_path}/no-model")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--asr*does not exist*"])


def test_bad_input_missing_input_file(pytester, tmp_path):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--device", "cpu", "--input", str(tmp_path / "prompt.wav"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--input*no such file*"])
