"""pytest for the Slurm job scripts: `ttt_health` (slurm/common.sh) starts this in the background
and stops it with SIGINT when the time limit is near. It is built to stop cleanly at any moment:

* SIGINT and SIGTERM raise KeyboardInterrupt once: pytest stops the session, still writes its
  JUnit, metrics.json and report.txt (marked incomplete), and exits 2. A further signal while it
  does so is ignored, since a second KeyboardInterrupt would cut the reports short (the job script
  sends SIGKILL after TTT_FLUSH_GRACE_S if pytest hangs). A signal that comes once pytest has begun
  writing its reports is ignored too: the checks have all run, and their verdict stands.
* A background job of a non-interactive shell starts with SIGINT ignored, so a SIGINT sent before
  the handlers below exist is lost. The job script writes its stop file (TIME_LIMIT_REACHED or
  TERMINATED, named in _TTT_STOP_FILES) *before* it sends SIGINT, and this script looks for it
  *after* installing its handlers: whenever the request came, it is either caught or seen.
* Test hook: TTT_TEST_SIGNAL_AT=STAGE[:SIGNAL] (tests/test_slurm.py) makes this process send SIGNAL
  (default USR1) to the job shell at STAGE and wait until the shell has sent its SIGINT, so each
  stage is tested by construction. Stages here: python (before the handlers), import (before
  `import pytest`), tests (the second test's call), reports (while pytest writes its reports).

Usage (from common.sh): python launch_pytest.py PYTEST_ARGS...; exits with pytest's code.
"""

from __future__ import annotations

import os
import signal
import sys
import time

# `python -c` and `python -m pytest` put the working directory (the clone) first on sys.path, not
# this script's folder: keep what the checks import the same as before this file existed.
sys.path[0] = ""

PREFIX = "ttt-checks[slurm]:"
_stopping = False  # True once a stop was taken, or once pytest writes its reports


def _interrupt(signum, frame):
    global _stopping
    name = signal.Signals(signum).name
    if _stopping:
        print(f"{PREFIX} {name} ignored: pytest is already stopping or writing its reports", file=sys.stderr, flush=True)
        return
    _stopping = True
    raise KeyboardInterrupt(f"{name}: the job is being stopped (time limit or scancel); reports are partial")


def _stop_files() -> list[str]:
    return [p for p in os.environ.get("_TTT_STOP_FILES", "").split(os.pathsep) if p]


def _stop_requested() -> str | None:
    """The stop file the job shell wrote before it sent SIGINT, if any."""
    return next((p for p in _stop_files() if os.path.exists(p)), None)


def _test_hook(stage: str) -> None:
    """TTT_TEST_SIGNAL_AT=STAGE[:SIGNAL]: signal the job shell here, then wait for its SIGINT."""
    wanted, _, sig = os.environ.get("TTT_TEST_SIGNAL_AT", "").partition(":")
    if wanted != stage:
        return
    shell = int(os.environ["_TTT_SHELL_PID"])
    print(f"{PREFIX} test hook: {sig or 'USR1'} to the job shell at stage {stage}", file=sys.stderr, flush=True)
    os.kill(shell, getattr(signal, "SIG" + (sig or "USR1")))
    # The shell appends "SIGINT sent" to its stop file once kill(2) has returned: from then on the
    # SIGINT has been delivered (raising KeyboardInterrupt in this loop) or discarded (ignored).
    # The bound only turns a broken hook into an error instead of a hang.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for path in _stop_files():
            try:
                with open(path) as f:
                    if "SIGINT sent" in f.read():
                        return
            except FileNotFoundError:
                pass
        time.sleep(0.05)
    print(f"{PREFIX} test hook: the job shell never sent SIGINT", file=sys.stderr, flush=True)
    sys.exit(3)


def _plugin():
    import pytest

    class SlurmStop:
        """Marks the start of report writing, and carries the tests/reports test hooks."""

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_call(self, item):
            if item.session.items.index(item) == 1:
                _test_hook("tests")

        @pytest.hookimpl(wrapper=True, tryfirst=True)
        def pytest_sessionfinish(self, session):
            global _stopping
            _stopping = True
            _test_hook("reports")
            return (yield)

    return SlurmStop()


def main(args: list[str]) -> int:
    _test_hook("python")
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    stop = _stop_requested()
    if stop:
        print(f"{PREFIX} a stop was requested before pytest started ({os.path.basename(stop)}); not starting it",
              file=sys.stderr, flush=True)
        return 2
    _test_hook("import")
    import pytest

    return int(pytest.main(args, plugins=[_plugin()]))


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except KeyboardInterrupt:
        # While Python still imports pytest (or pytest its plugins): the same interruption as
        # during a test, exit 2 ("interrupted"), not Python's 130 and a traceback.
        code = 2
    sys.exit(code)
