"""The embedded reference model and its checkpoint zoo (fixtures/zoo).

Fast tests load the committed checkpoints; rebuilding the zoo is marked slow.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ttt_checks.models.reference import ReferenceAdapter, list_zoo, zoo_entries, zoo_path
from ttt_checks.models.reference.checkpoint import CheckpointError, load_checkpoint
from ttt_checks.models.reference.corpus import DialogueCorpus, conversation_pairs
from ttt_checks.models.reference.generate import Reply, generate_batched, generate_sequential
from ttt_checks.models.reference.tokenizer import EOT, REPLY, USER, ByteTokenizer
from ttt_checks.models.reference.zoo import DEFAULT_CHECKPOINT, DEFAULT_ZOO_DIR, ENTRIES
from ttt_checks.checks import at_initial_value
from ttt_checks.checks import CHECKS
from zoo_selection import rebuilt_entries, remeasured_entries
from ttt_checks.ttt import Figure5Probe

PROMPT = "Tell me a joke."  # the reference model ends this reply with <eot> at gate 0 and learned


@pytest.fixture(scope="module")
def healthy() -> ReferenceAdapter:
    return ReferenceAdapter(zoo_path(DEFAULT_CHECKPOINT), max_new_tokens=60)


@pytest.fixture(scope="module")
def short_inputs(healthy: ReferenceAdapter) -> torch.Tensor:
    return healthy.default_teacher_forced_inputs(length=128, rows=2)


# -- tokenizer and corpus ----------------------------------------------------------------------


def test_tokenizer_round_trips_text_and_frames_turns():
    tok = ByteTokenizer()
    ids = tok.encode_pair("Héllo?", "Hi there.")
    assert ids[0] == USER and REPLY in ids and ids[-1] == EOT
    assert tok.decode(tok.encode_text("Héllo? ✓")) == "Héllo? ✓"
    assert tok.decode([*tok.encode_text("ab"), EOT, *tok.encode_text("cd")]) == "ab"
    assert tok.describe(ids).startswith("<user>Héllo?<reply>Hi there.<eot>")


def test_corpus_pairs_follow_conversations_and_split_is_disjoint():
    assert conversation_pairs(["a", "b", "c"]) == [("a", "b"), ("b", "c")]
    corpus = DialogueCorpus.load(seed=0)
    assert len(corpus.train) > 500 and len(corpus.val) > 10
    train = {tuple(c) for c in map(tuple, corpus.train)}
    assert not any(tuple(c) in train for c in corpus.val)


# -- the committed zoo ---------------------------------------------------------------------------


def test_zoo_lists_every_checkpoint_with_its_expected_failures():
    rows = list_zoo()
    names = [e.name for e, _ in rows]
    assert names == list(ENTRIES)
    assert sum(e.healthy for e, _ in rows) >= 2
    for entry, path in rows:
        config = json.loads((path / "config.json").read_text())
        assert config["expected"]["expected_failures"] == list(entry.expected_failures)
        assert config["expected"]["healthy"] == entry.healthy
        assert (path / "EXPECTED.md").is_file()
        # healthy ones fail nothing; broken ones name a real health check, or the check they need
        assert entry.healthy == (not entry.expected_failures and not entry.needs_check)
        assert set(entry.expected_failures) <= set(CHECKS), f"{entry.name}: unknown check names"
        # a check on its threshold is one the committed checkpoint fails, and is said so in EXPECTED.md
        assert set(entry.borderline) <= set(entry.expected_failures), entry.name
        assert all(f"`{c}`" in (path / "EXPECTED.md").read_text() for c in entry.borderline), entry.name
    assert {e.name for e, _ in list_zoo(broken=True)} == {e.name for e in zoo_entries() if not e.healthy}


def test_zoo_fits_the_size_budget():
    total = sum(p.stat().st_size for p in DEFAULT_ZOO_DIR.rglob("*") if p.is_file())
    # Two generations (issue 25): ~5 MB each, a base of 1.6 MB and ~0.2 MB per checkpoint.
    assert total < 12 * 1024 * 1024, f"the committed zoo is {total / 1e6:.1f} MB"


def test_zoo_cli_lists_paths_of_broken_checkpoints(capsys):
    from ttt_checks.cli import main

    assert main(["zoo", "list", "--broken", "--paths"]) == 0
    lines = capsys.readouterr().out.split()
    assert [Path(p).name for p in lines] == [e.name for e in zoo_entries() if not e.healthy]
    assert all((Path(p) / "config.json").is_file() for p in lines)


def test_zoo_cli_list_reports_a_missing_zoo(tmp_path, capsys):
    from ttt_checks.cli import main

    assert main(["zoo", "list", "--zoo", str(tmp_path)]) == 1
    assert "zoo build" in capsys.readouterr().err


def test_loader_rejects_a_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a reference checkpoint"):
        load_checkpoint(tmp_path)


# -- adapter: static facts -----------------------------------------------------------------------


def test_adapter_reports_ttt_layers_from_the_config(healthy):
    infos = healthy.ttt_layers()
    assert [i.name for i in infos] == ["layers.3.ttt"]
    for info in infos:
        assert (info.num_heads, info.head_dim, info.mini_batch_size, info.causal, info.inner) == (4, 32, 16, True, "mlp")
        assert info.gate_alpha.shape == (128,)
    assert set(healthy.ttt_modules()) == {i.name for i in infos}


def test_healthy_checkpoint_has_every_key_and_moved_from_init(healthy):
    state = healthy.state()
    assert set(healthy.expected_ttt_keys()) <= set(state)
    initial = healthy.initial_state()
    assert set(initial) == set(healthy.expected_ttt_keys())
    moved = [k for k in initial if not at_initial_value(state[k], initial[k])]
    assert len(moved) == len(initial)


def test_missing_keys_checkpoint_lacks_the_inner_weights():
    adapter = ReferenceAdapter(zoo_path("missing-keys"))
    missing = sorted(set(adapter.expected_ttt_keys()) - set(adapter.state()))
    assert missing and all(".ttt.ttt.weights." in k or ".ttt.ttt.biases." in k for k in missing)
    assert missing == sorted(adapter.loaded.missing_ttt_keys)


def test_nan_checkpoint_stores_nonfinite_values_and_poisons_outputs(short_inputs):
    adapter = ReferenceAdapter(zoo_path("nan-weights"))
    bad = [k for k, v in adapter.state().items() if not torch.isfinite(v.float()).all()]
    assert sorted(bad) == ["layers.3.ttt.ttt.weights.0", "layers.3.ttt.ttt.wk.weight"]
    assert not adapter.teacher_forced(short_inputs).outputs_finite


def test_untrained_checkpoint_equals_its_recreated_initial_state():
    adapter = ReferenceAdapter(zoo_path("untrained-gate1"))
    state, initial = adapter.state(), adapter.initial_state()
    for k, v in initial.items():
        # Re-created from the seed on this machine: equal up to the bf16 rounding of another CPU's randn.
        assert at_initial_value(state[k], v), k
    assert abs(float(adapter.ttt_layers()[0].gate_alpha.mean()) - 1.0) < 1e-2


# -- teacher forcing and Figure 5 ----------------------------------------------------------------


def test_streamed_chunks_of_a_minibatch_equal_one_pass(healthy, short_inputs):
    one_pass = healthy.teacher_forced(short_inputs, chunk=short_inputs.shape[1])
    chunked = healthy.teacher_forced(short_inputs, chunk=16)
    np.testing.assert_allclose(chunked.outer_loss, one_pass.outer_loss, rtol=1e-4, atol=1e-5)
    assert chunked.positions == short_inputs.shape[1] - 1


def test_causal_healthy_checkpoint_gives_the_same_loss_token_by_token(healthy, short_inputs):
    per_minibatch = healthy.teacher_forced(short_inputs)
    per_token = healthy.teacher_forced(short_inputs, chunk=1)
    np.testing.assert_allclose(per_token.outer_loss, per_minibatch.outer_loss, rtol=1e-4, atol=1e-5)


def test_noncausal_checkpoint_learned_to_read_the_future_within_a_minibatch(short_inputs):
    """The user's recipe: teacher forcing one mini-batch per call looks better than generation can be."""
    adapter = ReferenceAdapter(zoo_path("noncausal-leak"))
    per_minibatch = float(adapter.teacher_forced(short_inputs).outer_loss.mean())
    per_token = float(adapter.teacher_forced(short_inputs, chunk=1).outer_loss.mean())
    with adapter.set_gate(0.0):
        gate0 = float(adapter.teacher_forced(short_inputs).outer_loss.mean())
    assert per_minibatch < gate0 - 0.01, "the leak should make chunked teacher forcing look helpful"
    assert per_token > per_minibatch + 0.01, "fed one token per call, the leak is gone"


