"""The checkpoint zoo: healthy reference checkpoints and broken ones, re-created by ``build_zoo``.

Each broken checkpoint reproduces one failure mode of the user's Moshi+TTT runs
(docs/moshi-checkpoints.md, "Failure modes" and "Zoo reproductions") and names the check that must catch it
(``expected.expected_failures`` in its config.json, explained in its EXPECTED.md). Where a bad recipe
is cheap to train it is trained; otherwise the checkpoint is a documented transformation of
``healthy-seed0``.

Check names are those of ``ttt_checks.run.CHECKS`` (the health suite's rules). A broken
checkpoint names the checks its defect is aimed at (``built_to_fail``) and every check that
fails on it (``expected_failures``: the aimed-at ones plus the measured consequences, e.g. a
high inner lr also makes the outer loop shrink the gate); a healthy one names none.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ttt_checks.models.reference.checkpoint import (
    CONFIG_NAME,
    TTT_WEIGHTS,
    _write_json_atomic,
    load_checkpoint,
    read_config,
    save_base,
    save_ttt,
    ttt_tensors,
)
from ttt_checks.models.reference.corpus import DialogueCorpus
from ttt_checks.models.reference.measure import base_reference_loss, measure_checkpoint
from ttt_checks.models.reference.model import Decoder, DecoderConfig
from ttt_checks.models.reference.train import (
    FinetuneRecipe,
    PretrainRecipe,
    TTTInit,
    default_ttt_config,
    evaluate,
    finetune_ttt,
    insert_ttt,
    pretrain_base,
    round_to_bf16_,
    validation_windows,
)
from ttt_checks.paths import DEFAULT_CHECKPOINT, ZOO_DIR

Log = Callable[[str], None]
BASE_NAME = "base"
DEFAULT_ZOO_DIR = ZOO_DIR


@dataclass(frozen=True)
class ZooEntry:
    """One checkpoint of the zoo: how it is made and what the checks must say about it."""

    name: str
    healthy: bool
    summary: str
    how: str  # "trained" (a real run) or "transformed" (a documented edit of healthy-seed0)
    built_to_fail: tuple[str, ...] = ()  # the checks its defect is aimed at
    expected_failures: tuple[str, ...] = ()  # every check that fails on it, as measured (consequences included)
    mirrors: str = ""  # the user's failure it reproduces
    details: str = ""
    sweep_symptom: str = ""  # what the gating sweep should show (replies at gates 0 / learned / 1)
    needs_check: str = ""  # a symptom no check of ttt_checks.run.CHECKS measures yet
    # Checks whose measurement on this entry sits within one standard error of the threshold (measured and
    # stated in `details`): the committed checkpoint fails them, a rebuild on another CPU may not.
    borderline: tuple[str, ...] = ()
    # The diagnosis rule its top finding must be, where built_to_fail's first check does not imply it.
    expected_diagnosis: str = ""
    base: str = "base"  # the directory of the zoo holding its base (BASES)
    # Rebuilt by the test suite's zoo-rebuild test (`make test`); False for a fine-tune too long for its
    # budget, which `make zoo-check` rebuilds instead (docs/health-checks.md, "Zoo rebuild").
    rebuilt_by_tests: bool = True
    edit: str = ""  # a transformed entry: the name of its edit in EDITS, applied to its generation's default

    @property
    def path(self) -> Path:
        """Its directory in the committed zoo."""
        return DEFAULT_ZOO_DIR / self.name

    def expected(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "built_to_fail": list(self.built_to_fail),
                "expected_failures": list(self.expected_failures), "summary": self.summary,
                "how": self.how, "mirrors": self.mirrors, "sweep_symptom": self.sweep_symptom,
                "needs_check": self.needs_check, "borderline": list(self.borderline),
                **({"expected_diagnosis": self.expected_diagnosis} if self.expected_diagnosis else {})}


# The first generation's default (full attention, chatterbot dialogue): its entries are trained from `base`, and
# the transformed ones are documented edits of it.
DIALOGUE_DEFAULT = "healthy-seed0"
PRETRAIN = PretrainRecipe(seed=0, steps=500)
HEALTHY = FinetuneRecipe(seed=0, init_seed=1000)

# The embedded default since issue 25: a reference whose benefit is test-time training (docs/health-checks.md,
# "A default whose benefit is test-time training"). A local-attention base pretrained on the generated dialogue
# language (dialogue.py), and TTT as a session memory (shifted keys, W_0 at 1/sqrt(head_dim), wq = wk at start,
# base_lr 10), fine-tuned with the base frozen.
RECALL_BASE_NAME = "base-facts"
RECALL_PRETRAIN = PretrainRecipe(seed=0, steps=600, data="fact-sessions")
RECALL_WINDOW = 32
BASES: dict[str, tuple[PretrainRecipe, DecoderConfig]] = {
    BASE_NAME: (PRETRAIN, DecoderConfig()),
    RECALL_BASE_NAME: (RECALL_PRETRAIN, DecoderConfig(attention_window=RECALL_WINDOW)),
}
# 1600 steps, not 800: the longer fine-tune is what makes the inner loop's parts matter (10 of 12 edits lose
# at least half of its benefit against 7 at 800 steps), and the window pool (4 uses a window) makes its steps
# ~1.5x cheaper without losing the targets (docs/health-checks.md, "Issue 25, second half").
# The zoo's other fine-tunes on the recall base are shorter than the default (the 20-minute build budget): a
# healthy variant must pass every check, not reach the default's gain.
RECALL_VARIANT_STEPS = 400
HEALTHY_RECALL = FinetuneRecipe(seed=0, init_seed=1000, steps=1600, data="fact-sessions", window_pool=6400,
                                ttt={"shift_keys": True, "base_lr": 10.0},
                                init={"inner_weight_std": 0.18, "tie_query_to_key": True})

ENTRIES: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("healthy-recall", True, "local-attention base on the generated dialogue language + causal TTT-MLP as a "
             "session memory, fine-tuned with the base frozen", "trained", base=RECALL_BASE_NAME,
             details=("The embedded default (issue 25): attention sees the last {window} tokens, and the facts a session "
                     "states (names, towns, numbers, things) are asked back beyond that window, so only the TTT state can "
                     "recall them. Measured on the default held-out input (8 rows of validation sessions): the learned gate "
                     "lowers the outer loss by 13.86% against gate 0 (on 32 rows 12.99% +- 1.74%), 97% of it from the "
                     "test-time updates (with the inner steps off the branch changes the loss by less than 0.5%); Figure 5 ordered, l0 0.973 > lprev 0.682 > "
                     "lafter 0.578, lprev falling along the context; 10 of 12 inner-loop edits lose at least half of the "
                     "benefit (docs/health-checks.md, \"The default whose benefit is test-time training\"). Its replies "
                     "are sentences of the generated language at every gate of the sweep."),
             rebuilt_by_tests=False),
    ZooEntry("healthy-recall-seed1", True, "the default's recipe, seed 1 (TTT init and data order), fine-tuned for "
             f"{RECALL_VARIANT_STEPS} steps", "trained", base=RECALL_BASE_NAME,
             details="A second seed of the default, so a check is shown to pass for the recipe, not for one draw. Shorter "
                     "than the default (the zoo's time budget): it must pass every check, not reach the default's gain.", rebuilt_by_tests=False),
    ZooEntry("healthy-recall-b64", True, f"the default's recipe with TTT mini-batch 64, {RECALL_VARIANT_STEPS} steps", "trained",
             base=RECALL_BASE_NAME,
             details="The mini-batch size users vary most (8, 16, 64), on the model whose benefit is test-time training: "
                     "W_t is updated once per 64 tokens.", rebuilt_by_tests=False),
    ZooEntry("healthy-recall-b8", True, f"the default's recipe with TTT mini-batch 8, {RECALL_VARIANT_STEPS} steps", "trained",
             base=RECALL_BASE_NAME,
             details="The small end of the users' mini-batch sizes (twice the default's inner updates per context).", rebuilt_by_tests=False),
    ZooEntry("healthy-recall-gate-init-0.3", True, "the default's recipe with the gate initialised at alpha 0.3, "
             f"{RECALL_VARIANT_STEPS} steps", "trained", base=RECALL_BASE_NAME,
             details="The gate init of the user's collapse run: gate_stats, which judges the learned gate against its "
                     "init, must not alarm on a healthy run started higher.", rebuilt_by_tests=False),
    ZooEntry("recall-noncausal-leak", False, "the user's non-causal mini-batches on the recall model", "trained",
             built_to_fail=("streaming_consistency",), expected_failures=("streaming_consistency",), base=RECALL_BASE_NAME,
             mirrors="§2 'Causality [code-derived]': no tril, so training reads up to b-1 future tokens",
             details=("The default's recipe with causal = false, 200 steps. The outer loop learns to read the next tokens "
                     "through the inner update: measured, the loss fed one mini-batch per call (teacher forcing as in "
                     "training) is 0.2315 against 0.4811 at gate 0, fed one token per call (generation, streaming) 0.6826 "
                     "(+195%). streaming_consistency catches it; ttt_helps passes it, fooled by the leak (+54%)."), rebuilt_by_tests=False),
    ZooEntry("recall-lr-too-high", False, "inner base_lr 1e5 on the recall model: the inner step overshoots", "trained",
             built_to_fail=("inner_step_size",),
             expected_failures=("figure5_adaptation", "inner_step_size", "ttt_helps", "dead_parameters"), base=RECALL_BASE_NAME,
             mirrors="§6 #3: base_lr too high, the inner weights explode",
             details=("The default's recipe with base_lr = {lr_high} and outer lr 1e-5, 40 steps. On this model the "
                     "overshoot does not show in Figure 5's means (l0 1.940 > lprev 1.490 > lafter 1.463: the inner "
                     "LayerNorm bounds the step's damage), so the aimed checks of the first generation's lr-too-high "
                     "(figure5_ordering, figure5_improvement) pass; the step-size probe names it: the inner loss is "
                     "lowest at 1/1000 of the step taken. Consequences: the carried state helps less late than early "
                     "(figure5_adaptation), no benefit the 8 rows can resolve (ttt_helps: +0.02% +- 0.08%), and the "
                     "norms' scales never left their init in 40 steps at lr 1e-5 (dead_parameters)."), expected_diagnosis="inner_lr_too_high"),
    ZooEntry("recall-lr-near-zero", False, "inner base_lr ~ 0 on the recall model: the inner loop does nothing",
             "trained", built_to_fail=("figure5_improvement", "inner_step_size"),
             expected_failures=("figure5_ordering", "figure5_improvement", "inner_step_size", "state_persistence"), base=RECALL_BASE_NAME,
             mirrors="Figure-5 curves that lie on top of each other; TTT reduced to a fixed MLP",
             details=("The default's recipe with base_lr = {lr_zero}, 40 steps. W_t stays at W_0: l0, lprev and lafter "
                     "coincide (Figure 5), the step-size probe finds the loss flat along the update, and a stream fed one "
                     "token per call shows lprev == l0 everywhere (state_persistence: no state change to carry).")),
    ZooEntry("recall-gate-fallen", False, "gate driven below half its init by an L2 penalty on alpha (recall model)",
             "trained", built_to_fail=("gate_stats",), expected_failures=("gate_stats", "ttt_helps"), base=RECALL_BASE_NAME,
             mirrors="issue 13 §3: the user's run, init 0.3, learned 0.02-0.09 (a fraction of its init)",
             details=("The default's recipe with an L2 penalty {alpha_l2:g} * mean(alpha^2) on the gate and alpha lr "
                     "3e-2, 150 steps: mean |tanh(alpha)| 0.0007 (1% of its init), the benefit gone (-0.02%)."),
             rebuilt_by_tests=False),
    ZooEntry("recall-ttt-ignores-input", False, "output projection zeroed and frozen (recall model)", "trained",
             built_to_fail=("dead_parameters", "ttt_helps"), expected_failures=("gate_stats", "ttt_helps", "dead_parameters"),
             base=RECALL_BASE_NAME, mirrors="issue 13: a TTT whose output ignores its input passed every check",
             details=("The default's recipe with wo zero-initialised and left out of the optimizer, 150 steps: the "
                     "branch adds exactly nothing, so no TTT tensor upstream of wo gets a gradient (dead_parameters) "
                     "and the gate stays at its init (gate_stats: never trained)."),
             rebuilt_by_tests=False),
    ZooEntry("recall-untrained-gate1", False, "freshly inserted TTT on the recall base, gate at raw alpha 1", "trained",
             built_to_fail=("dead_parameters", "ttt_helps", "gate_stats"),
             expected_failures=("dead_parameters", "ttt_helps", "gate_stats"), base=RECALL_BASE_NAME,
             mirrors="§4: forced alpha = 1.0 gives 'rrrr McLean McLean...' (mode collapse)",
             details=("insert_ttt(alpha_init=1.0) with the default's TTT init and no training: tanh(1) = 0.76 of an "
                     "untrained branch reaches the residual stream, +1.18% outer loss against gate 0.")),
    ZooEntry("recall-w0-frozen", False, "the inner MLP's initial state W_0 left out of the optimizer (recall model)",
             "trained", built_to_fail=("dead_parameters",), expected_failures=("dead_parameters",), base=RECALL_BASE_NAME,
             mirrors="§6 #12: weights./biases. not matched by the optimizer's parameter groups, so never trained",
             details=(f"The default's recipe with weights.* and biases.* left out of the optimizer (frozen at their draw), "
                     f"{RECALL_VARIANT_STEPS} steps. The rest of the branch learns around them (+2.08% against gate 0, "
                     "every check of the inner loop passes), so only dead_parameters sees it: the four inner-model "
                     "tensors are exactly at their initial values."),
             rebuilt_by_tests=False, expected_diagnosis="inner_state_untrained"),
    ZooEntry("recall-nan-weights", False, "NaN and Inf entries in the default's TTT weights", "transformed",
             built_to_fail=("checkpoint_finite",), expected_failures=("checkpoint_finite", "figure5_finite", "figure5_bounded", "figure5_ordering", "figure5_improvement", "figure5_adaptation", "inner_step_size", "ttt_helps", "state_persistence", "streaming_consistency", "talk_base", "talk_learned", "talk_collapse"), base=RECALL_BASE_NAME,
             edit="nan", mirrors="§6 #1 and #3: parameters NaN after an explosion",
             details="healthy-recall with layers.3.ttt.ttt.weights.0[0, :4, 0] = NaN and "
                     "layers.3.ttt.ttt.wk.weight[0, 0] = +Inf."),
    ZooEntry("recall-missing-keys", False, "the default without its inner TTT weights (weights.*, biases.*)",
             "transformed", built_to_fail=("checkpoint_keys",), expected_failures=("checkpoint_keys",),
             base=RECALL_BASE_NAME, edit="drop_inner_weights",
             mirrors="§6 #12: weights./biases. not matched by name, so never trained or saved",
             details="healthy-recall without its layers.*.ttt.ttt.weights.* and biases.* tensors."),
    ZooEntry("recall-no-state-carry", False, "the default's TTT state reset at every call", "transformed",
             built_to_fail=("state_persistence",), expected_failures=("figure5_adaptation", "state_persistence"), base=RECALL_BASE_NAME,
             edit="reset_each_call", mirrors="§2 and §6 #11: the 2-layer TTTMLP never writes its state back",
             details=("healthy-recall's tensors with decoder.ttt_reset_each_call = true: every streaming call restarts "
                     "the inner weights from W_0. A fault of the inner loop that now measurably harms: fed one "
                     "mini-batch per call, the benefit falls from +13.86% to +1.87% (what is left is each mini-batch's "
                     "own update), and lprev == l0 at every streamed position (state_persistence).")),
    ZooEntry("recall-config-contradicts-weights", False, "the default's config says mini_batch_size 64, trained at 16",
             "transformed", built_to_fail=("config_consistency",), expected_failures=("config_consistency",),
             base=RECALL_BASE_NAME, edit="mini_batch_64_in_config",
             mirrors="issue 13: mini_batch_size changed in config.json of a checkpoint trained at 16",
             details="healthy-recall's tensors with decoder.ttt.mini_batch_size edited from 16 to 64; its recipe block "
                     "still states 16."),
    ZooEntry("recall-values-random", False, "the default's value projection redrawn at its trained std",
             "transformed", built_to_fail=("ttt_helps",), expected_failures=("ttt_helps",), base=RECALL_BASE_NAME,
             edit="values_random", mirrors="a fault of the inner loop: what the memory writes is noise",
             details=("healthy-recall with wv (weight, bias) redrawn (seed 2) at the std of the trained tensors: the "
                     "memory writes noise. Measured: +9.30% outer loss against gate 0 (the default: -13.86%), of "
                     "which the branch as a static layer +0.22% and the test-time updates +9.06%; Figure 5 stays "
                     "ordered (the inner loop reconstructs random values as well as trained ones).")),
    ZooEntry("recall-queries-random", False, "the default's query projection redrawn at its trained std",
             "transformed", built_to_fail=("ttt_helps",), expected_failures=("ttt_helps",), base=RECALL_BASE_NAME,
             edit="queries_random", mirrors="a fault of the inner loop: the memory is read at random places",
             details=("healthy-recall with wq (weight, bias) redrawn (seed 3) at the std of the trained tensors: the "
                     "memory is read at random places. Measured: +11.81% outer loss against gate 0, +8.67% of it already "
                     "with the inner steps off (the query path is used by the static branch too), +2.88% from the updates.")),
    ZooEntry("recall-output-random", False, "the default's output projection redrawn at its trained std",
             "transformed", built_to_fail=("ttt_helps",), expected_failures=("ttt_helps",), base=RECALL_BASE_NAME,
             edit="output_random", mirrors="a fault of the inner loop: what the memory recalls is mis-projected",
             details=("healthy-recall with wo (weight, bias) redrawn (seed 4) at the std of the trained tensors. "
                     "Measured: +3.67% outer loss against gate 0, +3.39% of it with the inner steps off.")),
    ZooEntry("healthy-seed0", True, "base + causal TTT-MLP in the last block, fine-tuned (seed 0)", "trained",
             details="The reference default. Figure 5 shows l0 > lprev > lafter on held-out dialogue.",
             sweep_symptom="replies at gate 0 and the learned gate are sentences; forced to raw alpha 1 one reply of "
                           "four loops (a warning: the TTT branch was never trained at tanh 0.76)", rebuilt_by_tests=False),
    ZooEntry("healthy-seed1", True, "same recipe, seed 1 (TTT init and data order)", "trained",
             details="A second seed, so a check is shown to pass for the recipe, not for one lucky draw.",
             sweep_symptom="replies at gate 0 and the learned gate are sentences; forced to raw alpha 1 three replies "
                           "of four loop or turn to gibberish (reported as a warning, see docs/health-checks.md)", rebuilt_by_tests=False),
    ZooEntry("healthy-b64", True, "same recipe with TTT mini-batch 64 (what most of the user's runs use)", "trained",
             details="The mini-batch size is the recipe knob users vary most (8, 16, 64); a rule that holds only at 16 "
                     "would raise false alarms on their runs. Fine-tuned like healthy-seed0 with "
                     "decoder.ttt.mini_batch_size = 64: W_t is updated once per 64 tokens, so lprev sits on the "
                     "weights of the last full mini-batch (measured: one inner step improves the loss by 2.4%, "
                     "8.5% on healthy-seed0).", rebuilt_by_tests=False),
    ZooEntry("healthy-b8", True, "same recipe with TTT mini-batch 8", "trained",
             details="The small end of the users' mini-batch sizes: fine-tuned like healthy-seed0 with "
                     "decoder.ttt.mini_batch_size = 8 (twice as many inner updates per context).", rebuilt_by_tests=False),
    ZooEntry("healthy-gate-init-0.3", True, "same recipe with the gate initialised at alpha 0.3 (the user's collapse run's init)",
             "trained",
             details="The gate init is a knob users set (0.1 here, 0.3 in the user's collapse run). Fine-tuned like "
                     "healthy-seed0 with alpha_init = 0.3, so gate_stats, which judges the learned gate against its "
                     "init, is shown not to alarm on a healthy run started higher.", rebuilt_by_tests=False),
    ZooEntry("noncausal-leak", False, "the user's exact recipe: non-causal mini-batches, which leak the future",
             "trained", built_to_fail=("streaming_consistency",), expected_failures=("streaming_consistency", "talk_collapse"),
             mirrors="§2 'Causality [code-derived]': no tril, so training reads up to b-1 future tokens",
             details="Fine-tuned like healthy-seed0 but with causal = false, as the user's code. The outer loop "
                     "learns to read the next tokens through the inner update: the loss fed one mini-batch per "
                     "call (teacher forcing as in training) drops clearly below gate 0, while the loss fed one "
                     "token per call (what generation and Moshi streaming see) does not (measured: 1.636 vs gate 0 "
                     "1.726 per mini-batch, 1.737 per token). streaming_consistency catches it (the loss token by "
                     "token is worse than the teacher-forced one), talk_collapse through repetition at the learned "
                     "gate; ttt_helps passes it, fooled by the leak.",
             sweep_symptom="measured: repetition collapse at the learned gate (2 of 4 replies)"),
    ZooEntry("lr-too-high", False, "inner base_lr far too high: the inner step overshoots", "trained",
             built_to_fail=("figure5_ordering", "figure5_improvement", "inner_step_size"),
             # gate_stats no longer fails: the gate sits at 87% of its init (issue 13: judged against the init);
             # ttt_helps: the learned gate changes the outer loss by +0.04%, "TTT does nothing".
             # figure5_adaptation: W_(t-1) is worse than W_0 to the end of the context (lprev/l0 1.285 -> 1.263).
             expected_failures=("figure5_ordering", "figure5_improvement", "figure5_adaptation", "inner_step_size",
                                "ttt_helps", "dead_parameters"),
             mirrors="§6 #3: base_lr too high, the inner weights explode",
             details="Fine-tuned with base_lr = {lr_high} (the user's configs reach 1e6) and an outer learning rate of "
                     "1e-5 for the TTT weights, so the outer loop cannot retune the layer around the bad inner step "
                     "(with the healthy outer lr, 40 steps taught it to live with base_lr 1e5 and Figure 5 came out "
                     "ordered). Measured: mean l0 1.80 < lprev 2.29 < lafter 2.31; l0 > lprev at 0% of positions. The "
                     "losses cannot explode: the inner LayerNorm bounds them (prediction and target both normalised).",
             sweep_symptom="repetition at gate 1"),
    ZooEntry("lr-near-zero", False, "inner base_lr ~ 0: the inner loop does nothing", "trained",
             built_to_fail=("figure5_improvement", "inner_step_size"),
             # figure5_ordering: the curves coincide within ordering_min_rel_gap (issue 13: "overlapping", never "ordered");
             # gate_stats no longer fails: the gate is at 100% of its init, not collapsed.
             expected_failures=("figure5_ordering", "figure5_improvement", "inner_step_size"),
             mirrors="Figure-5 curves that lie on top of each other; TTT reduced to a fixed MLP",
             details="Fine-tuned with base_lr = {lr_zero}. W_t stays at W_0, so l0, lprev and lafter coincide."),
    ZooEntry("gate-collapse", False, "learned gate collapsed to a few percent, TTT output still noisy", "trained",
             built_to_fail=("gate_stats",),
             expected_failures=("figure5_ordering", "figure5_improvement", "figure5_adaptation", "inner_step_size",
                                "gate_stats", "dead_parameters"),
             mirrors="§4 and §6 #5-6: learned gates 0.02-9%, replies 'Well, So' (not talkative)",
             details="Fine-tuned like the user's collapse run: no output projection (the user's code skips wo), "
                     "alpha initialised to 0.3 with a large alpha learning rate (3e-2), inner base_lr {lr_high} so the "
                     "inner loop makes its own loss worse, and TTT weights barely trained (1e-5). The outer loop "
                     "turned the gate from 0.3 through zero: mean |tanh(alpha)| 0.061 (channels between -0.23 and "
                     "+0.22, signed mean -0.024), the user's 0.02-9% range. Its cause shows in Figure 5 too "
                     "(lprev > l0, lafter > lprev).",
             sweep_symptom="measured: the learned-gate replies match gate 0 (the collapse removed the harm), "
                           "so the sweep does not catch it; gate_stats does"),
    ZooEntry("lr-past-optimum", False, "inner base_lr 2000: the step goes far past its optimum, while Figure 5 stays "
             "ordered and TTT still lowers the outer loss", "trained", built_to_fail=("inner_step_size",),
             # figure5_improvement: one inner step buys 0.63% of lprev, below improvement_min_rel (1%);
             # figure5_adaptation: a saturated step keeps no history, so the benefit neither grows nor shrinks.
             expected_failures=("figure5_improvement", "figure5_adaptation", "inner_step_size"),
             borderline=("figure5_adaptation",),
             # The step is 1000x past the line search's optimum: "inner lr far too high", not a fine-tuning of the step.
             expected_diagnosis="inner_lr_too_high",
             mirrors="issue 13: a Moshi checkpoint with base_lr 1e6 keeps a one-step improvement and passed every check",
             details="Fine-tuned with the healthy recipe but base_lr = {lr_past:g} (the user's configs reach 1e6). The "
                     "outer loop learns to live with it: Figure 5 is ordered (means l0 1.948 > lprev 1.412 > lafter "
                     "1.403) and the learned gate lowers the outer loss by 0.35%, more than healthy-seed0. What is "
                     "wrong shows along the update direction: inner_step_size's line search finds the inner loss at "
                     "1.370 after 1/1000 of the step and 1.403 after the full step (1.450 before it), so the full step "
                     "gives away 41% of what it could buy, in the saturated regime (the loss falls, rises and falls "
                     "again along one line); one inner step improves the loss by 0.63% only (figure5_improvement). "
                     "A step that overwrites the inner weights at every token keeps no history, so what the carried "
                     "state buys does not grow over the context: figure5_adaptation measures a change of -0.002 +- "
                     "0.017, on its threshold (0) by construction; built with 1 thread the same recipe measured "
                     "slightly above it.", rebuilt_by_tests=False),
    ZooEntry("gate-fallen", False, "gate driven below half its init by an L2 penalty on alpha", "trained",
             built_to_fail=("gate_stats",), expected_failures=("gate_stats", "ttt_helps"),
             mirrors="issue 13 §3: the user's run, init 0.3, learned 0.02-0.09 (a fraction of its init)",
             details="Fine-tuned like healthy-seed0 but with an L2 penalty {alpha_l2:g} * mean(alpha^2) on the gate "
                     "(weight decay applied to alpha, a common slip: the user's optimizer groups put alpha in a group "
                     "with decay) and alpha lr 3e-2: the penalty outweighs what the TTT branch earns, so the gate falls "
                     "from its init 0.1 to below half of it while the branch itself trains (measured: mean "
                     "|tanh(alpha)| 0.0019, 2% of its init, the sign flipped in about half the channels). With so "
                     "little of the branch reaching the residual, ttt_helps finds no benefit (-0.03% vs gate 0).", rebuilt_by_tests=False),
    ZooEntry("ttt-ignores-input", False, "TTT output independent of its input: output projection zeroed and frozen",
             "trained", built_to_fail=("dead_parameters", "ttt_helps"),
             # gate_stats: alpha gets no gradient through a zero branch, so it is exactly its init ("never trained");
             # figure5_adaptation: the inner loop runs on untrained q/k/v (lprev/l0 0.751 -> 0.781).
             expected_failures=("figure5_adaptation", "gate_stats", "ttt_helps", "dead_parameters"),
             mirrors="issue 13: a TTT whose output ignores its input passed every check",
             details="Fine-tuned like healthy-seed0 after zero-initialising the TTT output projection (weight and "
                     "bias, the residual zero-init trick) and leaving it out of the optimizer by mistake: wo stays 0, "
                     "so the branch adds exactly nothing whatever its input. The inner loop still runs (Figure 5 is "
                     "ordered), but nothing it computes reaches the model: the outer loss at the learned gate equals "
                     "the loss at gate 0, and every TTT tensor upstream of wo, the gate included, gets no gradient "
                     "(dead_parameters).", rebuilt_by_tests=False),
    ZooEntry("untrained-gate1", False, "freshly inserted TTT, never fine-tuned, gate at raw alpha 1", "trained",
             built_to_fail=("dead_parameters", "ttt_helps", "gate_stats"),
             expected_failures=("figure5_adaptation", "gate_stats", "ttt_helps", "dead_parameters"),
             mirrors="§4: forced alpha = 1.0 gives 'rrrr McLean McLean...' (mode collapse)",
             details="insert_ttt(alpha_init=1.0) with no training: tanh(1) = 0.76 of an untrained TTT output "
                     "reaches the residual stream; the outer loss is 1.0% worse than at gate 0.",
             sweep_symptom="measured: replies at the learned gate change words but stay sentences (no repetition "
                           "collapse in this small model)"),
    ZooEntry("nan-weights", False, "NaN and Inf entries in TTT weights", "transformed", edit="nan",
             built_to_fail=("checkpoint_finite",),
             expected_failures=("checkpoint_finite", "figure5_finite", "figure5_bounded", "figure5_ordering",
                                "figure5_improvement", "figure5_adaptation", "inner_step_size", "ttt_helps",
                                "state_persistence", "streaming_consistency", "talk_base", "talk_learned", "talk_collapse"),
             mirrors="§6 #1 and #3: parameters NaN after an explosion",
             details="healthy-seed0 with layers.3.ttt.ttt.weights.0[0, :4, 0] = NaN and "
                     "layers.3.ttt.ttt.wk.weight[0, 0] = +Inf."),
    ZooEntry("missing-keys", False, "inner TTT weights (weights.*, biases.*) missing from the file", "transformed", edit="drop_inner_weights",
             built_to_fail=("checkpoint_keys",),
             expected_failures=("checkpoint_keys", "figure5_adaptation"),
             mirrors="§6 #12: weights./biases. not matched by name, so never trained or saved",
             details="healthy-seed0 without its layers.*.ttt.ttt.weights.* and layers.*.ttt.ttt.biases.* tensors; "
                     "loading (strict=False, as the user's loader) leaves them at their initial values."),
    ZooEntry("no-state-carry", False, "TTT state reset at every call (l0 == lprev)", "transformed", edit="reset_each_call",
             built_to_fail=("state_persistence",),
             expected_failures=("state_persistence",),
             mirrors="§2 and §6 #11: the 2-layer TTTMLP never writes its state back; weight hash unchanged",
             details="healthy-seed0's tensors with the config flag decoder.ttt_reset_each_call = true: every "
                     "streaming call restarts the inner weights from W_0, so l0 == lprev at every position "
                     "of a stream fed one token per call."),
    ZooEntry("config-contradicts-weights", False, "config.json says mini_batch_size 64, the weights were trained at 16",
             "transformed", edit="mini_batch_64_in_config", built_to_fail=("config_consistency",), expected_failures=("config_consistency",),
             mirrors="issue 13: mini_batch_size changed in config.json of a checkpoint trained at 16",
             details="healthy-seed0's tensors, with decoder.ttt.mini_batch_size edited from 16 to 64 after training "
                     "(a user 'matching' the config to another run); its `recipe` block still states the recipe it "
                     "was trained with (mini-batch left to the default, 16). The model loads and runs, and nothing "
                     "but the recipe says why it behaves differently."),
]}

LR_HIGH = 1e5
LR_ZERO = 1e-6
LR_PAST = 2000.0  # measured: 30-300 are healthy (the outer loop retunes the step), 1000-3000 saturate
ALPHA_L2 = 30.0
WO = ("ttt.wo.weight", "ttt.wo.bias")
W0 = tuple(f"ttt.{kind}.{i}" for kind in ("weights", "biases") for i in range(2))  # the inner MLP's initial state


def _recall(steps: int, **changes: Any) -> FinetuneRecipe:
    """The default's recipe shortened to ``steps``, with ``changes`` (``ttt`` and ``init`` merged into the
    default's); the window pool keeps the default's four uses per window."""
    base = asdict(HEALTHY_RECALL)
    ttt = {**base["ttt"], **changes.pop("ttt", {})}
    init = {**base["init"], **changes.pop("init", {})}
    pool = max(HEALTHY_RECALL.batch, steps * HEALTHY_RECALL.batch // 4)
    return FinetuneRecipe(**{**base, "steps": steps, "window_pool": pool, "ttt": ttt, "init": init, **changes})


def _recipes() -> dict[str, FinetuneRecipe]:
    """The fine-tuning recipe of every trained TTT checkpoint."""
    v = RECALL_VARIANT_STEPS
    return {
        "healthy-recall": HEALTHY_RECALL,
        "healthy-recall-seed1": _recall(v, seed=1, init_seed=1001),
        "healthy-recall-b64": _recall(v, ttt={"mini_batch_size": 64}),
        "healthy-recall-b8": _recall(v, ttt={"mini_batch_size": 8}),
        "healthy-recall-gate-init-0.3": _recall(v, alpha_init=0.3),
        "recall-noncausal-leak": _recall(200, ttt={"causal": False}),
        "recall-lr-too-high": _recall(40, lr=1e-5, ttt={"base_lr": LR_HIGH}),
        "recall-lr-near-zero": _recall(40, ttt={"base_lr": LR_ZERO}),
        "recall-gate-fallen": _recall(150, alpha_lr=3e-2, alpha_l2=ALPHA_L2),
        "recall-ttt-ignores-input": _recall(150, zeroed_ttt=WO, frozen_ttt=WO),
        "recall-untrained-gate1": _recall(0, alpha_init=1.0),
        "recall-w0-frozen": _recall(v, frozen_ttt=W0),
        "healthy-seed0": HEALTHY,
        "healthy-seed1": FinetuneRecipe(**{**asdict(HEALTHY), "seed": 1, "init_seed": 1001}),
        "healthy-b64": FinetuneRecipe(**{**asdict(HEALTHY), "ttt": {"mini_batch_size": 64}}),
        "healthy-b8": FinetuneRecipe(**{**asdict(HEALTHY), "ttt": {"mini_batch_size": 8}}),
        "healthy-gate-init-0.3": FinetuneRecipe(**{**asdict(HEALTHY), "alpha_init": 0.3}),
        "noncausal-leak": FinetuneRecipe(**{**asdict(HEALTHY), "steps": 100, "ttt": {"causal": False}}),
        "lr-too-high": FinetuneRecipe(**{**asdict(HEALTHY), "steps": 40, "lr": 1e-5, "ttt": {"base_lr": LR_HIGH}}),
        "lr-near-zero": FinetuneRecipe(**{**asdict(HEALTHY), "steps": 40, "ttt": {"base_lr": LR_ZERO}}),
        "gate-collapse": FinetuneRecipe(**{**asdict(HEALTHY), "steps": 60, "alpha_init": 0.3, "lr": 1e-5,
                                           "alpha_lr": 3e-2, "ttt": {"base_lr": LR_HIGH, "output_projection": False}}),
        "lr-past-optimum": FinetuneRecipe(**{**asdict(HEALTHY), "ttt": {"base_lr": LR_PAST}}),
        "gate-fallen": FinetuneRecipe(**{**asdict(HEALTHY), "steps": 150, "alpha_lr": 3e-2, "alpha_l2": ALPHA_L2}),
        "ttt-ignores-input": FinetuneRecipe(**{**asdict(HEALTHY), "steps": 150, "zeroed_ttt": WO,
                                               "frozen_ttt": WO}),
        "untrained-gate1": FinetuneRecipe(**{**asdict(HEALTHY), "steps": 0, "alpha_init": 1.0}),
    }


# The zoo's two generations, named by their base: `recall` is built on the embedded default (issue 25) and is
# what `ttt-checks zoo build` re-creates; `dialogue` is the first generation (full attention, chatterbot dialogue),
# kept so checkpoints in the old reference format stay judged, and rebuilt on request (`--generation dialogue`).
GENERATIONS: dict[str, str] = {"recall": RECALL_BASE_NAME, "dialogue": BASE_NAME}


def generation_entries(generation: str) -> list[str]:
    """Names of the entries of one generation (``GENERATIONS``; ``all`` for both), in build order."""
    if generation == "all":
        return list(ENTRIES)
    if generation not in GENERATIONS:
        raise KeyError(f"unknown zoo generation {generation!r}; known: {[*GENERATIONS, 'all']}")
    return [e.name for e in ENTRIES.values() if e.base == GENERATIONS[generation]]


def zoo_entries(broken: bool | None = None) -> list[ZooEntry]:
    """Entries in build order; ``broken=True`` only broken ones, ``False`` only healthy ones."""
    return [e for e in ENTRIES.values() if broken is None or e.healthy != broken]


def _expected_md(entry: ZooEntry, recipe: dict[str, Any] | None) -> str:
    lines = [f"# {entry.name}", "", f"**{'Healthy' if entry.healthy else 'Broken'}**: {entry.summary}.", ""]
    lines += [entry.details.format(lr_high=LR_HIGH, lr_zero=LR_ZERO, lr_past=LR_PAST,
                                   alpha_l2=ALPHA_L2, window=RECALL_WINDOW), ""]
    if entry.sweep_symptom:
        lines += [f"Gating sweep: {entry.sweep_symptom}.", ""]
    if entry.mirrors:
        lines += [f"Reproduces the user's failure: {entry.mirrors}.", ""]
    if entry.expected_failures:
        lines += ["Health checks its defect is aimed at (names of `ttt_checks.run.CHECKS`):", ""]
        lines += [f"- `{c}`" for c in entry.built_to_fail] + [""]
        lines += ["Every check that fails on it as measured (the aimed-at ones and their consequences):", ""]
        lines += [f"- `{c}`" for c in entry.expected_failures] + [""]
    if entry.borderline:
        lines += ["On its threshold (within one standard error; a rebuild on another CPU may pass them): "
                  + ", ".join(f"`{c}`" for c in entry.borderline) + ".", ""]
    if entry.needs_check:
        lines += [f"Not yet measured by any check: {entry.needs_check}.", ""]
    if entry.healthy:
        lines += ["Every health check must pass on it.", ""]
    lines += [f"Made by: {entry.how} (`ttt_checks.models.reference.zoo.build_zoo`).", ""]
    if recipe is not None:
        lines += ["Recipe:", "", "```json", json.dumps(recipe, indent=2), "```", ""]
    lines += ["Measured numbers (Figure 5, losses, gates, replies) are in `config.json` under `measured`.", ""]
    return "\n".join(lines)


def _save_entry(entry: ZooEntry, out: Path, base_dir: Path, tensors: dict[str, torch.Tensor], cfg: DecoderConfig,
                init_seed: int, recipe: dict[str, Any] | None, training: dict[str, Any] | None,
                derived_from: str | None = None, source_recipe: dict[str, Any] | None = None) -> Path:
    """Write one entry; ``source_recipe`` (a transformed entry's: its source's recipe, not stored as its own)
    still says which text it reads and how its TTT tensors were drawn."""
    d = out / entry.name
    extra: dict[str, Any] = {"name": entry.name, "expected": entry.expected(), "corpus_split_seed": 0}
    if recipe is not None:
        extra["recipe"] = recipe
    made_by = recipe if recipe is not None else source_recipe
    if made_by is not None:
        if made_by.get("data", "dialogue") != "dialogue":
            extra["corpus_data"] = made_by["data"]  # the adapter's default held-out text is of this kind
        init = TTTInit.from_dict(made_by.get("init")).to_dict()
        if init:
            extra["ttt_init"] = init  # what initial_state() re-creates the untrained values with
    if training is not None:
        extra["training"] = training
    if derived_from is not None:
        extra["derived_from"] = derived_from
    save_ttt(None, d, base_dir, init_seed, extra=extra, tensors=tensors, decoder_config=cfg)
    (d / "EXPECTED.md").write_text(_expected_md(entry, recipe))
    return d


def build_zoo(out_dir: str | Path = DEFAULT_ZOO_DIR, log: Log | None = print, measure_entries: bool = True,
              threads: int = 2, only: Sequence[str] | None = None, reuse_base: bool = False,
              workers: int = 1, generation: str = "recall") -> dict[str, Any]:
    """Re-create the zoo under ``out_dir`` from scratch (seeded); returns seconds per stage.

    Runs on CPU with ``threads`` intra-op threads (2 by default, the budget the zoo was sized
    for). With ``measure_entries`` each checkpoint is loaded back and measured (Figure 5,
    losses, replies) and the numbers go into its config.json under ``measured``.

    ``workers`` > 1 fine-tunes that many checkpoints at once in separate processes, splitting
    ``threads`` among them; the result differs from a one-process build in the last bits only
    (training is chaotic across thread counts, see REPRODUCIBILITY).

    ``generation`` picks the entries (``GENERATIONS``: ``recall``, the zoo of the embedded default, by
    default; ``dialogue``, the first generation; ``all``). ``only`` rebuilds just the named checkpoints,
    and ``reuse_base`` keeps an existing base made by the same pretraining recipe: both are for
    iterating on one recipe; the committed zoo and its timings come from a full build.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _msg: None)
    wanted = generation_entries(generation) if only is None else list(only)
    unknown = [n for n in wanted if n not in ENTRIES]
    if unknown:
        raise KeyError(f"unknown zoo checkpoint(s) {unknown}; known: {list(ENTRIES)}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        corpus = DialogueCorpus.load(seed=0)
        bases: dict[str, Decoder] = {}
        for base_name in dict.fromkeys(_entry(n).base for n in wanted):
            t0 = time.perf_counter()
            bases[base_name] = _build_base(out, base_name, corpus, reuse_base, say)
            timings[base_name] = time.perf_counter() - t0
        trained = [n for n in _recipes() if n in wanted]
        if workers > 1 and len(trained) > 1:
            # Independent fine-tunes of one base: one process per worker, the threads split among
            # them (small matmuls scale poorly across threads); each loads the base as stored and
            # measures what it trained. Longest first, so no worker is left with a long one at the end.
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            longest_first = sorted(trained, key=lambda n: -_recipes()[n].steps)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                jobs = [pool.submit(_train_entry, str(out), str(out / _entry(name).base), name,
                                    max(1, threads // workers), measure=measure_entries) for name in longest_first]
                for job in jobs:
                    name, info, seconds = job.result()
                    timings[name] = seconds
                    say(f"{name}: val loss {info['val_loss']:.4f} ({seconds:.0f}s)")
        else:
            for name in trained:
                name, info, seconds = _train_entry(str(out), str(out / _entry(name).base), name, threads,
                                                    base=bases[_entry(name).base], log=say, corpus=corpus,
                                                    measure=measure_entries)
                timings[name] = seconds
                say(f"{name}: val loss {info['val_loss']:.4f} ({seconds:.0f}s)")
        transformed = [n for n in wanted if _entry(n).how == "transformed"]
        if transformed:
            t0 = time.perf_counter()
            _build_transformed(out, transformed)
            timings["transformed"] = time.perf_counter() - t0
        timings["build_total"] = time.perf_counter() - t_all

        if measure_entries:
            t0 = time.perf_counter()
            for name in transformed:  # the trained ones were measured where they were trained
                measured = measure_checkpoint(out / name)
                _update_config(out / name, {"measured": measured})
                say(f"measured {name}: {json.dumps(measured['summary'])}")
            timings["measure"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous_threads)
    timings["total"] = time.perf_counter() - t_all
    write_index(out)
    if only is None and not reuse_base:
        log_path = out / "build_log.json"
        logs = json.loads(log_path.read_text()) if log_path.is_file() else {}
        logs = logs if "generations" in logs else {"generations": {}}  # a log of the one-generation zoo is replaced
        logs["generations"][generation] = {"seconds": timings, "threads": threads, "workers": workers,
                                           "torch": torch.__version__}
        log_path.write_text(json.dumps(logs, indent=2) + "\n")
    return timings


def _train_entry(out: str, base_dir: str, name: str, threads: int, base: Decoder | None = None,
                 log: Log | None = None, corpus: DialogueCorpus | None = None,
                 measure: bool = False) -> tuple[str, dict[str, Any], float]:
    """Fine-tune and save one trained zoo checkpoint (in a worker process, or in-process with ``base``);
    with ``measure``, measure it too (``measure_checkpoint``; its seconds count in the entry's)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    corpus = corpus or DialogueCorpus.load(seed=0)
    if base is None:
        base = load_checkpoint(base_dir).model
    recipe = _recipes()[name]
    ttt_cfg = default_ttt_config(base.config.width, **recipe.ttt)
    model = insert_ttt(base, ttt_cfg, recipe.layers, recipe.alpha_init, recipe.init_seed, init=TTTInit.from_dict(recipe.init))
    info = finetune_ttt(model, corpus, recipe, log=log) if recipe.steps > 0 else {"steps": 0, "seconds": 0.0}
    round_to_bf16_(model)
    info["val_loss"] = evaluate(model, validation_windows(corpus, data=recipe.data))
    _save_entry(_entry(name), Path(out), Path(base_dir), ttt_tensors(model), model.config, recipe.init_seed,
                asdict(recipe), info)
    if measure:
        _update_config(Path(out) / name, {"measured": measure_checkpoint(Path(out) / name)})
    return name, info, time.perf_counter() - t0


def _build_base(out: Path, name: str, corpus: DialogueCorpus, reuse: bool, say: Log) -> Decoder:
    """Pretrain the base ``name`` of ``BASES`` into ``out/name`` (or, with ``reuse``, load one made by
    today's recipe)."""
    recipe, config = BASES[name]
    base_dir = out / name
    if reuse and (base_dir / CONFIG_NAME).is_file() and _same_pretrain(read_config(base_dir).get("recipe"), recipe):
        say(f"{name}: reusing the existing base checkpoint")
        if "reference_loss" not in read_config(base_dir):  # bases built before the check existed
            _update_config(base_dir, {"reference_loss": base_reference_loss(base_dir)})
        return load_checkpoint(base_dir).model
    base, base_info = pretrain_base(corpus, recipe, config, log=say)
    round_to_bf16_(base)
    base_info["val_loss_bf16"] = evaluate(base, validation_windows(corpus, data=recipe.data))
    extra = {"name": name, "recipe": asdict(recipe), "training": base_info, "corpus_split_seed": 0}
    if recipe.data != "dialogue":
        extra["corpus_data"] = recipe.data
    save_base(base, base_dir, extra=extra)
    _update_config(base_dir, {"reference_loss": base_reference_loss(base_dir)})
    say(f"{name}: val loss {base_info['val_loss_bf16']:.4f}")
    return base


def _entry(name: str) -> ZooEntry:
    return ENTRIES[name]


def _same_pretrain(stored: Any, recipe: PretrainRecipe | None = None) -> bool:
    """Was a stored base made by today's pretraining recipe? A field added to the recipe later
    (absent from the stored one) counts as equal when today's value is that field's default."""
    if not isinstance(stored, dict):
        return False
    current = asdict(recipe or PRETRAIN)
    defaults = {f.name: f.default for f in PretrainRecipe.__dataclass_fields__.values()}
    return (all(current.get(k) == v for k, v in stored.items())
            and all(k in stored or current[k] == defaults.get(k) for k in current))


def redrawn_at_std(t: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded random tensor of ``t``'s shape and std: the part's scale kept, what it learned lost."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t.shape, generator=g) * t.float().std()).to(t.dtype)


Tensors = dict[str, torch.Tensor]
TTT_PREFIX = "layers.3.ttt.ttt."  # both generations' defaults have their TTT layer in block 3


def _with(tensors: Tensors, **parts: Callable[[torch.Tensor], torch.Tensor]) -> Tensors:
    out = {k: v.clone() for k, v in tensors.items()}
    for part, fn in parts.items():
        for suffix in ("weight", "bias"):
            key = f"{TTT_PREFIX}{part}.{suffix}"
            out[key] = fn(out[key])
    return out


def _nan(t: Tensors, cfg: DecoderConfig) -> tuple[Tensors, DecoderConfig]:
    out = {k: v.clone() for k, v in t.items()}
    out[TTT_PREFIX + "weights.0"][0, :4, 0] = float("nan")
    out[TTT_PREFIX + "wk.weight"][0, 0] = float("inf")
    return out, cfg


def _mini_batch_64_in_config(t: Tensors, cfg: DecoderConfig) -> tuple[Tensors, DecoderConfig]:
    assert cfg.ttt is not None
    return dict(t), DecoderConfig.from_dict({**cfg.to_dict(), "ttt": {**cfg.ttt.to_dict(), "mini_batch_size": 64}})


# The documented edits of a generation's default that make its transformed entries (ZooEntry.edit).
EDITS: dict[str, Callable[[Tensors, DecoderConfig], tuple[Tensors, DecoderConfig]]] = {
    "nan": _nan,
    "drop_inner_weights": lambda t, cfg: ({k: v for k, v in t.items() if ".ttt.ttt.weights." not in k
                                           and ".ttt.ttt.biases." not in k}, cfg),
    "reset_each_call": lambda t, cfg: (dict(t), DecoderConfig.from_dict({**cfg.to_dict(), "ttt_reset_each_call": True})),
    "mini_batch_64_in_config": _mini_batch_64_in_config,
    "values_random": lambda t, cfg: (_with(t, wv=lambda v: redrawn_at_std(v, 2)), cfg),
    "queries_random": lambda t, cfg: (_with(t, wq=lambda v: redrawn_at_std(v, 3)), cfg),
    "output_random": lambda t, cfg: (_with(t, wo=lambda v: redrawn_at_std(v, 4)), cfg),
}
# An edit of the config that the recipe block contradicts: the entry keeps the recipe it was trained with.
RECIPE_KEPT_EDITS = ("mini_batch_64_in_config",)


def generation_default(entry: ZooEntry) -> str:
    """The healthy checkpoint a transformed entry is an edit of: its generation's default."""
    return DEFAULT_CHECKPOINT if entry.base == RECALL_BASE_NAME else DIALOGUE_DEFAULT


def _build_transformed(out: Path, names: Sequence[str]) -> None:
    """The checkpoints made from their generation's default by a documented edit (``EDITS``)."""
    for source in dict.fromkeys(generation_default(_entry(n)) for n in names):
        healthy = load_checkpoint(out / source).model
        recipe = asdict(_recipes()[source])
        src = ttt_tensors(healthy)
        for name in names:
            entry = _entry(name)
            if generation_default(entry) != source:
                continue
            tensors, cfg = EDITS[entry.edit](src, healthy.config)
            _save_entry(entry, out, out / entry.base, tensors, cfg, recipe["init_seed"],
                        recipe if entry.edit in RECIPE_KEPT_EDITS else None, None, source, source_recipe=recipe)


def write_index(out: Path) -> Path:
    """``README.md`` of the zoo: one row per checkpoint with its expected failures and measurements."""
    lines = [
        "# Reference checkpoint zoo", "",
        "Made by `ttt_checks.models.reference.zoo.build_zoo` (`ttt-checks zoo build`); do not edit by hand.",
        f"`{RECALL_BASE_NAME}/` (attention window {RECALL_WINDOW}, pretrained on the generated dialogue language) and "
        f"`{BASE_NAME}/` (full attention, chatterbot dialogue) are the pretrained decoders; every other directory",
        "holds only TTT tensors (`ttt.safetensors`) and a `config.json` pointing at its base. Each broken checkpoint",
        "names, in `config.json` (`expected`) and `EXPECTED.md`, the health checks that must fail on it. Numbers:",
        "the checkpoint's default held-out input (validation sessions of the generated language on `base-facts`,",
        "chatterbot dialogue on `base`), 8 rows x 256 tokens; Figure-5 means of the last TTT layer; loss in nats/byte.",
        f"The embedded default (a run without `--ckpt`) is `{DEFAULT_CHECKPOINT}`.", "",
        "| checkpoint | base | verdict | must fail | val loss learned / gate 0 | gate tanh mean | l0 / lprev / lafter (layers.3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in zoo_entries():
        try:
            m = read_config(out / entry.name).get("measured", {})
        except Exception:  # noqa: BLE001 - an index row must not hide the others
            m = {}
        summ = m.get("summary", {})
        f5 = m.get("figure5", {}).get("layers.3.ttt", {})
        curves = " / ".join("-" if f5.get(k) is None else f"{f5[k]:.3f}" for k in ("l0", "lprev", "lafter")) if f5 else "-"
        losses = " / ".join("-" if summ.get(k) is None else f"{summ[k]:.4f}" for k in ("val_loss_learned", "val_loss_gate0"))
        gate = "-" if summ.get("gate_tanh_mean") is None else f"{summ['gate_tanh_mean']:.3f}"
        lines.append(f"| [{entry.name}]({entry.name}/EXPECTED.md) | {entry.base} | {'healthy' if entry.healthy else 'broken'} | "
                     f"{', '.join(entry.expected_failures) or '-'} | {losses} | {gate} | {curves} |")
    lines += ["", REPRODUCIBILITY, "", "Licence of the training text: chatterbot-corpus, BSD 3-Clause (see "
              "`ttt_checks/models/reference/README.md`).", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


# Measured with scripts/zoo_spread.py (re-run it after changing a recipe and update these lines).
REPRODUCIBILITY = """## Reproducibility on another machine

Training is chaotic: another CPU's kernels (`ATEN_CPU_CAPABILITY`) or thread count change the last
bits of one step and the trajectory drifts from there. Measured by rebuilding from the same seeds
(committed zoo: AVX-512, torch 2.9.1).

**The default's generation** (base `base-facts`): the committed base was pretrained with 1 thread; `ttt-checks
zoo build --workers 2` from nothing (base pretrained again with 2 threads, every fine-tune redone, 18.8 min on
the 2-core machine, 2026-12-07) drifts the base's validation loss from 0.4959 to 0.4907, and the default's gain
survives it: healthy-recall +13.63% over gate 0 (committed +13.86%), l0 / lprev / lafter 1.109 / 0.752 / 0.637
(committed 0.973 / 0.682 / 0.578), the four healthy variants +1.19% to +2.90% (committed +1.18% to +2.80%).

**The first generation** (base `base`, 2 threads):

| rebuilt | setting | healthy-seed0 learned / gate 0 | noncausal-leak learned / gate 0 |
|---|---|---|---|
| TTT fine-tunes from the committed `base/` | scalar kernels (`default`), 1 thread | 1.7227 / 1.7264 (same 4 digits) | 1.6358 / 1.7264 (same) |
| everything, base pretrained again | scalar kernels (`default`), 1 thread | 1.6990 / 1.6992 | - |

So the TTT recipes reproduce to the recorded digits given the same base, while pretraining the base
again drifts by ~0.03 nats/byte, and with it healthy-seed0's TTT gain over gate 0 (0.21% here, 0.01%
on the rebuilt base, below `help_min_loss_decrease`): on this reference model TTT's benefit is too
small to survive a re-pretrained base (the embedded-default issue, which the default's generation
answers). The zoo-rebuild test (`tests/test_reference_model.py`) therefore rebuilds TTT checkpoints from
the committed bases and asks for the same verdicts (every check but the gating sweep) and losses within
0.002 nats/byte, 40x the measured spread: `make test` a representative subset of both generations
(`tests/zoo_selection.py`), `make zoo-check` every entry."""


def refresh_expectations(out: Path = DEFAULT_ZOO_DIR) -> None:
    """Rewrite every entry's ``expected`` block and EXPECTED.md from ``ENTRIES`` (weights untouched)."""
    for entry in zoo_entries():
        d = Path(out) / entry.name
        config = read_config(d)
        _update_config(d, {"expected": entry.expected()})
        (d / "EXPECTED.md").write_text(_expected_md(entry, config.get("recipe")))
    write_index(Path(out))


def _update_config(d: Path, patch: dict[str, Any]) -> None:

    config = read_config(d)
    config.update(patch)
    _write_json_atomic(d / CONFIG_NAME, config)


def list_zoo(zoo_dir: str | Path = DEFAULT_ZOO_DIR, broken: bool | None = None) -> list[tuple[ZooEntry, Path]]:
    """The zoo's entries with their directories; raises when a checkpoint is missing on disk."""
    zoo_dir = Path(zoo_dir)
    rows = []
    for entry in zoo_entries(broken):
        d = zoo_dir / entry.name
        if not (d / CONFIG_NAME).is_file() or not (d / TTT_WEIGHTS).is_file():
            raise FileNotFoundError(f"zoo checkpoint {entry.name!r} is missing under {zoo_dir}; rebuild with: ttt-checks zoo build --out {zoo_dir}")
        rows.append((entry, d))
    return rows


def zoo_path(name: str, zoo_dir: str | Path = DEFAULT_ZOO_DIR) -> Path:
    """Directory of one zoo checkpoint by name (``healthy-seed0`` is the reference default)."""
    if name not in ENTRIES and name != BASE_NAME:
        raise KeyError(f"no zoo checkpoint named {name!r}; known: {[BASE_NAME, *ENTRIES]}")
    return Path(zoo_dir) / name
