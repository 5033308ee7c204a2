"""The health checks: measurements + thresholds -> verdicts with explanations.

One module per concern: ``figure5`` (is the inner loop learning?), ``outer`` (does TTT help the
model?), ``talk`` (does it still talk?), ``checkpoint`` and ``gate`` (is the checkpoint sane?),
``streaming`` (state carried, no reading ahead), ``step_size`` (is the inner step near its best),
``baseline`` (regression against an earlier run), ``base_model`` (the base against its own reference loss). ``thresholds`` holds every threshold and
``catalogue`` the list of checks. Each check returns :class:`~ttt_checks.verdict.Verdict`
objects; one that cannot measure fails with the reason, it never passes.

Checks never import a model package: what they judge comes from an adapter through ``run.py``.
"""

from ttt_checks.checks.base_model import BaseReference, BaseReferenceError, base_model, input_fingerprint
from ttt_checks.checks.catalogue import CHECKS, EXPECTED_CHECKS, FIGURE5_CHECKS, TALK_CHECKS
from ttt_checks.checks.checkpoint import (INIT_MATCH_ABS_ULPS, INIT_MATCH_ULPS, at_initial_value, checkpoint_finite,
                                          checkpoint_keys, config_consistency, dead_parameters, zeroed_tensor)
from ttt_checks.checks.figure5 import (figure5_adaptation, figure5_bounded, figure5_collected, figure5_finite,
                                       figure5_improvement, figure5_ordering)
from ttt_checks.checks.gate import gate_stats
from ttt_checks.checks.outer import HELP_RESOLUTION_SE, ttt_helps
from ttt_checks.checks.step_size import inner_step_size
from ttt_checks.checks.streaming import state_persistence, streaming_consistency
from ttt_checks.checks.talk import talk_base, talk_collapse, talk_learned
from ttt_checks.checks.thresholds import (THRESHOLDS, Threshold, ThresholdError, load_thresholds,
                                          parse_threshold_overrides, read_pyproject_table)
from ttt_checks.verdict import Verdict, cannot_measure

__all__ = [
    "BaseReference", "BaseReferenceError", "base_model", "input_fingerprint",
    "CHECKS", "EXPECTED_CHECKS", "FIGURE5_CHECKS", "TALK_CHECKS",
    "INIT_MATCH_ABS_ULPS", "INIT_MATCH_ULPS", "at_initial_value", "checkpoint_finite", "checkpoint_keys",
    "config_consistency", "dead_parameters", "zeroed_tensor",
    "figure5_adaptation", "figure5_bounded", "figure5_collected", "figure5_finite", "figure5_improvement", "figure5_ordering",
    "gate_stats", "HELP_RESOLUTION_SE", "ttt_helps", "inner_step_size", "state_persistence", "streaming_consistency",
    "talk_base", "talk_collapse", "talk_learned", "THRESHOLDS", "Threshold", "ThresholdError", "load_thresholds", "parse_threshold_overrides",
    "read_pyproject_table", "Verdict", "cannot_measure",
]