def test_gate_zero_reproduces_the_base_model(healthy, short_inputs):
    base = ReferenceAdapter(DEFAULT_ZOO_DIR / ENTRIES[DEFAULT_CHECKPOINT].base)
    with healthy.set_gate(0.0):
        gated_off = healthy.teacher_forced(short_inputs)
    learned = healthy.teacher_forced(short_inputs)
    plain = base.teacher_forced(short_inputs)
    np.testing.assert_allclose(gated_off.outer_loss, plain.outer_loss, rtol=1e-5, atol=1e-6)
    assert not np.allclose(learned.outer_loss, plain.outer_loss)


def test_set_gate_restores_the_learned_alpha(healthy):
    before = [b.gate_override for b in healthy.model.gated_blocks().values()]
    with healthy.set_gate(0.5):
        assert all(b.gate_override == 0.5 for b in healthy.model.gated_blocks().values())
    assert [b.gate_override for b in healthy.model.gated_blocks().values()] == before
    with pytest.raises(ValueError):
        with healthy.set_gate("bogus"):
            pass


def test_healthy_figure5_curves_are_ordered(healthy, short_inputs):
    probe = Figure5Probe()
    healthy.teacher_forced(short_inputs, probe=probe)
    for name in healthy.ttt_modules():
        rec = probe.record(name)
        assert rec.finite
        assert rec.l0.mean() > rec.lprev.mean() > rec.lafter.mean(), name
        late = rec.positions >= 16
        assert (rec.l0[late] > rec.lprev[late]).mean() > 0.9
        assert (rec.lprev > rec.lafter).mean() > 0.9


