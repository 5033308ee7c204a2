"""JUnit XML as pytest writes it, read back: per test case an outcome, per suite the counts.

Everything that judges a pytest run by its ``--junitxml`` file reads it here: scripts/gpu_check.py,
the CUDA and tiny-Moshi meta-tests, slurm/junit_summary.py. One reader, so that a test case
has one outcome everywhere. The file is parsed with junitparser; a test case's outcome is what
its result elements say, the worst one first:

    failed   a <failure>   (pytest: the test's own assertion or exception)
    error    an <error>    (pytest: its setup or teardown raised)
    skipped  a <skipped>   (pytest.skip, a skipif, an xfail)
    passed   none of them

pytest writes a test whose call failed and whose teardown then raised as two <testcase>
elements with the same classname and name (a <failure>, then an <error>), and a skipped test
whose teardown raised as one element holding both. Both are one test here, judged by its worst
result: ``failed``, and ``error`` (a teardown error is never hidden behind ``skipped``).

``properties`` are the test case's <properties> (what ``record_property`` wrote; pytest's
default family xunit1 writes them, xunit2 does not), as text, the last value of a repeated name.

junitparser (a dependency of ttt-checks) parses the XML; a node that runs slurm/junit_summary.py
needs only the environment the checks run in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, JUnitXmlError, Properties, Skipped

#: The outcomes, from the worst: a test case with several result elements takes the first.
OUTCOMES = ("failed", "error", "skipped", "passed")

_TAGS = {"failure": "failed", "error": "error", "skipped": "skipped"}


class JUnitError(ValueError):
    """A JUnit file that cannot be read; the message names it and says what to do."""


@dataclass(frozen=True)
class CaseResult:
    """One test case: its outcome and the message and text of the result that decided it
    (empty for a pass), and its properties."""

    classname: str
    name: str
    outcome: str
    message: str = ""
    text: str = ""
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SuiteResult:
    """One <testsuite>: its cases and properties; counts come from the cases, never from the
    suite's own attributes (a merged or hand-edited file can carry stale ones)."""

    name: str
    cases: tuple[CaseResult, ...]
    properties: dict[str, str] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        return sum(case.outcome == outcome for case in self.cases)

    @property
    def tests(self) -> int:
        return len(self.cases)

    @property
    def passed(self) -> int:
        return self.count("passed")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def errors(self) -> int:
        return self.count("error")

    @property
    def skipped(self) -> int:
        return self.count("skipped")


def read_junit(path: str | os.PathLike[str]) -> list[SuiteResult]:
    """The test suites of a JUnit XML file (a <testsuites> root or a single <testsuite>).

    Raises :class:`JUnitError` for a missing or unreadable file, XML that is not well formed (a
    run killed while writing) and XML that is not JUnit; the parser's error is the ``__cause__``.
    """
    p = Path(path)
    try:
        xml = JUnitXml.fromfile(str(p))
    except FileNotFoundError as exc:
        raise JUnitError(f"{p}: no such JUnit file; did the pytest run reach its end (look at its output)?") from exc
    except OSError as exc:
        raise JUnitError(f"{p}: cannot read the JUnit file ({exc})") from exc
    except SyntaxError as exc:  # xml.etree's ParseError and lxml's XMLSyntaxError are both SyntaxErrors
        raise JUnitError(
            f"{p}: not well-formed XML ({exc}); the run that wrote it was probably killed before it "
            "finished: read its output, and rerun it"
        ) from exc
    except JUnitXmlError as exc:
        raise JUnitError(
            f"{p}: XML, but not JUnit (the root is neither <testsuites> nor <testsuite>: {exc}); "
            "pass the file that pytest --junitxml wrote"
        ) from exc

    kinds = {Failure: "failed", Error: "error", Skipped: "skipped"}
    suites = []
    for suite in xml:
        cases: dict[tuple[str, str], CaseResult] = {}
        for case in suite:
            judged = [(OUTCOMES.index(kinds[type(r)]), r) for r in case.result if type(r) in kinds]
            outcome, message, text = "passed", "", ""
            if judged:
                rank, worst = min(judged, key=lambda pair: pair[0])
                outcome, message, text = OUTCOMES[rank], worst.message or "", worst.text or ""
            props = case.child(Properties)
            found = CaseResult(case.classname or "", case.name or "", outcome, message, text,
                               {q.name: q.value or "" for q in props} if props is not None else {})
            key = (found.classname, found.name)
            cases[key] = _worse(cases[key], found) if key in cases else found
        suite_props = {q.name: q.value or "" for q in suite.properties()}
        suites.append(SuiteResult(name=suite.name or "", cases=tuple(cases.values()), properties=suite_props))
    return suites


def cases_by_name(path: str | os.PathLike[str]) -> dict[str, CaseResult]:
    """Every test case of the file by its name (the test function and its parameters).

    Raises :class:`JUnitError` when two test cases share a name (two classes, or two suites of a
    merged file) rather than let one hide the other: read those with :func:`read_junit`.
    """
    out: dict[str, CaseResult] = {}
    for suite in read_junit(path):
        for case in suite.cases:
            seen = out.get(case.name)
            if seen is not None:
                raise JUnitError(
                    f"{path}: two test cases named {case.name!r} (classes {seen.classname!r} and {case.classname!r}); "
                    "read them with read_junit, per suite and classname"
                )
            out[case.name] = case
    return out


def _worse(a: CaseResult, b: CaseResult) -> CaseResult:
    """Two elements of one test (pytest's call and teardown reports): the worse outcome, both
    elements' properties."""
    first, second = (a, b) if OUTCOMES.index(a.outcome) <= OUTCOMES.index(b.outcome) else (b, a)
    return CaseResult(first.classname, first.name, first.outcome, first.message, first.text,
                      {**second.properties, **first.properties})
