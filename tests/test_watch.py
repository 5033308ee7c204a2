"""``ttt-checks watch``: finding a run's checkpoints, gating each once, the baseline chain, exit codes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ttt_checks.cli.watch import run_command
from ttt_checks.runs.discovery import checkpoint_name, find_checkpoints, is_settled
from ttt_checks.runs.watch import GateRecord, Watcher, exit_code

REPO = Path(__file__).resolve().parents[1]
# Short gates: no token-by-token streaming pass, no Whisper sweep, and no baseline comparison
# (which measures everything); the baseline wiring is checked on the gate's command line.
# 128 positions: at 64 the outer-loss gain of TTT cannot be told from none (ttt_helps says
# "cannot measure"), which is a failure, not a quick healthy gate.
FAST = ["--device", "cpu", "--gates", "0,learned", "--max-positions", "128", "--settle", "0",
        "--pytest-arg=-k", "--pytest-arg=not streaming_calls and not talk and not collapse and not baseline"]


def _ckpt(path: Path, age_s: float = 3600.0) -> Path:
    """A folder that looks like a finished checkpoint (config.json), last written ``age_s`` ago."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    old = time.time() - age_s
    for item in [path, *path.rglob("*")]:
        os.utime(item, (old, old))
    return path


# -- finding checkpoints ------------------------------------------------------------------------


def test_moshi_run_layout_lists_consolidated_folders_by_step(tmp_path):
    for step in ("000200", "001000", "000100"):
        _ckpt(tmp_path / "checkpoints" / f"checkpoint_{step}" / "consolidated")
    found = find_checkpoints(tmp_path)
    assert [p.parent.name for p in found] == ["checkpoint_000100", "checkpoint_000200", "checkpoint_001000"]
    assert all(p.name == "consolidated" for p in found)
    assert [checkpoint_name(p) for p in found] == ["checkpoint_000100", "checkpoint_000200", "checkpoint_001000"]


def test_steps_sort_as_numbers_not_as_text(tmp_path):
    for name in ("checkpoint_900", "checkpoint_1000", "checkpoint_50"):
        _ckpt(tmp_path / name)
    assert [p.name for p in find_checkpoints(tmp_path)] == ["checkpoint_50", "checkpoint_900", "checkpoint_1000"]


def test_zoo_style_run_lists_folders_with_a_config(tmp_path):
    _ckpt(tmp_path / "b-ckpt")
    _ckpt(tmp_path / "a-ckpt")
    (tmp_path / "notes").mkdir()
    assert [p.name for p in find_checkpoints(tmp_path)] == ["a-ckpt", "b-ckpt"]


def test_a_checkpoint_folder_is_its_own_only_checkpoint(tmp_path):
    single = _ckpt(tmp_path / "ckpt")
    assert find_checkpoints(single) == [single]
    moshi = tmp_path / "checkpoint_000300"
    _ckpt(moshi / "consolidated")
    assert find_checkpoints(moshi) == [moshi / "consolidated"]


def test_missing_run_dir_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        find_checkpoints(tmp_path / "nope")


def test_a_checkpoint_being_written_is_not_settled(tmp_path):
    ckpt = _ckpt(tmp_path / "c", age_s=100)
    assert is_settled(ckpt, settle_s=30)
    (ckpt / "weights.safetensors").write_bytes(b"partial")  # written just now
    assert not is_settled(ckpt, settle_s=30)
    assert is_settled(ckpt, settle_s=30, now=time.time() + 31)
    (tmp_path / "no-config").mkdir()
    assert not is_settled(tmp_path / "no-config", settle_s=0)  # no config.json yet: never ready


# -- the watcher, with a recorded gate ------------------------------------------------------------


class FakeGate:
    """Writes a metrics.json like a real gate and returns a code chosen per checkpoint name."""

    def __init__(self, codes: dict[str, int]) -> None:
        self.codes = codes
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, ckpt: Path, report_dir: Path, baseline: Path | None) -> int:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "metrics.json").write_text(json.dumps({"checkpoint": str(ckpt)}))
        self.calls.append((checkpoint_name(ckpt), Path(baseline).parent.name if baseline else None))
        return self.codes.get(checkpoint_name(ckpt), 0)


