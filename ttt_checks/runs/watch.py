"""Gate each new checkpoint of a training run as it appears.

A run directory holds checkpoints in the shapes of ``runs/discovery.py`` (first match wins):

- ``RUN_DIR/checkpoints/checkpoint_<step>/`` or ``RUN_DIR/checkpoint_<step>/`` (moshi-finetune
  writes ``checkpoints/checkpoint_033000/consolidated/``; the ``consolidated/`` folder is the
  checkpoint when present), in order of the step number;
- zoo-style: every subdirectory holding a ``config.json``, in name order.

A directory that is itself a checkpoint (``config.json`` or ``consolidated/`` inside) is listed
as the only one. A checkpoint is gated once it has settled (no file in it modified for
``--settle`` seconds, so a checkpoint still being written is not judged half-written), with the
same pytest health suite as ``ttt-checks gate``; each gets its own report directory
``OUT/<checkpoint name>/``. ``OUT/watch-state.json`` remembers what was gated, so a restarted
watcher, or ``--once`` from cron or CI, only gates what is new.

After every pass that gated a checkpoint the run's trend (``ttt-checks trend``: OUT/trend.html,
trend.json, the PNGs) is rewritten from the reports in OUT.

With ``--baseline-chain`` each checkpoint is compared with the metrics.json of the last
*healthy* checkpoint gated before it (an unhealthy checkpoint never becomes the reference; the
first one uses ``--baseline`` when given).

Exit codes (``--once``, or when stopped with Ctrl-C): 0 every checkpoint gated in this
invocation is healthy (or there was nothing new), 1 one is unhealthy, 2 a gate could not judge
one (pytest exit code 2 or more), 4 usage error, 5 the run directory holds no checkpoint at all.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ttt_checks.paths import REPO_ROOT, REPORTS
from ttt_checks.runs.discovery import STATE_FILE, checkpoint_name, find_checkpoints, is_settled
from ttt_checks.runs.suite import pytest_args, summary
from ttt_checks.runs.trend import TREND_HTML, write_trend

# gate(checkpoint, report_dir, baseline or None) -> pytest exit code
GateFn = Callable[[Path, Path, "Path | None"], int]


@dataclass
class GateRecord:
    """What the watcher did with one checkpoint."""

    checkpoint: str
    name: str
    report_dir: str
    code: int
    seconds: float
    baseline: str | None
    finished: str

    @property
    def healthy(self) -> bool:
        return self.code == 0


class Watcher:
    """Finds new checkpoints of a run and gates each one, remembering what it gated in ``out``."""

    def __init__(self, run_dir: Path, out: Path, gate: GateFn, settle_s: float = 30.0,
                 baseline_chain: bool = False, baseline: Path | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.run_dir = Path(run_dir)
        self.out = Path(out)
        self.gate = gate
        self.settle_s = settle_s
        self.baseline_chain = baseline_chain
        self.initial_baseline = baseline
        self.log = log
        self.out.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, GateRecord] = self._load_state()

    # -- state ------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def _load_state(self) -> dict[str, GateRecord]:
        if not self.state_path.exists():
            return {}
        try:
            data = json.loads(self.state_path.read_text())
            return {key: GateRecord(**value) for key, value in data["gated"].items()}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise RuntimeError(f"{self.state_path}: unreadable watch state ({exc}); move it away to gate every "
                               "checkpoint again") from exc

    def _save_state(self) -> None:
        data = {"run_dir": str(self.run_dir.resolve()), "gated": {k: asdict(v) for k, v in self.records.items()}}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.state_path)

    # -- one pass ---------------------------------------------------------------------------

    def _report_dir(self, checkpoint: Path) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", checkpoint_name(checkpoint))
        taken = {Path(r.report_dir).name for r in self.records.values()}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}-{n}"
        return self.out / candidate

    def _baseline(self) -> Path | None:
        if self.baseline_chain:
            healthy = [r for r in self.records.values() if r.healthy]
            if healthy:
                last = max(healthy, key=lambda r: r.finished)
                metrics = Path(last.report_dir) / "metrics.json"
                if metrics.is_file():
                    return metrics
        return self.initial_baseline

    def pending(self) -> tuple[list[Path], list[Path]]:
        """(settled checkpoints not gated yet, checkpoints still being written), oldest first."""
        ready, unsettled = [], []
        for ckpt in find_checkpoints(self.run_dir):
            if str(ckpt.absolute()) in self.records:
                continue
            (ready if is_settled(ckpt, self.settle_s) else unsettled).append(ckpt)
        return ready, unsettled

    def poll_once(self) -> list[GateRecord]:
        """Gate every settled new checkpoint, oldest first; return what was gated in this pass."""
        ready, unsettled = self.pending()
        for ckpt in unsettled:
            self.log(f"watch: {ckpt} is still being written (changed less than {self.settle_s:g} s ago); later")
        return self.gate_checkpoints(ready)

    def gate_checkpoints(self, checkpoints: Sequence[Path]) -> list[GateRecord]:
        """Gate these checkpoints in order, recording each in the state file (also used by
        ``ttt-checks trend --run`` for the checkpoints that have no report yet)."""
        done = []
        for ckpt in checkpoints:
            if not ckpt.exists():
                self.log(f"watch: {ckpt} disappeared before it was gated (pruned?); skipped")
                continue
            report_dir = self._report_dir(ckpt)
            baseline = self._baseline()
            self.log(f"watch: gating {ckpt} -> {report_dir}" + (f" (baseline {baseline})" if baseline else ""))
            t0 = time.perf_counter()
            code = int(self.gate(ckpt, report_dir, baseline))
            record = GateRecord(checkpoint=str(ckpt.absolute()), name=checkpoint_name(ckpt), report_dir=str(report_dir),
                                code=code, seconds=round(time.perf_counter() - t0, 2),
                                baseline=str(baseline) if baseline else None,
                                finished=_dt.datetime.now().isoformat(timespec="microseconds"))
            self.records[record.checkpoint] = record
            self._save_state()
            done.append(record)
        return done


def default_report_dir(run_dir: Path) -> Path:
    """Where ``watch`` (and ``trend``, reading what watch gated) keep a run's reports by default."""
    return REPORTS / f"watch-{run_dir.resolve().name}"


