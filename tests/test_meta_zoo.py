"""Meta-tests: the health suite itself, run on known-healthy and known-broken checkpoints.

Each zoo checkpoint is checked by a real ``pytest -m gpu tests_gpu --ckpt ...`` in a
subprocess (pytester); the JUnit XML it writes says which checks failed. Healthy checkpoints
must pass every check; each broken one must fail exactly the checks its zoo entry names, and the
run's top diagnosis (metrics.json and the JUnit testsuite properties) must be the cause the
entry's construction implies (``detection.zoo_expected_diagnoses``; one health run per entry
serves both assertions).
"""

from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from test_diagnosis import advice_goes_its_own_way
from zoo_selection import judged_entries

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
HEALTH_TESTS = ROOT / "tests_gpu" / "test_health.py"


def check_of_each_test() -> dict[str, str]:
    """test function name -> the check it judges (read from tests_gpu, never typed twice)."""
    tree = ast.parse(HEALTH_TESTS.read_text())
    out = {}
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ttt_check":
                    out[fn.name] = node.args[0].value
    return out


def run_health_suite(pytester: pytest.Pytester, ckpt: Path, tmp: Path, *extra: str) -> tuple[pytest.RunResult, ET.Element]:
    junit = tmp / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-m", "gpu", str(ROOT / "tests_gpu"), "--ckpt", str(ckpt), "--device", "cpu", "-p", "no:cacheprovider",
        "--report-dir", str(tmp / "report"), f"--junitxml={junit}", "-c", str(ROOT / "pyproject.toml"),
        "--rootdir", str(ROOT), *extra,
    )
    assert junit.is_file(), f"no JUnit written:\n{result.stdout.str()[-3000:]}\n{result.stderr.str()[-2000:]}"
    return result, ET.parse(junit).getroot()


def failing_checks(root: ET.Element) -> set[str]:
    checks = check_of_each_test()
    failed = set()
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(checks.get(case.get("name"), case.get("name")))
    return failed


@pytest.mark.parametrize("entry", judged_entries("recall"), ids=lambda e: e.name)
def test_zoo_checkpoint_fails_exactly_its_intended_checks(pytester, tmp_path, entry):
    check_zoo_entry(pytester, tmp_path, entry)


def check_zoo_entry(pytester: pytest.Pytester, tmp_path: Path, entry) -> None:
    """One health run of ``entry``: the checks it fails, its exit code, report and top diagnosis (the first
    generation's entries run from tests/test_meta_zoo_first_generation.py, so xdist spreads the two files)."""
    result, root = run_health_suite(pytester, entry.path, tmp_path)
    failed = failing_checks(root)
    assert failed == set(entry.expected_failures), (
        f"{entry.name}: expected to fail {sorted(entry.expected_failures)}, failed {sorted(failed)}\n"
        + result.stdout.str()[-4000:]
    )
    expected_code = pytest.ExitCode.OK if entry.healthy else pytest.ExitCode.TESTS_FAILED
    assert result.ret == expected_code
    assert (tmp_path / "report" / "metrics.json").is_file() and (tmp_path / "report" / "index.html").is_file()

    from ttt_checks.runs.matrix import zoo_expected_diagnoses

    diagnosis = json.loads((tmp_path / "report" / "metrics.json").read_text())["diagnosis"]
    expected_top = zoo_expected_diagnoses()[entry.name]
    if expected_top is None:
        assert diagnosis["healthy"] and not diagnosis["findings"], diagnosis["summary"]
    else:
        assert diagnosis["findings"] and diagnosis["findings"][0]["rule"] == expected_top, diagnosis["summary"]
    for finding in diagnosis["findings"]:  # no advice contradicts its own numbers, on any zoo checkpoint
        advice_goes_its_own_way(finding["fix"], finding["rule"])
    props = {p.get("name"): p.get("value") for p in root.find("testsuite").find("properties").iter("property")}
    assert props["diagnosis.healthy"] == str(expected_top is None).lower()
    assert props.get("diagnosis.1.rule") == expected_top
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for layer, stats in (metrics.get("figure5") or {}).items():  # the reviewer's numbers, as measured
        for curve in ("mean_l0", "mean_lprev", "mean_lafter"):
            if isinstance(stats.get(curve), float):
                assert float(props[f"layer.{layer}.{curve}"]) == pytest.approx(stats[curve], rel=1e-5)
    if isinstance((metrics.get("outer_loss") or {}).get("learned"), float):
        assert float(props["outer_loss.learned"]) == pytest.approx(metrics["outer_loss"]["learned"], rel=1e-5)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One run of the health suite on the embedded default, shared by the evidence tests."""
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("default-run")
    junit = tmp / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", str(ROOT / "tests_gpu"), "--device", "cpu", "-p", "no:cacheprovider",
           "--report-dir", str(tmp / "report"), f"--junitxml={junit}", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    return proc, ET.parse(junit).getroot(), tmp / "report"


def test_default_checkpoint_is_healthy(default_run):
    proc, root, _ = default_run
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert failing_checks(root) == set()


def test_junit_carries_measured_values_thresholds_and_attachments(default_run):
    _, root, report = default_run
    cases = {c.get("name"): c for c in root.iter("testcase")}
    ordering = cases["test_inner_losses_are_ordered_l0_lprev_lafter"]
    props = {p.get("name"): p.get("value") for p in ordering.iter("property")}
    measured = [k for k in props if k.startswith("figure5_ordering[") and k.endswith(".measured")]
    assert measured and all(f"{k[:-len('.measured')]}.threshold" in props for k in measured)
    out = ordering.findtext("system-out") or ""
    attachments = [line.split("|", 1)[1].rstrip("]") for line in out.splitlines() if line.startswith("[[ATTACHMENT|")]
    assert any(a.endswith(".png") for a in attachments) and all(Path(a).is_absolute() and Path(a).is_file() for a in attachments)
    talk = cases["test_no_collapse_at_any_gate_of_the_sweep"]
    talk_out = talk.findtext("system-out") or ""
    assert ".wav]]" in talk_out and "words_vs_gate.png]]" in talk_out


def test_report_directory_holds_every_artifact(default_run):
    _, _, report = default_run
    names = {p.name for p in report.rglob("*") if p.is_file()}
    assert {"metrics.json", "report.txt", "index.html", "outer_loss.png", "words_vs_gate.png"} <= names
    assert any(n.startswith("figure5_") and n.endswith(".png") for n in names)
    assert any(n.startswith("figure5_") and n.endswith(".npz") for n in names)
    assert any(n.startswith("gate_") and n.endswith(".wav") for n in names)
    text = (report / "report.txt").read_text()
    assert "TTT DIAGNOSTIC REPORT" in text and "HEALTHY" in text and "measured" in text


def test_index_html_renders_in_headless_chromium(default_run, tmp_path):
    """The reviewer's view: a screenshot of index.html, kept next to the report."""
    import os
    import shutil
    import subprocess

    _, _, report = default_run
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/system-deps must install it for this test")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    shot = report / "index_screenshot.png"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,2400", f"--screenshot={shot}", (report / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
