"""A generated dialogue language with facts to recall: data with no size limit, made by code.

A stream is a run of **sessions**, each a few ``<user> u <reply> r <eot>`` pairs in lower-case
English, drawn from a seeded ``random.Random``:

1. an optional greeting;
2. 3-6 **facts** the user states about themselves, each of its own kind (``FACT_KINDS``: a name,
   a best friend, a home town, a pet and what it is called, an age, a lucky number, a favourite
   colour, where they keep a thing, something they like), with the bot's acknowledgement (which
   may repeat the value);
3. **recall**: every fact asked back ``RECALLS`` (2) times ("what is my name?" -> "your name is
   Tobera."), each as soon as at least ``min_gap`` tokens have passed since the value was last
   said (at most ``OPEN_FACTS`` wait at a time), or, in half the sessions that state a name or a
   home town, that fact used once in the goodbye instead ("goodbye, Tobera!");
4. between them, **small talk**: pairs of the chatterbot-corpus split (natural sentences, 10%)
   and templated chat over the vocabulary (a word said and repeated within the pair, so the base
   learns to copy inside its attention window).

Statements, questions and small talk interleave, so a recall comes soon after it is due and a
256-token training window usually holds both ends of it.

The values are random per session: names and towns are made of 2-3 random syllables (tens of
thousands of each), liked things and hiding places are words of the vocabulary (the distinct
words of chatterbot-corpus, about 2,000 after dropping the most frequent), numbers are random.
Nothing in the language statistics predicts a value; a model predicts a recalled value only
from a memory of its session, and with local attention (``DecoderConfig.attention_window``
below ``min_gap``) that memory has to be the TTT state.

The generator takes its small talk and vocabulary as arguments (``corpus.py`` supplies them
from one split of chatterbot-corpus), so a training and a validation stream share no small-talk
pair, and draws from ``random.Random("fact-sessions/<split>/<seed>")``: same split and seed,
same text, on any machine and Python version that keeps ``random``'s documented sequence.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

Pair = tuple[str, str]

SESSION_FACTS = (3, 6)  # facts per session, inclusive
DEFAULT_MIN_GAP = 64  # tokens between a fact's last mention and its recall (2 windows of 32)
SMALL_TALK_MAX_BYTES = 70  # chatterbot pairs longer than this (user + reply) are not used as small talk
COMMON_WORDS_LEFT_OUT = 150  # the most frequent vocabulary words are never fact values ("the", "you", ...)
OPEN_FACTS = 4  # facts stated and not yet recalled for the last time, at most
RECALLS = 2  # times each fact is asked back (each at least min_gap after its previous mention)
CHATTERBOT_SHARE = 0.1  # of the small-talk pairs (the rest is templated chat): held-out chatterbot text is the
# costliest to predict, and nothing in it can be recalled
MIN_VOCABULARY = 1000  # a language over fewer words is too easy to memorise (measured: chatterbot gives ~2,600)

_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou") + ("an", "el", "or", "is", "um")
_TOWN_ENDINGS = ("ton", "ville", "burg", "field", "port", "ford", "more", "dale")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink", "brown",
           "silver", "gold", "violet", "teal", "maroon")
PETS = ("dog", "cat", "horse", "parrot", "rabbit", "fish", "hamster", "turtle", "goat", "snake")
THINGS = ("keys", "books", "glasses", "gloves", "letters", "coins", "shoes", "papers")


def generated_name(rng: random.Random) -> str:
    """A capitalised name of 2-4 random syllables ("Tobera", "Kisumavo")."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()


