"""The suite on CUDA: the reference model and the tiny Moshi run on ``cuda`` as they run on CPU.

These tests live in ``tests/`` (the harness's own tests), not in ``tests_gpu/``: ``tests_gpu``
holds the health checks of one ``--ckpt`` and runs against a user's checkpoint, while these test
the harness on a GPU (they start their own health runs as subprocesses, on the embedded reference
model and on a tiny Moshi they build). Marker ``cuda``; ``make test-gpu`` (scripts/gpu_check.py)
runs them with ``--require-gpu``.

Without a GPU every test here is skipped, saying so; with ``--require-gpu`` a missing GPU fails
the run (the plugin's usage error, exit 4, before collection; and the ``cuda_device`` fixture
fails each test if the plugin is not the one that checked). Comparisons are fp32 on both
devices: Figure-5 curves within 1e-4 relative, greedy tokens equal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import moshi_fixtures as mf  # noqa: E402

from ttt_checks.report.junit import cases_by_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4  # fp32 on two devices: different kernels and reduction orders, same math

NO_GPU_REASON = "no CUDA GPU visible (torch.cuda.is_available() is False): CUDA tests need a GPU node; make test-gpu runs them"


def cuda_or_skip(require_gpu: bool) -> torch.device:
    """cuda:0, or a skip with the reason; a failure instead when the run requires a GPU."""
    if torch.cuda.is_available():
        return torch.device("cuda:0")
    if require_gpu:
        pytest.fail(f"--require-gpu: {NO_GPU_REASON}", pytrace=False)
    pytest.skip(NO_GPU_REASON)


@pytest.fixture(scope="module")
def cuda_device(request) -> torch.device:
    require = bool(request.config.getoption("--require-gpu", default=False))
    return cuda_or_skip(require)


def _plugin_args() -> list[str]:
    from importlib.metadata import entry_points

    registered = any(ep.value.startswith("ttt_checks") for ep in entry_points(group="pytest11"))
    return [] if registered else ["-p", "ttt_checks.pytest_plugin"]


def health_outcomes(tmp: Path, device: str, ckpt: Path | None = None, env: dict[str, str] | None = None,
                    extra: tuple[str, ...] = ()) -> tuple[int, dict[str, str]]:
    """Run tests_gpu (the health checks) on ``ckpt`` on ``device``: (exit code, {test: outcome})."""
    xml = tmp / f"junit-{device.replace(':', '')}.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests_gpu", "--device", device, *_plugin_args(),
           "-p", "no:cacheprovider", "--report-dir", str(tmp / f"report-{device.replace(':', '')}"), f"--junitxml={xml}",
           "-q", *extra]
    if ckpt is not None:
        cmd += ["--ckpt", str(ckpt)]
    full_env = {**os.environ, **(env or {}), "NO_TORCH_COMPILE": "1", "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)
    assert xml.is_file(), f"no JUnit XML from {' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.returncode, {name: case.outcome for name, case in cases_by_name(xml).items()}


def assert_records_close(cpu: dict, gpu: dict) -> None:
    assert cpu.keys() == gpu.keys() and cpu, (cpu.keys(), gpu.keys())
    for name in cpu:
        a, b = cpu[name], gpu[name]
        np.testing.assert_array_equal(a.counts, b.counts)
        for curve in ("l0", "lprev", "lafter", "lmean"):
            np.testing.assert_allclose(getattr(b, curve), getattr(a, curve), rtol=RTOL, atol=0,
                                       err_msg=f"{name} {curve}: cuda vs cpu (fp32)")


# -- the reference model --------------------------------------------------------------------------


@pytest.mark.cuda
def test_reference_figure5_on_cuda_matches_cpu_fp32(cuda_device):
    from ttt_checks.models.registry import resolve
    from ttt_checks.ttt import Figure5Probe

    records = {}
    for device in ("cpu", str(cuda_device)):
        adapter = resolve(None, device=device)
        inputs = adapter.load_inputs()
        probe = Figure5Probe()
        result = adapter.teacher_forced(inputs.teacher_forced, probe=probe)
        assert result.outputs_finite
        records[device] = probe.records()
    assert_records_close(records["cpu"], records[str(cuda_device)])


@pytest.mark.cuda
def test_reference_health_suite_on_cuda_gives_the_cpu_verdicts(cuda_device, tmp_path):
    rc_cpu, cpu = health_outcomes(tmp_path, "cpu")
    rc_gpu, gpu = health_outcomes(tmp_path, "cuda")
    assert gpu == cpu and rc_gpu == rc_cpu, {k: (cpu.get(k), gpu.get(k)) for k in set(cpu) | set(gpu) if cpu.get(k) != gpu.get(k)}
    figure5 = [k for k in gpu if "inner" in k or "figure5" in k]
    assert figure5 and all(gpu[k] == "passed" for k in figure5), gpu  # the embedded default is healthy


@pytest.mark.cuda
def test_two_xdist_workers_are_pinned_to_two_gpus(cuda_device, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"-n 2 GPU pinning needs 2 GPUs, {torch.cuda.device_count()} visible")
    probe = tmp_path / "test_which_gpu.py"
    probe.write_text(
        "import os, torch\n"
        "def test_a(): open(os.environ['OUT_DIR'] + '/' + os.environ['PYTEST_XDIST_WORKER'], 'w').write(str(torch.cuda.get_device_properties(0).uuid))\n"
        "def test_b(): test_a()\n")
    env = {**os.environ, "OUT_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    if not env.get("CUDA_VISIBLE_DEVICES"):  # an inherited list (Slurm's) is kept: its entries are the job's GPUs
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(torch.cuda.device_count()))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "each", *_plugin_args(), "-p", "no:cacheprovider",
                           "--device", "cpu", "-q", str(probe)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    uuids = {p.name: p.read_text() for p in tmp_path.glob("gw*")}
    assert len(uuids) == 2 and len(set(uuids.values())) == 2, uuids
    rc_one, one = health_outcomes(tmp_path / "one", "cuda")
    rc_two, two = health_outcomes(tmp_path / "two", "cuda", extra=("-n", "2"))
    assert two == one and rc_two == rc_one


# -- the tiny Moshi ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_moshi(cuda_device, tmp_path_factory):
    """An untrained tiny Moshi run (initial TTT tensors): (run dir, base)."""
    root = tmp_path_factory.mktemp("tiny_cuda")
    base = mf.build_base(root / "base")
    from ttt_checks.models.moshi.adapter import MoshiAdapter
    from ttt_checks.models.moshi.model import export_ttt_tensors

    empty = MoshiAdapter(mf.write_run(root / "empty", base, {}, mf.training_config()), **base.options)
    tensors = export_ttt_tensors(empty.loaded.hybrids, empty.loaded.keys, 0.1, dtype=torch.float32)
    return mf.write_run(root / "run", base, tensors, mf.training_config()), base


def _tiny(run, base, device: str, **options):
    from ttt_checks.models.moshi.adapter import MoshiAdapter

    return MoshiAdapter(run, device=device, dtype=torch.float32, **base.options, **options)


@pytest.mark.cuda
def test_tiny_moshi_figure5_on_cuda_matches_cpu_fp32(cuda_device, tiny_moshi):
    from ttt_checks.ttt import Figure5Probe

    run, base = tiny_moshi
    records = {}
    for device in ("cpu", str(cuda_device)):
        adapter = _tiny(run, base, device)
        probe = Figure5Probe()
        adapter.teacher_forced(adapter.load_inputs(max_positions=96).teacher_forced, probe=probe)
        records[device] = probe.records()
    assert_records_close(records["cpu"], records[str(cuda_device)])


@pytest.mark.cuda
def test_tiny_moshi_greedy_sweep_tokens_on_cuda_equal_cpu(cuda_device, tiny_moshi):
    """Generation on CUDA runs with moshi's CUDA graphs off; graphed TTT would replay one frame."""
    run, base = tiny_moshi
    gates = [0.0, "learned", 0.3, 0.5, 1.0]
    tokens = {}
    for device in ("cpu", str(cuda_device)):
        adapter = _tiny(run, base, device, sampling=False, reply_seconds=1.0)
        prompt = adapter.load_inputs().prompts[0][: 1920 * 20]
        tokens[device] = [g.tokens for g in adapter.generate(prompt, gates)]
    for gate, a, b in zip(gates, tokens["cpu"], tokens[str(cuda_device)]):
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        assert a == b, f"gate {gate}: greedy text tokens differ from frame {first} (cpu {a[first:first + 5]}, cuda {b[first:first + 5]})"


@pytest.mark.cuda
def test_tiny_moshi_health_suite_on_cuda_gives_the_cpu_verdicts(cuda_device, tiny_moshi, tmp_path):
    run, base = tiny_moshi
    short = ("--max-positions", "128")  # 16 mini-batches of 8: every check measures, in seconds
    rc_cpu, cpu = health_outcomes(tmp_path, "cpu", run, env=base.env, extra=short)
    rc_gpu, gpu = health_outcomes(tmp_path, "cuda", run, env=base.env, extra=short)
    assert gpu == cpu and rc_gpu == rc_cpu, {k: (cpu.get(k), gpu.get(k)) for k in set(cpu) | set(gpu) if cpu.get(k) != gpu.get(k)}
    assert gpu.get("test_ttt_state_persists_across_streaming_calls") == "passed", gpu


# -- without a GPU (runs on CPU machines: pins the skip / fail behaviour) -----------------------------


def test_without_a_gpu_cuda_tests_skip_with_the_reason_and_fail_under_require_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(pytest.skip.Exception, match="no CUDA GPU visible"):
        cuda_or_skip(require_gpu=False)
    with pytest.raises(pytest.fail.Exception, match="--require-gpu: no CUDA GPU visible"):
        cuda_or_skip(require_gpu=True)

