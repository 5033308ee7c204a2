"""Talkativeness and collapse metrics of generated speech, from audio plus its transcript.

The gating sweep asks "does the model still talk, and sensibly?". Whisper's word count alone
cannot answer it: Whisper hallucinates on silence and noise ("Thank you.", "you", "Beep beep
beep..."), which would make a silent model look talkative. So words count only when

1. they lie in segments that overlap voice activity (Silero VAD, bundled with faster-whisper),
2. the segment's no-speech probability is low (Whisper's own 0.6 threshold), and
3. the segment is not one of the phrases Whisper is known to invent when nothing is said,
   standing alone (a stoplist as a last line of defence), nor a bracketed annotation.

On the counted words we measure talkativeness (words, words per minute of audio, speaking
rate per minute of speech, speech ratio) and degeneracy: distinct-n (Li et al. 2016),
seq-rep-4 (Welleck et al. 2020), the longest run of a repeated n-gram, and the zlib
compression ratio Whisper uses to reject looping decodes (> 2.4). WER/CER against a known
reference use jiwer with case and punctuation normalised.

Entry points: :func:`talk_metrics` -> :class:`TalkMetrics`, and :func:`judge_collapse`.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ttt_checks.asr.transcript import Segment, Transcript
from ttt_checks.audio.wav import resample

log = logging.getLogger(__name__)

VAD_SAMPLE_RATE = 16000

#: Segments whose whole normalised text is one of these (possibly repeated, "thank you thank
#: you") are dropped: Whisper produces them on silence, music and noise (openai/whisper
#: discussion 679; Koenecke et al., "Careless Whisper", FAccT 2024).
HALLUCINATION_PHRASES: frozenset[str] = frozenset(
    {
        "you",
        "thank you",
        "thank you very much",
        "thanks",
        "thanks for watching",
        "thank you for watching",
        "thanks for listening",
        "thank you for listening",
        "thank you so much for watching",
        "please subscribe",
        "subscribe to my channel",
        "like and subscribe",
        "see you next time",
        "see you in the next video",
        "bye",
        "bye bye",
        "music",
        "applause",
        "silence",
        "blank audio",
        "subtitles by the amaraorg community",
    }
)

_BRACKETED = re.compile(r"^\s*(?:[\[(*♪].*[\])*♪]\s*)+$")
_DASHES = re.compile(r"[-\u2010-\u2015/_]+")
_NON_WORD = re.compile(r"[^\w\s']+")
_EDGE_APOSTROPHES = re.compile(r"(?<!\w)'|'(?!\w)")


# --------------------------------------------------------------------------------------------
# Text normalisation and degeneracy measures
# --------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lower case, dashes and slashes as word breaks, other punctuation removed.

    Apostrophes inside words stay ("we're" is one word, as a listener would count it);
    "round-fark" becomes two words, as it was spoken.
    """
    t = text.lower().replace("\u2019", "'")
    t = _DASHES.sub(" ", t)
    t = _NON_WORD.sub(" ", t)
    t = _EDGE_APOSTROPHES.sub(" ", t)
    return " ".join(t.split())


