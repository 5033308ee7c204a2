"""The sbatch scripts of slurm/ under a real single-node Slurm started on localhost.

The session fixture ``cluster`` starts munged, slurmctld and slurmd under a temporary directory
(tests/slurm_cluster.py) and stops them by their pid files at the end. Where Slurm cannot start
(packages missing, not root) the tests skip with the reason; with CI=true that is a failure,
because CI must prove the scripts work. The jobs check the embedded default checkpoint and a
broken zoo checkpoint with a short configuration (--gates 0,learned, --max-positions 128).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NoReturn

import pytest

from slurm_cluster import SlurmCluster, SlurmUnavailable, start_cluster, wait_for_jobs

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
SCRIPTS = ["health.sbatch", "array.sbatch", "merge_junit.sbatch", "submit.sh", "common.sh"]
JOB_SCRIPTS = ["health.sbatch", "array.sbatch", "merge_junit.sbatch"]
# Short jobs: two gates, 64 positions, and neither the token-by-token streaming pass (most of a
# CPU run's time) nor the Whisper sweep: these tests prove the Slurm plumbing, not the checks.
# 128 positions: at 64 the outer-loss gain of TTT cannot be told from none ("cannot measure", a failure).
FAST = ["--gates", "0,learned", "--max-positions", "128", "-k", "not streaming_calls and not talk and not collapse"]
STATIC_CHECKS = {"checkpoint_keys", "checkpoint_finite", "dead_parameters", "gate_stats"}
PREFERRED_BROKEN = ("nan-weights", "missing-keys")  # failures read straight off the tensors


# -- static properties of the scripts (no cluster needed) --------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_fail_on_errors_and_in_pipes(name):
    text = (SLURM / name).read_text()
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(SLURM / name)], check=True)


@pytest.mark.parametrize("name", ["health.sbatch", "array.sbatch"])
def test_check_jobs_ask_for_usr1_before_the_time_limit_and_request_no_gpu_themselves(name):
    text = (SLURM / name).read_text()
    assert "#SBATCH --signal=B:USR1@120" in text
    assert "--gres" not in "\n".join(line for line in text.splitlines() if line.startswith("#SBATCH"))


@pytest.mark.parametrize("name", JOB_SCRIPTS)
def test_job_scripts_trap_usr1_and_term_before_anything_else_runs(name):
    """A signal that finds no handler ends the job with no report (USR1's default action), so the
    first two statements of every job script are the traps, before `set`, before sourcing anything."""
    statements = [line.strip() for line in (SLURM / name).read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    first = [s for s in statements if not s.startswith("_signal=")][:2]  # merge: the variable the traps set
    assert [s.split()[0] for s in first] == ["trap", "trap"], statements[:3]
    assert first[0].endswith(" USR1") and first[1].endswith(" TERM"), first


def test_array_names_outputs_per_task():
    assert "#SBATCH --output=%x_%A_%a.out" in (SLURM / "array.sbatch").read_text()


def _dry_run(tmp_path: Path, *args: str) -> list[str]:
    proc = subprocess.run(["bash", str(SLURM / "submit.sh"), "--dry-run", "--report-root", str(tmp_path / "r"), *args],
                          capture_output=True, text=True, env=_job_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _zoo_run(tmp_path: Path, names: dict[str, Path]) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name, target in names.items():
        (run / "checkpoints" / name).symlink_to(target)
    return run


def test_submit_requests_gpus_only_when_asked(tmp_path, default_ckpt):
    cpu = _dry_run(tmp_path, str(default_ckpt))
    assert "--gres" not in cpu[0] and "--array=0-0" in cpu[0]
    gpu = _dry_run(tmp_path, "--gpus", "2", "--partition", "gpu", "--time", "00:30:00", "--max-parallel", "3",
                   "--sbatch-arg=--account=lab", str(default_ckpt), "--", "-k", "figure5")
    array, merge = gpu
    for option in ("--gres=gpu:2", "--partition=gpu", "--time=00:30:00", "--account=lab", "--array=0-0%3"):
        assert option in array
    assert array.rstrip().endswith("-k figure5")
    assert "--dependency=afterok:ARRAY_JOB_ID" in merge and "--gres" not in merge and "--account=lab" in merge


def test_submit_rejects_bad_arguments(tmp_path):
    for args, message in ((["--gpus", "two", str(tmp_path)], "--gpus two"),
                          ([str(tmp_path / "missing")], "no such directory"),
                          (["--bogus", str(tmp_path)], "unknown option"),
                          ([str(tmp_path)], "holds no checkpoint")):
        proc = subprocess.run(["bash", str(SLURM / "submit.sh"), "--report-root", str(tmp_path / "r"), *args],
                              capture_output=True, text=True, env=_job_env(tmp_path), timeout=120)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)


# -- the cluster ------------------------------------------------------------------------------


def slurm_unavailable(reason: str) -> NoReturn:
    """Skip with the reason; under CI=true fail instead, since CI must prove the scripts work."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the local Slurm cluster cannot start: {reason}", pytrace=False)
    pytest.skip(f"no local Slurm cluster: {reason}")


