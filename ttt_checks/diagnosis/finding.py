"""A diagnosis rule and what it concludes: :class:`Rule`, :class:`Finding`, and the registry.

A rule is a function ``metrics -> Finding | None`` declared with :func:`rule`, which states, next
to the code, its precedence, the cause in words, the measurements it reads, when it fires and the
rules it overrides. docs/diagnosis.md's rules table is generated from these declarations
(:func:`ttt_checks.diagnosis.rules_table`), so the description cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

Metrics = Mapping[str, Any]

HIGH, MEDIUM, LOW = "high", "medium", "low"


@dataclass(frozen=True)
class Rule:
    """One diagnosis rule: what it reads, what it concludes, what it overrides when it fires."""

    id: str
    precedence: int
    cause: str  # the cause in a few words (also the value of a zoo entry's ``expected_diagnosis``)
    evidence: str  # which measurements it reads (metrics.json keys and verdict names)
    fires_when: str  # the condition, in words (docs/diagnosis.md)
    overrides: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()  # verdict names whose failures this rule accounts for, and whose artifacts it cites
    find: Callable[[Mapping[str, Any]], "Finding | None"] | None = None  # None: made by diagnose() itself


@dataclass
class Finding:
    """One conclusion of the diagnosis. ``rule`` is filled in by :func:`rule` from the rule that
    made it, so a rule function never writes its own id."""

    title: str
    symptom: str  # what was measured, with the numbers
    cause: str  # the likely cause
    fix: str  # what to change
    config_key: str | None = None
    value: float | str | bool | None = None  # a recommended value, where a measurement supports one
    confidence: str = MEDIUM
    confidence_why: str = ""
    evidence: list[str] = field(default_factory=list)  # files to open (plots, wavs, transcripts)
    layers: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # failing checks this finding accounts for
    rank: int = 0
    precedence: int = 0
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for the gate's summary and trend tables."""
        change = f" -> {self.fix}" if self.fix else ""
        return f"{self.title} [{self.confidence}]: {self.symptom}{change}"


# Groups of rules that several rules override together.
FIGURE5_RULES = ("inner_loss_nonfinite", "inner_loss_exploding", "inner_lr_too_high", "inner_lr_too_low",
                 "context_not_used", "inner_step_size_off")
SWEEP_RULES = ("sweep_scenario_a", "sweep_scenario_b", "sweep_scenario_c", "generation_collapse")


_REGISTRY: dict[str, Rule] = {}


def rule(id: str, precedence: int, cause: str, evidence: str, fires_when: str, *, overrides: tuple[str, ...] = (),
         reads: tuple[str, ...] = ()) -> Callable[[Callable[[Metrics], Finding | None]], Callable[[Metrics], Finding | None]]:
    """Declare the decorated function as the diagnosis rule ``id`` (see :class:`Rule` for the fields)."""

    def register(find: Callable[[Metrics], Finding | None]) -> Callable[[Metrics], Finding | None]:
        declare(Rule(id, precedence, cause, evidence, fires_when, overrides, reads, find))
        return find

    return register


def declare(new: Rule) -> Rule:
    """Add a rule to the registry; ids and precedences are unique."""
    if new.id in _REGISTRY:
        raise ValueError(f"diagnosis rule {new.id!r} is declared twice")
    clash = next((r.id for r in _REGISTRY.values() if r.precedence == new.precedence), None)
    if clash:
        raise ValueError(f"diagnosis rules {clash!r} and {new.id!r} share precedence {new.precedence}")
    _REGISTRY[new.id] = new
    return new


def registered_rules() -> tuple[Rule, ...]:
    """Every declared rule, most fundamental (lowest precedence number) first."""
    return tuple(sorted(_REGISTRY.values(), key=lambda r: r.precedence))
