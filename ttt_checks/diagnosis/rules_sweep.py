"""Rules about the gating sweep (who talks at which gate) and generation collapse."""

from __future__ import annotations

from ttt_checks.diagnosis.finding import LOW, MEDIUM, Finding, Metrics, rule
from ttt_checks.diagnosis.readers import _cannot_measure, _details, _evidence, _keys, _sweep_rows, _sweep_scenario, failing
from ttt_checks.verdict import fmt


def _sweep_numbers(m: Metrics) -> str:
    return ", ".join(f"gate {r.get('label')} (tanh {fmt(r.get('gate_tanh'))}): {r.get('words')} words"
                     for r in _sweep_rows(m))


def _sweep_evidence(m: Metrics) -> list[str]:
    wavs = [str(r["wav"]) for r in _sweep_rows(m) if r.get("wav")]
    return wavs + [p for p in _evidence(m, ["talk_learned"]) if p.endswith(".png") and p not in wavs]


@rule("sweep_scenario_c", 23, "scenario C: every gate is quiet, so the problem is elsewhere (base model, input, sampling)",
      "sweep rows (words per gate, collapse); verdict talk_base", "no gate of the sweep talks, gate 0 included",
      overrides=("sweep_scenario_a", "sweep_scenario_b", "generation_collapse"),
      reads=("talk_base", "talk_learned", "talk_collapse"))
def rule_sweep_scenario_c(m: Metrics) -> Finding | None:
    if _sweep_scenario(m) != "C":
        return None
    return Finding("Sweep scenario C: every gate is quiet", _sweep_numbers(m),
                   "the problem is elsewhere: the base model, the input prompt or the sampling (temperature); TTT is not "
                   "what silences the model",
                   "check the base model without TTT, the prompt audio and the sampling temperature before the TTT recipe",
                   confidence=MEDIUM, confidence_why="words counted by ASR at every gate; ASR can miss quiet or noisy speech",
                   evidence=_sweep_evidence(m))


@rule("sweep_scenario_a", 24, "scenario A: the TTT weights learned quiet behaviour (data / objective)",
      "sweep rows: gate 0 talks, the learned gate and the highest gate are quiet", "gate 0 talks, learned and top gate quiet",
      reads=("talk_learned", "talk_collapse"))
def rule_sweep_scenario_a(m: Metrics) -> Finding | None:
    if _sweep_scenario(m) != "A":
        return None
    return Finding("Sweep scenario A: TTT learned quiet behaviour", _sweep_numbers(m),
                   "the TTT weights themselves learned to make the model quiet (the data or the objective rewards silence)",
                   "look at the fine-tuning data (share of silence, speaker turns) and the loss weighting of the text/audio streams",
                   config_key="first_codebook_weight_multiplier" if str(m.get("adapter")) == "moshi" else None,
                   confidence=MEDIUM, confidence_why="the quiet replies follow the TTT strength (gate 0 talks, the top gate does not)",
                   evidence=_sweep_evidence(m))


@rule("sweep_scenario_b", 25, "scenario B: TTT learned useful features but the gate ignores them (gating collapsed)",
      "sweep rows: gate 0 and the highest gate talk, the learned gate is quiet", "gate 0 and top gate talk, learned quiet and below the top gate",
      reads=("talk_learned",))
def rule_sweep_scenario_b(m: Metrics) -> Finding | None:
    if _sweep_scenario(m) != "B":
        return None
    return Finding("Sweep scenario B: the gate ignores useful TTT features", _sweep_numbers(m),
                   "TTT learned useful features but the learned gate is too small to use them (gating collapsed)",
                   "use an earlier checkpoint, before the gate fell; regularise the gate",
                   config_key=_keys(m)["gate_init"], confidence=MEDIUM,
                   confidence_why="gate 0 and the top gate talk while the learned gate is quiet",
                   evidence=_sweep_evidence(m))


@rule("generation_collapse", 26, "generation collapses (silence, repetition) at a gate the model runs at",
      "verdict talk_collapse per gate (details.kinds)", "talk_collapse fails", reads=("talk_collapse",))
def rule_generation_collapse(m: Metrics) -> Finding | None:
    bad = [v for v in failing(m, "talk_collapse") if not _cannot_measure(v)]
    if not bad:
        return None
    parts = [f"{v.get('layer') or 'a gate'}: {fmt(v.get('measured'))} of replies collapsed "
             f"({', '.join(_details(v).get('kinds') or []) or 'kind not recorded'})" for v in bad]
    return Finding("Generation collapses at a gate the model runs at", "; ".join(parts),
                   "the model loops or falls silent at its own gate; read the Figure-5 and gate findings for the mechanism",
                   "listen to the wavs; use a checkpoint where the learned gate still talks",
                   confidence=LOW, confidence_why="a symptom of several causes; no rule above pins it down",
                   evidence=_sweep_evidence(m))