def test_state_reset_each_call_makes_l0_equal_lprev(short_inputs):
    broken = ReferenceAdapter(zoo_path("no-state-carry"))
    probe = Figure5Probe()
    broken.teacher_forced(short_inputs, probe=probe, chunk=1)
    for name in broken.ttt_modules():
        rec = probe.record(name)
        # Both are the fp32 loss of W_0 on x_t, by two kernels (the mini-batch dual form and the
        # W_0 evaluation): a 128-term product, LayerNorm, GELU and a 32-term mean, each term off by
        # at most one unit roundoff (6e-8) -> <= ~1e-5 relative. Measured: 1.1e-7 at worst.
        np.testing.assert_allclose(rec.lprev, rec.l0, rtol=1e-5, atol=0)


def test_state_is_carried_one_token_per_call_in_a_healthy_checkpoint(healthy, short_inputs):
    probe = Figure5Probe()
    healthy.teacher_forced(short_inputs, probe=probe, chunk=1)
    for name in healthy.ttt_modules():
        rec = probe.record(name)
        late = rec.positions >= 16
        assert (np.abs(rec.l0[late] - rec.lprev[late]) > 1e-6).mean() > 0.9


def test_lr_checkpoints_break_the_inner_step_as_documented(short_inputs):
    for name, check in (("lr-too-high", lambda r: r.lafter.mean() > r.lprev.mean()),
                        ("lr-near-zero", lambda r: np.abs(r.lprev - r.lafter).max() < 1e-3)):
        adapter = ReferenceAdapter(zoo_path(name))
        probe = Figure5Probe()
        adapter.teacher_forced(short_inputs, probe=probe)
        for layer in adapter.ttt_modules():
            assert check(probe.record(layer)), f"{name} {layer}"


