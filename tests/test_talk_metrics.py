"""Talk metrics: degeneracy measures (examples and properties), WER rules, the hallucination
guard on hand-made transcripts, and the collapse judgement on fixture audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttt_checks.asr.transcript import Segment, Transcript
from ttt_checks.audio import load_audio
from ttt_checks.metrics.talk import (
    TalkMetrics,
    cer,
    compression_ratio,
    distinct_n,
    guarded_segments,
    judge_collapse,
    longest_repeat_run,
    normalize_text,
    seq_rep_n,
    speech_regions,
    talk_metrics,
    wer,
    words_of,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
WORDS = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "go", "no"]), max_size=40)


def _seg(text: str, start: float = 0.0, end: float = 3.0, no_speech: float = 0.1, logprob: float = -0.3) -> Segment:
    return Segment(start, end, text, no_speech, logprob, compression_ratio(text))


def _transcript(*segments: Segment, duration: float = 4.0) -> Transcript:
    return Transcript(" ".join(s.text for s in segments), tuple(segments), "en", duration, "test")


@pytest.fixture(scope="module")
def fox() -> np.ndarray:
    return load_audio(FIXTURES / "fox_us_160.wav").pcm


# ---------------------------------------------------------------------------- text measures


def test_normalisation_lowercases_drops_punctuation_and_splits_dashes() -> None:
    assert normalize_text("The quick round-fark, jump! We're 'here'.") == "the quick round fark jump we're here"
    assert words_of("  ") == []


def test_distinct_and_seq_rep_on_a_known_example() -> None:
    w = "a b a b a b".split()
    assert distinct_n(w, 1) == pytest.approx(2 / 6)
    assert distinct_n(w, 2) == pytest.approx(2 / 5)
    assert seq_rep_n(w, 4) == pytest.approx(1 - 2 / 3)  # 4-grams abab, baba, abab
    assert distinct_n([], 2) == 1.0 and seq_rep_n(["a", "b"], 4) == 0.0


def test_longest_run_finds_the_repeated_phrase() -> None:
    run = longest_repeat_run("i think i think i think so so".split())
    assert run.ngram == ("i", "think") and run.repeats == 3 and run.words == 6
    assert longest_repeat_run("all words differ here".split()).repeats == 1
    assert longest_repeat_run([]).repeats == 0


def test_compression_ratio_flags_a_loop_but_not_a_sentence() -> None:
    assert compression_ratio("Please call me back when you have a moment this afternoon.") < 1.5
    assert compression_ratio("beep " * 60) > 2.4
    assert compression_ratio("") == 0.0


def _naive_longest_run(words: list[str], max_n: int) -> int:
    best = 1 if words else 0
    for n in range(1, max_n + 1):
        for i in range(len(words)):
            k = 1
            while words[i + k * n : i + (k + 1) * n] == words[i : i + n] and i + (k + 1) * n <= len(words):
                k += 1
            if i + n <= len(words):
                best = max(best, k)
    return best


@given(WORDS)
def test_distinct_n_is_a_fraction_and_seq_rep_its_complement(words: list[str]) -> None:
    for n in (1, 2, 4):
        d = distinct_n(words, n)
        assert 0.0 < d <= 1.0
        assert seq_rep_n(words, n) == pytest.approx(1.0 - d)


@given(WORDS, st.integers(min_value=2, max_value=5))
def test_repeating_text_raises_seq_rep_and_the_run(words: list[str], k: int) -> None:
    looped = words * k
    if len(words) >= 1:
        assert longest_repeat_run(looped, max_n=max(10, len(words))).repeats >= k
    if len(words) >= 4:
        assert seq_rep_n(looped, 4) >= seq_rep_n(words, 4)
        assert seq_rep_n(looped, 4) >= (k - 1) / k - 1e-9 - 3 / len(looped)


@given(WORDS, st.integers(min_value=1, max_value=6))
def test_longest_run_matches_a_brute_force_count_and_really_occurs(words: list[str], max_n: int) -> None:
    run = longest_repeat_run(words, max_n=max_n)
    assert run.repeats == _naive_longest_run(words, min(max_n, len(words) // 2) or 1)
    if words:
        block = list(run.ngram) * run.repeats
        assert any(words[i : i + len(block)] == block for i in range(len(words) - len(block) + 1))


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80))
def test_normalisation_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once


@given(st.lists(st.sampled_from(["red", "green", "blue"]), min_size=1, max_size=8), st.integers(2, 30))
def test_compression_ratio_grows_with_repetition(words: list[str], k: int) -> None:
    text = " ".join(words)
    assert compression_ratio(" ".join([text] * (k * 4))) > compression_ratio(text)


# ---------------------------------------------------------------------------- WER / CER


def test_wer_ignores_case_and_punctuation() -> None:
    assert wer("The quick brown fox.", "the QUICK brown fox") == 0.0
    assert wer("a b c d", "a x c d") == pytest.approx(0.25)
    assert cer("abcd", "abed") == pytest.approx(0.25)


def test_empty_hypothesis_is_wer_one() -> None:
    assert wer("say something", "") == 1.0 and wer("say something", " ... ") == 1.0 and cer("say", "") == 1.0


def test_empty_reference_is_an_error() -> None:
    with pytest.raises(ValueError, match="no words after normalisation"):
        wer("  !? ", "hello")


# ---------------------------------------------------------------------------- guard


def test_guard_keeps_real_speech(fox: np.ndarray) -> None:
    t = _transcript(_seg("The quick brown fox jumps over the lazy dog."))
    m = talk_metrics(fox, 16000, t, reference="The quick brown fox jumps over the lazy dog.")
    assert m.words == 9 and m.dropped == () and m.wer == 0.0


@pytest.mark.parametrize("phrase", ["Thank you.", "Thanks for watching!", "you", "Thank you. Thank you."])
def test_guard_drops_stock_phrases_standing_alone(fox: np.ndarray, phrase: str) -> None:
    m = talk_metrics(fox, 16000, _transcript(_seg(phrase)))
    assert m.words == 0 and "known hallucination phrase" in m.dropped[0]


def test_guard_keeps_stock_words_inside_a_sentence(fox: np.ndarray) -> None:
    m = talk_metrics(fox, 16000, _transcript(_seg("Thank you for the help with the report.")))
    assert m.words == 8


def test_guard_drops_high_no_speech_and_out_of_vad_and_annotations(fox: np.ndarray) -> None:
    regions, _ = speech_regions(fox, 16000)
    assert regions and regions[0][0] > 0.1, "the fixture has leading silence"
    kept, dropped = guarded_segments(
        _transcript(
            _seg("before anyone spoke", 0.0, 0.15),
            _seg("[Music]", 0.5, 2.0),
            _seg("unsure words", 0.5, 2.0, no_speech=0.9),
            _seg("the quick brown fox", 0.5, 2.0),
        ),
        regions,
    )
    assert [s.text for s in kept] == ["the quick brown fox"]
    assert [d.split(":")[0] for d in dropped] == [
        "outside VAD speech (0.00-0.15 s overlaps 0.00 s < 0.1)", "non-speech annotation", "no-speech probability 0.90 > 0.6",
    ]  # fmt: skip


# ---------------------------------------------------------------------------- metrics + collapse


def test_metrics_of_a_fixture_sentence_are_plausible(fox: np.ndarray) -> None:
    m = talk_metrics(fox, 16000, _transcript(_seg("The quick brown fox jumps over the lazy dog.")))
    assert m.vad_method == "silero"
    assert 0.5 < m.speech_ratio < 0.95  # 0.3 s of padding each side of ~3 s of speech
    assert m.words_per_minute == pytest.approx(60 * 9 / m.duration_s)
    assert 120 < m.speaking_rate_wpm < 260  # espeak at 160 wpm, measured over voiced time only
    assert m.distinct_1 == pytest.approx(8 / 9) and m.seq_rep_4 == 0.0 and m.longest_run == 1
    assert json.loads(json.dumps(m.to_dict()))["dropped_words"] == 0
    assert not judge_collapse(m).collapsed


def test_silence_fixture_is_judged_silence() -> None:
    pcm = load_audio(FIXTURES / "silence.wav").pcm
    j = judge_collapse(talk_metrics(pcm, 16000, _transcript(_seg("Thank you.", 0.0, 2.0), duration=2.0)))
    assert j.kinds == ("silence",) and "0 words" in j.reasons[0]


def test_looping_speech_is_judged_repetition(fox: np.ndarray) -> None:
    loop = " ".join(["the lazy dog"] * 8)
    j = judge_collapse(talk_metrics(fox, 16000, _transcript(_seg(loop))))
    assert j.kinds == ("repetition",)
    assert "seq-rep-4" in j.reasons[0] and "'the lazy dog' repeated 8 times" in j.reasons[0]


def test_voice_without_words_is_judged_gibberish() -> None:
    noise = load_audio(FIXTURES / "noise.wav").pcm
    m = talk_metrics(noise, 16000, _transcript(duration=2.0), vad="energy")  # energy VAD hears the noise
    assert m.speech_s > 1.5
    j = judge_collapse(m)
    assert j.kinds == ("gibberish",) and "only 0 intelligible words" in j.reasons[0]


def test_low_confidence_speech_is_judged_gibberish(fox: np.ndarray) -> None:
    t = _transcript(_seg("the quick brown fox jumps over the lazy dog", logprob=-1.6))
    j = judge_collapse(talk_metrics(fox, 16000, t))
    assert j.kinds == ("gibberish",) and "log-probability -1.60" in j.reasons[0]


def test_collapse_thresholds_are_arguments(fox: np.ndarray) -> None:
    m = talk_metrics(fox, 16000, _transcript(_seg("no no no, the quick brown fox")))
    assert not judge_collapse(m).collapsed
    assert judge_collapse(m, max_run=3).kinds == ("repetition",)


def test_metrics_record_round_trips_through_json(fox: np.ndarray) -> None:
    m = talk_metrics(fox, 16000, _transcript(_seg("The quick brown fox.")), reference="the quick brown fox")
    d = json.loads(json.dumps(m.to_dict()))
    d.pop("dropped_words")
    d["dropped"] = tuple(d["dropped"])
    assert TalkMetrics(**d) == m


def test_stereo_input_is_refused() -> None:
    with pytest.raises(ValueError, match="downmix first"):
        talk_metrics(np.zeros((100, 2), np.float32), 16000, _transcript())
