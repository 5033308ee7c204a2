"""Does it still talk? The gating sweep judged: the base (gate 0) talks, the learned gate keeps its
words, and no gate the model runs at collapses into silence, repetition or gibberish.

A sweep row is what ``run.py`` records per gate: ``label`` ('0', 'learned', a raw alpha),
``gate_tanh``, ``words``, ``transcript`` and ``collapse`` (``metrics/talk.py``'s judgement of its
replies)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ttt_checks.ttt.gate import LEARNED
from ttt_checks.verdict import Verdict, cannot_measure


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


def talk_learned(base: Mapping[str, Any], learned: Mapping[str, Any], th: Mapping[str, float]) -> Verdict:
    """The learned gate keeps at least ``talk_min_learned_ratio`` of the words gate 0 says."""
    if base["words"] < th["talk_min_base_words"]:
        return cannot_measure("talk_learned", f"the base produced no speech at gate 0 ({base['words']} words), so there is nothing to keep")
    ratio = learned["words"] / base["words"]
    ok = ratio >= th["talk_min_learned_ratio"]
    return Verdict("talk_learned", ok, ratio, th["talk_min_learned_ratio"],
                   f"the learned gate (tanh {learned['gate_tanh']:.3f}) keeps {learned['words']} of {base['words']} words "
                   f"({ratio:.0%}): {learned['transcript']!r}" + ("" if ok else ": the model went quiet with TTT on"))


def talk_collapse(sweep: Sequence[Mapping[str, Any]], th: Mapping[str, float]) -> list[Verdict]:
    """No collapse at the gates the model runs at (gate 0 up to its learned gate). Above the
    learned gate the TTT branch runs at a strength it was never trained at: a collapse there is
    reported as a warning, or fails with ``talk_fail_above_learned = 1``."""
    learned = next((r["gate_tanh"] for r in sweep if r["label"] == LEARNED), None)
    strict = th["talk_fail_above_learned"] >= 1
    out = []
    for row in sweep:
        c = row["collapse"]
        share = c["replies_collapsed"] / c["replies"]
        detail = "; ".join(c["reasons"])
        forced = learned is not None and row["label"] != LEARNED and abs(row["gate_tanh"]) > abs(learned) + 1e-6
        ok = not c["collapsed"] or (forced and not strict)
        text = (f"gate {row['label']} (tanh {row['gate_tanh']:.3f}): {c['replies_collapsed']} of {c['replies']} replies "
                + (f"collapsed ({', '.join(c['kinds'])}): {detail}" if c["collapsed"] else
                   f"collapsed{(': ' + detail) if detail else ''}; {row['words']} words in all"))
        if c["collapsed"] and forced:
            text += (f" [forced above the learned gate (tanh {learned:.3f}): the TTT branch was never trained at this "
                     "strength" + ("" if strict else "; a warning, set talk_fail_above_learned=1 to fail on it") + "]")
        out.append(Verdict("talk_collapse", ok, share, th["talk_collapsed_share"], text, layer=f"gate {row['label']}",
                           details={"kinds": c["kinds"], "forced_above_learned": forced,
                                    "severity": "warning" if (c["collapsed"] and ok) else "info"}))
    return out