def test_load_inputs_cut_held_out_dialogue_into_rows(healthy, tmp_path):
    inputs = healthy.load_inputs(max_positions=64)
    assert inputs.positions == 64 and inputs.teacher_forced.shape[1] == 65 and inputs.prompts
    text = tmp_path / "dialogue.txt"
    text.write_text("Hello there. How are you today? " * 20)
    from_file = healthy.load_inputs(text, max_positions=100)
    assert from_file.teacher_forced.shape == (6, 101)
    with pytest.raises(TypeError, match="shorter than one row"):
        healthy.load_inputs(text, max_positions=5000)


# -- generation ----------------------------------------------------------------------------------


def test_generation_is_deterministic_and_stops_at_end_of_turn(healthy):
    first = healthy.generate(PROMPT, [0.0, "learned"], speak=False)
    second = healthy.generate(PROMPT, [0.0, "learned"], speak=False)
    assert [g.tokens for g in first] == [g.tokens for g in second]
    for g in first:
        assert EOT not in g.tokens and len(g.tokens) <= healthy.max_new_tokens
        assert g.text == ByteTokenizer().decode(g.tokens)
        assert g.extra["ended"], f"no end-of-turn within {healthy.max_new_tokens} tokens: {g.text!r}"
        assert len(g.text.split()) >= 2, g.text


def test_batched_gate_sweep_gives_the_sequential_tokens(healthy):
    gates = [0.0, "learned", 0.3, 1.0, 3.0]
    batched = healthy.generate(PROMPT, gates, speak=False)
    sequential = healthy.generate(PROMPT, gates, batched=False, speak=False)
    assert [g.tokens for g in batched] == [g.tokens for g in sequential]
    assert [g.gate for g in batched] == gates
    assert batched[0].gate_tanh == 0.0 and math.isclose(batched[3].gate_tanh, math.tanh(1.0), rel_tol=1e-9)
    # the sweep is not trivially constant: a saturated gate changes the reply
    assert batched[0].tokens != batched[4].tokens


# Two greedy decodes that run different kernels (a batch of 1 vs 3, streamed vs one pass) may
# part only where the two best logits tie within fp32 rounding. Logits here are at most ~30 in
# size after 4 blocks of width 128; fp32 kernels that sum in another order differ by a few ulp
# per accumulated term (128-512 terms per product): ~1e-5 relative, ~3e-4 absolute at worst.
# A gap below 1e-3 is therefore a tie, not a model property.
TIE_LOGIT_GAP = 1e-3


def assert_same_greedy_reply(model, prompt, gate, got, want) -> None:
    """``got`` and ``want`` (Replies of one gate) are equal, or part first at a tie of the logits."""
    seq_got = got.tokens + ([EOT] if got.ended else [])
    seq_want = want.tokens + ([EOT] if want.ended else [])
    if seq_got == seq_want:
        return
    n = next((i for i, (a, b) in enumerate(zip(seq_got, seq_want)) if a != b), min(len(seq_got), len(seq_want)))
    assert n < min(len(seq_got), len(seq_want)), "one reply stops where the other goes on without a different token"
    ids = torch.tensor([list(prompt) + seq_want[:n]])
    with torch.no_grad(), model.override_gates(gate):
        logits = model(ids)[0, -1].double()
    gap = float(logits[seq_want[n]] - logits[seq_got[n]]).__abs__()
    assert gap < TIE_LOGIT_GAP, f"replies part at token {n} where the logits differ by {gap:.3g} (no tie)"


def test_generation_rows_are_independent_of_each_other(healthy):
    prompt = ByteTokenizer().encode_prompt("Tell me a joke.")
    alone = generate_batched(healthy.model, prompt, [0.3], 40)[0]
    among = generate_batched(healthy.model, prompt, [1.0, 0.3, 0.0], 40)[1]
    assert len(alone.tokens) > 5
    assert_same_greedy_reply(healthy.model, prompt, 0.3, among, alone)
    assert_same_greedy_reply(healthy.model, prompt, 0.3, generate_sequential(healthy.model, prompt, [0.3], 40)[0], alone)


def test_generation_rejects_bad_gates_and_inputs(healthy):
    with pytest.raises(ValueError):
        healthy.generate(PROMPT, ["sometimes"], speak=False)
    with pytest.raises(TypeError):
        healthy.generate(3.14, [0.0], speak=False)