def generated_town(rng: random.Random) -> str:
    """A capitalised town of 1-2 random syllables and an ending ("Dalikford")."""
    return ("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 2))) + rng.choice(_TOWN_ENDINGS)).capitalize()


@dataclass(frozen=True)
class FactKind:
    """One kind of fact: how its value is drawn and the phrases that state, acknowledge, ask and answer it.

    Each phrase holds ``{v}`` (the value) and may hold ``{x}`` (a detail drawn once per fact, e.g. the
    pet's species); ``intro[i]`` is answered by ``answer[i]`` (the same wording turned to "you"),
    so a model can match the recall to its statement. ``ask`` and ``ack`` phrases are free.
    """

    name: str
    value: Callable[[random.Random, Sequence[str]], str]
    intro: tuple[str, ...]
    ack: tuple[str, ...]
    ask: tuple[str, ...]
    answer: tuple[str, ...]
    detail: tuple[str, ...] = ("",)
    farewell: tuple[str, ...] = ()  # a goodbye that uses the value (a recall that is not a question)


def _word(rng: random.Random, vocab: Sequence[str]) -> str:
    return rng.choice(vocab)


FACT_KINDS: tuple[FactKind, ...] = (
    FactKind("name", lambda r, w: generated_name(r),
             intro=("my name is {v}.", "hello, my name is {v}."),
             ack=("nice to meet you, {v}.", "hello {v}, what can i do for you?", "what a nice name."),
             ask=("what is my name?", "do you remember my name?", "who am i?"),
             answer=("your name is {v}.", "of course, your name is {v}."),
             farewell=("goodbye, {v}!", "see you soon, {v}.")),
    FactKind("friend", lambda r, w: generated_name(r),
             intro=("my best friend is {v}.", "my best friend is called {v}."),
             ack=("{v} sounds like a good friend.", "it is good to have a friend."),
             ask=("who is my best friend?", "do you know who my best friend is?"),
             answer=("your best friend is {v}.", "your best friend is called {v}.")),
    FactKind("town", lambda r, w: generated_town(r),
             intro=("i live in {v}.", "i come from {v}."),
             ack=("i have heard of {v}.", "is {v} a nice place?", "that is far from here."),
             ask=("where do i live?", "where do i come from?", "do you remember my town?"),
             answer=("you live in {v}.", "you come from {v}."),
             farewell=("have a safe trip back to {v}.",)),
    FactKind("pet", lambda r, w: generated_name(r), detail=PETS,
             intro=("my {x} is called {v}.", "i have a {x} called {v}."),
             ack=("{v} is a good name for a {x}.", "i like animals."),
             ask=("what is my {x} called?", "what is the name of my {x}?"),
             answer=("your {x} is called {v}.", "you have a {x} called {v}.")),
    FactKind("age", lambda r, w: str(r.randint(18, 89)),
             intro=("i am {v} years old.", "i turned {v} this year."),
             ack=("{v} is a good age.", "you are still young."),
             ask=("how old am i?", "do you remember my age?"),
             answer=("you are {v} years old.", "you turned {v} this year.")),
    FactKind("number", lambda r, w: str(r.randint(100, 999999)),
             intro=("my lucky number is {v}.", "my favourite number is {v}."),
             ack=("{v} is a fine number.", "i will remember that."),
             ask=("what is my lucky number?", "which number do i like?"),
             answer=("your lucky number is {v}.", "your favourite number is {v}.")),
    FactKind("colour", lambda r, w: r.choice(COLOURS),
             intro=("my favourite colour is {v}.", "i like the colour {v}."),
             ack=("{v} is a lovely colour.", "i like that colour too."),
             ask=("what is my favourite colour?", "which colour do i like?"),
             answer=("your favourite colour is {v}.", "you like the colour {v}.")),
    FactKind("place", _word, detail=THINGS,
             intro=("i keep my {x} in the {v}.", "my {x} are always in the {v}."),
             ack=("the {v} is a good place for {x}.", "i will remember that."),
             ask=("where do i keep my {x}?", "where are my {x}?"),
             answer=("you keep your {x} in the {v}.", "your {x} are always in the {v}.")),
    FactKind("likes", _word,
             intro=("i really like {v}.", "what i like most is {v}."),
             ack=("why do you like {v}?", "many people like that."),
             ask=("what do i like?", "what do i like most?"),
             answer=("you really like {v}.", "what you like most is {v}.")),
)
KINDS_BY_NAME = {k.name: k for k in FACT_KINDS}

_CHAT = (  # templated small talk over the vocabulary: the word comes back within the pair
    ("have you ever seen a {w}?", "no, i have never seen a {w}."),
    ("what do you think about {w}?", "i think {w} is interesting."),
    ("tell me about {w}.", "{w} is not something i know much about."),
    ("do you like {w}?", "yes, i like {w} a lot."),
    ("is {w} a word?", "yes, {w} is a word."),
)


GREETINGS = (("hello.", "hello, how can i help you?"), ("hi there.", "hi! how are you?"),
             ("good morning.", "good morning to you."))
GOODBYES = ("goodbye.", "i have to go now.", "bye for now.")
TEMPLATE_WORDS = frozenset(re.findall(r"[a-z]+", " ".join(
    [p for k in FACT_KINDS for p in (*k.intro, *k.ack, *k.ask, *k.answer, *k.farewell, *k.detail)]
    + [p for pair in (*_CHAT, *GREETINGS) for p in pair] + list(GOODBYES) + list(COLOURS))))


@dataclass(frozen=True)
class Mention:
    """A fact's value in a session: stated (``intro``), repeated in the acknowledgement (``ack``),
    or recalled later (``recall``: answered to a question, or used in a goodbye)."""

    kind: str
    value: str
    pair: int  # index of the pair in the session
    role: str  # "intro", "ack" or "recall"


@dataclass(frozen=True)
class Session:
    """One session: its (user, reply) pairs and where each fact value occurs in them."""

    pairs: tuple[Pair, ...]
    mentions: tuple[Mention, ...]

    def text(self) -> str:
        return "".join(f"<user> {u} <reply> {r} <eot>\n" for u, r in self.pairs)


def pair_tokens(pair: Pair) -> int:
    """Tokens of one encoded pair: <user>, the user bytes, <reply>, the reply bytes, <eot>."""
    return 3 + len(pair[0].encode("utf-8")) + len(pair[1].encode("utf-8"))


def recall_gaps(session: Session) -> list[tuple[Mention, int]]:
    """For every recall: the tokens between the end of the pair holding the value's latest earlier
    mention and the start of the recalling pair (a lower bound on the distance the value travels)."""
    starts = [0]
    for p in session.pairs:
        starts.append(starts[-1] + pair_tokens(p))
    out = []
    for m in session.mentions:
        if m.role != "recall":
            continue
        earlier = [e for e in session.mentions if e.kind == m.kind and e.value == m.value and e.pair < m.pair]
        if not earlier:
            raise ValueError(f"recall of {m.kind} {m.value!r} in pair {m.pair} was never stated before")
        last = max(e.pair for e in earlier)
        out.append((m, starts[m.pair] - starts[last + 1]))
    return out


def vocabulary(texts: Iterable[str], leave_out_common: int = COMMON_WORDS_LEFT_OUT) -> list[str]:
    """The fact-value words of ``texts``: distinct lower-case alphabetic words of 4-12 letters, minus
    the ``leave_out_common`` most frequent ones, sorted (so the list does not depend on text order)."""
    counts = Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    common = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:leave_out_common]}
    return sorted(w for w in counts if 4 <= len(w) <= 12 and w not in common)


