"""From verdicts to a diagnosis: what broke, why, what to change, how sure we are.

A health run ends with up to twenty PASS/FAIL lines; a user needs the conclusion their own notes
reach by hand ("the gating collapsed because TTT hurt the outer loss; the inner lr is too high; use
an earlier checkpoint"). :func:`diagnose` turns one run's ``metrics.json`` into that conclusion: a
ranked list of :class:`Finding` objects, each with the symptom and its numbers, the likely cause,
what to change (a config key and, where a measurement supports one, a value), a confidence with
its reason, and the evidence files to open.

Design:

- Pure functions over the metrics dict (what ``HealthRun.metrics()`` writes, or a merged report):
  no model, no file read. Keys are read defensively: a measurement another part of the suite did
  not make (an older run, a ``-k`` selection) lowers a finding's confidence; it is never a finding.
- Rules key on verdict names, statuses and metric values, never on test names or wording.
- Every rule has a fixed precedence (1 = most fundamental). Findings are ranked by it. A rule
  that fires *overrides* the rules it lists: a contradicting or consequential finding is not
  printed next to it but recorded under ``suppressed`` with the reason (a checkpoint with NaN
  weights does not also get "Figure 5 is not ordered"). docs/diagnosis.md's table is generated
  from the rules (:func:`rules_table`) and a test keeps the two equal.
- A failing verdict no rule accounts for still becomes a (low-confidence) ``unexplained_failure``
  finding, so the diagnosis never hides a red check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

# The rule modules register their rules on import; the order of imports does not matter (rules
# are ranked by precedence).
from ttt_checks.diagnosis import rules_checkpoint, rules_gate, rules_inner, rules_outer, rules_sweep  # noqa: F401
from ttt_checks.checks.catalogue import EXPECTED_CHECKS
from ttt_checks.diagnosis.finding import HIGH, LOW, MEDIUM, Finding, Metrics, Rule, declare, registered_rules
from ttt_checks.diagnosis.readers import _cannot_measure, _details, _evidence, _figure5, _sweep_scenario, measured, verdicts_of
from ttt_checks.verdict import finite_or_none, fmt

# Two rules that diagnose() applies itself, to what no rule above accounts for.
UNEXPLAINED = declare(Rule("unexplained_failure", 98, "a check failed that no rule above explains",
                           "any failing verdict with a measurement", "a failing verdict is not accounted for by a finding above"))
NOT_MEASURED = declare(Rule("not_measured", 99, "a check could not measure (no data), so the diagnosis cannot use it",
                            "failing verdicts whose status is cannot_measure", "such a verdict is not accounted for above"))

#: Every rule, in precedence order.
RULES: tuple[Rule, ...] = registered_rules()
RULES_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
#: rule id -> its function (the rules that fire on measurements; the last two are diagnose()'s own).
RULE_FUNCTIONS: dict[str, Callable[[Metrics], Finding | None]] = {r.id: r.find for r in RULES if r.find is not None}


@dataclass
class Diagnosis:
    healthy: bool
    summary: str  # one line: the healthy line, or the top finding
    findings: list[Finding]
    suppressed: list[dict[str, str]]  # {"rule", "by", "why"}: fired but overridden
    missing_measurements: list[str]  # checks that did not run in this metrics (lower confidence, not findings)
    warnings: list[str]  # passing verdicts with a warning

    def to_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "summary": self.summary, "findings": [f.to_dict() for f in self.findings],
                "suppressed": self.suppressed, "missing_measurements": self.missing_measurements, "warnings": self.warnings}

    @property
    def top(self) -> Finding | None:
        return self.findings[0] if self.findings else None


def _all_failing(m: Metrics) -> list[dict[str, Any]]:
    return [dict(v, _check=check) for check, vs in (m.get("verdicts") or {}).items() if isinstance(vs, list)
            for v in vs if isinstance(v, Mapping) and not v.get("ok", False)]


def _healthy_line(m: Metrics) -> str:
    parts = []
    f5 = _figure5(m)
    if f5:
        parts.append(f"Figure 5 ordered in {len(f5)} layer(s)")
    gates = []
    for v in verdicts_of(m, "gate_stats"):
        d = _details(v)
        mean = finite_or_none(d.get("mean_tanh", v.get("measured")))
        frac = finite_or_none(d.get("fraction_of_init"))
        if mean is not None:
            gates.append(f"{mean:.3g}" + (f" ({frac:.0%} of init)" if frac is not None else ""))
    if gates:
        parts.append("gate mean |tanh| " + ", ".join(gates))
    helps = verdicts_of(m, "ttt_helps")
    if helps and finite_or_none(_details(helps[0]).get("relative_decrease")) is not None:
        text = f"TTT lowers the outer loss by {finite_or_none(_details(helps[0])['relative_decrease']):.2%}"
        from_updates = finite_or_none(_details(helps[0]).get("relative_decrease_from_inner_steps"))
        if from_updates is not None:  # what test-time training itself buys (the loss with the inner steps off)
            text += f" (the test-time updates: {from_updates:.2%})"
        parts.insert(0, text)  # first: the gate summary cuts the line at its width
    elif (m.get("outer_loss") or {}).get("gate0") is not None:
        a, b = finite_or_none(m["outer_loss"].get("learned")), finite_or_none(m["outer_loss"].get("gate0"))
        if a is not None and b:
            parts.append(f"outer loss {(a - b) / abs(b):+.2%} vs gate 0")
    if _sweep_scenario(m) == "healthy":
        parts.append("the learned gate talks like gate 0")
    return "HEALTHY: every check passed" + (f" ({'; '.join(parts)})" if parts else "")


def diagnose(metrics: Metrics) -> Diagnosis:
    """Rank the findings of one health run's metrics (see the module docstring)."""
    fired: list[tuple[Rule, Finding]] = []
    for rule in RULES:
        fn = RULE_FUNCTIONS.get(rule.id)
        if fn is None:
            continue
        finding = fn(metrics)
        if finding is not None:
            finding.rule = rule.id
            fired.append((rule, finding))
    # Precedence: a fired rule overrides the ones it lists (only if it is itself kept).
    kept: list[tuple[Rule, Finding]] = []
    suppressed: list[dict[str, str]] = []
    for rule, finding in fired:
        by = next((r for r, _ in kept if rule.id in r.overrides), None)
        if by is not None:
            suppressed.append({"rule": rule.id, "by": by.id,
                               "why": f"{by.id} (precedence {by.precedence}) explains or contradicts it: {finding.symptom}"})
            continue
        kept.append((rule, finding))
    # Which failing verdicts are accounted for?
    covered = {c for r, _ in kept for c in r.reads} | {c for r, _ in fired if any(s["rule"] == r.id for s in suppressed)
                                                       for c in r.reads}
    failing_all = _all_failing(metrics)
    leftovers = [v for v in failing_all if v["_check"] not in covered]
    unexplained = [v for v in leftovers if not _cannot_measure(v) and v.get("measured") is not None]
    unmeasured = [v for v in leftovers if v not in unexplained]
    override_all = [r for r, _ in kept if "unexplained_failure" in r.overrides]
    findings = [f for _, f in kept]
    if unexplained and not override_all:
        checks = sorted({v["_check"] for v in unexplained})
        findings.append(Finding("Failing check(s) without a diagnosis rule",
                                "; ".join(f"{v['_check']}{' [' + str(v['layer']) + ']' if v.get('layer') else ''}: "
                                          f"{v.get('explanation', '')}" for v in unexplained[:4]),
                                "not diagnosed: no rule maps this measurement to a cause", "read the check's explanation and evidence",
                                confidence=LOW, confidence_why="no rule covers these checks",
                                evidence=_evidence(metrics, checks), checks=checks, rule=UNEXPLAINED.id))
    if unmeasured and not override_all:
        checks = sorted({v["_check"] for v in unmeasured})
        findings.append(Finding("Check(s) could not measure", "; ".join(
            f"{v['_check']}{' [' + str(v['layer']) + ']' if v.get('layer') else ''}: {v.get('explanation', '')}" for v in unmeasured[:4]),
                                "missing data for these checks (see their explanations)", "fix what the explanation names and rerun",
                                confidence=LOW, confidence_why="nothing was measured", checks=checks, rule=NOT_MEASURED.id))
    precedence = {r.id: r.precedence for r in RULES}
    findings.sort(key=lambda f: precedence.get(f.rule, 1000))
    for rank, f in enumerate(findings, 1):
        f.rank = rank
        f.precedence = precedence.get(f.rule, 1000)
        if not f.checks:
            failing_checks = {v["_check"] for v in failing_all}
            f.checks = [c for c in RULES_BY_ID[f.rule].reads if c in failing_checks] if f.rule in RULES_BY_ID else []
    missing = [c for c in EXPECTED_CHECKS if not measured(metrics, c)]
    for f in findings:  # a missing measurement lowers confidence, it is not a finding
        related = [c for c in RULES_BY_ID.get(f.rule, RULES[-1]).reads if c in missing]
        if related and f.confidence == HIGH:
            f.confidence = MEDIUM
            f.confidence_why += f"; not measured in this run: {', '.join(related)}"
    warnings = [f"{check}{' [' + str(v.get('layer')) + ']' if v.get('layer') else ''}: {v.get('explanation', '')}"
                for check, vs in (metrics.get("verdicts") or {}).items() if isinstance(vs, list)
                for v in vs if isinstance(v, Mapping) and v.get("ok") and _details(v).get("severity") == "warning"]
    complete = metrics.get("complete", True) is not False
    healthy = not failing_all and bool(metrics.get("verdicts")) and complete
    if healthy:
        summary = _healthy_line(metrics)
    elif not failing_all and metrics.get("verdicts"):  # interrupted: nothing failed among what finished
        summary = (f"INCOMPLETE: the run was interrupted; no failure among the {len(metrics['verdicts'])} checks that "
                   "finished, which proves nothing about the others")
    elif findings:
        top = findings[0]
        summary = f"{top.title}: {top.symptom}" + (f" -> {top.fix}" if top.fix else "")
    elif not metrics.get("verdicts"):
        summary = "NO DIAGNOSIS: no check ran"
    else:
        summary = "UNHEALTHY: failing checks, no finding"
    return Diagnosis(healthy, summary, findings, suppressed, missing, warnings)