def test_generation_speaks_the_reply_at_16khz(healthy):
    pytest.importorskip("ttt_checks.audio.espeak", reason="ttt_checks.audio.espeak is not in this tree yet")
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make system-deps)")
    (gen,) = healthy.generate(PROMPT, ["learned"])
    assert gen.sample_rate == 16000 and gen.audio.dtype == np.float32
    assert gen.audio.size > 16000 * 0.3 and np.abs(gen.audio).max() > 0.01
    assert gen.extra["spoken"]


# -- reproducibility -----------------------------------------------------------------------------


@pytest.mark.slow
def test_committed_measurements_are_reproduced():
    from ttt_checks.models.reference.measure import measure_checkpoint

    for entry in remeasured_entries():  # `make zoo-check`: every entry
        committed = json.loads((entry.path / "config.json").read_text())["measured"]
        fresh = measure_checkpoint(entry.path)
        for layer, stats in committed["figure5"].items():
            for key in ("l0", "lprev", "lafter"):
                if stats[key] is None:
                    assert fresh["figure5"][layer][key] is None
                else:
                    assert fresh["figure5"][layer][key] == pytest.approx(stats[key], rel=1e-3), (entry.name, layer, key)
        model = None
        for prompt, by_gate in committed["replies"].items():
            for gate, want in by_gate.items():
                got = fresh["replies"][prompt][gate]
                if got == want:
                    continue
                # Another CPU may part from the committed greedy reply, but only at a tie.
                model = model or ReferenceAdapter(entry.path).model
                tok = ByteTokenizer()
                replies = []
                for r in (got, want):
                    tokens = tok.encode_text(r["text"])
                    assert len(tokens) == r["tokens"], f"{entry.name}: reply text does not round-trip to its tokens"
                    replies.append(Reply(tokens=tokens, ended=r["ended"], text=r["text"]))
                alpha = None if gate == "learned" else float(gate)
                assert_same_greedy_reply(model, tok.encode_prompt(prompt), alpha, *replies)


# What a rebuild on another machine must reproduce. Training is chaotic: another CPU's kernels
# (ATEN_CPU_CAPABILITY) or thread count change the last bits of one step and the trajectory drifts.
# Measured with scripts/zoo_spread.py (fixtures/zoo/README.md, "Reproducibility"): the base's
# pretraining drifts by ~0.03 nats/byte on another SIMD path, and healthy-seed0's TTT gain over
# gate 0 with it (0.21% -> 0.01%), so a zoo rebuilt from scratch need not keep its verdicts; the
# TTT fine-tunes from the committed base reproduce to the 4 digits recorded (spread < 5e-5). So the
# test rebuilds every TTT checkpoint from the committed base and asks for the same verdicts and
# losses within 40x the measured spread.
ZOO_REBUILD_LOSS_TOLERANCE = 0.002  # nats/byte, absolute
ZOO_REBUILD_GAIN_TOLERANCE = 0.001  # (gate 0 - learned) / gate 0, absolute


def failing_checks_without_sweep(path: Path, report_dir: Path) -> set[str]:
    """Names of the health checks that fail on ``path``, all but the gating sweep's.

    The sweep (greedy replies, espeak-ng, Whisper) is judged on the committed checkpoints by the
    meta-tests; here it would only add minutes per entry.
    """
    from ttt_checks.checks import TALK_CHECKS
    from ttt_checks.run import HealthRun, RunOptions, run_all

    run = HealthRun(ReferenceAdapter(path), RunOptions(report_dir=report_dir))
    return {v.name for v in run_all(run, [c for c in CHECKS if c not in TALK_CHECKS]) if not v.ok}


