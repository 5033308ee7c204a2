"""The generated dialogue language (ttt_checks/models/reference/dialogue.py) and its corpus stream."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttt_checks.models.reference.corpus import FACT_SESSIONS, DialogueCorpus
from ttt_checks.models.reference.dialogue import (
    FACT_KINDS,
    GOODBYES,
    MIN_VOCABULARY,
    RECALLS,
    TEMPLATE_WORDS,
    DialogueLanguage,
    pair_tokens,
    recall_gaps,
    vocabulary,
)
from ttt_checks.models.reference.tokenizer import ByteTokenizer

# A synthetic split, so the properties are tested without chatterbot-corpus and fast.
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_RNG = random.Random(0)
VOCAB = sorted({"".join(_RNG.choice(_LETTERS) for _ in range(4 + i % 6)) for i in range(3000)})
SMALL_TALK = [(f"how is the weather number {i}?", f"it is fine, number {i}.") for i in range(50)]


def language(min_gap: int = 64) -> DialogueLanguage:
    return DialogueLanguage(SMALL_TALK, VOCAB, min_gap=min_gap)


@pytest.fixture(scope="module")
def corpus() -> DialogueCorpus:
    return DialogueCorpus.load(seed=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_same_seed_gives_the_same_sessions_and_another_seed_others(seed):
    first = [s.text() for s in language().sessions(20, "train", seed)]
    assert first == [s.text() for s in language().sessions(20, "train", seed)]
    assert first != [s.text() for s in language().sessions(20, "train", seed + 1)]
    assert first != [s.text() for s in language().sessions(20, "val", seed)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), min_gap=st.integers(0, 200))
def test_every_recalled_fact_was_stated_earlier_in_its_session_beyond_the_gap(seed, min_gap):
    for session in language(min_gap).sessions(10, "val", seed):
        gaps = recall_gaps(session)  # raises when a recall has no earlier mention
        stated = {(m.kind, m.value) for m in session.mentions if m.role == "intro"}
        recalled = Counter((m.kind, m.value) for m, _ in gaps)
        assert set(recalled) == stated, "every stated fact is recalled"
        goodbye = session.pairs[-1][0] in GOODBYES
        assert sorted(recalled.values()) == sorted([1] * goodbye + [RECALLS] * (len(stated) - goodbye))
        for mention, gap in gaps:
            assert gap >= min_gap, (mention, gap, session.text())
            user, reply = session.pairs[mention.pair]
            assert mention.value in reply
            intro = next(m for m in session.mentions if m.role == "intro" and m.kind == mention.kind)
            assert intro.pair < mention.pair and mention.value in session.pairs[intro.pair][0]
            # Nothing between the last statement and the recall holds the value.
            last = max(m.pair for m in session.mentions if m.value == mention.value and m.pair < mention.pair)
            between = " ".join(u + " " + r for u, r in session.pairs[last + 1 : mention.pair])
            assert mention.value.lower() not in re.findall(r"[a-z0-9]+", (between + " " + user).lower())


def test_recall_gap_counts_the_tokens_of_the_pairs_in_between():
    session = language(0).sessions(1, "train", 3)[0]
    for mention, gap in recall_gaps(session):
        last = max(m.pair for m in session.mentions if m.value == mention.value and m.pair < mention.pair)
        tokens = ByteTokenizer().encode_dialogue(session.pairs[last + 1 : mention.pair])
        assert gap == len(tokens) == sum(pair_tokens(p) for p in session.pairs[last + 1 : mention.pair])


def test_sessions_use_every_fact_kind_and_many_distinct_values():
    sessions = language().sessions(300, "train", 0)
    kinds = {m.kind for s in sessions for m in s.mentions}
    assert kinds == {k.name for k in FACT_KINDS}
    values = {m.value for s in sessions for m in s.mentions}
    assert len(values) > 500  # random per session: few values repeat across 300 sessions


def test_a_vocabulary_too_small_is_refused_with_what_to_install():
    with pytest.raises(ValueError, match="too small.*chatterbot-corpus"):
        DialogueLanguage(SMALL_TALK, VOCAB[: MIN_VOCABULARY - 1])


def test_vocabulary_leaves_out_the_most_frequent_and_short_words():
    texts = ["the cat and the dog", "the elephant", "a giraffe and the zebra"]
    assert vocabulary(texts, leave_out_common=1) == ["elephant", "giraffe", "zebra"]


def test_chatterbot_vocabulary_is_large_and_holds_no_template_word(corpus):
    lang = corpus.language("train")
    assert len(lang.vocab) >= MIN_VOCABULARY
    assert not set(lang.vocab) & TEMPLATE_WORDS


def test_train_and_validation_sessions_share_no_small_talk_and_no_session(corpus):
    train, val = corpus.language("train"), corpus.language("val")
    assert not set(train.small_talk) & set(val.small_talk)
    train_texts = {s.text() for s in train.sessions(2000, "train", 0)}
    val_sessions = val.sessions(FACT_SESSIONS["val"], "val", 0)
    assert not train_texts & {s.text() for s in val_sessions}
    talk = set(train.small_talk)
    for s in val_sessions:
        assert not talk & set(s.pairs)


def test_fact_sessions_stream_is_the_sessions_encoded_back_to_back(corpus):
    tok = ByteTokenizer()
    stream = corpus.fact_stream("val", tok, seed=0, sessions=5)
    sessions = corpus.language("val").sessions(5, "val", 0)
    assert stream.tolist() == [i for s in sessions for i in tok.encode_dialogue(s.pairs)]
    assert corpus.tokens("val", tok, seed=0, data="fact-sessions")[: stream.numel()].tolist() == stream.tolist()


def test_recall_generation_builds_on_its_own_base_and_measures_on_validation_sessions(tmp_path, monkeypatch):
    from dataclasses import replace

    from ttt_checks.models.reference import zoo
    from ttt_checks.models.reference.adapter import DEFAULT_PROMPTS, ReferenceAdapter
    from ttt_checks.models.reference.checkpoint import load_checkpoint, read_config

    recipe, config = zoo.BASES[zoo.RECALL_BASE_NAME]
    monkeypatch.setitem(zoo.BASES, zoo.RECALL_BASE_NAME, (replace(recipe, steps=2, batch=2), config))
    monkeypatch.setattr(zoo, "HEALTHY_RECALL", replace(zoo.HEALTHY_RECALL, steps=2, batch=2,
                                                       window_pool=min(4, zoo.HEALTHY_RECALL.window_pool)))
    edited = ["recall-values-random", "recall-no-state-carry", "recall-config-contradicts-weights"]
    zoo.build_zoo(tmp_path, log=None, measure_entries=False, threads=1, only=["healthy-recall", *edited])
    assert not (tmp_path / zoo.BASE_NAME).exists()  # the chatterbot base is not needed
    cfg = read_config(tmp_path / "healthy-recall")
    assert cfg["corpus_data"] == "fact-sessions" and cfg["base"] == f"../{zoo.RECALL_BASE_NAME}"
    assert read_config(tmp_path / zoo.RECALL_BASE_NAME)["decoder"]["attention_window"] == zoo.RECALL_WINDOW
    adapter = ReferenceAdapter(tmp_path / "healthy-recall")
    rows = adapter.default_teacher_forced_inputs(length=64, rows=2)
    expected = DialogueCorpus.load(seed=0).tokens("val", ByteTokenizer(), seed=0, data="fact-sessions")[:130]
    assert rows.flatten()[:65].tolist() == expected[:65].tolist()
    # Prompts of its own language: the openings of held-out sessions, not chatterbot questions.
    prompts = adapter.default_prompts()
    assert list(prompts) == [s.pairs[0][0] for s in DialogueCorpus.load(seed=0).language("val").sessions(4, "val", 0)]
    assert not set(prompts) & set(DEFAULT_PROMPTS) and adapter.load_inputs().prompts == list(prompts)
    # The transformed entries are edits of the default, read the same text and keep its initial-state draw.
    source = load_checkpoint(tmp_path / "healthy-recall")
    for name in edited:
        c = read_config(tmp_path / name)
        assert c["derived_from"] == "healthy-recall" and c["corpus_data"] == "fact-sessions", name
        assert c["ttt_init"] == cfg["ttt_init"] and c["base"] == f"../{zoo.RECALL_BASE_NAME}", name
        assert ("recipe" in c) == (name == "recall-config-contradicts-weights"), name
    values = load_checkpoint(tmp_path / "recall-values-random").model.state_dict()
    for key, trained in source.model.state_dict().items():
        if ".ttt." in key:
            assert torch.equal(values[key], trained) != key.endswith(("wv.weight", "wv.bias")), key
    assert read_config(tmp_path / "recall-no-state-carry")["decoder"]["ttt_reset_each_call"] is True
    assert read_config(tmp_path / "recall-config-contradicts-weights")["decoder"]["ttt"]["mini_batch_size"] == 64
    with pytest.raises(KeyError, match="unknown zoo checkpoint"):
        zoo.build_zoo(tmp_path, log=None, only=["no-such-entry"])


def test_zoo_generations_split_the_entries_by_base():
    from ttt_checks.models.reference import zoo

    recall, dialogue = zoo.generation_entries("recall"), zoo.generation_entries("dialogue")
    assert recall[0] == zoo.DEFAULT_CHECKPOINT and zoo.DIALOGUE_DEFAULT in dialogue
    assert set(recall) | set(dialogue) == set(zoo.ENTRIES) and not set(recall) & set(dialogue)
    assert zoo.generation_entries("all") == list(zoo.ENTRIES)
    for name in recall + dialogue:
        entry = zoo.ENTRIES[name]
        assert (entry.how == "transformed") == bool(entry.edit), name
        assert not entry.edit or entry.edit in zoo.EDITS, name
    with pytest.raises(KeyError, match="unknown zoo generation"):
        zoo.generation_entries("moshi")
