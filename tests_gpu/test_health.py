"""The health checks of one checkpoint, one test per symptom.

Run against any checkpoint:  pytest -m gpu tests_gpu --ckpt PATH [--device cpu]
Each test judges one check of ttt_checks.checks on measurements taken once per session
(the ``ttt_run`` fixture), records measured value and threshold as JUnit properties, attaches
its evidence, and fails with the explanation of every failing verdict.
"""

import pytest

pytestmark = pytest.mark.gpu


def test_checkpoint_has_every_ttt_key(ttt_check):
    ttt_check("checkpoint_keys")


def test_checkpoint_tensors_are_finite(ttt_check):
    ttt_check("checkpoint_finite")


def test_config_agrees_with_what_it_was_trained_with(ttt_check):
    """Settings the checkpoint states twice (config.json vs the training record, config vs the
    weights) agree; a DDP ``module.`` prefix stripped on load is said here."""
    ttt_check("config_consistency")


def test_base_model_matches_its_reference(ttt_run, ttt_check):
    """At gate 0 the model is its base: its loss there must match the base's own reference loss on
    the same input (stored with the base, or --base-reference). Skipped, with the reason, when
    there is no reference to compare with: the base was then not checked."""
    if not ttt_run.judge("base_model"):
        pytest.skip(f"base model not checked: {ttt_run.base_model_not_checked()['why']}")
    ttt_check("base_model")


def test_figure5_data_collected_for_every_ttt_layer(ttt_check):
    ttt_check("figure5_collected")


def test_inner_losses_are_finite(ttt_check):
    ttt_check("figure5_finite")


def test_inner_losses_are_bounded(ttt_check):
    ttt_check("figure5_bounded")


def test_inner_losses_are_ordered_l0_lprev_lafter(ttt_check):
    ttt_check("figure5_ordering")


def test_each_inner_step_improves_the_loss(ttt_check):
    ttt_check("figure5_improvement")


def test_inner_model_adapts_over_the_context(ttt_check):
    ttt_check("figure5_adaptation")


def test_inner_step_size_is_near_its_best(ttt_check):
    """A line search along each mini-batch's own update (m x the step, m in 1e-6, 1e-3, 0.25 .. 4): the step
    taken neither overshoots (best m <= 0.5) nor is far too timid (best m >= 4, little curvature);
    the failure names the losses and a recommended base_lr."""
    ttt_check("inner_step_size")


def test_gates_have_not_collapsed(ttt_check):
    ttt_check("gate_stats")


def test_ttt_does_not_hurt_the_outer_loss(ttt_check):
    """TTT must earn its place: the outer loss at the learned gate is lower than at gate 0 by
    help_min_loss_decrease; "TTT DOES NOTHING" and "TTT HURTS" fail with their own message."""
    ttt_check("ttt_helps")


def test_no_dead_ttt_parameters(ttt_check):
    ttt_check("dead_parameters")


def test_ttt_state_persists_across_streaming_calls(ttt_check):
    ttt_check("state_persistence")


def test_inference_gets_the_loss_training_saw(ttt_check):
    """Token by token (as at inference) the outer loss matches the teacher-forced pass: no
    non-causal mini-batch reading ahead (the user's recipe leaks up to b-1 future tokens)."""
    ttt_check("streaming_consistency")


def test_base_model_talks_at_gate_zero(ttt_check):
    ttt_check("talk_base")


def test_learned_gate_keeps_the_model_talkative(ttt_check):
    ttt_check("talk_learned")


def test_no_collapse_at_any_gate_of_the_sweep(ttt_check):
    ttt_check("talk_collapse")


def test_model_specific_checks(ttt_run, ttt_check):
    """Checks one model family alone can make (Moshi: gate 0 reproduces vanilla Moshi logits,
    parameters the user's code never applied, state carried frame by frame, causality leak)."""
    if not hasattr(ttt_run.adapter, "model_checks"):
        pytest.skip(f"the {ttt_run.adapter.name} adapter has no model-specific checks")
    ttt_check("model_specific")


def test_no_regression_against_the_baseline(ttt_run, ttt_check):
    """Runs last: compares every metric of this run with --baseline (skipped when none is given)."""
    if ttt_run.options.baseline is None:
        pytest.skip("no --baseline given: nothing to compare against")
    ttt_check("baseline_regression")