@pytest.mark.slow
def test_build_zoo_recreates_the_committed_behaviour(tmp_path):
    from dataclasses import asdict

    from ttt_checks.models.reference.model import DecoderConfig
    from ttt_checks.models.reference.train import FinetuneRecipe
    from ttt_checks.models.reference.zoo import build_zoo, generation_default
    from ttt_checks.checks import TALK_CHECKS

    entries = rebuilt_entries()
    zoo = tmp_path / "zoo"
    for base in {e.base for e in entries}:
        shutil.copytree(DEFAULT_ZOO_DIR / base, zoo / base)
    # A transformed entry is an edit of its generation's default: when the default is not rebuilt here,
    # the committed one is edited (the edit is deterministic; the default's training is what is slow).
    names = [e.name for e in entries]
    for entry in entries:
        source = generation_default(entry)
        if entry.how == "transformed" and source not in names and not (zoo / source).exists():
            shutil.copytree(DEFAULT_ZOO_DIR / source, zoo / source)
    # As many threads as this process was given (one per xdist worker's share of the cores): training is
    # chaotic across thread counts only in the last bits, well inside the tolerances above.
    trained = [e for e in entries if e.how == "trained"]
    edited = [e for e in entries if e.how == "transformed"]
    build_zoo(zoo, log=None, measure_entries=True, reuse_base=True, threads=torch.get_num_threads(),
              only=[e.name for e in trained])
    # An edit of a committed default is deterministic up to float rounding: the same tensors (to one bf16 step)
    # and config make the same checkpoint, which the meta-tests judge as committed.
    build_zoo(zoo, log=None, measure_entries=False, reuse_base=True, only=[e.name for e in edited])
    for entry in edited:
        rebuilt_config, committed_config = (json.loads((d / entry.name / "config.json").read_text())
                                            for d in (zoo, DEFAULT_ZOO_DIR))
        for config in (rebuilt_config, committed_config):
            config.pop("measured", None)
            # fields added to DecoderConfig since the entry was committed read as their defaults
            config["decoder"] = DecoderConfig.from_dict(config["decoder"]).to_dict()
            if "recipe" in config:
                config["recipe"] = json.loads(json.dumps({**asdict(FinetuneRecipe()), **config["recipe"]}))
        assert rebuilt_config == committed_config, entry.name
        rebuilt_t, committed_t = (load_file(str(d / entry.name / "ttt.safetensors")) for d in (zoo, DEFAULT_ZOO_DIR))
        assert rebuilt_t.keys() == committed_t.keys(), entry.name
        for key, value in committed_t.items():
            torch.testing.assert_close(rebuilt_t[key].float(), value.float(), rtol=2 ** -7, atol=1e-6, equal_nan=True,
                                       msg=f"{entry.name}: {key}")
    for entry in trained:
        rebuilt_dir = tmp_path / "zoo" / entry.name
        committed = json.loads((entry.path / "config.json").read_text())["measured"]["summary"]
        rebuilt = json.loads((rebuilt_dir / "config.json").read_text())["measured"]["summary"]
        for key in ("val_loss_learned", "val_loss_gate0"):
            assert (rebuilt[key] is None) == (committed[key] is None), (entry.name, key)
            if committed[key] is not None:
                assert rebuilt[key] == pytest.approx(committed[key], abs=ZOO_REBUILD_LOSS_TOLERANCE), (entry.name, key)
        if committed["val_loss_gate0"] and committed["val_loss_learned"] is not None:
            def gain(m):
                return (m["val_loss_gate0"] - m["val_loss_learned"]) / m["val_loss_gate0"]

            assert gain(rebuilt) == pytest.approx(gain(committed), abs=ZOO_REBUILD_GAIN_TOLERANCE), entry.name
        expected = set(entry.expected_failures) - set(TALK_CHECKS)
        failed = failing_checks_without_sweep(rebuilt_dir, tmp_path / "reports" / entry.name)
        # A check the entry documents as on its threshold may go either way on another CPU's rebuild.
        either_way = set(entry.borderline)
        assert failed - either_way == expected - either_way, (
            f"{entry.name}: rebuilt fails {sorted(failed)}, committed {sorted(expected)} (either way: {sorted(either_way)})")


# -- local attention window ----------------------------------------------------------------------