def test_ci_turns_a_missing_slurm_into_a_failure(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        slurm_unavailable("slurmctld missing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="slurmctld missing"):
        slurm_unavailable("slurmctld missing")


@pytest.fixture(scope="session")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="ttt-slurm-"))
    try:
        started = start_cluster(root)
    except SlurmUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        slurm_unavailable(str(exc))
    print(f"slurm cluster up in {started.startup_s:.2f} s under {root}")
    yield started
    started.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def default_ckpt() -> Path:
    from ttt_checks.models.registry import default_checkpoint

    return default_checkpoint()


@pytest.fixture(scope="session")
def broken_ckpt() -> tuple[Path, set[str]]:
    """A broken zoo checkpoint whose failure the static checks show, and the checks it must fail."""
    from ttt_checks.models.reference.zoo import list_zoo

    rows = list_zoo(broken=True)
    rows.sort(key=lambda row: row[0].name not in PREFERRED_BROKEN)  # an unambiguous one first
    for entry, path in rows:
        failing = set(entry.expected_failures) & STATIC_CHECKS
        if failing:
            return path, failing
    pytest.fail("the zoo has no broken checkpoint that fails a checkpoint-level check")


def _launch(tmp_path: Path, fake_pytest: str, **env: str) -> subprocess.Popen:
    """slurm/launch_pytest.py with a stand-in ``pytest`` module, started as common.sh starts it:
    in the background of a non-interactive shell, so with SIGINT ignored until it installs its handler."""
    fake = tmp_path / "fake"
    fake.mkdir(exist_ok=True)
    (fake / "pytest.py").write_text(textwrap.dedent(fake_pytest))
    # `trap '' INT` sets SIGINT to ignored, which exec keeps (as for a background job's child).
    return subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$0" "$@"', sys.executable, str(SLURM / "launch_pytest.py")],
                            env={**os.environ, "PYTHONPATH": str(fake), **env}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_file(path: Path, proc: subprocess.Popen) -> None:
    """Until the child has created ``path`` (an event it signals, not a delay); fails if it exits first."""
    while not path.exists():
        assert proc.poll() is None, f"the launcher exited ({proc.returncode}) before {path.name}: {proc.communicate()}"
        time.sleep(0.05)


