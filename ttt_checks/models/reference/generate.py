"""Greedy reply generation with one TTT gate value per batch row.

A gating sweep is ONE batched generation: every row reads the same prompt, and row r's TTT
gates use raw alpha ``gates[r]`` (or the learned per-channel alpha for ``"learned"``). Rows
are independent everywhere in the model, so row r produces exactly the tokens a batch of one
at gate ``gates[r]`` would; :func:`generate_sequential` is that reference path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ttt_checks.models.base import LEARNED
from ttt_checks.models.reference.model import Decoder
from ttt_checks.models.reference.tokenizer import EOT, PAD, ByteTokenizer
GateSpec = float | str


class GenerationError(ValueError):
    """A gate value or prompt that generation cannot use."""


@dataclass
class Reply:
    """One row's reply: token ids up to (not including) EOT, and whether EOT was reached."""

    tokens: list[int]
    ended: bool
    text: str


def gate_alphas(model: Decoder, gates: Sequence[GateSpec]) -> dict[str, Tensor] | None:
    """Per TTT block, raw alpha [B, width] for the rows; None when the model has no TTT."""
    blocks = model.gated_blocks()
    if not blocks:
        return None
    out = {}
    for name, block in blocks.items():
        rows = []
        for g in gates:
            if isinstance(g, str):
                if g != LEARNED:
                    raise GenerationError(f"gate {g!r}: use a float raw alpha or {LEARNED!r}")
                rows.append(block.alpha.detach())
            else:
                value = float(g)
                if value != value:
                    raise GenerationError("gate value is NaN")
                rows.append(torch.full_like(block.alpha.detach(), value))
        out[name] = torch.stack(rows)
    return out


@torch.no_grad()
def generate_batched(
    model: Decoder, prompt: Sequence[int], gates: Sequence[GateSpec], max_new_tokens: int = 120
) -> list[Reply]:
    """Greedy decoding of ``prompt`` once per gate value, all rows in one batch."""
    if not gates:
        raise GenerationError("no gate values given")
    if not prompt:
        raise GenerationError("empty prompt")
    model.eval()
    B = len(gates)
    alphas = gate_alphas(model, gates)
    tok = ByteTokenizer()
    ids = torch.tensor([list(prompt)] * B, dtype=torch.long, device=_device(model))
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    blocks = model.gated_blocks()
    previous = {name: blk.gate_override for name, blk in blocks.items()}
    try:
        for name, blk in blocks.items():
            blk.gate_override = alphas[name]  # type: ignore[index]
        with model.stream():
            logits = model(ids)[:, -1]
            for _ in range(max_new_tokens):
                nxt = logits.float().argmax(dim=-1)
                for r in range(B):
                    if not done[r]:
                        if int(nxt[r]) == EOT:
                            done[r] = True
                        else:
                            out[r].append(int(nxt[r]))
                if bool(done.all()):
                    break
                # Finished rows keep being fed (PAD); rows never interact, so this is inert.
                feed = torch.where(done, torch.full_like(nxt, PAD), nxt)
                logits = model(feed[:, None])[:, -1]
    finally:
        for name, blk in blocks.items():
            blk.gate_override = previous[name]
    return [Reply(tokens=o, ended=bool(d), text=tok.decode(o)) for o, d in zip(out, done.tolist())]


def _device(model: Decoder) -> torch.device:
    """Where the model's weights live: token ids are made there (a cuda model needs cuda ids)."""
    return model.embed.weight.device


def generate_sequential(
    model: Decoder, prompt: Sequence[int], gates: Sequence[GateSpec], max_new_tokens: int = 120
) -> list[Reply]:
    """The reference path: one batch-of-one generation per gate value."""
    return [generate_batched(model, prompt, [g], max_new_tokens)[0] for g in gates]


@torch.no_grad()
def streamed_loss(model: Decoder, windows: Tensor, chunk: int) -> Tensor:
    """Per-position next-token loss [N, T] when windows [N, T+1] are fed ``chunk`` tokens per call.

    ``chunk=1`` is what the model sees while generating (nothing after the current token); a
    chunk of one TTT mini-batch is what a non-causal layer saw in training.
    """
    model.eval()
    windows = windows.to(_device(model))
    inputs, targets = windows[:, :-1], windows[:, 1:]
    pieces = []
    with model.stream():
        for lo in range(0, inputs.shape[1], chunk):
            pieces.append(model(inputs[:, lo : lo + chunk]).float())
    logits = torch.cat(pieces, dim=1)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD, reduction="none"
    ).view_as(targets)
