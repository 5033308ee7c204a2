"""Does it still talk? The base model at gate 0 must talk for the gating sweep to mean anything."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ttt_checks.verdict import Verdict


def talk_base(words: int, transcript: str, collapse_reasons: Sequence[str], loss_gate0: np.ndarray | None,
              chance_loss: float | None, th: Mapping[str, float], nonfinite_ttt: Sequence[str] = ()) -> Verdict:
    """The base (gate 0) talks: Whisper hears words, and the base predicts its own stream far
    better than chance. Whisper invents words on gibberish ("See you next week"), so the words
    alone do not prove a talking base: a gate-0 outer loss near the loss of uniform prediction
    (``talk_max_base_loss_vs_chance``) does not talk, whatever is heard. With non-finite TTT
    tensors gate 0 is not "TTT off" (0 x NaN), so nothing here is the base's fault."""
    min_words, max_ratio = th["talk_min_base_words"], th["talk_max_base_loss_vs_chance"]
    loss = float(np.mean(loss_gate0)) if loss_gate0 is not None and np.size(loss_gate0) else None
    details: dict[str, Any] = {"words": words, "loss_gate0": loss, "chance_loss": chance_loss, "nonfinite_ttt": list(nonfinite_ttt)}
    if nonfinite_ttt and (loss is None or not math.isfinite(loss)):
        shown = ", ".join(list(nonfinite_ttt)[:4])
        return Verdict("talk_base", False, None, min_words,
                       f"cannot measure: TTT produces NaN, gate 0 is not off (0 x NaN = NaN in {shown}); the gate-0 replies "
                       f"are not the base model's ({words} words heard)", details=details, measurable=False)
    ratio = loss / chance_loss if loss is not None and chance_loss and math.isfinite(loss) else None
    details["loss_vs_chance"] = ratio
    problems = []
    if words < min_words:
        problems.append(f"the base model produced no speech at gate 0 ({words} words heard; {'; '.join(collapse_reasons) or 'no words'})")
    if loss is not None and not math.isfinite(loss):
        problems.append(f"the gate-0 outer loss is {loss}: the base model itself is broken")
    elif ratio is not None and ratio > max_ratio:
        problems.append(f"the base predicts its own stream barely better than chance: gate-0 outer loss {loss:.4g} vs "
                        f"{chance_loss:.4g} for uniform guessing ({ratio:.0%} > {max_ratio:.0%}), so the {words} words Whisper "
                        "heard are not speech it made")
    loss_note = "" if ratio is None else f"; gate-0 outer loss {loss:.4g} = {ratio:.0%} of chance ({chance_loss:.4g})"
    if not problems:
        return Verdict("talk_base", True, words, min_words,
                       f"at gate 0 (TTT off) Whisper heard {words} words: {transcript!r}{loss_note}", details=details)
    return Verdict("talk_base", False, words, min_words,
                   "; ".join(problems) + ": without a talking base the sweep cannot say whether TTT keeps the model talkative"
                   + ("" if ratio is None or ratio > max_ratio else loss_note), details=details)