class DialogueLanguage:
    """Sessions of the generated language over one split's small talk and a vocabulary."""

    def __init__(self, small_talk: Sequence[Pair], vocab: Sequence[str], min_gap: int = DEFAULT_MIN_GAP,
                 session_facts: tuple[int, int] = SESSION_FACTS, recalls: int = RECALLS) -> None:
        if len(vocab) < MIN_VOCABULARY:
            raise ValueError(f"a vocabulary of {len(vocab)} words is too small for the dialogue language "
                             f"(at least {MIN_VOCABULARY}); is chatterbot-corpus 1.3.x installed?")
        lo, hi = session_facts
        if not 1 <= lo <= hi <= len(FACT_KINDS):
            raise ValueError(f"session_facts must lie within 1..{len(FACT_KINDS)}, got {session_facts}")
        if min_gap < 0:
            raise ValueError(f"min_gap must be >= 0, got {min_gap}")
        if recalls < 1:
            raise ValueError(f"recalls must be >= 1, got {recalls}")
        self.recalls = recalls
        self.small_talk = [p for p in small_talk if len(p[0]) + len(p[1]) <= SMALL_TALK_MAX_BYTES]
        if not self.small_talk:
            raise ValueError("no small-talk pair short enough for a session")
        # A value that is also a word of the templates would show up where it was not stated.
        self.vocab = [w for w in vocab if w not in TEMPLATE_WORDS]
        self.min_gap = min_gap
        self.session_facts = session_facts

    def _small_talk(self, rng: random.Random, avoid: set[str]) -> Pair:
        """A chatterbot pair or a templated chat pair; never one that holds a fact value of the session."""
        while True:
            if rng.random() < CHATTERBOT_SHARE:
                user, reply = rng.choice(self.small_talk)
            else:
                user, reply = rng.choice(_CHAT)
                w = rng.choice(self.vocab)
                user, reply = user.format(w=w), reply.format(w=w)
            words = set(re.findall(r"[a-z0-9]+", (user + " " + reply).lower()))
            if not words & avoid:
                return user, reply

    def session(self, rng: random.Random) -> Session:
        """One session (see the module docstring)."""
        pairs: list[Pair] = []
        mentions: list[Mention] = []
        kinds = rng.sample(FACT_KINDS, rng.randint(*self.session_facts))
        facts: list[tuple[FactKind, str, str, int]] = []  # kind, value, detail, phrase index
        used: set[str] = set()
        for kind in kinds:
            value = kind.value(rng, self.vocab)
            while value.lower() in used:
                value = kind.value(rng, self.vocab)
            used.add(value.lower())
            facts.append((kind, value, rng.choice(kind.detail), rng.randrange(len(kind.intro))))
        avoid = set(used)
        if rng.random() < 0.5:
            pairs.append(rng.choice(GREETINGS))
        # Each fact is asked back ``recalls`` times, or (one fact with a farewell phrase, half the time)
        # used once in the goodbye instead. Statements, questions and small talk interleave: a fact is asked once
        # ``min_gap`` tokens have passed since it was stated, so recalls come soon after they become due
        # and most of a session fits a training window.
        farewells = [f for f in facts if f[0].farewell]
        farewell = rng.choice(farewells) if farewells and rng.random() < 0.5 else None
        pending = list(facts)
        stated: list[tuple[tuple[FactKind, str, str, int], int, int]] = []  # fact, position after its last
        # mention, recalls left
        pos = sum(pair_tokens(p) for p in pairs)

        def add(pair: Pair) -> None:
            nonlocal pos
            pairs.append(pair)
            pos += pair_tokens(pair)

        while pending or stated:
            due = [e for e in stated if pos - e[1] >= self.min_gap]
            if due and rng.random() < 0.8:
                entry = due[0]  # the longest waiting
                stated.remove(entry)
                kind, value, detail, k = entry[0]
                add((rng.choice(kind.ask).format(x=detail), kind.answer[k].format(v=value, x=detail)))
                mentions.append(Mention(kind.name, value, len(pairs) - 1, "recall"))
                if entry[2] > 1:  # asked again later, min_gap after this answer
                    stated.append((entry[0], pos, entry[2] - 1))
            elif pending and len(stated) < OPEN_FACTS and rng.random() < 0.7:
                fact = pending.pop(0)
                kind, value, detail, k = fact
                ack = rng.choice(kind.ack)
                add((kind.intro[k].format(v=value, x=detail), ack.format(v=value, x=detail)))
                mentions.append(Mention(kind.name, value, len(pairs) - 1, "intro"))
                if "{v}" in ack:
                    mentions.append(Mention(kind.name, value, len(pairs) - 1, "ack"))
                if fact is farewell:
                    farewell_end = pos
                else:
                    stated.append((fact, pos, self.recalls))
            else:
                add(self._small_talk(rng, avoid))
        if farewell is not None:
            while pos - farewell_end < self.min_gap:
                add(self._small_talk(rng, avoid))
            kind, value = farewell[0], farewell[1]
            add((rng.choice(GOODBYES), rng.choice(kind.farewell).format(v=value)))
            mentions.append(Mention(kind.name, value, len(pairs) - 1, "recall"))
        return Session(tuple(pairs), tuple(mentions))

    def sessions(self, count: int, split: str, seed: int) -> list[Session]:
        """``count`` sessions drawn from the generator of (``split``, ``seed``)."""
        rng = random.Random(f"fact-sessions/{split}/{seed}")
        return [self.session(rng) for _ in range(count)]
