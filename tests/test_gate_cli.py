"""`ttt-checks gate`: what it passes to pytest and what its one-screen summary says on bad endings."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ttt_checks.runs import suite as gate

REPO = Path(__file__).resolve().parents[1]


def _args(**kw) -> argparse.Namespace:
    base = dict(device="cpu", gates=None, threshold=[], keyword=None, verbose=False, input=None, max_positions=None)
    return argparse.Namespace(**{**base, **kw})


def test_gate_passes_input_and_max_positions_to_the_health_suite(tmp_path):
    prompt = tmp_path / "prompt.wav"
    argv = gate.pytest_args("ckpt", tmp_path, _args(input=str(prompt), max_positions=64, trust_pickle=True))
    assert argv[argv.index("--input") + 1] == str(prompt.resolve())
    assert argv[argv.index("--max-positions") + 1] == "64"
    assert "--trust-pickle" in argv


def test_bad_input_gate_on_a_missing_checkpoint_is_a_usage_error_said_plainly(tmp_path):
    env = {**os.environ, "NO_TORCH_COMPILE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ttt_checks.cli", "gate", str(tmp_path / "missing"), "--device", "cpu",
                           "--out", str(tmp_path / "report")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "no such file or directory" in proc.stdout + proc.stderr
    assert "USAGE ERROR (exit 4): nothing was measured" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_bad_input_gate_summary_of_an_interrupted_run_says_incomplete(tmp_path):
    verdict = {"name": "checkpoint_finite", "ok": True, "measured": 0, "threshold": 0, "explanation": "", "layer": None}
    (tmp_path / "metrics.json").write_text(json.dumps({"complete": False, "checkpoint": "c", "verdicts": {"x": [verdict]}}))
    text = gate.summary(tmp_path, 2, 1.0)
    assert "INTERRUPTED (the report is incomplete" in text and "HEALTHY" not in text.replace("UNHEALTHY", "")
