"""The list of checks a health run judges, kept once.

``run.py`` judges them in this order, the diagnosis reads them by name, the detection matrix
prints a column per check, and the zoo names the check each broken checkpoint must fail.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One check of a health run.

    ``expected``: a full run measures it on every adapter, so the diagnosis lists it as "not
    measured" (and lowers the confidence of findings that read it) when a run lacks it, e.g. a
    ``-k`` selection. ``model_specific`` is not expected (an adapter may offer none), nor are
    ``config_consistency``, ``base_model`` (only with a reference loss of the base) and ``inner_step_size``: reported when present, never flagged absent."""

    name: str
    concern: str  # the module of ttt_checks.checks (or run.py for the sweep) that judges it
    expected: bool = True


CATALOGUE: tuple[Check, ...] = (
    Check("checkpoint_keys", "checkpoint"),
    Check("checkpoint_finite", "checkpoint"),
    Check("config_consistency", "checkpoint", expected=False),
    Check("base_model", "base_model", expected=False),
    Check("figure5_collected", "figure5"),
    Check("figure5_finite", "figure5"),
    Check("figure5_bounded", "figure5"),
    Check("figure5_ordering", "figure5"),
    Check("figure5_improvement", "figure5"),
    Check("figure5_adaptation", "figure5"),
    Check("inner_step_size", "step_size", expected=False),
    Check("gate_stats", "gate"),
    Check("ttt_helps", "outer"),
    Check("dead_parameters", "checkpoint"),
    Check("state_persistence", "streaming"),
    Check("streaming_consistency", "streaming"),
    Check("talk_base", "talk"),
    Check("talk_learned", "talk"),
    Check("talk_collapse", "talk"),
    Check("model_specific", "the adapter", expected=False),
)

#: Every check of a health run, in the order it is judged and reported.
CHECKS: tuple[str, ...] = tuple(c.name for c in CATALOGUE)
FIGURE5_CHECKS: tuple[str, ...] = tuple(c.name for c in CATALOGUE if c.concern == "figure5")
TALK_CHECKS: tuple[str, ...] = tuple(c.name for c in CATALOGUE if c.concern == "talk")
#: Checks whose absence from a run the diagnosis reports (see :attr:`Check.expected`).
EXPECTED_CHECKS: tuple[str, ...] = tuple(c.name for c in CATALOGUE if c.expected)
