"""From verdicts to a diagnosis: what broke, why, what to change, how sure we are.

``finding`` defines a rule and its finding and the :func:`~ttt_checks.diagnosis.finding.rule`
decorator; ``readers`` reads metrics.json defensively; the rules live by subject in
``rules_checkpoint``, ``rules_inner``, ``rules_gate``, ``rules_outer`` and ``rules_sweep``;
``diagnose`` ranks what fired and renders it. A new rule is one decorated function in the module
of its subject (docs/architecture.md).
"""

from ttt_checks.diagnosis.diagnose import (NOT_MEASURED, RULE_FUNCTIONS, RULES, RULES_BY_ID, UNEXPLAINED, Diagnosis, diagnose,
                                           diagnosis_dict, expected_diagnosis, one_line, render_text, rules_table)
from ttt_checks.diagnosis.finding import HIGH, LOW, MEDIUM, Finding, Rule, rule
from ttt_checks.diagnosis.readers import CONFIG_KEYS, GENERIC_KEYS

__all__ = ["NOT_MEASURED", "RULE_FUNCTIONS", "RULES", "RULES_BY_ID", "UNEXPLAINED", "Diagnosis", "diagnose", "diagnosis_dict",
           "expected_diagnosis", "one_line", "render_text", "rules_table", "HIGH", "LOW", "MEDIUM", "Finding", "Rule", "rule",
           "CONFIG_KEYS", "GENERIC_KEYS"]
