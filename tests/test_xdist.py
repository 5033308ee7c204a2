"""pytest-xdist: one GPU per worker, and a parallel health run that measures what a serial one does."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ttt_checks.xdist_gpu import (
    ORIGINAL_VAR, device_for_worker, parse_visible_devices, pin_xdist_worker_gpu, worker_index,
)

REPO = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child pytest: none of this (possibly xdist) session's worker variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "CUDA_VISIBLE_DEVICES")) and k != ORIGINAL_VAR}
    return {**env, **extra}


@pytest.mark.parametrize("worker, expected", [("gw0", 0), ("gw7", 7), ("gw12", 12), ("master", None),
                                              (None, None), ("", None), ("gwx", None), ("popen-gw1", None)])
def test_worker_index_reads_only_xdist_worker_ids(worker, expected):
    assert worker_index(worker) == expected


def test_visible_devices_keep_order_indices_and_uuids():
    assert parse_visible_devices("3, 1,GPU-8f2a,MIG-1/2/3") == ["3", "1", "GPU-8f2a", "MIG-1/2/3"]
    assert parse_visible_devices("") == []
    assert parse_visible_devices(None) == []


def test_each_worker_gets_its_entry_of_the_inherited_list_not_a_raw_index():
    # Under `--gres=gpu:2` Slurm may hand the job GPUs 2 and 5: worker 0 must get "2", never "0".
    assert [device_for_worker("2,5", f"gw{i}") for i in range(2)] == ["2", "5"]


def test_workers_beyond_the_gpu_count_share_gpus_round_robin():
    assert [device_for_worker("4,6", f"gw{i}") for i in range(5)] == ["4", "6", "4", "6", "4"]


@pytest.mark.parametrize("visible", [None, "", " , "])
def test_nothing_is_pinned_without_a_visible_list(visible):
    assert device_for_worker(visible, "gw1") is None


def test_the_controller_and_serial_runs_are_left_alone():
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert pin_xdist_worker_gpu(env) is None
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    env["PYTEST_XDIST_WORKER"] = "master"
    assert pin_xdist_worker_gpu(env) is None and env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_pinning_narrows_the_variable_and_is_idempotent():
    env = {"PYTEST_XDIST_WORKER": "gw1", "CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b,GPU-c"}
    assert pin_xdist_worker_gpu(env) == "GPU-b"
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-b" and env[ORIGINAL_VAR] == "GPU-a,GPU-b,GPU-c"
    assert pin_xdist_worker_gpu(env) == "GPU-b"  # a second call re-reads the inherited list
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-b"


def test_real_xdist_workers_are_pinned_before_their_tests_run(tmp_path):
    """Two real workers, CUDA_VISIBLE_DEVICES=3,7 inherited: each test sees its worker's one entry."""
    (tmp_path / "test_where.py").write_text(textwrap.dedent("""
        import json, os

        def _record(name):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            out = os.path.join(os.environ["WHERE_DIR"], f"{name}-{worker}.json")
            with open(out, "w") as f:
                json.dump({"worker": os.environ["PYTEST_XDIST_WORKER"],
                           "visible": os.environ["CUDA_VISIBLE_DEVICES"]}, f)

        def test_a():
            _record("a")

        def test_b():
            _record("b")
    """))
    env = _clean_env(CUDA_VISIBLE_DEVICES="3,7", WHERE_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "each", "-p", "no:cacheprovider", "-q",
         "--device", "cpu", "--rootdir", str(tmp_path), "--report-dir", str(tmp_path / "report"),
         str(tmp_path / "test_where.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # --dist each runs both tests on both workers: four records, each naming its worker's GPU only.
    seen = {path.stem: json.loads(path.read_text()) for path in tmp_path.glob("*-gw*.json")}
    assert sorted(seen) == ["a-gw0", "a-gw1", "b-gw0", "b-gw1"], seen
    for record in seen.values():
        assert record["visible"] == {"gw0": "3", "gw1": "7"}[record["worker"]], record


def _metrics(report_dir: Path) -> dict:
    return json.loads((report_dir / "metrics.json").read_text())


def _verdicts(metrics: dict) -> dict[tuple[str, str | None], dict]:
    return {(v["name"], v.get("layer")): v for vs in metrics["verdicts"].values() for v in vs}


# Losses agree to 1e-6 relative between a serial and a parallel run (each process sums in its own
# order). A measured value near 0 is a relative difference of two such losses (streaming_consistency:
# (streamed - teacher-forced) / teacher-forced, about 3e-8 here, pure rounding), so it can move by
# up to about 2e-6 absolute; an absolute 1e-9 failed on 2.7e-8 vs 3.4e-8.
def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=2e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def test_serial_and_four_workers_measure_the_same_default_checkpoint(tmp_path):
    """`pytest -m gpu tests_gpu --device cpu` serially and with -n 4: same verdicts, same measurements.

    Each worker loads the model once (the session fixture) and measures what its tests need; the
    controller merges the workers' metrics.json. Measured values must agree to 1e-6 (relative).
    """
    from ttt_checks.models.registry import default_checkpoint

    ckpt = default_checkpoint()  # the embedded default ships with the clone; missing it is a failure
    common = [sys.executable, "-m", "pytest", "-m", "gpu", str(REPO / "tests_gpu"), "--ckpt", str(ckpt),
              "--device", "cpu", "--gates", "0,learned", "--max-positions", "64", "-p", "no:cacheprovider",
              "-q", "--rootdir", str(REPO)]
    runs = {}
    for label, extra in (("serial", []), ("parallel", ["-n", "4"])):
        report = tmp_path / label
        proc = subprocess.run([*common, "--report-dir", str(report), *extra], cwd=REPO, env=_clean_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode in (0, 1), f"{label}: pytest exited {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        runs[label] = (proc.returncode, _metrics(report))
    (serial_rc, serial), (parallel_rc, parallel) = runs["serial"], runs["parallel"]
    assert parallel.get("workers") == 4, "the parallel report is not the merge of four workers"
    assert serial["complete"] is True and parallel["complete"] is True
    assert serial_rc == parallel_rc
    a, b = _verdicts(serial), _verdicts(parallel)
    assert a, "the serial run judged nothing"
    assert sorted(a) == sorted(b), f"checks differ: only serial {set(a) - set(b)}, only parallel {set(b) - set(a)}"
    differing = [(key, a[key]["ok"], b[key]["ok"], a[key]["measured"], b[key]["measured"]) for key in a
                 if a[key]["ok"] != b[key]["ok"] or not _close(a[key]["measured"], b[key]["measured"])]
    assert not differing, f"serial vs -n 4 verdicts differ: {differing}"
    sweep = lambda m: [(r["label"], r["words"], r["transcript"], r.get("model_text")) for r in m.get("sweep", [])]  # noqa: E731
    assert sweep(serial), "the serial run has no gating sweep"
    assert sweep(serial) == sweep(parallel), "the gating sweep (generation + Whisper) differs between serial and -n 4"
    for layer, stats in serial.get("figure5", {}).items():
        for key, value in stats.items():
            assert _close(value, parallel["figure5"][layer][key]), f"figure5[{layer}].{key}: {value} vs {parallel['figure5'][layer][key]}"
