"""scripts/gpu_check.py (``make test-gpu``) exercised on CPU: the 7B phases on the tiny shape, the
JSON summary and the RESULTS.md section, and the refusal on a machine without CUDA.

The script's GPU-only parts (the CUDA tests, the tiny-Moshi health suite on cuda, peak memory)
cannot run here; everything the 7B run does with the model runs here on a tiny shape: building
with random weights and TTT injected, the Figure-5 pass, the gate-0 pass, the streamed pass
(state carried), the 5-gate batched sweep through LMGen and Mimi, with the memory estimates.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_the_7b_phases_run_on_a_tiny_shape_on_cpu(gpu_check, tmp_path, capsys):
    torch.set_num_threads(1)
    out, md = tmp_path / "summary.json", tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n")
    rc = gpu_check.main(["--shape", "tiny", "--device", "cpu", "--frames", "48", "--json", str(out), "--results", str(md)])
    summary = json.loads(out.read_text())
    assert rc == 0 and summary["ok"], json.dumps(summary, indent=1)[-3000:]
    phases = summary["phases"]
    assert list(phases) == ["build", "figure5_pass", "gate0_pass", "streamed_pass", "sweep"]
    for name, phase in phases.items():
        assert phase["ok"] and phase["wall_s"] > 0 and phase["estimate_bytes"] > 0, (name, phase)
        assert phase["max_memory_allocated"] is None  # no CUDA: nothing measured, nothing invented
    assert set(phases["figure5_pass"]["layers"]) == {"transformer.layers.2", "transformer.layers.3"}
    for curves in phases["figure5_pass"]["layers"].values():
        assert curves["positions"] == 48 and all(curves[k] > 0 for k in ("l0", "lprev", "lafter"))
    assert all(phases["streamed_pass"]["state_carried"].values())
    assert phases["sweep"]["frames"] == [12] * 5 and phases["sweep"]["gates"] == ["0.0", "learned", "0.3", "0.5", "1.0"]
    assert "cuda_tests" not in summary  # GPU-only steps are not run on CPU, and not reported as passed
    text = md.read_text()
    assert text.startswith("# Benchmark results\n\n## GPU check") and "| figure5_pass | yes |" in text
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("\n{") + 1:]) == summary  # the same summary, printed last


def test_a_failing_phase_is_reported_as_failing(gpu_check):
    summary = {"date": "d", "device": "cuda:0", "device_name": "GPU", "torch": "t", "shape": "7b", "ttt_layers": [29],
               "mini_batch_size": 64, "dtype": "bfloat16", "wall_s": 1.0, "ok": False,
               "phases": {"sweep": {"ok": False, "error": "GPUMemoryError: would not fit", "estimate_bytes": 2 ** 31}}}
    section = gpu_check.results_section(summary)
    assert "| sweep | NO: GPUMemoryError: would not fit | - | - | 2.00 | - |" in section
    assert "**NOT all ok**" in section


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_script_refuses_with_the_reason(gpu_check, capsys):
    assert gpu_check.main(["--results", "-"]) == 2
    message = json.loads(capsys.readouterr().out)
    assert message["ok"] is False and "no CUDA GPU is visible" in message["error"]
    assert gpu_check.main(["--device", "cpu", "--results", "-"]) == 2  # the 7B shape is never run on CPU
    assert "--shape tiny" in json.loads(capsys.readouterr().out)["error"]
