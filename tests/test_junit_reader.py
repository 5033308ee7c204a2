"""The one JUnit reader (ttt_checks.report.junit) on files that pytest itself wrote, and on files
that are not JUnit: each outcome, a property, the two shapes pytest gives a teardown error, a
merged file of two suites summarised by slurm/junit_summary.py, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ttt_checks.report.junit import JUnitError, cases_by_name, read_junit

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

TINY_SUITE = '''
import pytest

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup broke")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")

def test_passes(record_property):
    record_property("gate.measured", 0.25)
    record_property("note", "a <b> & c")

def test_fails():
    assert 1 == 2, "one is not two"

def test_errors_in_setup(broken_setup):
    pass

def test_skips():
    pytest.skip("no gpu here")

@pytest.mark.xfail(reason="known bug")
def test_xfails():
    assert False

def test_fails_then_teardown_raises(broken_teardown):
    assert False, "the call failed"

def test_skips_then_teardown_raises(broken_teardown):
    pytest.skip("skipped, but the teardown still runs")
'''


def _pytest_junit(pytester: pytest.Pytester, source: str, suite: str = "pytest") -> Path:
    """Run ``source`` as a test module in a pytest subprocess (our plugin off) and return its JUnit file."""
    pytester.makepyfile(test_tiny=source)
    xml = pytester.path / f"junit-{suite}.xml"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:ttt_checks", f"--junitxml={xml}",
                                           "-o", "junit_family=xunit1", "-o", f"junit_suite_name={suite}")
    assert xml.is_file(), result.stdout.str()[-2000:]
    return xml


@pytest.fixture
def tiny_junit(pytester: pytest.Pytester) -> Path:
    return _pytest_junit(pytester, TINY_SUITE)


def test_each_outcome_message_and_property_come_from_a_pytest_junit_file(tiny_junit):
    (suite,) = read_junit(tiny_junit)
    cases = {c.name: c for c in suite.cases}
    assert {c.classname for c in suite.cases} == {"test_tiny"}
    assert {name: c.outcome for name, c in cases.items()} == {
        "test_passes": "passed", "test_fails": "failed", "test_errors_in_setup": "error", "test_skips": "skipped",
        "test_xfails": "skipped", "test_fails_then_teardown_raises": "failed", "test_skips_then_teardown_raises": "error"}
    assert cases["test_passes"].properties == {"gate.measured": "0.25", "note": "a <b> & c"}
    assert cases["test_passes"].message == "" and cases["test_fails"].properties == {}
    assert "one is not two" in cases["test_fails"].message and "assert 1 == 2" in cases["test_fails"].text
    assert "setup broke" in cases["test_errors_in_setup"].message
    assert cases["test_skips"].message == "no gpu here" and cases["test_xfails"].message == "known bug"


def test_a_teardown_error_is_never_hidden_and_each_test_counts_once(tiny_junit):
    """pytest writes a failed call plus a teardown error as two <testcase> elements, and a skip
    plus a teardown error as one element with both: each is one test, judged by its worst result."""
    elements = [c.get("name") for c in ET.parse(tiny_junit).getroot().iter("testcase")]
    assert elements.count("test_fails_then_teardown_raises") == 2  # what pytest writes, so the merge below is needed
    (suite,) = read_junit(tiny_junit)
    assert (suite.tests, suite.passed, suite.failed, suite.errors, suite.skipped) == (7, 1, 2, 2, 2)
    skipped_then_error = {c.name: c for c in suite.cases}["test_skips_then_teardown_raises"]
    assert "teardown broke" in skipped_then_error.message


def test_cases_by_name_gives_each_test_once_and_refuses_a_name_used_twice(tiny_junit, tmp_path):
    assert cases_by_name(tiny_junit)["test_fails"].outcome == "failed"
    assert len(cases_by_name(tiny_junit)) == 7
    root = ET.parse(tiny_junit).getroot()
    root.append(root.find("testsuite"))  # the same suite twice: every name twice, as in a merged file
    twice = tmp_path / "twice.xml"
    ET.ElementTree(root).write(twice)
    with pytest.raises(JUnitError, match=r"twice\.xml: two test cases named 'test_\w+'.*read_junit"):
        cases_by_name(twice)
    assert [s.tests for s in read_junit(twice)] == [7, 7]


def test_a_lone_testsuite_root_is_read(tmp_path):
    path = tmp_path / "lone.xml"
    path.write_text('<testsuite name="s" tests="1"><testcase classname="m" name="t"><failure message="no"/></testcase>'
                    '<properties><property name="ckpt" value="/a/b"/></properties></testsuite>')
    (suite,) = read_junit(path)
    assert suite.name == "s" and suite.cases[0].outcome == "failed" and suite.properties == {"ckpt": "/a/b"}


@pytest.mark.parametrize("content, match", [
    ('<testsuites><testsuite name="pytest"><testcase name="t"', r"cut\.xml: not well-formed XML \(.+\); the run that wrote it"),
    ("", r"cut\.xml: not well-formed XML"),
    ("<html><body>not a report</body></html>", r"cut\.xml: XML, but not JUnit .*pass the file that pytest --junitxml wrote"),
])
def test_a_file_that_is_not_junit_is_a_clear_error_with_its_cause(tmp_path, content, match):
    path = tmp_path / "cut.xml"
    path.write_text(content)
    with pytest.raises(JUnitError, match=match) as err:
        read_junit(path)
    assert err.value.__cause__ is not None


def test_a_missing_junit_file_says_so(tmp_path):
    with pytest.raises(JUnitError, match=r"nothing\.xml: no such JUnit file"):
        read_junit(tmp_path / "nothing.xml")


def _summary(*args: str) -> subprocess.CompletedProcess:
    """slurm/junit_summary.py as merge_junit.sbatch runs it: a script, from outside the clone, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(REPO / "slurm" / "junit_summary.py"), *args], cwd="/",
                          capture_output=True, text=True, env=env, timeout=120)


def test_junit_summary_reads_a_merged_file_with_the_same_reader(pytester, tmp_path):
    healthy = _pytest_junit(pytester, "def test_ok(record_property):\n    record_property('x', 1)\n", "ckpt-000100")
    broken = _pytest_junit(pytester, TINY_SUITE, "ckpt-000200")
    merged = tmp_path / "merged.junit.xml"
    subprocess.run([sys.executable, "-m", "junitparser", "merge", str(healthy), str(broken), str(merged)], check=True,
                   timeout=120)
    proc = _summary(str(merged), "--expected", "2", "--out", str(tmp_path / "summary.txt"))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "HEALTHY   ckpt-000100: 1 tests, 0 failed, 0 errors, 0 skipped"
    assert lines[1] == ("UNHEALTHY ckpt-000200: 7 tests, 2 failed, 2 errors, 2 skipped  [test_fails, test_errors_in_setup, "
                        "test_fails_then_teardown_raises, test_skips_then_teardown_raises]")
    assert lines[2].startswith("1 of 2 checkpoints healthy")
    assert (tmp_path / "summary.txt").read_text() == proc.stdout


def test_junit_summary_exits_4_on_a_file_that_is_not_junit(tmp_path):
    path = tmp_path / "merged.junit.xml"
    path.write_text("<testsuites><testsuite")
    proc = _summary(str(path))
    assert proc.returncode == 4
    assert "merged.junit.xml: not well-formed XML" in proc.stderr and "Traceback" not in proc.stderr
