"""English dialogue from chatterbot-corpus as (user turn -> reply) pairs, and training batches.

The corpus (BSD-3-Clause, see README.md here) ships YAML files under
``chatterbot_corpus/data/english/*.yml``; each has ``conversations: [[turn, turn, ...], ...]``.
Every consecutive pair of turns in a conversation becomes one (user -> reply) example, so a
conversation ``a, b, c`` gives ``a -> b`` and ``b -> c``. Pairs of one conversation stay
together and in order in the token stream: the reply of one pair is the user turn of the next,
which gives a TTT layer something it can genuinely learn *within* a sequence (text it has just
seen comes back).

Two choices keep the corpus what a speaking dialogue model should learn: ``coding.yml`` is
left out (its replies are program listings, which espeak-ng cannot speak as dialogue), and
exact duplicate conversations are dropped (``tech_support.yml`` repeats many of its
conversations verbatim, which would also leak them across the split).

The split into training and validation is by conversation, seeded, so validation text is
never trained on.

Two token streams are built from a split (``DATA_FORMATS``):

- ``dialogue``: the conversations back to back, the format of the first reference models.
  Most chatterbot conversations are a single pair, so little of this text recurs at all.
- ``recall-sessions``: the pairs of a split, in conversation order, grouped into sessions of
  1-2 pairs (``SESSION_PAIRS``); each session is followed by the same user turns asked again,
  in a shuffled order, each answered with the reply it got the first time (a user who comes back to earlier
  questions, a bot that answers consistently). About half the text of a session repeats
  something said 40-250 tokens earlier, beyond a local attention window of 32 (stacked
  windowed blocks reach at most num_layers x 31 positions back, and only through relays): a
  model predicts those replies well only from a memory of the session (its TTT layer), not
  from the language statistics every reply shares. Held-out text is the same construction on the
  validation split.
- ``fact-sessions``: the generated dialogue language of ``dialogue.py``: sessions in which facts
  stated early (names, towns, numbers, things, preferences) are asked back beyond a local
  window, with the split's chatterbot pairs as small talk and the corpus's words as values
  (``FACT_SESSIONS`` sessions per split; train and validation draw from different generators).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import torch

from ttt_checks.models.reference.dialogue import DialogueLanguage, vocabulary
from ttt_checks.models.reference.tokenizer import ByteTokenizer

Pair = tuple[str, str]


EXCLUDED_FILES = ("coding.yml",)
DATA_FORMATS = ("dialogue", "recall-sessions", "fact-sessions")
FACT_SESSIONS = {"train": 6000, "val": 300}  # sessions per split (~400 tokens each: 2.4M and 120k tokens)
SESSION_PAIRS = (1, 2)  # pairs per recall session, inclusive range (measured: 28% of held-out tokens then
# continue a 6-gram last seen 32+ tokens earlier, 10% with sessions of 2-4 pairs)


class CorpusError(RuntimeError):
    """The dialogue corpus is missing or malformed; the message says how to get it."""


def _english_files() -> list:
    try:
        root = resources.files("chatterbot_corpus") / "data" / "english"
    except ModuleNotFoundError:
        raise CorpusError(
            "chatterbot-corpus is not installed; install the 'train' extra: pip install 'ttt-checks[train]'"
        ) from None
    files = sorted(
        (p for p in root.iterdir() if p.name.endswith(".yml") and p.name not in EXCLUDED_FILES), key=lambda p: p.name
    )
    if not files:
        raise CorpusError(f"no English YAML files under {root}; is chatterbot-corpus 1.3.x installed?")
    return files


def load_conversations() -> list[list[str]]:
    """Every distinct English conversation (a list of turns), in file order; non-text turns are dropped."""
    try:
        import yaml
    except ModuleNotFoundError:
        raise CorpusError("pyyaml is needed to read chatterbot-corpus; pip install 'ttt-checks[train]'") from None
    conversations: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for path in _english_files():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations", []):
            turns = [" ".join(t.split()) for t in conv if isinstance(t, str) and t.strip()]
            if len(turns) >= 2 and tuple(turns) not in seen:
                seen.add(tuple(turns))
                conversations.append(turns)
    if not conversations:
        raise CorpusError("chatterbot-corpus has no usable English conversations")
    return conversations


def conversation_pairs(turns: Sequence[str]) -> list[Pair]:
    """(turn i -> turn i+1) for every consecutive pair of turns."""
    return [(a, b) for a, b in zip(turns, turns[1:])]


@dataclass
class DialogueCorpus:
    """Training and validation conversations, already as pair lists."""

    train: list[list[Pair]]
    val: list[list[Pair]]

    @classmethod
    def load(cls, seed: int = 0, val_fraction: float = 0.05) -> "DialogueCorpus":
        convs = [conversation_pairs(t) for t in load_conversations()]
        order = list(range(len(convs)))
        random.Random(seed).shuffle(order)
        n_val = max(1, int(round(len(convs) * val_fraction)))
        val_ids = set(order[:n_val])
        return cls(
            train=[c for i, c in enumerate(convs) if i not in val_ids],
            val=[c for i, c in enumerate(convs) if i in val_ids],
        )

    @property
    def train_pairs(self) -> list[Pair]:
        return [p for c in self.train for p in c]

    def stream(self, split: str, tokenizer: ByteTokenizer, seed: int) -> torch.Tensor:
        """All conversations of a split in a seeded order, encoded back to back: a 1-D LongTensor."""
        convs = list(self.train if split == "train" else self.val)
        random.Random(seed).shuffle(convs)
        ids: list[int] = []
        for conv in convs:
            ids.extend(tokenizer.encode_dialogue(conv))
        return torch.tensor(ids, dtype=torch.long)

    def tokens(self, split: str, tokenizer: ByteTokenizer, seed: int, data: str = "dialogue") -> torch.Tensor:
        """The token stream of ``split`` in the format ``data`` (one of ``DATA_FORMATS``)."""
        if data == "dialogue":
            return self.stream(split, tokenizer, seed)
        if data == "recall-sessions":
            return self.recall_stream(split, tokenizer, seed)
        if data == "fact-sessions":
            return self.fact_stream(split, tokenizer, seed)
        raise CorpusError(f"unknown data format {data!r}; known: {list(DATA_FORMATS)}")

    def language(self, split: str) -> DialogueLanguage:
        """The generated dialogue language of ``split``: its pairs as small talk, the words of the whole
        corpus (both splits) as fact values."""
        texts = [t for convs in (self.train, self.val) for conv in convs for pair in conv for t in pair]
        return DialogueLanguage([p for conv in (self.train if split == "train" else self.val) for p in conv],
                                vocabulary(texts))

    def fact_stream(self, split: str, tokenizer: ByteTokenizer, seed: int, sessions: int | None = None) -> torch.Tensor:
        """Sessions of the generated dialogue language (``dialogue.py``), encoded back to back."""
        count = FACT_SESSIONS["train" if split == "train" else "val"] if sessions is None else sessions
        ids: list[int] = []
        for session in self.language(split).sessions(count, split, seed):
            ids.extend(tokenizer.encode_dialogue(session.pairs))
        return torch.tensor(ids, dtype=torch.long)

    def session_openings(self, count: int, split: str = "val", seed: int = 0) -> list[str]:
        """The user's first turn of each of the first ``count`` sessions of the generated language
        (``dialogue.py``) in ``split``: prompts a fact-sessions model was trained to answer, none of
        them seen in training when ``split`` is the validation split."""
        return [session.pairs[0][0] for session in self.language(split).sessions(count, split, seed)]

    def recall_stream(self, split: str, tokenizer: ByteTokenizer, seed: int) -> torch.Tensor:
        """Recall sessions (see the module docstring): pairs, then the same pairs asked again, shuffled."""
        convs = list(self.train if split == "train" else self.val)
        rng = random.Random(seed)
        rng.shuffle(convs)
        pairs = [p for conv in convs for p in conv]
        ids: list[int] = []
        lo = 0
        while lo < len(pairs):
            size = rng.randint(*SESSION_PAIRS)
            session = pairs[lo : lo + size]
            lo += size
            again = list(session)
            rng.shuffle(again)
            ids.extend(tokenizer.encode_dialogue(session + again))
        return torch.tensor(ids, dtype=torch.long)


def sample_windows(stream: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` random windows of ``length + 1`` tokens (inputs plus the next-token targets)."""
    if stream.numel() <= length + 1:
        raise CorpusError(f"token stream of {stream.numel()} tokens is too short for windows of {length + 1}")
    starts = torch.randint(0, stream.numel() - length - 1, (batch,), generator=generator)
    return torch.stack([stream[s : s + length + 1] for s in starts.tolist()])


def fixed_windows(stream: torch.Tensor, length: int, count: int) -> torch.Tensor:
    """The first ``count`` non-overlapping windows of ``length + 1`` tokens (deterministic evaluation)."""
    n = min(count, (stream.numel() - 1) // length)
    if n < 1:
        raise CorpusError(f"token stream of {stream.numel()} tokens is too short for one window of {length + 1}")
    return torch.stack([stream[i * length : i * length + length + 1] for i in range(n)])
