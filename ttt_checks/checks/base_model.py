"""Is the base model the one the TTT layers were trained on? Its loss at gate 0 vs its own reference.

At gate 0 the TTT branch adds nothing, so the teacher-forced outer loss there is the base model's
loss on the run's input. Every TTT verdict is judged against that base (``ttt_helps`` compares
with gate 0, the sweep with the gate-0 replies), so a damaged base (blocks loaded in another order,
a wrong or half-trained base file) makes TTT findings consequences of something else. The base is
compared with a loss measured on the same tokens when the base was known to be good:

- the reference format stores it in the base's config.json when the base is built
  (``reference_loss``: loss, the input's fingerprint, what the input was);
- for any model, ``--base-reference METRICS.json`` (a run of a known-good checkpoint on the same
  base: its ``outer_loss.gate0``), and a ``--baseline`` metrics.json counts as one too.

A reference measured on another input cannot be compared (the fingerprint says so): the run
then says the base was not checked, and why, instead of passing or failing on a guess.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ttt_checks.metrics.fingerprint import input_fingerprint
from ttt_checks.verdict import Verdict

__all__ = ["BaseReference", "BaseReferenceError", "base_model", "base_not_checked", "input_fingerprint",
           "reference_from_metrics", "reference_in_metrics"]


@dataclass(frozen=True)
class BaseReference:
    """A base model's loss on one input, measured when the base was known to be good."""

    loss: float
    fingerprint: str | None  # input_fingerprint of the tokens it was measured on (None: unknown)
    source: str  # where it was read, for the explanation
    input: str = ""  # what the input was, in words

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "fingerprint": self.fingerprint, "source": self.source, "input": self.input}


class BaseReferenceError(ValueError):
    """A --base-reference file that cannot be used; the message says what to give instead."""


def reference_from_metrics(path: Path) -> BaseReference:
    """The gate-0 loss of an earlier run (a metrics.json of a known-good checkpoint on this base)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BaseReferenceError(f"--base-reference {path}: no such file; give the metrics.json of a run of a known-good "
                                 "checkpoint on the same base and input") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaseReferenceError(f"--base-reference {path}: not a readable metrics.json ({exc})") from exc
    reference = reference_in_metrics(data, str(path)) if isinstance(data, dict) else None
    if reference is None:
        raise BaseReferenceError(f"--base-reference {path}: it holds no gate-0 outer loss (outer_loss.gate0); give a run "
                                 "that measured ttt_helps")
    return reference


def reference_in_metrics(data: Mapping[str, Any], source: str) -> BaseReference | None:
    """A metrics.json's gate-0 loss as a base reference, or None when it did not measure one."""
    loss = (data.get("outer_loss") or {}).get("gate0")
    if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
        return None
    inputs = data.get("inputs") or {}
    return BaseReference(float(loss), inputs.get("fingerprint"), f"gate-0 loss of {source}", str(inputs.get("description", "")))


def base_model(loss_gate0: np.ndarray, reference: BaseReference, fingerprint: str | None,
               th: Mapping[str, float]) -> Verdict:
    """The base's loss at gate 0 must not exceed its reference by more than ``base_max_loss_excess``
    (relative). A lower loss passes: the check is about a damaged base, and a base cannot be
    damaged into predicting its own input better (it is reported all the same)."""
    limit = th["base_max_loss_excess"]
    loss = float(np.mean(np.asarray(loss_gate0, dtype=np.float64))) if np.size(loss_gate0) else float("nan")
    details = {"loss_gate0": loss, "reference": reference.to_dict(), "input_fingerprint": fingerprint}
    if not math.isfinite(loss):
        return Verdict("base_model", False, "nan", limit,
                       f"the base model's loss at gate 0 is not finite ({loss}) where its reference is {reference.loss:.5f} "
                       f"({reference.source})", details=details)
    excess = (loss - reference.loss) / abs(reference.loss) if reference.loss else float("inf")
    details["relative_excess"] = excess
    core = (f"teacher-forced loss at gate 0 (the base model alone) {loss:.5f} vs {reference.loss:.5f} measured on the same "
            f"input when the base was built ({reference.source}): {excess:+.3%}")
    if excess > limit:
        return Verdict("base_model", False, excess, limit,
                       f"{core}, more than {limit:.1%} worse: THE BASE MODEL IS NOT THE ONE ITS REFERENCE WAS MEASURED ON "
                       "(damaged, loaded in another order, or another base file): every TTT verdict is judged against it",
                       details=details)
    return Verdict("base_model", True, excess, limit, f"{core} (at most {limit:.1%} worse allowed)", details=details)


def base_not_checked(reference: BaseReference | None, fingerprint: str | None, why_none: str) -> dict[str, Any] | None:
    """Why the base could not be compared (for metrics.json), or None when it can be."""
    if reference is None:
        return {"checked": False, "why": why_none}
    if fingerprint is None:
        return {"checked": False, "why": "the run's input is not an array, so it cannot be matched to the reference's",
                "reference": reference.to_dict()}
    if reference.fingerprint != fingerprint:
        return {"checked": False, "reference": reference.to_dict(),
                "why": f"the reference ({reference.source}) was measured on another input "
                       f"({reference.input or 'fingerprint ' + str(reference.fingerprint)}) than this run's (fingerprint "
                       f"{fingerprint}): run on the same input (the default, without --input) to check the base"}
    return None
