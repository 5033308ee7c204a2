"""What every check returns, and how its numbers are written.

A :class:`Verdict` carries one check's measured value next to its threshold and the reason it
passed or failed. It lives below the checks and the adapters because both produce verdicts (the
Moshi adapter has checks of its own) and the diagnosis, the reports and the pytest plugin read
them; none of those should have to import the rules to get the type.

Its :attr:`Verdict.status` is the one place that says what a verdict is: ``pass``, ``warn`` (a
pass that still reports something worth reading), ``fail``, or ``cannot_measure`` (a failure
because there was nothing to measure: missing data, a missing layer, NaN). The diagnosis reads
the status, never the wording of the explanation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Sequence

import numpy as np


class Status(str, Enum):
    """What a verdict is; the string values are written to metrics.json under ``status``."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    CANNOT_MEASURE = "cannot_measure"


CANNOT_MEASURE_PREFIX = "cannot measure: "


@dataclass
class Verdict:
    """One check's outcome: measured vs threshold, and why it passed or failed.

    ``measurable`` is False only for a check that had nothing to measure; such a verdict always
    fails (``ok`` False): a check that cannot measure never passes."""

    name: str
    ok: bool
    measured: float | str | None
    threshold: float | str | None
    explanation: str
    layer: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    measurable: bool = True

    def __post_init__(self) -> None:
        if not self.measurable and self.ok:
            raise ValueError(f"verdict {self.name}: a check that cannot measure must fail, not pass")

    @property
    def warning(self) -> bool:
        """A passing verdict that still reports a problem worth reading (e.g. a size of a leak)."""
        return self.ok and self.details.get("severity") == "warning"

    @property
    def status(self) -> Status:
        if not self.measurable:
            return Status.CANNOT_MEASURE
        if not self.ok:
            return Status.FAIL
        return Status.WARN if self.warning else Status.PASS

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["measurable"]
        data["status"] = self.status.value
        return jsonable(data)

    def line(self) -> str:
        return verdict_line(self.to_dict())


def cannot_measure(name: str, why: str, layer: str | None = None, details: dict[str, Any] | None = None) -> Verdict:
    """A failing verdict for a check that had nothing to measure; ``why`` says what was missing."""
    return Verdict(name, False, None, None, f"{CANNOT_MEASURE_PREFIX}{why}", layer, details or {}, measurable=False)


def status_of(verdict: dict[str, Any]) -> Status:
    """The status of a verdict as written to metrics.json. Reports written before verdicts carried
    a status (older runs read by ``trend``) are classified the way they were then: by ``ok``, the
    warning severity and the explanation's prefix."""
    written = verdict.get("status")
    if written in Status._value2member_map_:
        return Status(written)
    if not verdict.get("ok", False):
        return Status.CANNOT_MEASURE if str(verdict.get("explanation", "")).startswith(CANNOT_MEASURE_PREFIX) else Status.FAIL
    details = verdict.get("details")
    return Status.WARN if isinstance(details, dict) and details.get("severity") == "warning" else Status.PASS


def status_label(verdict: dict[str, Any]) -> str:
    """PASS / WARN / FAIL as reports print them (cannot-measure verdicts are failures)."""
    status = status_of(verdict)
    return {Status.PASS: "PASS", Status.WARN: "WARN"}.get(status, "FAIL")


def verdict_line(v: dict[str, Any]) -> str:
    """One verdict of metrics.json as one line of the text report and of pytest's assertion."""
    where = f" [{v['layer']}]" if v.get("layer") else ""
    return (f"{status_label(v)} {v['name']}{where}: measured {fmt(v.get('measured'))} "
            f"vs threshold {fmt(v.get('threshold'))}. {v.get('explanation', '')}")


# ---------------------------------------------------------------------------------------------
# Numbers as the reports, the diagnosis and metrics.json write them
# ---------------------------------------------------------------------------------------------


def finite_or_none(value: Any) -> float | None:
    """A finite float, or None (strings like 'nan', None, bools, missing): the one reader of
    numbers taken from metrics.json, where non-finite floats are written as strings."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fmt(value: Any, missing: str = "None") -> str:
    """A number as reports print it: 4 significant digits for floats, integers and text as they
    are, ``missing`` for None."""
    if value is None:
        return missing
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def name_list(names: Sequence[str], limit: int) -> str:
    """The first ``limit`` names, comma-separated, and how many more there are."""
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones and non-finite floats into strings
    ('nan', 'inf'), which strict JSON readers accept."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def all_finite(*values: Any) -> bool:
    """Every value is a finite int or float."""
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