def words_of(text: str) -> list[str]:
    """The words of ``text`` after :func:`normalize_text`."""
    return normalize_text(text).split()


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams, in order."""
    if n < 1:
        raise ValueError(f"ngrams: n must be >= 1, got {n}")
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(words: Sequence[str], n: int) -> float:
    """Unique n-grams / n-grams. 1.0 when there are no n-grams (nothing repeats)."""
    grams = ngrams(words, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def seq_rep_n(words: Sequence[str], n: int = 4) -> float:
    """1 - unique n-grams / n-grams (seq-rep-n): the share of n-grams that repeat an earlier one.

    0.0 when there are no n-grams; tends to 1.0 for a loop.
    """
    return 1.0 - distinct_n(words, n)


class RepeatRun(NamedTuple):
    """The longest run of one n-gram repeated back to back: which n-gram, how many copies."""

    ngram: tuple[str, ...]
    repeats: int

    @property
    def words(self) -> int:
        """Words covered by the run."""
        return len(self.ngram) * self.repeats


def longest_repeat_run(words: Sequence[str], max_n: int = 10) -> RepeatRun:
    """The n-gram (n <= ``max_n``) repeated the most times consecutively.

    "a b a b a b c" gives (("a", "b"), 3). Ties go to the run covering more words, then to the
    shorter n-gram. Any non-empty text has a run of at least 1 (its first word); empty text
    gives ((), 0). Cost is O(len(words) * max_n), fine for transcripts.
    """
    if not words:
        return RepeatRun((), 0)
    best = RepeatRun((words[0],), 1)
    for n in range(1, min(max_n, len(words) // 2) + 1):
        # run[i] = copies of words[i:i+n] ending at i, counting back in steps of n.
        run = [1] * len(words)
        for i in range(n, len(words) - n + 1):
            if tuple(words[i : i + n]) == tuple(words[i - n : i]):
                run[i] = run[i - n] + 1
                cand = RepeatRun(tuple(words[i : i + n]), run[i])
                if (cand.repeats, cand.words, -n) > (best.repeats, best.words, -len(best.ngram)):
                    best = cand
    return best


def compression_ratio(text: str) -> float:
    """UTF-8 length / zlib-compressed length, exactly as Whisper computes it for segments.

    Ordinary English text is about 1-2; Whisper treats > 2.4 as a looping decode. 0.0 for empty
    text (nothing to compress).
    """
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def _jiwer_transform() -> Any:
    import jiwer

    # normalize_text does case, punctuation, dashes and apostrophes; jiwer then splits.
    return jiwer.Compose([jiwer.SubstituteRegexes({r"\s+": " "}), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])


def _check_reference(reference: str) -> str:
    ref = normalize_text(reference)
    if not ref:
        raise ValueError(
            f"reference {reference!r} has no words after normalisation; WER is undefined without a reference text"
        )
    return ref


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after case/punctuation normalisation. Empty hypothesis -> 1.0 (all deleted).

    An empty reference is a :class:`ValueError` (WER divides by its length).
    """
    import jiwer

    ref = _check_reference(reference)
    hyp = normalize_text(hypothesis)
    if not hyp:
        return 1.0
    t = _jiwer_transform()
    return float(jiwer.wer(ref, hyp, reference_transform=t, hypothesis_transform=t))


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate on the normalised texts (spaces count). Empty hypothesis -> 1.0."""
    import jiwer

    ref = _check_reference(reference)
    hyp = normalize_text(hypothesis)
    if not hyp:
        return 1.0
    return float(jiwer.cer(ref, hyp))


# --------------------------------------------------------------------------------------------
# Voice activity
# --------------------------------------------------------------------------------------------


def speech_regions(
    pcm: np.ndarray,
    sample_rate: int,
    method: str = "auto",
    *,
    threshold: float = 0.5,
    min_silence_ms: int = 150,
    min_speech_ms: int = 100,
    pad_ms: int = 30,
) -> tuple[list[tuple[float, float]], str]:
    """Voiced stretches ``[(start_s, end_s), ...]`` and the method that found them.

    ``method``: ``"silero"`` (faster-whisper's bundled Silero VAD on onnxruntime, offline),
    ``"energy"`` (frames 30 ms above -40 dBFS: a no-dependency fallback that also counts
    noise as voice), or ``"auto"`` (Silero, else energy with a warning). The defaults are
    short on purpose: faster-whisper's (2 s silence, 400 ms pad) are for chunking ASR input
    and would merge a whole reply with its pauses, inflating the speech ratio.
    """
    x = np.asarray(pcm, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"speech_regions expects mono samples of shape (n,), got {x.shape}")
    if x.size == 0:
        return [], "none"
    if sample_rate != VAD_SAMPLE_RATE:
        x = resample(x, sample_rate, VAD_SAMPLE_RATE)
    if method not in ("auto", "silero", "energy"):
        raise ValueError(f"speech_regions: method must be 'auto', 'silero' or 'energy', got {method!r}")
    if method in ("auto", "silero"):
        try:
            from faster_whisper.vad import VadOptions, get_speech_timestamps

            opts = VadOptions(
                threshold=threshold,
                min_speech_duration_ms=min_speech_ms,
                min_silence_duration_ms=min_silence_ms,
                speech_pad_ms=pad_ms,
            )
            stamps = get_speech_timestamps(x, opts, sampling_rate=VAD_SAMPLE_RATE)
            return [(s["start"] / VAD_SAMPLE_RATE, s["end"] / VAD_SAMPLE_RATE) for s in stamps], "silero"
        except ImportError as exc:
            if method == "silero":
                raise RuntimeError(
                    "Silero VAD needs faster-whisper and onnxruntime: `pip install 'ttt-checks[asr]'`"
                ) from exc
            log.warning("Silero VAD unavailable (%s); falling back to the energy VAD, which counts noise as voice", exc)
    return _energy_regions(x, VAD_SAMPLE_RATE, min_silence_ms, min_speech_ms), "energy"


def _energy_regions(
    x: np.ndarray, sr: int, min_silence_ms: int, min_speech_ms: int, floor_dbfs: float = -40.0
) -> list[tuple[float, float]]:
    frame = int(0.03 * sr)
    n = len(x) // frame
    if n == 0:
        return []
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    voiced = 20 * np.log10(np.maximum(rms, 1e-10)) > floor_dbfs
    regions: list[list[float]] = []
    for i in np.flatnonzero(voiced):
        start, end = i * frame / sr, (i + 1) * frame / sr
        if regions and start - regions[-1][1] < min_silence_ms / 1000:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return [(a, b) for a, b in regions if b - a >= min_speech_ms / 1000]


def _overlap(seg: Segment, regions: Sequence[tuple[float, float]]) -> float:
    return sum(max(0.0, min(seg.end, b) - max(seg.start, a)) for a, b in regions)


# --------------------------------------------------------------------------------------------
# The metrics record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TalkMetrics:
    """Talkativeness and degeneracy of one generated clip (see the module docstring).

    ``words`` is the hallucination-guarded count; ``transcript_words`` what Whisper wrote;
    ``dropped`` says which segments were not counted and why.
    """

    duration_s: float
    speech_s: float
    speech_ratio: float
    vad_method: str
    words: int
    transcript_words: int
    words_per_minute: float
    speaking_rate_wpm: float
    distinct_1: float
    distinct_2: float
    seq_rep_4: float
    longest_run: int
    longest_run_ngram: str
    compression_ratio: float
    mean_avg_logprob: float | None
    max_no_speech_prob: float | None
    text: str
    dropped: tuple[str, ...] = field(default=())
    wer: float | None = None
    cer: float | None = None
    reference: str | None = None

    @property
    def dropped_words(self) -> int:
        """Words Whisper wrote that the hallucination guard did not count."""
        return self.transcript_words - self.words

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for metrics.json, record_property and reports)."""
        d = asdict(self)
        d["dropped"] = list(self.dropped)
        d["dropped_words"] = self.dropped_words
        return d


def guarded_segments(
    transcript: Transcript,
    regions: Sequence[tuple[float, float]],
    *,
    no_speech_max: float = 0.6,
    min_overlap_s: float = 0.1,
) -> tuple[list[Segment], list[str]]:
    """Split segments into the ones whose words count and reasons for the others.

    A segment is dropped when its no-speech probability exceeds ``no_speech_max`` (Whisper's
    own threshold), when it overlaps VAD speech by less than ``min_overlap_s`` seconds
    (segment times are coarse, so any real overlap counts), when it is a bracketed annotation
    like "[Music]", or when its whole text is a known hallucination phrase.
    """
    kept: list[Segment] = []
    dropped: list[str] = []
    for seg in transcript.segments:
        norm = normalize_text(seg.text)
        if not norm:
            continue
        if seg.no_speech_prob > no_speech_max:
            dropped.append(f"no-speech probability {seg.no_speech_prob:.2f} > {no_speech_max}: {seg.text[:60]!r}")
        elif _overlap(seg, regions) < min_overlap_s:
            dropped.append(
                f"outside VAD speech ({seg.start:.2f}-{seg.end:.2f} s overlaps "
                f"{_overlap(seg, regions):.2f} s < {min_overlap_s}): {seg.text[:60]!r}"
            )
        elif _BRACKETED.match(seg.text):
            dropped.append(f"non-speech annotation: {seg.text[:60]!r}")
        elif _is_stock_phrase(norm):
            dropped.append(f"known hallucination phrase standing alone: {seg.text[:60]!r}")
        else:
            kept.append(seg)
    return kept, dropped


def _is_stock_phrase(norm: str) -> bool:
    if norm in HALLUCINATION_PHRASES:
        return True
    # "thank you thank you", "you you you": a stock phrase repeated.
    words = norm.split()
    for phrase in HALLUCINATION_PHRASES:
        p = phrase.split()
        if len(words) % len(p) == 0 and words == p * (len(words) // len(p)):
            return True
    return False


def talk_metrics(
    pcm: np.ndarray,
    sample_rate: int,
    transcript: Transcript,
    reference: str | None = None,
    *,
    vad: str = "auto",
    no_speech_max: float = 0.6,
    min_overlap_s: float = 0.1,
) -> TalkMetrics:
    """All talk metrics of one clip: what the health checks call per generated wav.

    ``pcm`` is the mono audio the transcript was made from (any rate; resampled for the VAD),
    ``reference`` the text that should have been said, if known (adds WER/CER on the counted
    text). Thresholds of the guard are arguments so a run can tighten them; the defaults are
    Whisper's own.
    """
    x = np.asarray(pcm, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"talk_metrics expects mono samples of shape (n,), got {x.shape}; downmix first")
    duration = len(x) / float(sample_rate)
    regions, method = speech_regions(x, sample_rate, vad)
    speech_s = float(sum(b - a for a, b in regions))
    kept, dropped = guarded_segments(transcript, regions, no_speech_max=no_speech_max, min_overlap_s=min_overlap_s)
    text = " ".join(s.text.strip() for s in kept)
    words = words_of(text)
    run = longest_repeat_run(words)
    n = len(words)
    return TalkMetrics(
        duration_s=duration,
        speech_s=speech_s,
        speech_ratio=speech_s / duration if duration > 0 else 0.0,
        vad_method=method,
        words=n,
        transcript_words=len(words_of(transcript.text)),
        words_per_minute=60.0 * n / duration if duration > 0 else 0.0,
        speaking_rate_wpm=60.0 * n / speech_s if speech_s > 0 else 0.0,
        distinct_1=distinct_n(words, 1),
        distinct_2=distinct_n(words, 2),
        seq_rep_4=seq_rep_n(words, 4),
        longest_run=run.repeats,
        longest_run_ngram=" ".join(run.ngram),
        compression_ratio=compression_ratio(normalize_text(text)),
        mean_avg_logprob=float(np.mean([s.avg_logprob for s in kept])) if kept else None,
        max_no_speech_prob=max((s.no_speech_prob for s in transcript.segments), default=None),
        text=text,
        dropped=tuple(dropped),
        wer=wer(reference, text) if reference is not None else None,
        cer=cer(reference, text) if reference is not None else None,
        reference=reference,
    )


# --------------------------------------------------------------------------------------------
# Collapse judgement
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollapseJudgement:
    """Whether a clip shows a collapse, which kinds (silence, repetition, gibberish), and why."""

    kinds: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def collapsed(self) -> bool:
        """True when any kind of collapse was found."""
        return bool(self.kinds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"collapsed": self.collapsed, "kinds": list(self.kinds), "reasons": list(self.reasons)}


def judge_collapse(
    m: TalkMetrics,
    *,
    min_words: int = 3,
    min_speech_s: float = 0.5,
    max_seq_rep_4: float = 0.5,
    max_compression_ratio: float = 2.4,
    max_run: int = 4,
    min_speaking_rate_wpm: float = 40.0,
    min_avg_logprob: float = -1.0,
) -> CollapseJudgement:
    """Name the collapse a clip shows, with the numbers behind it.

    - **silence**: fewer than ``min_words`` counted words *and* under ``min_speech_s`` seconds
      of VAD speech: the model did not take its turn.
    - **gibberish**: at least ``min_speech_s`` of voice, yet Whisper finds under
      ``min_speaking_rate_wpm`` words per minute of it (human speech is 120-180; 40 leaves room
      for slow or hesitant replies), or its mean log-probability is below ``min_avg_logprob``
      (Whisper's own "failed decode" threshold): voice without intelligible words.
    - **repetition**: seq-rep-4 above ``max_seq_rep_4`` (half the 4-grams repeat; the
      ``talk_max_repeat_rate`` default in pyproject), a compression ratio above
      ``max_compression_ratio`` (Whisper's loop threshold), or one n-gram repeated
      ``max_run`` or more times back to back ("no no no" is speech, four is a loop).
    """
    kinds: list[str] = []
    reasons: list[str] = []
    if m.words < min_words and m.speech_s < min_speech_s:
        kinds.append("silence")
        reasons.append(
            f"silence: {m.words} words (< {min_words}) and {m.speech_s:.2f} s of VAD speech "
            f"(< {min_speech_s} s) in {m.duration_s:.2f} s"
        )
    if m.speech_s >= min_speech_s:
        if m.speaking_rate_wpm < min_speaking_rate_wpm:
            kinds.append("gibberish")
            reasons.append(
                f"gibberish: {m.speech_s:.2f} s of voice but only {m.words} intelligible words "
                f"({m.speaking_rate_wpm:.0f} words per speech minute < {min_speaking_rate_wpm:.0f})"
            )
        elif m.mean_avg_logprob is not None and m.mean_avg_logprob < min_avg_logprob:
            kinds.append("gibberish")
            reasons.append(
                f"gibberish: Whisper is unsure of what it heard (mean log-probability "
                f"{m.mean_avg_logprob:.2f} < {min_avg_logprob})"
            )
    rep: list[str] = []
    if m.seq_rep_4 > max_seq_rep_4:
        rep.append(f"seq-rep-4 {m.seq_rep_4:.2f} > {max_seq_rep_4}")
    if m.compression_ratio > max_compression_ratio:
        rep.append(f"compression ratio {m.compression_ratio:.2f} > {max_compression_ratio}")
    if m.longest_run >= max_run:
        rep.append(f"{m.longest_run_ngram!r} repeated {m.longest_run} times in a row (>= {max_run})")
    if rep:
        kinds.append("repetition")
        reasons.append("repetition: " + "; ".join(rep))
    return CollapseJudgement(tuple(kinds), tuple(reasons))