# A zoo entry names the finding its construction implies in ``expected_diagnosis`` (config.json
# ``expected.expected_diagnosis``, or the ZooEntry field); an entry without one gets it from the
# first check its defect is aimed at (``built_to_fail``) through this table.
CAUSE_OF_AIMED_CHECK: dict[str, str] = {
    "checkpoint_finite": "nonfinite_weights", "checkpoint_keys": "missing_keys", "config_consistency": "config_inconsistent",
    "state_persistence": "state_not_carried", "streaming_consistency": "noncausal_read_ahead",
    "figure5_bounded": "inner_loss_exploding", "figure5_finite": "inner_loss_nonfinite", "figure5_ordering": "inner_lr_too_high",
    "figure5_improvement": "inner_lr_too_low", "figure5_adaptation": "context_not_used", "gate_stats": "gate_collapsed",
    "dead_parameters": "ttt_untrained", "ttt_helps": "ttt_hurts", "inner_step_size": "inner_step_size_off",
}


def expected_diagnosis(expected: Mapping[str, Any]) -> str | None:
    """The rule a zoo entry's top finding must be: its ``expected_diagnosis``, else derived from
    ``built_to_fail`` (the aimed-at checks, in order; 'figure5_ordering' + 'figure5_improvement'
    together mean an overshooting inner step). None for a healthy entry."""
    if expected.get("expected_diagnosis"):
        return str(expected["expected_diagnosis"])
    if expected.get("healthy"):
        return None
    aimed = [str(c) for c in expected.get("built_to_fail") or []]
    if "figure5_improvement" in aimed and "figure5_ordering" not in aimed:
        return "inner_lr_too_low"
    for check in aimed:
        if check in CAUSE_OF_AIMED_CHECK:
            return CAUSE_OF_AIMED_CHECK[check]
    return None