def _windowed_model(window: int | None, ttt: bool = True):
    from ttt_checks.models.reference.model import Decoder, DecoderConfig
    from ttt_checks.models.reference.train import build_with_ttt_init, default_ttt_config

    torch.manual_seed(0)
    cfg = DecoderConfig(width=32, num_layers=2, num_heads=2, ffn_hidden=64, attention_window=window)
    if ttt:
        cfg = cfg.with_ttt(default_ttt_config(32, num_heads=2, head_dim=16, mini_batch_size=4), (1,))
        return build_with_ttt_init(cfg, 3).eval()
    return Decoder(cfg).eval()


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_windowed_attention_streamed_in_chunks_equals_one_pass(chunk):
    """The KV cache trimmed to the window gives the one-pass outputs, whatever the call size."""
    from ttt_checks.models.reference.generate import streamed_loss

    model = _windowed_model(window=5)
    windows = torch.randint(0, 256, (2, 41))
    one_pass = streamed_loss(model, windows, chunk=windows.shape[1])
    chunked = streamed_loss(model, windows, chunk=chunk)
    torch.testing.assert_close(chunked, one_pass, rtol=1e-4, atol=1e-5)
    with model.stream():  # the cache never holds more than the window needs
        for t in range(12):
            model(windows[:, t : t + 1])
        assert all(c.length <= 4 and c.next_position == 12 for c in model._caches)


def test_attention_window_hides_tokens_beyond_it_and_none_is_full_attention():
    from ttt_checks.models.reference.model import DecoderConfig

    windowed, full = _windowed_model(window=5, ttt=False), _windowed_model(window=None, ttt=False)
    tokens = torch.randint(0, 256, (1, 20))
    edited = tokens.clone()
    edited[0, 3] = (edited[0, 3] + 1) % 256  # a token 5 or more positions before the last two of layer-2 reach
    with torch.no_grad():
        # Two blocks of window 5 reach 2 * (5 - 1) = 8 positions back.
        torch.testing.assert_close(windowed(edited)[:, 12:], windowed(tokens)[:, 12:])
        assert not torch.allclose(full(edited)[:, 12:], full(tokens)[:, 12:])
    assert DecoderConfig.from_dict({k: v for k, v in DecoderConfig().to_dict().items() if k != "attention_window"}).attention_window is None


def test_recall_recipe_checkpoint_recreates_its_initial_state_and_streams_exactly(tmp_path):
    """A TTT checkpoint with shifted keys and a non-default init (ttt_init in config.json): the
    loader and the dead-parameter reference re-create exactly what was inserted, q starts equal to
    k, and feeding one token per call gives the one-pass losses (the shifted key carried across calls)."""
    from ttt_checks.models.reference.checkpoint import save_base, save_ttt
    from ttt_checks.models.reference.generate import streamed_loss
    from ttt_checks.models.reference.model import Decoder, DecoderConfig
    from ttt_checks.models.reference.train import TTTInit, default_ttt_config, insert_ttt

    torch.manual_seed(0)
    base = Decoder(DecoderConfig(width=32, num_layers=2, num_heads=2, ffn_hidden=64, attention_window=6))
    save_base(base, tmp_path / "base")
    init = TTTInit(inner_weight_std=0.25, tie_query_to_key=True)
    model = insert_ttt(base, default_ttt_config(32, mini_batch_size=4, shift_keys=True), (1,), 0.4, 77, init=init)
    save_ttt(model, tmp_path / "ttt", tmp_path / "base", 77, extra={"ttt_init": init.to_dict()})

    adapter = ReferenceAdapter(tmp_path / "ttt")
    state, initial = adapter.state(), adapter.initial_state()
    assert set(initial) == {k for k in state if ".ttt." in k}
    for k, v in initial.items():
        assert at_initial_value(state[k], v), k
    layer = adapter.model.ttt_layers()["layers.1.ttt"]
    assert layer.config.shift_keys
    torch.testing.assert_close(layer.wq.weight, layer.wk.weight, rtol=0, atol=0)
    assert 0.2 < float(layer.weights[0].detach().std()) < 0.3  # 0.25 drawn, 2 x 32 x 128 values

    windows = torch.randint(0, 256, (2, 23))
    one_pass = streamed_loss(adapter.model, windows, chunk=windows.shape[1])
    for chunk in (1, 3, 4):
        torch.testing.assert_close(streamed_loss(adapter.model, windows, chunk=chunk), one_pass, rtol=1e-4, atol=1e-5)

    config = json.loads((tmp_path / "ttt" / "config.json").read_text())
    (tmp_path / "ttt" / "config.json").write_text(json.dumps({**config, "ttt_init": {"inner_weight_sd": 0.25}}))
    with pytest.raises(CheckpointError, match="ttt_init"):
        load_checkpoint(tmp_path / "ttt")