def test_each_checkpoint_is_gated_once_even_across_restarts(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    _ckpt(run / "checkpoint_000100")
    gate = FakeGate({})
    first = Watcher(run, out, gate, settle_s=0, log=lambda m: None)
    assert [r.name for r in first.poll_once()] == ["checkpoint_000100"]
    assert first.poll_once() == []
    _ckpt(run / "checkpoint_000200")
    restarted = Watcher(run, out, gate, settle_s=0, log=lambda m: None)  # reads watch-state.json
    assert [r.name for r in restarted.poll_once()] == ["checkpoint_000200"]
    assert [c[0] for c in gate.calls] == ["checkpoint_000100", "checkpoint_000200"]
    state = json.loads((out / "watch-state.json").read_text())
    assert sorted(Path(k).name for k in state["gated"]) == ["checkpoint_000100", "checkpoint_000200"]
    assert (out / "checkpoint_000100" / "metrics.json").is_file()  # one report folder per checkpoint


def test_unsettled_checkpoints_wait_for_a_later_pass(tmp_path):
    run = tmp_path / "run"
    _ckpt(run / "checkpoint_000100")
    fresh = _ckpt(run / "checkpoint_000200", age_s=0)
    messages: list[str] = []
    watcher = Watcher(run, tmp_path / "out", FakeGate({}), settle_s=60, log=messages.append)
    assert [r.name for r in watcher.poll_once()] == ["checkpoint_000100"]
    assert any("still being written" in m and "checkpoint_000200" in m for m in messages)
    old = time.time() - 120
    for item in [fresh, *fresh.rglob("*")]:
        os.utime(item, (old, old))
    assert [r.name for r in watcher.poll_once()] == ["checkpoint_000200"]


def test_baseline_chain_compares_with_the_last_healthy_checkpoint(tmp_path):
    run = tmp_path / "run"
    for step in ("000100", "000200", "000300", "000400"):
        _ckpt(run / f"checkpoint_{step}")
    initial = tmp_path / "given.json"
    initial.write_text("{}")
    gate = FakeGate({"checkpoint_000200": 1})  # 200 is unhealthy: it must not become the reference
    Watcher(run, tmp_path / "out", gate, settle_s=0, baseline_chain=True, baseline=initial, log=lambda m: None).poll_once()
    assert gate.calls == [("checkpoint_000100", tmp_path.name),  # the given --baseline
                          ("checkpoint_000200", "checkpoint_000100"),
                          ("checkpoint_000300", "checkpoint_000100"),
                          ("checkpoint_000400", "checkpoint_000300")]


def test_without_the_chain_every_checkpoint_uses_the_given_baseline(tmp_path):
    run = tmp_path / "run"
    _ckpt(run / "checkpoint_1")
    _ckpt(run / "checkpoint_2")
    gate = FakeGate({})
    Watcher(run, tmp_path / "out", gate, settle_s=0, log=lambda m: None).poll_once()
    assert gate.calls == [("checkpoint_1", None), ("checkpoint_2", None)]


def _record(code: int) -> GateRecord:
    return GateRecord("c", "c", "r", code, 0.0, None, "t")


def test_exit_code_is_unhealthy_on_any_failure_and_error_when_a_gate_broke():
    assert exit_code([]) == 0
    assert exit_code([_record(0), _record(0)]) == 0
    assert exit_code([_record(0), _record(1)]) == 1
    assert exit_code([_record(1), _record(4)]) == 2


def test_command_reports_usage_errors_and_an_empty_run(tmp_path, capsys):
    from ttt_checks.cli import build_parser

    parser = build_parser()
    assert run_command(parser.parse_args(["watch", str(tmp_path / "missing"), "--once"])) == 4
    (tmp_path / "empty").mkdir()
    assert run_command(parser.parse_args(["watch", str(tmp_path / "empty"), "--once", "--out", str(tmp_path / "o")])) == 5
    assert "holds no checkpoint" in capsys.readouterr().err
    assert run_command(parser.parse_args(["watch", str(tmp_path / "empty"), "--list"])) == 0
    assert capsys.readouterr().out == ""


# -- the real gate over zoo checkpoints -----------------------------------------------------------


def _zoo(broken: bool) -> Path:
    from ttt_checks.models.reference.zoo import list_zoo

    rows = list_zoo(broken=broken)
    assert rows, f"the zoo has no {'broken' if broken else 'healthy'} checkpoint"
    if broken:  # one whose failure the checkpoint checks alone show, so a short run catches it
        rows.sort(key=lambda row: row[0].name != "nan-weights")
        for entry, path in rows:
            if set(entry.expected_failures) & {"checkpoint_keys", "checkpoint_finite", "dead_parameters", "gate_stats"}:
                return path
    return rows[0][1]


def _watch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttt_checks.cli", "watch", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_once_gates_each_new_checkpoint_and_fails_on_a_broken_one(tmp_path):
    from ttt_checks.models.registry import default_checkpoint

    run, out = tmp_path / "run", tmp_path / "reports"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint_000100").symlink_to(default_checkpoint())
    first = _watch(str(run), "--once", "--baseline-chain", "--out", str(out), *FAST)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "HEALTHY" in first.stdout
    healthy_report = out / "checkpoint_000100"
    assert json.loads((healthy_report / "metrics.json").read_text())["verdicts"]
    assert (healthy_report / "junit.xml").is_file()

    (run / "checkpoints" / "checkpoint_000200").symlink_to(_zoo(broken=True))
    second = _watch(str(run), "--once", "--baseline-chain", "--out", str(out), *FAST)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "UNHEALTHY" in second.stdout
    gating = [line for line in second.stdout.splitlines() if line.startswith("watch: gating")]
    assert len(gating) == 1 and "checkpoint_000200" in gating[0], gating  # 100 was gated by the first pass
    state = json.loads((out / "watch-state.json").read_text())["gated"]
    by_name = {v["name"]: v for v in state.values()}
    assert by_name["checkpoint_000100"]["code"] == 0 and by_name["checkpoint_000200"]["code"] == 1
    assert by_name["checkpoint_000200"]["baseline"] == str(healthy_report / "metrics.json")
    command = (out / "checkpoint_000200" / "pytest.log").read_text().splitlines()[0]
    assert f"--baseline {healthy_report / 'metrics.json'}" in command
    assert "--baseline" not in (healthy_report / "pytest.log").read_text().splitlines()[0]  # the first has none

    third = _watch(str(run), "--once", "--out", str(out), *FAST)
    assert third.returncode == 0 and "0 checkpoint(s) gated now" in third.stdout, third.stdout + third.stderr


WATCHING = "watch: watching"  # printed inside the loop that turns Ctrl-C into "watch: stopped"
# Printed after a pass that gated something has been counted (the state file is written earlier,
# while the gate is not yet counted: a Ctrl-C in between loses it from "N checkpoint(s) gated now").
TREND = ("watch: trend:", "watch: could not refresh the trend")


class _Output:
    """A child's output read on a thread, so that a test waits for a line (an event) with a hang
    guard, instead of sleeping a fixed time: that is a bet on how fast Python starts, which a
    loaded machine loses (a SIGINT that lands before the watch loop runs is a traceback)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, *needles: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s  # a hang guard, not a speed bound
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"watch exited ({self.proc.wait()}) before printing {needles}:\n{self.text()[-3000:]}")
            self.lines.append(line)
            if any(n in line for n in needles):
                return
        raise AssertionError(f"none of {needles} within {timeout_s:.0f} s:\n{self.text()[-3000:]}")

    def finish(self, timeout_s: float = 300) -> str:
        """Everything the child printed, once it has exited."""
        self.proc.wait(timeout=timeout_s)
        self._thread.join(timeout=timeout_s)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return self.text()

    def text(self) -> str:
        return "".join(self.lines)


def test_watching_gates_a_checkpoint_that_appears_later(tmp_path):
    from ttt_checks.models.registry import default_checkpoint

    run, out = tmp_path / "run", tmp_path / "reports"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "ttt_checks.cli", "watch", str(run), "--interval", "0.5",
                             "--out", str(out), *FAST], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = _Output(proc)
    try:
        output.wait_for(WATCHING)
        assert not (out / "watch-state.json").exists()  # nothing to gate yet
        (run / "checkpoint_000500").symlink_to(default_checkpoint())
        output.wait_for(*TREND)
    finally:
        proc.send_signal(signal.SIGINT)
        text = output.finish()
    assert proc.returncode == 0, text
    assert (out / "watch-state.json").exists()
    assert (out / "checkpoint_000500" / "metrics.json").is_file()
    assert "1 checkpoint(s) gated now" in text


def test_watch_stops_on_sigint_even_when_started_with_sigint_ignored(tmp_path):
    """A script's background job, or any child of an xdist worker, starts with SIGINT ignored;
    Python then installs no Ctrl-C handler, and watch would never stop (found under `make test -n 2`)."""
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "ttt_checks.cli", "watch", str(run), "--interval", "0.5",
                             "--out", str(tmp_path / "out")], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    out = _Output(proc)
    try:
        out.wait_for(WATCHING)
        proc.send_signal(signal.SIGINT)
        output = out.finish(timeout_s=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "watch: stopped" in output, output