def diagnosis_dict(metrics: Metrics) -> dict[str, Any]:
    """``metrics.json["diagnosis"]``: never raises (a rule bug must not cost the report)."""
    try:
        return diagnose(metrics).to_dict()
    except Exception as exc:  # noqa: BLE001 - the report is written regardless; the failure is said
        return {"healthy": False, "summary": f"diagnosis failed: {type(exc).__name__}: {exc}", "findings": [],
                "suppressed": [], "missing_measurements": [], "warnings": [], "error": f"{type(exc).__name__}: {exc}"}


def render_text(diagnosis: Mapping[str, Any]) -> list[str]:
    """The "Diagnosis" section of report.txt (lines)."""
    lines = ["Diagnosis", "-" * 78, f"  {diagnosis.get('summary', '')}"]
    for f in diagnosis.get("findings") or []:
        lines += ["", f"  {f['rank']}. {f['title']}  (confidence {f['confidence']}: {f['confidence_why']})",
                  f"     symptom : {f['symptom']}", f"     cause   : {f['cause']}", f"     change  : {f['fix']}"]
        if f.get("config_key"):
            lines.append(f"     config  : {f['config_key']}" + (f" = {fmt(f['value'])}" if f.get("value") is not None else ""))
        for path in (f.get("evidence") or [])[:6]:
            lines.append(f"     evidence: {path}")
    for s in diagnosis.get("suppressed") or []:
        lines.append(f"  (not shown: {s['rule']}, overridden by {s['by']})")
    if diagnosis.get("missing_measurements"):
        lines.append(f"  not measured in this run: {', '.join(diagnosis['missing_measurements'])}")
    return lines


def one_line(diagnosis: Mapping[str, Any], width: int = 160) -> str:
    """The top finding (or the healthy line) in one line, for the gate summary."""
    findings = diagnosis.get("findings") or []
    if findings:
        f = findings[0]
        text = f"diagnosis: {f['title']} ({f['confidence']}) -> {f['fix']}"
        if f.get("config_key") and f.get("value") is not None:
            text += f" [{f['config_key']} = {fmt(f['value'])}]"
    else:
        text = f"diagnosis: {diagnosis.get('summary', '')}"
    return text if len(text) <= width else text[: width - 3] + "..."


def rules_table() -> str:
    """The rules as the markdown table of docs/diagnosis.md (generated; a test compares)."""
    lines = ["| precedence | rule | cause | fires when | evidence (metrics.json) | overrides |", "|---|---|---|---|---|---|"]
    for r in RULES:
        overrides = ", ".join(f"`{o}`" for o in r.overrides) or "-"
        cells = [str(r.precedence), f"`{r.id}`", r.cause, r.fires_when, r.evidence, overrides]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