def exit_code(records: Sequence[GateRecord]) -> int:
    """0 all healthy, 1 one unhealthy, 2 one could not be judged (errors dominate: nothing was proven)."""
    if any(r.code >= 2 for r in records):
        return 2
    return 1 if any(r.code == 1 for r in records) else 0


def describe(code: int) -> str:
    return {0: "healthy", 1: "UNHEALTHY"}.get(code, f"ERROR (pytest exit code {code})")


def subprocess_gate(args: argparse.Namespace) -> GateFn:
    """A gate that runs the health suite of one checkpoint in a fresh pytest process.

    A fresh process per checkpoint: the model of one checkpoint never leaks into the next, and
    a crash ends one gate, not the watcher. Prints the gate's one-screen summary.
    """
    def run(checkpoint: Path, report_dir: Path, baseline: Path | None) -> int:
        report_dir.mkdir(parents=True, exist_ok=True)
        options = argparse.Namespace(device=args.device, gates=args.gates, threshold=args.threshold, keyword=None,
                                     verbose=False, baseline=str(baseline) if baseline else None, update_baseline=False)
        argv = pytest_args(str(checkpoint), report_dir.resolve(), options)
        if args.max_positions is not None:
            argv += ["--max-positions", str(args.max_positions)]
        argv += list(args.pytest_arg)
        t0 = time.perf_counter()
        command = [sys.executable, "-m", "pytest", *argv]
        with open(report_dir / "pytest.log", "w") as log:
            log.write("$ " + shlex.join(command) + "\n")
            log.flush()
            code = subprocess.call(command, cwd=REPO_ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        print(summary(report_dir.resolve(), code, time.perf_counter() - t0), flush=True)
        return code

    return run


def _refresh_trend(run_dir: Path, out: Path, gated: Sequence[GateRecord]) -> None:
    """After a pass that gated something, rewrite OUT/trend.html and trend.json (``ttt-checks
    trend``), so the run-level view is current. A trend that cannot be drawn is said, never fatal
    to the watcher."""
    if not gated:
        return
    try:
        data = write_trend(run_dir, out, [out])
        print(f"watch: trend: {data['summary']['sentence']} ({out / TREND_HTML})", flush=True)
    except Exception as exc:  # noqa: BLE001 - the gates already ran; the trend is a view of them
        print(f"watch: could not refresh the trend ({type(exc).__name__}: {exc})", flush=True)
