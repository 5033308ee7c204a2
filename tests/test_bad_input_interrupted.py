"""Reports survive bad endings: SIGINT, SIGTERM, a checkpoint that never loads, parallel workers.

Each test runs the real health suite in a subprocess (as a user or Slurm would) and then reads
what a reviewer would open: metrics.json must parse and say whether the run was complete,
report.txt must say INCOMPLETE when it was not, and the JUnit XML must exist. The last test
checks that a whole health run writes nothing outside its report directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(NO_TORCH_COMPILE="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(extra)
    return env


def _health_command(report: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", "gpu", str(REPO / "tests_gpu"), "--device", "cpu",
            "--report-dir", str(report), "--junitxml", str(report / "junit.xml"), "-p", "no:cacheprovider",
            "--rootdir", str(REPO), *extra]


def _wait_for(proc: subprocess.Popen, needle: str, timeout_s: float = 300) -> str:
    """Read the child's output until ``needle`` appears; the text read so far."""
    seen = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"{needle!r} never appeared in the output:\n{''.join(seen)[-3000:]}")


def _read_report(report: Path) -> tuple[dict, str]:
    metrics = json.loads((report / "metrics.json").read_text())  # must parse, whatever happened
    return metrics, (report / "report.txt").read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_bad_input_interrupted_run_leaves_an_incomplete_report_that_parses(tmp_path, signum):
    """Signal the run after its first measurement: exit 2, the report exists, parses, says INCOMPLETE."""
    report = tmp_path / "report"
    proc = subprocess.Popen(_health_command(report, "--gates", "0,learned", "--max-positions", "64"), cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(proc, "[ttt-checks] teacher_forced done")
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    metrics, text = _read_report(report)
    assert metrics["complete"] is False
    assert "STATUS     : INCOMPLETE" in text
    assert "INCOMPLETE" in (report / "index.html").read_text()
    ET.parse(report / "junit.xml")  # written on the way out, and well-formed
    assert not list(report.rglob("*.tmp")), "an atomic write left its temporary file behind"


def test_bad_input_sigterm_to_parallel_workers_leaves_a_merged_incomplete_report(tmp_path):
    """scancel signals the whole job: controller and xdist workers all get SIGTERM."""
    report = tmp_path / "report"
    proc = subprocess.Popen(_health_command(report, "-n", "2", "-v", "--gates", "0,learned", "--max-positions", "64"),
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        _wait_for(proc, "PASSED")
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        with _suppress_lookup():
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    metrics, text = _read_report(report)
    assert metrics["complete"] is False
    assert "INCOMPLETE" in text
    assert metrics["verdicts"], "the workers' finished checks were lost in the merge"


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError


def test_bad_input_checkpoint_that_never_loads_still_writes_a_failing_report(tmp_path):
    """A load error fails every check and the report says why (a reviewer opens the report, not the log)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"format": "ttt-checks-reference/1", "kind": "ttt", "base": "../nowhere",
                                                  "decoder": {}, "ttt_init_seed": 0}))
    report = tmp_path / "report"
    proc = subprocess.run(_health_command(report, "--ckpt", str(ckpt), "-q"), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "passed" not in proc.stdout.splitlines()[-1], proc.stdout[-1000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    metrics, text = _read_report(report)
    assert metrics["complete"] is True
    (load,) = metrics["verdicts"]["checkpoint_load"]
    assert load["ok"] is False and "could not load the checkpoint" in load["explanation"]
    assert load["status"] == "cannot_measure" and load["details"]["stage"] == "load" and load["details"]["load_error"]
    assert "UNHEALTHY" in text and "checkpoint_load" in text
    top = metrics["diagnosis"]["findings"][0]  # the loader's reason, not "missing data"
    assert top["rule"] == "checkpoint_not_loaded" and load["details"]["load_error"] in top["cause"]


def _snapshot(*roots: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under ``roots``, except under ``skip``."""
    files = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if here / d not in skip and d != ".git"]
            for name in filenames:
                st = (here / name).lstat()
                files[str(here / name)] = (st.st_size, st.st_mtime_ns)
    return files


def _enclosing_session_report_dir(config: pytest.Config) -> Path | None:
    """Where the pytest session running this test writes its own health report.

    ``make test`` collects tests_gpu too, so while this test runs, another xdist worker of the
    same session may be writing the session's report under the checkout's reports/: that is not
    the health run under test and must not count against it.
    """
    if hasattr(config, "workerinput") and "ttt_report_dir" in config.workerinput:
        return Path(config.workerinput["ttt_report_dir"]).resolve()
    from ttt_checks.pytest_plugin import _OPTIONS_KEY

    return config.stash[_OPTIONS_KEY].report_dir if _OPTIONS_KEY in config.stash else None


def test_bad_input_health_run_writes_nothing_outside_its_report_dir(tmp_path, pytestconfig):
    """A full health run (sweep, Whisper, plots) of the default checkpoint leaves the checkout,
    the checkpoint, the working directory, HOME and TMPDIR exactly as they were."""
    home, tmp, cwd, report = (tmp_path / n for n in ("home", "tmp", "cwd", "report"))
    for d in (home, tmp, cwd):
        d.mkdir()
    # Caches that Python, pytest and matplotlib keep are theirs, not ours: point them into the
    # report dir's sibling so the snapshot below sees only what ttt-checks itself writes.
    tool_caches = tmp_path / "tool-caches"
    env = _env(HOME=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1", MPLCONFIGDIR=str(tool_caches / "mpl"),
               XDG_CACHE_HOME=str(home / ".cache"))
    watched = (REPO, home, tmp, cwd)
    own = _enclosing_session_report_dir(pytestconfig)
    skip = (own,) if own is not None else ()
    before = _snapshot(*watched, skip=skip)
    proc = subprocess.run(_health_command(report, "-q", "--max-positions", "64"), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-2000:]
    assert (report / "metrics.json").is_file()
    after = _snapshot(*watched, skip=skip)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"the health run wrote outside --report-dir: {changed[:20]}"
