"""The pytest plugin seen from outside: options, usage errors (exit 4), markers from any directory."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

GPU_TEST = """
import pytest

@pytest.mark.gpu
def test_placeholder_never_runs():
    raise AssertionError("configuration must fail before any test runs")
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_gpu_like=GPU_TEST)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_markers_are_registered_from_any_directory(pytester):
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["*@pytest.mark.gpu:*", "*@pytest.mark.slow:*"])


def test_options_are_listed_in_their_own_group(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*ttt-checks: health checks of a TTT checkpoint*", "*--ckpt*", "*--threshold=NAME=VALUE*"])


@pytest.mark.parametrize(
    "args, message",
    [
        (("--threshold", "not_a_rule=1"), "*unknown threshold name*not_a_rule*"),
        (("--threshold", "ordering_min_fraction=most"), "*must be a number*"),
        (("--threshold", "ordering_min_fraction"), "*expected NAME=VALUE*"),
        (("--gates", "0,learned,7"), "*outside [[]-3, 3[]]*"),
        (("--gates", "0,medium"), "*neither a number nor 'learned'*"),
        (("--max-positions", "1"), "*at least 2 positions*"),
        (("--device", "tpu"), "*expected auto, cpu, cuda or cuda:N*"),
        (("--update-baseline",), "*--update-baseline needs --baseline PATH*"),
        (("--baseline", "no-such-metrics.json"), "*--baseline no-such-metrics.json: no such file*--update-baseline*"),
        (("--base-reference", "no-such-metrics.json"), "*--base-reference no-such-metrics.json: no such file*known-good*"),
    ],
)
def test_invalid_options_are_usage_errors_not_green_runs(pytester, args, message):
    result = run(pytester, "--device", "cpu", *args) if "--device" not in args else run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.parametrize("args", [("--device", "cuda"), ("--device", "cuda:1"), ("--require-gpu",)])
def test_bad_input_gpu_requested_without_one_is_a_usage_error(pytester, monkeypatch, args):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, also on a GPU machine
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no CUDA GPU is visible*"])


def test_invalid_threshold_in_the_pyproject_table_is_a_usage_error(pytester):
    pytester.makepyprojecttoml("[tool.ttt_checks]\nordering_min_fraction = 0.8\nno_such_rule = 1\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*[[]tool.ttt_checks[]]*unknown threshold name*no_such_rule*"])
