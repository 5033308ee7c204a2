"""Byte-level tokenizer with dialogue markers.

Every UTF-8 byte is its own token (ids 0-255), so any text round-trips and no vocabulary file
has to be shipped or kept in sync with the checkpoints. Four markers frame a dialogue:

    USER  user text  REPLY  reply text  EOT

``EOT`` (end of turn) is what generation stops on; ``PAD`` fills finished batch rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

NUM_BYTES = 256
PAD = 256
USER = 257
REPLY = 258
EOT = 259
VOCAB_SIZE = 260

SPECIAL_NAMES = {PAD: "<pad>", USER: "<user>", REPLY: "<reply>", EOT: "<eot>"}


class TokenizerError(ValueError):
    """A token id outside the vocabulary, or text that cannot be a turn."""


@dataclass(frozen=True)
class ByteTokenizer:
    """Stateless; a class only so adapters can hand it around and tests can name it."""

    vocab_size: int = VOCAB_SIZE
    pad: int = PAD
    user: int = USER
    reply: int = REPLY
    eot: int = EOT

    def encode_text(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text`` as token ids."""
        return list(text.encode("utf-8"))

    def encode_prompt(self, user_turn: str) -> list[int]:
        """``USER text REPLY``: the context after which the model writes its reply."""
        return [USER, *self.encode_text(user_turn.strip()), REPLY]

    def encode_pair(self, user_turn: str, reply: str) -> list[int]:
        """One training example: ``USER user REPLY reply EOT``."""
        return [*self.encode_prompt(user_turn), *self.encode_text(reply.strip()), EOT]

    def encode_dialogue(self, pairs: Iterable[tuple[str, str]]) -> list[int]:
        """Several (user, reply) pairs back to back, as the model saw them in training."""
        ids: list[int] = []
        for user_turn, reply in pairs:
            ids.extend(self.encode_pair(user_turn, reply))
        return ids

    def decode(self, ids: Sequence[int], stop_at_eot: bool = True) -> str:
        """Bytes back to text; markers are dropped (invalid UTF-8 is replaced, not raised:
        a broken model may well emit half a multi-byte character)."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i == EOT and stop_at_eot:
                break
            if i < NUM_BYTES:
                out.append(i)
        return out.decode("utf-8", errors="replace")

    def describe(self, ids: Sequence[int]) -> str:
        """Text with markers spelled out, for logs and failure messages."""
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if i < NUM_BYTES:
                run.append(i)
                continue
            if run:
                parts.append(run.decode("utf-8", errors="replace"))
                run = bytearray()
            parts.append(SPECIAL_NAMES.get(i, f"<{i}?>"))
        if run:
            parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)
