"""One health run over one checkpoint: measure once, judge many times, keep the evidence.

``HealthRun`` computes each expensive result once (lazily, so a pytest ``-k`` selection only
pays for what it reads): the checkpoint's tensors, the teacher-forced pass with Figure-5
capture at the learned gate and at gate 0, a streamed pass for state persistence, and the
gating sweep. The health rules turn those into verdicts; every artifact is written under the
run's report directory.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ttt_checks import checks
from ttt_checks.asr import get_transcriber
from ttt_checks.audio import write_wav
from ttt_checks.audio.wav import AudioError
from ttt_checks.checks import baseline
from ttt_checks.checks.base_model import base_not_checked, reference_from_metrics, reference_in_metrics
from ttt_checks.checks.catalogue import CHECKS, FIGURE5_CHECKS, TALK_CHECKS
from ttt_checks.checks.thresholds import read_pyproject_table
from ttt_checks.metrics.branch_output import BranchOutputProbe
from ttt_checks.metrics.figure5 import Figure5Stats, figure5_stats, positions_needed
from ttt_checks.metrics.talk import judge_collapse, talk_metrics
from ttt_checks.metrics.tensor_norms import tensor_norms
from ttt_checks.models.base import LEARNED, Adapter, ForwardResult, GateValue, InputError, ModelInputs
from ttt_checks.report.files import write_text_atomic
from ttt_checks.report.plots import plot_figure5, plot_outer_loss, plot_words_vs_gate
from ttt_checks.ttt.figure5 import Figure5Error, Figure5Probe, Figure5Record
from ttt_checks.ttt.gate import effective_gate, mean_effective_gate
from ttt_checks.ttt.step_probe import DEFAULT_MULTIPLIERS, StepSizeRecord
from ttt_checks.verdict import Verdict, jsonable

DEFAULT_GATES: tuple[GateValue, ...] = (0.0, LEARNED, 0.3, 0.5, 1.0)


class RunError(RuntimeError):
    """A health run cannot start (bad option, unreadable checkpoint): the message says what to do."""


def parse_gates(text: str) -> list[GateValue]:
    """``0,learned,0.3`` -> [0.0, 'learned', 0.3]; raw alpha values, clamped to [-3, 3] by the gate."""
    gates: list[GateValue] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item == LEARNED:
            gates.append(LEARNED)
            continue
        try:
            value = float(item)
        except ValueError:
            raise RunError(f"--gates: {item!r} is neither a number nor 'learned' (example: --gates 0,learned,0.3,1)") from None
        if not np.isfinite(value) or abs(value) > 3.0:
            raise RunError(f"--gates: raw alpha {item} is outside [-3, 3], where the gate clamps it (tanh(3) = 0.995)")
        gates.append(value)
    if not gates:
        raise RunError("--gates is empty: give at least one value, e.g. --gates 0,learned")
    return gates


def gate_label(gate: GateValue) -> str:
    return "learned" if gate == LEARNED else f"{float(gate):g}"


def new_run_id(checkpoint: Path | None) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", checkpoint.name if checkpoint else "default")
    return f"{stamp}-{name}-{os.getpid()}"


@dataclass
class RunOptions:
    report_dir: Path
    gates: list[GateValue] = field(default_factory=lambda: list(DEFAULT_GATES))
    thresholds: dict[str, float] = field(default_factory=lambda: checks.load_thresholds())
    input_path: Path | None = None
    max_positions: int | None = None
    ttt_layers: list[str] | None = None
    asr: str = "default"
    baseline: Path | None = None
    update_baseline: bool = False
    base_reference: Path | None = None  # metrics.json whose gate-0 loss is the base's reference (checks/base_model.py)
    device: str = "cpu"
    pyproject: Path | None = None  # where [tool.ttt_checks] was read (per-metric baseline tolerances)


class HealthRun:
    """Lazily measured results of one checkpoint and the verdicts of every health rule."""

    def __init__(self, adapter: Adapter, options: RunOptions, progress: Callable[[str], None] | None = None) -> None:
        self.adapter = adapter
        self.progress = progress or (lambda message: None)
        self.options = options
        self.th = options.thresholds
        self.report_dir = Path(options.report_dir)
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self.verdicts: dict[str, list[Verdict]] = {}
        self.artifacts: dict[str, list[Path]] = {}
        self.timings: dict[str, float] = {}
        self.started = time.time()
        for note in adapter.checkpoint_notes():
            self.progress(f"checkpoint {adapter.checkpoint}: {note}")

    # -- what the model declares ----------------------------------------------------------------

    @cached_property
    def layers(self):
        infos = self.adapter.ttt_layers()
        wanted = self.options.ttt_layers
        if wanted:
            known = [i.name for i in infos] + [str(i.index) for i in infos]
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise RunError(f"--ttt-layers {unknown}: the model has no such TTT layer; it has {[i.name for i in infos]}")
            infos = [i for i in infos if i.name in wanted or str(i.index) in wanted]
        return infos

    @cached_property
    def inputs(self) -> ModelInputs:
        """The adapter's inputs; what was converted to make them fit (resampled, downmixed) is said."""
        inputs = self._timed("load_inputs", lambda: self.adapter.load_inputs(self.options.input_path, self.options.max_positions))
        for note in inputs.notes:
            self.progress(f"input {self.options.input_path or 'default'}: {note}")
        return inputs

    # -- measurements ---------------------------------------------------------------------------

    def _timed(self, name: str, fn):
        """Run one long step, timing it and saying so (model passes, generation, transcription)."""
        self.progress(f"{name} ...")
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            elapsed = time.perf_counter() - t0
            self.timings[name] = self.timings.get(name, 0.0) + elapsed
            self.progress(f"{name} done in {elapsed:.1f} s")

    @cached_property
    def teacher_forced(self) -> tuple[ForwardResult, dict[str, Figure5Record], dict[str, str]]:
        """Figure-5 records at the learned gate, plus why a layer has none. The same pass runs the
        inner step-size line search (``step_size``)."""
        probe = self._teacher_forced_probe = Figure5Probe(step_multipliers=DEFAULT_MULTIPLIERS)
        spread = self._branch_output_probe = BranchOutputProbe()

        def run():
            with spread.attach(self.adapter.ttt_modules()):
                return self.adapter.teacher_forced(self.inputs.teacher_forced, probe=probe)
        result = self._timed("teacher_forced", run)
        records, missing = {}, {}
        for info in self.layers:
            try:
                records[info.name] = probe.record(info.name)
            except Figure5Error as exc:
                missing[info.name] = str(exc)

        for name, rec in records.items():
            stem = f"figure5_{_slug(name)}"
            paths = [rec.save(self.report_dir / f"{stem}.npz"), plot_figure5(rec, self.report_dir / f"{stem}.png")]
            for check in FIGURE5_CHECKS:
                for path in paths:
                    self.add_artifact(check, path)
        return result, records, missing

    @cached_property
    def step_size(self) -> tuple[dict[str, StepSizeRecord], dict[str, str]]:
        """Per layer the inner loss after its step scaled by each multiplier (ttt/step_probe.py),
        from the teacher-forced pass (no extra forward), plus why a layer has none."""
        self.teacher_forced  # noqa: B018  (the pass that fills the probe)
        records, missing = {}, {}
        for info in self.layers:
            try:
                records[info.name] = self._teacher_forced_probe.step_record(info.name)
            except Figure5Error as exc:
                missing[info.name] = str(exc)
        return records, missing

    @cached_property
    def figure5(self) -> dict[str, Figure5Stats]:
        """Figure-5 statistics per layer (``metrics/figure5.py``, the one definition), judged with
        the layer's own mini_batch_size and causal flag and the ``ordering_min_rel_gap`` margin."""
        _, records, _ = self.teacher_forced
        infos = {i.name: i for i in self.layers}
        return {name: figure5_stats(rec, self.inputs.positions, mini_batch_size=infos[name].mini_batch_size,
                                    causal=infos[name].causal, min_rel_gap=self.th["ordering_min_rel_gap"])
                for name, rec in records.items()}

    @cached_property
    def outer_gate0(self) -> ForwardResult:
        def run():
            with self.adapter.set_gate(0.0):
                return self.adapter.teacher_forced(self.inputs.teacher_forced)
        result = self._timed("teacher_forced_gate0", run)
        learned = self.teacher_forced[0]
        if len(learned.outer_loss) == len(result.outer_loss):
            self.add_artifact("ttt_helps", plot_outer_loss(learned.outer_loss, result.outer_loss, self.report_dir / "outer_loss.png"))
        return result

    @cached_property
    def streamed(self) -> dict[str, Figure5Record]:
        """Figure-5 records of a pass fed one token per call, as streaming inference does. Four
        mini-batches of the largest mini_batch_size any layer names (never an assumed 8 or 16),
        and at least what ``positions_needed`` asks for, show whether lprev departs from l0 after
        the positions where they are equal by construction."""
        probe = Figure5Probe()
        positions = max((max(4 * i.mini_batch_size, positions_needed(i.mini_batch_size, i.causal)) for i in self.layers), default=1)
        if self.options.max_positions:
            positions = min(positions, self.options.max_positions)
        inputs = self._timed("load_inputs", lambda: self.adapter.load_inputs(self.options.input_path, positions))
        self.streamed_inputs = inputs
        self.streamed_result = self._timed("streamed", lambda: self.adapter.teacher_forced(inputs.teacher_forced, probe=probe, chunk=1))
        out = {}
        for info in self.layers:
            try:
                out[info.name] = probe.record(info.name)
            except Figure5Error:
                continue
        return out

    @cached_property
    def sweep(self) -> list[dict[str, Any]]:
        """The gating sweep: one batched generation per prompt over every gate; then per gate and
        reply a Whisper transcript, talk metrics and a collapse judgement, and per gate one wav
        (the replies in a row, for listening).

        Collapse is judged per reply, never on the replies glued together (phrases shared across
        replies are not a loop), and a gate collapses when at least half of its replies do.
        """

        gates = self.options.gates
        prompts = self.inputs.prompts
        if not prompts:
            raise RunError("the input has no prompts for the gating sweep")
        per_prompt = self._timed("generate", lambda: [self.adapter.generate(p, gates) for p in prompts])
        transcriber = self._timed("load_asr", lambda: get_transcriber(self.options.asr))
        out_dir = self.report_dir / "sweep"
        rows = []
        for index, gate in enumerate(gates):
            label = gate_label(gate)
            clips = [gens[index] for gens in per_prompt]
            replies = []
            for prompt, clip in zip(prompts, clips):
                audio = np.asarray(clip.audio, np.float32)
                transcript = self._timed("transcribe", lambda: transcriber.transcribe(audio, clip.sample_rate))
                talk = talk_metrics(audio, clip.sample_rate, transcript)
                collapse = judge_collapse(talk, min_words=int(self.th["talk_min_base_words"]),
                                          max_seq_rep_4=self.th["talk_max_repeat_rate"])
                replies.append({"prompt": str(prompt), "model_text": clip.text, "transcript": transcript.text,
                                "words": int(talk.words), "talk": talk.to_dict(), "collapse": collapse.to_dict()})
            rate = clips[0].sample_rate
            pause = np.zeros(int(0.5 * rate), dtype=np.float32)
            wav = write_wav(out_dir / f"gate_{label}.wav",
                            np.concatenate([x for c in clips for x in (np.asarray(c.audio, np.float32), pause)]), rate)
            collapsed = [i for i, r in enumerate(replies) if r["collapse"]["collapsed"]]
            kinds = sorted({k for i in collapsed for k in replies[i]["collapse"]["kinds"]})
            row = {
                "label": label, "gate_alpha": float(np.mean([c.gate_alpha for c in clips])),
                "gate_tanh": float(np.mean([c.gate_tanh for c in clips])),
                "words": sum(r["words"] for r in replies),
                "transcript": " | ".join(r["transcript"] for r in replies),
                "model_text": " | ".join(r["model_text"] for r in replies if r["model_text"] is not None) or None,
                "wav": str(wav), "replies": replies,
                "collapse": {"collapsed": len(collapsed) >= self.th["talk_collapsed_share"] * len(replies), "kinds": kinds,
                             "replies_collapsed": len(collapsed), "replies": len(replies),
                             "reasons": [f"reply {i + 1}: {'; '.join(replies[i]['collapse']['reasons'])}" for i in collapsed]},
            }
            lines = [f"gate {label} (raw alpha {row['gate_alpha']:.3f}, tanh {row['gate_tanh']:.3f})"]
            for i, r in enumerate(replies, 1):
                lines += [f"reply {i} to {r['prompt']!r}", f"  model text: {r['model_text']}",
                          f"  transcript: {r['transcript']}", f"  words counted: {r['words']}",
                          f"  collapse: {'; '.join(r['collapse']['reasons']) or 'none'}"]
            txt = write_text_atomic(out_dir / f"gate_{label}.txt", "\n".join(lines) + "\n")
            rows.append(row)
            for check in TALK_CHECKS:
                self.add_artifact(check, Path(wav))
                self.add_artifact(check, txt)
        plot = plot_words_vs_gate([r["label"] for r in rows], [r["gate_tanh"] for r in rows], [r["words"] for r in rows],
                                  self.report_dir / "words_vs_gate.png")
        for check in TALK_CHECKS:
            self.add_artifact(check, plot)
        return rows

    def _sweep_row(self, label: str, purpose: str) -> dict[str, Any]:
        for row in self.sweep:
            if row["label"] == label:
                return row
        raise RunError(f"the gating sweep has no gate {label!r}, needed for {purpose}; add it to --gates")

    # -- verdicts -------------------------------------------------------------------------------

    def judge(self, check: str) -> list[Verdict]:
        """The verdicts of one named check (computed once, then cached)."""
        if check not in self.verdicts:
            fn = getattr(self, f"_check_{check}", None)
            if fn is None:
                raise KeyError(f"unknown check {check!r}; known: {sorted(CHECKS)}")
            try:
                verdicts = fn()
            except (RunError, Figure5Error, InputError, AudioError) as exc:  # a bad input measures nothing
                verdicts = [checks.cannot_measure(check, str(exc))]
            self.verdicts[check] = verdicts
        return self.verdicts[check]

    def _check_checkpoint_keys(self):
        unexpected = self.adapter.unexpected_ttt_keys()
        return [checks.checkpoint_keys(self.adapter.expected_ttt_keys(), self.adapter.state().keys(), unexpected)]

    def _check_model_specific(self):
        """Checks only one model family can make (Moshi: gate 0 == vanilla Moshi, ...)."""
        return self._timed("model_checks", lambda: self.adapter.model_checks(self.inputs.teacher_forced))

    def _check_checkpoint_finite(self):
        self.ttt_tensor_norms  # noqa: B018  (recorded with the tensors this check reads anyway)
        return [checks.checkpoint_finite(self.adapter.state(), self.adapter.expected_ttt_keys())]

    @cached_property
    def ttt_tensor_norms(self) -> dict[str, float | None]:
        """The L2 norm of each TTT tensor in the checkpoint (metrics.json ``ttt_tensor_norms``):
        across a run's checkpoints, ``ttt-checks trend`` reads which tensors the outer update grew."""
        return tensor_norms(self.adapter.state(), self.adapter.expected_ttt_keys())

    def _check_figure5_collected(self):
        _, _, missing = self.teacher_forced
        return checks.figure5_collected(self.figure5, [i.name for i in self.layers], missing, self.th)

    def _check_figure5_finite(self):
        return self._per_layer(checks.figure5_finite(self.figure5), "figure5_finite")

    def _check_figure5_bounded(self):
        return self._per_layer(checks.figure5_bounded(self.figure5, self.th), "figure5_bounded")

    def _check_figure5_ordering(self):
        return self._per_layer(checks.figure5_ordering(self.figure5, self.th), "figure5_ordering")

    def _check_figure5_improvement(self):
        return self._per_layer(checks.figure5_improvement(self.figure5, self.th), "figure5_improvement")

    def _check_figure5_adaptation(self):
        return self._per_layer(checks.figure5_adaptation(self.figure5, self.th), "figure5_adaptation")

    def _check_inner_step_size(self):
        records, missing = self.step_size
        out = checks.inner_step_size(records, self.th)
        out += [checks.cannot_measure("inner_step_size", why, name) for name, why in missing.items()]
        return out or [checks.cannot_measure("inner_step_size", "the model reports no TTT layers")]

    def _check_gate_stats(self):
        return checks.gate_stats({i.name: i.gate_alpha for i in self.layers}, self.th,
                                 {i.name: i.gate_alpha_init for i in self.layers},
                                 {i.name: i.gate_alpha_init_disputed for i in self.layers})

    @cached_property
    def nonfinite_ttt_tensors(self) -> list[str]:
        """TTT tensors holding NaN/Inf: with any, gate 0 is not "TTT off" (0 x NaN = NaN)."""
        import torch

        state = self.adapter.state()
        names = [k for k in self.adapter.expected_ttt_keys() if k in state]
        return [k for k in names if torch.is_floating_point(state[k]) and not bool(torch.isfinite(state[k]).all())]

    @cached_property
    def outer_no_inner_step(self) -> ForwardResult | str:
        """The teacher-forced pass at the learned gate with every inner step size 0 (W_t = W_0),
        or, where the adapter cannot turn the steps off, why not (ttt_helps then says so)."""
        def run():
            with self.adapter.inner_steps_off():
                return self.adapter.teacher_forced(self.inputs.teacher_forced)
        try:
            return self._timed("teacher_forced_no_inner_step", run)
        except NotImplementedError as err:
            return str(err)

    @cached_property
    def output_spread(self) -> dict[str, float]:
        """Per TTT layer, the spread (std / rms) of its branch output over the learned-gate
        teacher-forced pass (metrics/branch_output.py); layers that produced no finite output are left out."""
        self.teacher_forced  # noqa: B018  (the pass that fills the probe)
        return {name: s.relative for name, s in self._branch_output_probe.spreads().items() if math.isfinite(s.relative)}

    @cached_property
    def branch_strength(self) -> dict[str, dict[str, float]]:
        """Per TTT layer, how strong its gated branch is against the residual stream it is added to
        in the learned-gate pass (``BranchSpread.strength``), with the two sizes it compares."""
        self.teacher_forced  # noqa: B018  (the pass that fills the probe)
        spreads = self._branch_output_probe.spreads()
        out = {}
        for info in self.layers:
            s = spreads.get(info.name)
            if s is None or s.positions == 0:
                continue
            out[info.name] = {"strength": s.strength(effective_gate(np.asarray(info.gate_alpha, dtype=np.float64))), "branch_rms": s.rms,
                              "residual_rms": s.input_rms, "gate_mean_tanh": mean_effective_gate(info.gate_alpha)}
        return out

    def _check_ttt_helps(self):
        learned, _, _ = self.teacher_forced
        static = self.outer_no_inner_step
        if isinstance(static, str):
            return [checks.ttt_helps(learned.outer_loss, self.outer_gate0.outer_loss, self.th, self.nonfinite_ttt_tensors,
                                     no_inner_step_unavailable=static, output_spread=self.output_spread)]
        return [checks.ttt_helps(learned.outer_loss, self.outer_gate0.outer_loss, self.th, self.nonfinite_ttt_tensors,
                                 loss_no_inner_step=static.outer_loss, output_spread=self.output_spread)]

    @cached_property
    def input_fingerprint(self) -> str | None:
        """The teacher-forced input's hash, so a reference loss is only compared on the same tokens."""
        return checks.input_fingerprint(self.inputs.teacher_forced)

    @cached_property
    def base_reference(self) -> tuple[checks.BaseReference | None, str]:
        """The base's reference loss, and where it came from or why there is none: --base-reference,
        else the checkpoint's own (reference format), else a --baseline run on the same input."""
        if self.options.base_reference is not None:
            return reference_from_metrics(self.options.base_reference), ""
        stored = self.adapter.base_reference()
        if stored is not None:
            return checks.BaseReference(float(stored["loss"]), stored.get("fingerprint"), str(stored.get("source", "")),
                                        str(stored.get("input", ""))), ""
        if self.options.baseline is not None and Path(self.options.baseline).is_file():
            try:
                reference = reference_in_metrics(baseline.load_baseline(self.options.baseline),
                                                                   f"--baseline {self.options.baseline}")
            except baseline.BaselineError:
                reference = None
            if reference is not None and reference.fingerprint == self.input_fingerprint:
                return reference, ""
        return None, ("no reference loss of the base: the checkpoint stores none (the reference format writes one when the "
                      "base is built) and neither --base-reference nor a --baseline on the same input was given")

    def base_model_not_checked(self) -> dict[str, Any] | None:
        """Why the base model could not be compared with a reference (None when it was)."""
        try:
            reference, why = self.base_reference
        except checks.BaseReferenceError as exc:
            return {"checked": False, "why": str(exc)}
        if self.nonfinite_ttt_tensors:
            return {"checked": False, "why": "TTT tensors hold NaN/Inf, so gate 0 does not switch TTT off (0 x NaN = NaN): the "
                                              "loss there does not measure the base (see checkpoint_finite)"}
        return base_not_checked(reference, self.input_fingerprint, why)

    def _check_base_model(self):
        """The base at gate 0 vs its reference loss on the same input; no verdict (and a note in
        metrics.json, ``base_model_not_checked``) where there is nothing to compare with."""
        try:
            reference, _ = self.base_reference
        except checks.BaseReferenceError as exc:
            return [checks.cannot_measure("base_model", str(exc))]
        if self.base_model_not_checked() is not None:
            return []
        return [checks.base_model(self.outer_gate0.outer_loss, reference, self.input_fingerprint, self.th)]

    def _check_config_consistency(self):
        """Settings stated twice (config vs training record, config vs weights) must agree; what
        loading changed in the checkpoint's naming (a DDP ``module.`` prefix) is said here."""
        return [checks.config_consistency(self.adapter.recipe_fields(), self.adapter.checkpoint_notes())]

    def _check_dead_parameters(self):
        unused = set(self.adapter.unused_ttt_keys())
        state = self.adapter.state()
        used = [k for k in state if k not in unused]
        return [checks.dead_parameters(state, self.adapter.initial_state(), used, self.th)]

    def _check_state_persistence(self):
        records = self.streamed
        out = checks.state_persistence(records, {i.name: i for i in self.layers}, self.th)
        missing = [i.name for i in self.layers if i.name not in records]
        out += [checks.cannot_measure("state_persistence", "the streamed run collected no Figure-5 data", name) for name in missing]
        return out or [checks.cannot_measure("state_persistence", "the model reports no TTT layers")]

    def _check_streaming_consistency(self):
        self.streamed  # noqa: B018  (the one-token-per-call pass and its input)
        full = self._timed("teacher_forced_short", lambda: self.adapter.teacher_forced(self.streamed_inputs.teacher_forced))
        n = min(len(full.outer_loss), len(self.streamed_result.outer_loss))
        if n == 0:
            return [checks.cannot_measure("streaming_consistency", "the passes returned no outer loss")]
        causal = None if not self.layers else all(info.causal for info in self.layers)
        gate0 = None
        if causal is False:  # is the leak only a warning? TTT must still help one token at a time
            with self.adapter.set_gate(0.0):
                gate0 = self._timed("teacher_forced_short_gate0",
                                    lambda: self.adapter.teacher_forced(self.streamed_inputs.teacher_forced)).outer_loss[:n]
        return [checks.streaming_consistency(full.outer_loss[:n], self.streamed_result.outer_loss[:n], self.th,
                                             loss_gate0=gate0, causal=causal)]

    def _check_talk_base(self):
        """Words heard at gate 0, cross-checked with how well gate 0 predicts its own stream
        (the teacher-forced outer loss vs uniform guessing): Whisper hears words in gibberish."""
        base = self._sweep_row("0", "the base model's talkativeness")
        verdict = checks.talk_base(base["words"], base["transcript"], base["collapse"]["reasons"], self.outer_gate0.outer_loss,
                                   self.adapter.chance_outer_loss(), self.th, self.nonfinite_ttt_tensors)
        verdict.details["row"] = base["label"]
        return [verdict]

    def _check_talk_learned(self):
        base = self._sweep_row("0", "the words ratio learned / gate 0")
        learned = self._sweep_row(LEARNED, "the words ratio learned / gate 0")
        return [checks.talk_learned(base, learned, self.th)]

    def _check_talk_collapse(self):
        return checks.talk_collapse(self.sweep, self.th)

    def _check_baseline_regression(self):
        if self.options.baseline is None:
            return []
        for check in CHECKS:  # the comparison needs every measurement of this run
            self.judge(check)
        if not Path(self.options.baseline).exists() and self.options.update_baseline:
            return [Verdict("baseline_regression", True, 0, 0, f"no baseline yet: {self.options.baseline} is written from this run")]
        try:
            reference = baseline.load_baseline(self.options.baseline)
        except baseline.BaselineError as exc:
            return [checks.cannot_measure("baseline_regression", str(exc))]
        per_metric = {}
        if self.options.pyproject is not None and Path(self.options.pyproject).is_file():
            per_metric = read_pyproject_table(Path(self.options.pyproject)).get("baseline_tolerances", {})
        return [baseline.compare(self.metrics(), reference, self.th["baseline_rel_tolerance"], per_metric)]

    def _per_layer(self, verdicts: list[Verdict], name: str) -> list[Verdict]:
        """Layers with no Figure-5 data fail every Figure-5 rule too (never a silent pass)."""
        have = {v.layer for v in verdicts}
        _, _, missing = self.teacher_forced
        extra = [checks.cannot_measure(name, f"no Figure-5 data for this layer ({missing.get(i.name, 'not reported')})", i.name)
                 for i in self.layers if i.name not in have]
        out = verdicts + extra
        return out or [checks.cannot_measure(name, "the model reports no TTT layers")]

    # -- evidence -------------------------------------------------------------------------------

    def add_artifact(self, check: str, path: Path) -> Path:
        self.artifacts.setdefault(check, [])
        if path not in self.artifacts[check]:
            self.artifacts[check].append(Path(path))
        return path

    def metrics(self, complete: bool = True) -> dict[str, Any]:
        """Everything measured so far, as JSON-ready data (the report renders from this)."""
        data: dict[str, Any] = {
            "checkpoint": str(self.adapter.checkpoint) if self.adapter.checkpoint else None,
            "adapter": self.adapter.name,
            "report_dir": str(self.report_dir),
            "complete": complete,
            "thresholds": self.th,
            "gates": [gate_label(g) for g in self.options.gates],
            "timings_s": self.timings,
            "verdicts": {k: [v.to_dict() for v in vs] for k, vs in self.verdicts.items()},
            "artifacts": {k: [str(p) for p in ps] for k, ps in self.artifacts.items()},
        }
        if "inputs" in self.__dict__:
            data["inputs"] = {"description": self.inputs.description, "notes": list(self.inputs.notes)}
        data["checkpoint_notes"] = list(self.adapter.checkpoint_notes())
        record = self.adapter.training_record()
        if record is not None:
            data["training_record"] = dict(record)
        if "input_fingerprint" in self.__dict__:
            data.setdefault("inputs", {})["fingerprint"] = self.input_fingerprint
        if "base_reference" in self.__dict__:
            skipped = self.base_model_not_checked()
            if skipped is not None:
                data["base_model_not_checked"] = skipped
        if "figure5" in self.__dict__:
            data["figure5"] = {k: s.to_dict() for k, s in self.figure5.items()}
        if "step_size" in self.__dict__:
            data["inner_step_size"] = {name: r.to_dict() for name, r in self.step_size[0].items()}
        if "teacher_forced" in self.__dict__:
            data["outer_loss"] = {"learned": float(np.mean(self.teacher_forced[0].outer_loss))}
            if "outer_gate0" in self.__dict__:
                data["outer_loss"]["gate0"] = float(np.mean(self.outer_gate0.outer_loss))
            if isinstance(self.__dict__.get("outer_no_inner_step"), ForwardResult):
                data["outer_loss"]["no_inner_step"] = float(np.mean(self.outer_no_inner_step.outer_loss))
        if "teacher_forced" in self.__dict__ and "layers" in self.__dict__:
            data["branch_output"] = self.branch_strength
        if "sweep" in self.__dict__:
            data["sweep"] = self.sweep
        if "ttt_tensor_norms" in self.__dict__:
            data["ttt_tensor_norms"] = self.ttt_tensor_norms
        if "layers" in self.__dict__:
            data["layers"] = [
                {"name": i.name, "index": i.index, "mini_batch_size": i.mini_batch_size, "causal": i.causal,
                 "inner": i.inner, "mlp_layers": i.mlp_layers, "base_lr": i.base_lr,
                 "gate_mean_tanh": mean_effective_gate(i.gate_alpha), "gate_alpha_init": i.gate_alpha_init}
                for i in self.layers
            ]
        return jsonable(data)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")




def run_all(run: HealthRun, checks: Sequence[str] = CHECKS) -> list[Verdict]:
    return [v for check in checks for v in run.judge(check)]