def test_an_interrupt_while_pytest_is_still_importing_exits_as_interrupted(tmp_path):
    """USR1 can land before pytest has started (Slurm signals at its first check): the SIGINT the
    trap sends then hits ``import pytest``, and the job must still exit 2 ("interrupted"), not 130."""
    started = tmp_path / "importing"
    proc = _launch(tmp_path, f"""
        import pathlib, time
        pathlib.Path({str(started)!r}).touch()
        time.sleep(600)
    """)
    _wait_for_file(started, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # a hang guard, not a speed bound
    assert proc.returncode == 2, err
    assert "Traceback" not in err


def test_a_stop_requested_before_the_launcher_installed_its_handler_is_not_lost(tmp_path):
    """The job shell writes its stop file, then sends SIGINT; a SIGINT that came while Python was
    still starting was ignored, so the launcher must find the file and never start pytest."""
    stop = tmp_path / "TIME_LIMIT_REACHED"
    stop.write_text("2024-01-01T00:00:00+00:00\n")
    ran = tmp_path / "pytest-ran"
    proc = _launch(tmp_path, f"""
        import pathlib
        def main(args, plugins=()):
            pathlib.Path({str(ran)!r}).touch()
            return 0
    """, _TTT_STOP_FILES=f"{stop}{os.pathsep}{tmp_path / 'TERMINATED'}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "a stop was requested before pytest started (TIME_LIMIT_REACHED)" in err
    assert not ran.exists(), "pytest ran although the job had been told to stop"


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_second_signal_while_pytest_stops_does_not_cut_its_reports_short(tmp_path, second):
    """Slurm's TERM reaches pytest and the job shell, which then sends SIGINT too: the first one
    stops the session, the second must not interrupt the writing of the reports."""
    running, stopping = tmp_path / "running", tmp_path / "stopping"
    second_sent, wrote = tmp_path / "second-sent", tmp_path / "reports-written"
    proc = _launch(tmp_path, f"""
        import os, pathlib, time
        def hookimpl(**kwargs):
            return lambda f: f
        def main(args, plugins=()):
            pathlib.Path({str(running)!r}).touch()
            try:
                time.sleep(600)                   # a test runs
            except KeyboardInterrupt:
                pathlib.Path({str(stopping)!r}).touch()
                while not os.path.exists({str(second_sent)!r}):
                    time.sleep(0.05)              # "writing the reports" while the second signal lands
                pathlib.Path({str(wrote)!r}).touch()
                return 2
    """)
    _wait_for_file(running, proc)
    proc.send_signal(signal.SIGTERM)
    _wait_for_file(stopping, proc)
    proc.send_signal(second)
    second_sent.touch()
    _, err = proc.communicate(timeout=120)  # a hang guard, not a speed bound
    assert proc.returncode == 2, err
    assert wrote.exists(), f"the second signal cut the reports short: {err}"
    assert f"{signal.Signals(second).name} ignored" in err


def _job_env(report_root: Path, **extra: str) -> dict[str, str]:
    """Environment the jobs inherit (sbatch exports it): this interpreter, this clone, no pytest worker state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update({"TTT_PYTHON": sys.executable, "TTT_CHECKS_REPO": str(REPO), "TTT_REPORT_ROOT": str(report_root),
                **extra})
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}:/usr/sbin"
    return env


def _sbatch(cluster: SlurmCluster, args: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = cluster.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, timeout=60)
    assert proc.returncode == 0, f"sbatch failed: {proc.stderr}"
    return proc.stdout.strip().split(";")[0]


def _junit(path: Path) -> list[ET.Element]:
    """The test suites of a JUnit file (read with ElementTree: junitparser has no per-case properties)."""
    root = ET.parse(path).getroot()
    return [root] if root.tag == "testsuite" else root.findall("testsuite")


def _properties(suite: ET.Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in suite.iter("property")}


def _case_results(suite: ET.Element) -> dict[str, str]:
    """Test case name -> passed | failure | error | skipped (the unnamed case of an interrupted run is left out)."""
    out = {}
    for case in suite.iter("testcase"):
        if case.get("name") is None:
            continue
        tags = {child.tag for child in case}
        out[case.get("name")] = next((t for t in ("failure", "error", "skipped") if t in tags), "passed")
    return out


def _health_test_count(ckpt: Path) -> int:
    """How many health tests pytest selects for a checkpoint with FAST (what every job's JUnit must hold)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", str(REPO / "tests_gpu"),
                           "--ckpt", str(ckpt), "--device", "cpu", "-p", "no:cacheprovider", "--rootdir", str(REPO),
                           *FAST],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=_job_env(REPO / "reports"))
    count = sum("::" in line for line in proc.stdout.splitlines())
    assert proc.returncode == 0 and count > 0, proc.stdout + proc.stderr
    return count


def test_health_jobs_judge_a_healthy_and_a_broken_checkpoint(cluster, default_ckpt, broken_ckpt, tmp_path):
    broken, must_fail = broken_ckpt
    env = _job_env(tmp_path)
    t0 = time.perf_counter()
    jobs = {label: _sbatch(cluster, ["--time=00:15:00", str(SLURM / "health.sbatch"), str(ckpt), *FAST], env, tmp_path)
            for label, ckpt in (("healthy", default_ckpt), ("broken", broken))}
    finished = {label: wait_for_jobs(cluster, job)[0] for label, job in jobs.items()}
    print(f"two health jobs in {time.perf_counter() - t0:.1f} s")
    for label, record in finished.items():
        log = (tmp_path / f"ttt-health-{jobs[label]}.out")
        assert log.is_file(), f"{label}: no job output {log}"
        want = "0:0" if label == "healthy" else "1:0"
        assert record["ExitCode"] == want, f"{label}: ExitCode {record['ExitCode']}, expected {want}\n{log.read_text()[-3000:]}"

    for label, ckpt in (("healthy", default_ckpt), ("broken", broken)):
        job = jobs[label]
        report = tmp_path / job
        (suite,) = _junit(report / f"junit-{job}.xml")
        assert suite.get("name") == f"ckpt-{ckpt.name}"
        results = _case_results(suite)
        count = _health_test_count(ckpt)
        assert len(results) == count, f"{label}: {len(results)} test cases, tests_gpu has {count}"
        props = _properties(suite)
        assert "checkpoint_keys.ok" in props and "checkpoint_keys.measured" in props and "checkpoint_keys.threshold" in props
        assert (report / "exit_code").read_text().strip() == ("0" if label == "healthy" else "1")
        assert json.loads((report / "metrics.json").read_text())["complete"] is True
        if label == "healthy":
            assert set(results.values()) <= {"passed", "skipped"}, results
            assert results["test_no_regression_against_the_baseline"] == "skipped"  # no --baseline given
        else:
            failed_checks = {name.rsplit(".", 1)[0].split("[")[0] for name, value in props.items()
                             if name.endswith(".ok") and value in ("False", "false")}
            assert must_fail <= failed_checks, f"expected {must_fail} to fail, failing: {failed_checks}"
            assert "failure" in results.values()


def test_array_over_a_run_writes_junit_per_task_and_the_merge_gives_the_verdict(cluster, default_ckpt, broken_ckpt, tmp_path):
    broken, _ = broken_ckpt
    run = _zoo_run(tmp_path, {"checkpoint_000100": default_ckpt, "checkpoint_000200": broken})
    root = tmp_path / "reports"
    t0 = time.perf_counter()
    proc = cluster.run(["bash", str(SLURM / "submit.sh"), "--report-root", str(root), "--time", "00:15:00", str(run),
                        "--", *FAST], env=_job_env(root), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_id = re.search(r"array job (\d+)", proc.stdout).group(1)
    merge_id = re.search(r"merge job (\d+)", proc.stdout).group(1)
    tasks = wait_for_jobs(cluster, array_id)
    (merge,) = wait_for_jobs(cluster, merge_id)
    print(f"array of 2 + merge in {time.perf_counter() - t0:.1f} s")

    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1"]
    assert all(t["ExitCode"] == "0:0" for t in tasks), tasks  # both judged (one unhealthy): the array succeeded
    assert merge["JobState"] == "FAILED" and merge["ExitCode"] == "1:0", merge  # ... and the merge says unhealthy
    assert (root / "checkpoints.txt").read_text().split() == [str(run / "checkpoints" / n)
                                                                 for n in ("checkpoint_000100", "checkpoint_000200")]
    for task in ("0", "1"):
        assert (root / f"{array_id}_{task}" / f"junit-{array_id}_{task}.xml").is_file()
        assert (root / "logs" / f"ttt-array_{array_id}_{task}.out").is_file()
    suites = {s.get("name"): s for s in _junit(root / "merged.junit.xml")}
    assert sorted(suites) == ["ckpt-checkpoint_000100", "ckpt-checkpoint_000200"]
    assert set(_case_results(suites["ckpt-checkpoint_000100"]).values()) <= {"passed", "skipped"}
    assert "failure" in _case_results(suites["ckpt-checkpoint_000200"]).values()
    summary = (root / "summary.txt").read_text()
    assert "HEALTHY   ckpt-checkpoint_000100" in summary and "UNHEALTHY ckpt-checkpoint_000200" in summary
    assert "1 of 2 checkpoints healthy" in summary


def test_a_task_that_cannot_run_leaves_error_junit_and_the_merge_never_runs(cluster, default_ckpt, tmp_path):
    root = tmp_path / "reports"
    proc = cluster.run(["bash", str(SLURM / "submit.sh"), "--report-root", str(root), "--wait", str(default_ckpt),
                        "--", "--gates", "not-a-gate"], env=_job_env(root), cwd=tmp_path, timeout=300)
    assert proc.returncode != 0, proc.stdout
    assert proc.returncode == 2 and "wrote no summary" in proc.stderr
    (junit,) = list(root.glob("*_0/junit-*_0.xml"))
    (suite,) = _junit(junit)
    assert _case_results(suite) == {"pytest_session": "error"}
    assert "exited with code 4" in junit.read_text()  # pytest's usage error, said in the JUnit
    assert not (root / "merged.junit.xml").exists()


def test_a_job_that_fails_before_pytest_still_leaves_junit(cluster, default_ckpt, tmp_path):
    manifest = tmp_path / "checkpoints.txt"
    manifest.write_text(f"{default_ckpt}\n")
    env = _job_env(tmp_path, TTT_PYTHON=str(tmp_path / "no-such-python"))
    job = _sbatch(cluster, ["--array=0-0", str(SLURM / "array.sbatch"), str(manifest)], env, tmp_path)
    (task,) = wait_for_jobs(cluster, job, timeout_s=300)
    assert task["ExitCode"] == "4:0", task
    junit = tmp_path / f"{job}_0" / f"junit-{job}_0.xml"
    (suite,) = _junit(junit)
    assert suite.get("name") == f"task-{job}_0" and _case_results(suite) == {"pytest_session": "error"}
    assert "cannot import ttt_checks" in junit.read_text()


SLEEPER = """
    import os, time
    import pytest

    pytestmark = pytest.mark.gpu

    def test_hangs():
        open(os.environ["SLEEPER_STARTED"], "w").close()
        time.sleep(600)
"""


def _sleeper(tmp_path: Path) -> Path:
    path = tmp_path / "test_sleeper.py"
    path.write_text(textwrap.dedent(SLEEPER))
    return path


def test_a_hung_test_times_out_and_still_yields_junit(cluster, default_ckpt, tmp_path):
    env = _job_env(tmp_path, TTT_TEST_TIMEOUT="3", SLEEPER_STARTED=str(tmp_path / "started"))
    job = _sbatch(cluster, ["--time=00:05:00", str(SLURM / "health.sbatch"), str(default_ckpt),
                            str(_sleeper(tmp_path)), "-k", "hangs"], env, tmp_path)
    (record,) = wait_for_jobs(cluster, job, timeout_s=300)
    assert record["ExitCode"] == "1:0", (tmp_path / f"ttt-health-{job}.out").read_text()
    junit = tmp_path / job / f"junit-{job}.xml"
    (suite,) = _junit(junit)
    assert _case_results(suite) == {"test_hangs": "failure"}
    assert "Timeout" in junit.read_text()


def test_usr1_stops_pytest_and_flushes_its_reports(cluster, default_ckpt, tmp_path):
    """USR1 to the batch shell, as Slurm sends it before the limit; here at a known moment (scancel)."""
    started = tmp_path / "started"
    env = _job_env(tmp_path, SLEEPER_STARTED=str(started))
    job = _sbatch(cluster, ["--time=00:05:00", str(SLURM / "health.sbatch"), str(default_ckpt),
                            str(_sleeper(tmp_path)), "-k", "hangs or checkpoint_has_every_ttt_key"], env, tmp_path)
    deadline = time.monotonic() + 300  # a hang guard: a loaded node starts Python slowly
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert started.exists(), "the hanging test never started"
    signalled = cluster.run(["scancel", "--batch", "--signal=USR1", job])
    assert signalled.returncode == 0, signalled.stderr
    # No wall-clock bound (a loaded node is slow): a pytest that ignored the SIGINT would be killed
    # after TTT_FLUSH_GRACE_S and end with 137, not pytest's own 2, so the exit code is the proof.
    (record,) = wait_for_jobs(cluster, job, timeout_s=300)
    log = (tmp_path / f"ttt-health-{job}.out").read_text()
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0"), log  # pytest's "interrupted"
    assert "USR1: the time limit is near" in log
    report = tmp_path / job
    assert (report / "TIME_LIMIT_REACHED").is_file() and (report / "exit_code").read_text().strip() == "2"
    (suite,) = _junit(report / f"junit-{job}.xml")  # pytest's own JUnit, with the test that finished
    assert _case_results(suite).get("test_checkpoint_has_every_ttt_key") == "passed", _case_results(suite)
    assert json.loads((report / "metrics.json").read_text())["complete"] is False


def test_term_to_every_process_of_the_job_still_leaves_pytests_junit(cluster, default_ckpt, tmp_path):
    """scancel --full sends TERM to the batch shell and to pytest at once (as Slurm does at the time
    limit): the shell must outlive pytest, whose JUnit holds the test that finished."""
    started = tmp_path / "started"
    env = _job_env(tmp_path, SLEEPER_STARTED=str(started))
    job = _sbatch(cluster, ["--time=00:05:00", str(SLURM / "health.sbatch"), str(default_ckpt),
                            str(_sleeper(tmp_path)), "-k", "hangs or checkpoint_has_every_ttt_key"], env, tmp_path)
    deadline = time.monotonic() + 300
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert started.exists(), "the hanging test never started"
    signalled = cluster.run(["scancel", "--full", "--signal=TERM", job])
    assert signalled.returncode == 0, signalled.stderr
    (record,) = wait_for_jobs(cluster, job, timeout_s=300)
    log = (tmp_path / f"ttt-health-{job}.out").read_text()
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0"), log
    assert "TERM: the job is being ended" in log
    report = tmp_path / job
    assert (report / "TERMINATED").is_file() and (report / "exit_code").read_text().strip() == "2"
    (suite,) = _junit(report / f"junit-{job}.xml")
    assert _case_results(suite).get("test_checkpoint_has_every_ttt_key") == "passed", _case_results(suite)
    assert json.loads((report / "metrics.json").read_text())["complete"] is False


# -- a signal at every stage of a job, delivered on purpose (TTT_TEST_SIGNAL_AT, slurm/common.sh) --

TWO_CHECKS = "checkpoint_has_every_ttt_key or checkpoint_tensors_are_finite"  # fast; "tests" signals in the second
BEFORE = {"USR1": "time limit reached before the checks started",
          "TERM": "the job was terminated (SIGTERM: time limit or scancel) before the checks started"}
STOP_FILE = {"USR1": "TIME_LIMIT_REACHED", "TERM": "TERMINATED"}
HANDLED = {"USR1": "USR1: the time limit is near", "TERM": "TERM: the job is being ended"}
# stage -> what the job must end with: "before" (exit 2, the trap's error JUnit), "interrupted"
# (exit 2, pytest's JUnit with the first check), "judged" (the checks all ran: their verdict, 0).
STAGES = {
    "start": "before",      # before common.sh is sourced: only the first-statement trap exists
    "setup": "before",      # in ttt_init, after TTT_SETUP
    "python": "before",     # Python started, SIGINT still ignored: the stop file must be seen
    "import": "before",     # before `import pytest`
    "tests": "interrupted",  # during the second check
    "reports": "judged",    # pytest is writing its reports: the run is complete
    "after": "judged",      # pytest has exited
    "start:TERM": "before",
    "setup:TERM": "before",
    "tests:TERM": "interrupted",
}


def _signal_name(at: str) -> str:
    return at.partition(":")[2] or "USR1"


@pytest.mark.parametrize("at", list(STAGES))
def test_a_signal_at_any_stage_of_a_health_job_ends_it_with_its_code_and_a_junit(cluster, default_ckpt, tmp_path, at):
    outcome, sig = STAGES[at], _signal_name(at)
    env = _job_env(tmp_path, TTT_TEST_SIGNAL_AT=at)
    job = _sbatch(cluster, ["--time=00:10:00", str(SLURM / "health.sbatch"), str(default_ckpt), "-k", TWO_CHECKS],
                  env, tmp_path)
    (record,) = wait_for_jobs(cluster, job, timeout_s=300)
    log = (tmp_path / f"ttt-health-{job}.out").read_text()
    assert HANDLED[sig] in log, log  # the job's handler took the signal the hook sent
    report = tmp_path / job
    assert (report / STOP_FILE[sig]).is_file(), log
    junit = report / f"junit-{job}.xml"
    (suite,) = _junit(junit)
    assert suite.get("name") == f"ckpt-{default_ckpt.name}"
    results = _case_results(suite)
    if outcome == "before":
        assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0"), log
        assert results == {"pytest_session": "error"}, results
        assert BEFORE[sig] in junit.read_text(), junit.read_text()
        if at == "python":
            assert "a stop was requested before pytest started" in log, log
    elif outcome == "interrupted":
        assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0"), log
        assert results == {"test_checkpoint_has_every_ttt_key": "passed"}, results  # pytest's own JUnit
        assert json.loads((report / "metrics.json").read_text())["complete"] is False
        assert (report / "exit_code").read_text().strip() == "2"
    else:
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log
        assert results == {"test_checkpoint_has_every_ttt_key": "passed", "test_checkpoint_tensors_are_finite": "passed"}
        assert json.loads((report / "metrics.json").read_text())["complete"] is True
        assert (report / "exit_code").read_text().strip() == "0"


@pytest.mark.parametrize("at", ["start", "tests"])
def test_a_signal_in_an_array_task_ends_it_with_exit_2_and_a_junit(cluster, default_ckpt, tmp_path, at):
    """An array task that could not judge its checkpoint exits 2, so the merge (afterok) never runs on it."""
    manifest = tmp_path / "checkpoints.txt"
    manifest.write_text(f"{default_ckpt}\n")
    env = _job_env(tmp_path, TTT_TEST_SIGNAL_AT=at)
    job = _sbatch(cluster, ["--array=0-0", "--time=00:10:00", str(SLURM / "array.sbatch"), str(manifest),
                            "-k", TWO_CHECKS], env, tmp_path)
    (task,) = wait_for_jobs(cluster, job, timeout_s=300)
    log = (tmp_path / f"ttt-array_{job}_0.out").read_text()
    assert (task["JobState"], task["ExitCode"]) == ("FAILED", "2:0"), log
    report = tmp_path / f"{job}_0"
    assert (report / "TIME_LIMIT_REACHED").is_file()
    junit = report / f"junit-{job}_0.xml"
    (suite,) = _junit(junit)
    if at == "start":  # before the manifest was read: the task's own suite name
        assert suite.get("name") == f"task-{job}_0" and _case_results(suite) == {"pytest_session": "error"}
        assert BEFORE["USR1"] in junit.read_text()
    else:
        assert suite.get("name") == f"ckpt-{default_ckpt.name}"
        assert _case_results(suite) == {"test_checkpoint_has_every_ttt_key": "passed"}


PASSING_JUNIT = ('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="ckpt-a" tests="1" errors="0" '
                 'failures="0" skipped="0"><testcase classname="c" name="test_ok"/></testsuite></testsuites>\n')


@pytest.mark.parametrize("at", [None, "start", "merge", "summary", "merge:TERM"])
def test_a_signal_before_the_merge_has_its_summary_ends_it_with_exit_2_and_no_partial_files(cluster, tmp_path, at):
    root = tmp_path / "reports"
    (root / "7_0").mkdir(parents=True)
    (root / "7_0" / "junit-7_0.xml").write_text(PASSING_JUNIT)
    env = _job_env(root, **({"TTT_TEST_SIGNAL_AT": at} if at else {}))
    job = _sbatch(cluster, [f"--output={tmp_path}/merge-%j.out", str(SLURM / "merge_junit.sbatch"), str(root), "1"],
                  env, tmp_path)
    (record,) = wait_for_jobs(cluster, job, timeout_s=300)
    log = (tmp_path / f"merge-{job}.out").read_text()
    assert not list(root.rglob("*.tmp")), "an interrupted merge left a temporary file"
    if at is None:  # the control: the same merge, not signalled, gives the verdict
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log
        assert "1 of 1 checkpoints healthy" in (root / "summary.txt").read_text()
        return
    stage, sig = at.partition(":")[0], _signal_name(at)
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0"), log
    assert f"merge interrupted by {sig}" in log and f"at step '{stage}'" in log, log
    assert not (root / "summary.txt").exists()
    assert (root / "merged.junit.xml").exists() == (stage == "summary")  # published only once complete


def test_slurm_sends_usr1_before_the_time_limit_and_the_job_ends_first(cluster, default_ckpt, tmp_path):
    """The real timer: --signal=B:USR1@118 on a 2-minute limit, so Slurm signals at its first check.

    Slurm looks at time limits about every 30 s and sends the warning up to a check early, so USR1
    lands within about 30 s of the start, at whatever stage the job has reached on a loaded node
    (the stage tests above cover each one on purpose), and its TIMEOUT kill comes at 120 s or later:
    the job has at least 90 s to end on its own, far more than interrupting a test or a starting
    Python needs even with every core busy. It must end FAILED with exit 2, never TIMEOUT or killed
    by the signal, with a JUnit that is pytest's own or the trap's "before the checks started".
    """
    env = _job_env(tmp_path, SLEEPER_STARTED=str(tmp_path / "started"))
    job = _sbatch(cluster, ["--time=00:02:00", "--signal=B:USR1@118", str(SLURM / "health.sbatch"), str(default_ckpt),
                            str(_sleeper(tmp_path)), "-k", "hangs"], env, tmp_path)
    (record,) = wait_for_jobs(cluster, job, timeout_s=400)
    log = (tmp_path / f"ttt-health-{job}.out").read_text()
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0"), log
    assert "USR1: the time limit is near" in log
    report = tmp_path / job
    assert (report / "TIME_LIMIT_REACHED").is_file()
    junit = report / f"junit-{job}.xml"
    (suite,) = _junit(junit)
    results = _case_results(suite)
    if "pytest_session" in results:  # the trap's: USR1 came before pytest had started
        assert results == {"pytest_session": "error"} and BEFORE["USR1"] in junit.read_text(), junit.read_text()
    else:  # pytest's own, stopped while the hanging test ran (an interrupted test is not recorded)
        assert set(results.values()) <= {"passed"}, results
