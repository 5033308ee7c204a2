"""The package's structure holds: the import contract, no import circle, one definition per concept.

``make lint`` runs the same two tools in CI; these tests keep them honest: each is shown to fail
on a package built to break it, so a contract that can no longer fail would be noticed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")

_spec = importlib.util.spec_from_file_location("check_import_cycles", REPO / "scripts" / "check_import_cycles.py")
cycles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cycles)


def _package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_ttt_checks_has_no_import_circle():
    assert cycles.import_circles("ttt_checks") == []


def test_an_import_circle_inside_a_package_is_found(tmp_path, monkeypatch):
    _package(tmp_path, {"circ/__init__.py": "", "circ/a.py": "from circ import b\n", "circ/b.py": "def f():\n    from circ import a\n",
                        "circ/c.py": "from circ import a\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cycles.import_circles("circ") == [["circ.a", "circ.b"]]


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is a dev dependency (make venv installs it)")
def test_the_import_contract_is_kept():
    proc = subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is a dev dependency (make venv installs it)")
def test_the_layers_contract_fails_on_an_upward_import(tmp_path):
    """The same kind of contract as ours, on a two-layer package whose lower layer reaches up."""
    _package(tmp_path, {"twolayer/__init__.py": "", "twolayer/high.py": "from twolayer import low\n",
                        "twolayer/low.py": "def f():\n    from twolayer import high\n",
                        "pyproject.toml": """
                            [tool.importlinter]
                            root_package = "twolayer"
                            [[tool.importlinter.contracts]]
                            name = "layers"
                            type = "layers"
                            containers = ["twolayer"]
                            layers = ["high", "low"]
                        """})
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "twolayer.low -> twolayer.high" in proc.stdout


def test_the_gate_formula_is_defined_once():
    """tanh(clamp(alpha, -3, 3)) is written in ttt/gate.py only; every other module calls it."""
    offenders = []
    for path in (REPO / "ttt_checks").rglob("*.py"):
        if path.name == "gate.py" and path.parent.name == "ttt":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\b(torch|np|numpy|math)\.tanh\(", code) and re.search(r"clip\(|clamp\(|min\(3", code):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "the gate formula written out again (call ttt_checks.ttt.gate.effective_gate):\n" + "\n".join(offenders)


def test_the_list_of_checks_is_kept_once():
    from ttt_checks.checks import CHECKS, EXPECTED_CHECKS
    from ttt_checks.diagnosis import diagnose

    assert len(CHECKS) == len(set(CHECKS)) and set(EXPECTED_CHECKS) <= set(CHECKS)
    missing = diagnose({"verdicts": {"checkpoint_keys": [{"name": "checkpoint_keys", "ok": True, "status": "pass"}]}})
    assert missing.missing_measurements == [c for c in EXPECTED_CHECKS if c != "checkpoint_keys"]


def test_code_cites_no_file_outside_the_repository():
    offenders = [f"{p.relative_to(REPO)}" for p in [*(REPO / "ttt_checks").rglob("*.py"), *(REPO / "docs").rglob("*.md"),
                                                     REPO / "README.md", REPO / "Makefile"]
                 if "shared/reference" in p.read_text() or "../shared" in p.read_text()]
    assert not offenders, f"these send the reader outside the repository: {offenders}"
