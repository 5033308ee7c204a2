"""Summarise a merged JUnit file of an array run: one line per checkpoint (test suite), and an exit code.

    python slurm/junit_summary.py merged.junit.xml [--out summary.txt] [--expected N]

Exit code: 0 every suite passed, 1 a test failed or errored, 2 fewer suites than ``--expected``
(a task left no JUnit, so a checkpoint went unjudged), 4 the file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# Run as a script (merge_junit.sbatch), so the JUnit reader comes from the clone this file is in,
# as the health jobs' checks do (they run in $TTT_CHECKS_REPO), whether or not TTT_PYTHON has it installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class SuiteSummary:
    """Counts of one test suite (one checkpoint) and the names of its failing tests."""

    name: str
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    failing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.errors == 0 and self.tests > 0

    def line(self) -> str:
        verdict = "HEALTHY  " if self.ok else "UNHEALTHY"
        text = (f"{verdict} {self.name}: {self.tests} tests, {self.failures} failed, "
                f"{self.errors} errors, {self.skipped} skipped")
        return text + (f"  [{', '.join(self.failing)}]" if self.failing else "")


def summarise(path: Path) -> list[SuiteSummary]:
    """Per-suite counts, computed from the test cases (ttt_checks.report.junit), sorted by suite name."""
    from ttt_checks.report.junit import read_junit

    out = []
    for suite in sorted(read_junit(path), key=lambda s: s.name):
        out.append(SuiteSummary(name=suite.name or "(unnamed)", tests=suite.tests, failures=suite.failed,
                                errors=suite.errors, skipped=suite.skipped,
                                failing=[c.name for c in suite.cases if c.outcome in ("failed", "error")]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", type=Path, help="merged JUnit XML")
    parser.add_argument("--out", type=Path, help="also write the summary here")
    parser.add_argument("--expected", type=int, help="number of checkpoints (suites) the run must contain")
    args = parser.parse_args(argv)
    try:
        from ttt_checks.report.junit import JUnitError
    except ImportError as exc:  # a usage error (4), never "a test failed" (1)
        print(f"ttt-checks[slurm]: {sys.executable} cannot import the JUnit reader ttt_checks.report.junit ({exc}): "
              "set TTT_PYTHON to the ttt-checks environment", file=sys.stderr)
        return 4
    try:
        suites = summarise(args.junit)
    except (JUnitError, ImportError) as exc:  # the file, what is wrong (or: install junitparser); never exit 1
        print(f"ttt-checks[slurm]: {exc}", file=sys.stderr)
        return 4
    lines = [s.line() for s in suites]
    code = 0 if suites and all(s.ok for s in suites) else 1
    if args.expected is not None and len(suites) < args.expected:
        lines.append(f"MISSING  {args.expected - len(suites)} of {args.expected} checkpoints left no JUnit")
        code = 2
    healthy = sum(s.ok for s in suites)
    lines.append(f"{healthy} of {len(suites)} checkpoints healthy; merged JUnit: {args.junit}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    return code


if __name__ == "__main__":
    sys.exit(main())