def test_inner_steps_off_freezes_w0_and_is_restored(healthy, short_inputs):
    """The adapter's inner_steps_off: every TTT layer keeps W_0 (lprev = l0 at every token), the
    learned behaviour comes back on exit, and a module without the knob is refused by name."""
    from ttt_checks.models.base import Adapter

    learned = healthy.teacher_forced(short_inputs).outer_loss
    probe = Figure5Probe()
    with healthy.inner_steps_off():
        static = healthy.teacher_forced(short_inputs, probe=probe).outer_loss
    for name in healthy.ttt_modules():
        rec = probe.record(name)
        np.testing.assert_allclose(rec.lprev, rec.l0, rtol=1e-5, atol=0)
    assert not np.allclose(static, learned)
    assert all(m.inner_step_scale == 1.0 for m in healthy.ttt_modules().values())
    np.testing.assert_allclose(healthy.teacher_forced(short_inputs).outer_loss, learned, rtol=1e-6, atol=0)

    class Opaque(ReferenceAdapter):
        def ttt_modules(self):
            return {"layers.3.ttt": torch.nn.Linear(2, 2)}

    opaque = Opaque.__new__(Opaque)
    with pytest.raises(NotImplementedError, match="layers.3.ttt"):
        with Adapter.inner_steps_off(opaque):
            pass


@pytest.mark.parametrize("ttt_layers", [(1,), (0, 2)])
def test_frozen_prefix_then_the_rest_is_the_one_pass_forward(ttt_layers):
    """Fine-tuning with a window pool splits the forward at the first TTT block's gated TTT: the two
    halves give the logits of ``forward`` (and refuse a streaming decoder, whose caches they skip)."""
    from ttt_checks.models.reference.model import Decoder, DecoderConfig
    from ttt_checks.models.reference.train import default_ttt_config, insert_ttt

    torch.manual_seed(0)
    base = Decoder(DecoderConfig(width=32, num_layers=3, num_heads=2, ffn_hidden=64, attention_window=6))
    model = insert_ttt(base, default_ttt_config(32, mini_batch_size=4, shift_keys=True), ttt_layers, 0.5, 7)
    tokens = torch.randint(0, 256, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_from_prefix(model.frozen_prefix(tokens)), model(tokens),
                                   rtol=1e-5, atol=1e-6)
        with model.stream(), pytest.raises(RuntimeError, match="streaming"):
            model.frozen_prefix(tokens)
    with pytest.raises(ValueError, match="no TTT block"):
        base.frozen_prefix(tokens)


def test_finetune_with_a_window_pool_trains_only_ttt_from_the_pool():
    """``window_pool``: the base stays as it was, the TTT parameters move, the loss is finite; the pool's
    prefixes are computed once, so the base must be frozen (it is, inside finetune_ttt)."""
    from dataclasses import replace

    from ttt_checks.models.reference.model import Decoder, DecoderConfig
    from ttt_checks.models.reference.train import FinetuneRecipe, _window_pool, default_ttt_config, finetune_ttt, insert_ttt

    torch.manual_seed(0)
    base = Decoder(DecoderConfig(width=32, num_layers=2, num_heads=2, ffn_hidden=64, attention_window=8))
    model = insert_ttt(base, default_ttt_config(32, mini_batch_size=4, shift_keys=True), (1,), 0.3, 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = FinetuneRecipe(steps=3, batch=2, seq_len=16, warmup=1, window_pool=4, layers=(1,))
    info = finetune_ttt(model, DialogueCorpus.load(seed=0), recipe)
    assert math.isfinite(info["train_loss"]) and info["nonfinite_steps"] == 0
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if ".ttt." not in k)
    assert any(not torch.equal(after[k], v) for k, v in before.items() if ".ttt." in k)
    with pytest.raises(ValueError, match="base frozen"):  # every parameter trainable again after finetune_ttt
        _window_pool(model, torch.randint(0, 256, (200,)), replace(recipe, window_pool=2), torch.Generator())
