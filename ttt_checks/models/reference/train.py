"""Training recipes of the reference model: pretrain the base, insert TTT, fine-tune.

This mirrors the user's Moshi recipe at toy scale: a pretrained decoder; TTT-MLP blocks behind
a tanh gate (alpha initialised to 0.1) inserted into the last layers; the base frozen; the TTT
parameters trained at one learning rate and the gate alphas at a larger one (the user's
``weight_lr_multiplier`` / ``alpha_lr_multiplier`` groups).

Every function is seeded and runs single-process on CPU in fp32, so a recipe re-creates the
same checkpoint on the same software stack.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from ttt_checks.models.reference.corpus import DialogueCorpus, fixed_windows, sample_windows
from ttt_checks.models.reference.model import Decoder, DecoderConfig, lm_loss, next_token_loss
from ttt_checks.models.reference.tokenizer import ByteTokenizer
from ttt_checks.ttt import TTTConfig, effective_gate

Log = Callable[[str], None]


@dataclass(frozen=True)
class PretrainRecipe:
    """Next-token training of the base decoder (no TTT)."""

    seed: int = 0
    steps: int = 500
    batch: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    data: str = "dialogue"  # corpus.DATA_FORMATS


@dataclass(frozen=True)
class TTTInit:
    """How the inserted TTT parameters are drawn (with ``init_seed``), beyond the fixed defaults.

    ``inner_weight_std``: the std of the inner model's initial weights W_0. The papers and the
    user's code draw N(0, 0.02); at that scale the inner LayerNorm's backward (1/std of the
    tiny activations) makes the first mini-batch's step dwarf every later one, so until the
    outer loop has grown W_0 the memory holds mostly the first b tokens (measured: the influence
    of tokens 16-95 on the output at token 100 is 1/500 of the first 16's). 1/sqrt(head_dim)
    spreads it evenly.
    ``tie_query_to_key``: start wq equal to wk, so a query matches the keys of positions whose
    input looked like its own from the first step (with ``shift_keys``: an induction memory at
    initialisation, which the outer loop then refines instead of having to discover).
    """

    inner_weight_std: float = 0.02
    tie_query_to_key: bool = False

    def __post_init__(self) -> None:
        if not (self.inner_weight_std > 0.0):
            raise ValueError(f"inner_weight_std must be > 0, got {self.inner_weight_std!r}")

    def to_dict(self) -> dict:
        """Only the fields that differ from the defaults (checkpoints without them keep their format)."""
        return {k: v for k, v in asdict(self).items() if v != getattr(TTTInit, k)}

    @classmethod
    def from_dict(cls, data: dict | None) -> "TTTInit":
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown TTT init field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


@dataclass(frozen=True)
class RecipeChange:
    """A change of the fine-tuning recipe from loop step ``step`` on (0-based, the count of
    ``FinetuneRecipe.steps``): what a user does mid-run by editing a config and resuming, or what
    a scheduler bug does. It holds until the next change of the schedule; a later change replaces
    it (fields are settings relative to the recipe, not cumulative).

    ``lr_factor`` / ``alpha_lr_factor`` multiply the learning rate of the TTT weights / the gate
    alphas on top of the recipe's warmup-cosine schedule; ``alpha_l2`` replaces the recipe's
    penalty weight on mean(alpha^2) (None keeps it). The trend tests use it to make a fault appear
    at a known step of a real training run, so the step a trend names can be checked.
    """

    step: int
    lr_factor: float = 1.0
    alpha_lr_factor: float = 1.0
    alpha_l2: float | None = None

    def __post_init__(self) -> None:
        if self.step < 0:
            raise ValueError(f"a recipe change needs a step >= 0, got {self.step}")
        if not (self.lr_factor > 0.0 and self.alpha_lr_factor > 0.0):
            raise ValueError(f"learning-rate factors must be > 0, got {self.lr_factor}, {self.alpha_lr_factor}")


def active_change(changes: Sequence[RecipeChange], step: int) -> RecipeChange | None:
    """The change of the schedule in force at loop step ``step`` (the latest one started), or None."""
    started = [c for c in changes if c.step <= step]
    return max(started, key=lambda c: c.step) if started else None


@dataclass(frozen=True)
class FinetuneRecipe:
    """TTT insertion and fine-tuning with the base frozen.

    ``init_seed`` fixes the TTT initialisation, so the initial TTT weights can be re-created
    later for the dead-parameter check without storing them.
    """

    seed: int = 0
    init_seed: int = 1000
    steps: int = 200
    batch: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    alpha_lr: float = 3e-3
    warmup: int = 20
    grad_clip: float = 1.0
    layers: tuple[int, ...] = (3,)
    alpha_init: float = 0.1
    ttt: dict = field(default_factory=dict)  # TTTConfig fields overriding default_ttt_config()
    data: str = "dialogue"  # corpus.DATA_FORMATS
    frozen_ttt: tuple[str, ...] = ()  # TTT parameter name suffixes left out of training (kept as inserted)
    zeroed_ttt: tuple[str, ...] = ()  # TTT parameter name suffixes set to 0 when inserted (zero-init of a branch)
    alpha_l2: float = 0.0  # weight of a penalty alpha_l2 * mean(alpha^2) added to the outer loss
    init: dict = field(default_factory=dict)  # TTTInit fields (how the TTT parameters are drawn)
    # 0: every step draws fresh random windows (the recipes' default). N > 0: N windows are drawn once, the
    # frozen base's part before the first TTT block is computed once per window (Decoder.frozen_prefix), and
    # every step draws its batch from those N: each step then skips that part (a third of a recall fine-tune
    # step on CPU), at the price of seeing each window about steps * batch / N times.
    window_pool: int = 0
    changes: tuple[RecipeChange, ...] = ()  # mid-run changes of lr / penalty by step (RecipeChange)

    def __post_init__(self) -> None:
        # A recipe read back from config.json (asdict) holds its changes as dicts.
        changes = tuple(c if isinstance(c, RecipeChange) else RecipeChange(**c) for c in self.changes)
        object.__setattr__(self, "changes", tuple(sorted(changes, key=lambda c: c.step)))


def default_ttt_config(width: int, **overrides) -> TTTConfig:
    """The user's TTT-MLP (uniform 1/b step sizes, LN target, L2-normalised q/k), but causal.

    The user's code is non-causal inside a mini-batch: in teacher-forced training row i reads
    the gradients of rows j > i, i.e. up to b-1 future tokens. Measured on this model, the outer
    loop learns to use that leak: a non-causal fine-tune lowered the held-out loss fed one
    mini-batch per call by 2.9% against gate 0, while fed one token per call (what generation
    sees) it was 0.07% worse. A healthy reference must help where it is used, so the default is
    causal; the zoo keeps the user's non-causal recipe as the ``noncausal-leak`` checkpoint.
    """
    base = dict(
        width=width, num_heads=4, head_dim=width // 4, inner="mlp", mlp_layers=2, mlp_expansion=4.0,
        mini_batch_size=16, base_lr=1.0, eta_weighting="uniform", causal=True, target="layernorm",
        l2_normalize_qk=True, output_projection=True,
    )
    base.update(overrides)
    return TTTConfig(**base)


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: Decoder, windows: torch.Tensor, batch: int = 16) -> float:
    """Mean next-token loss over fixed windows [N, T+1] (full-sequence pass)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        w = windows[i : i + batch]
        total += float(lm_loss(model, w, reduction="none").sum())
        count += w[:, 1:].numel()
    return total / count


def validation_windows(corpus: DialogueCorpus, seq_len: int = 256, count: int = 32, data: str = "dialogue") -> torch.Tensor:
    """Held-out windows (the validation split, seed 0) in the data format the model is trained on."""
    return fixed_windows(corpus.tokens("val", ByteTokenizer(), seed=0, data=data), seq_len, count)


def pretrain_base(
    corpus: DialogueCorpus, recipe: PretrainRecipe, config: DecoderConfig | None = None, log: Log | None = None
) -> tuple[Decoder, dict]:
    """Train the base decoder from scratch; returns it with a summary (losses, seconds)."""
    config = config or DecoderConfig()
    torch.manual_seed(recipe.seed)
    model = Decoder(config)
    stream = corpus.tokens("train", ByteTokenizer(), seed=recipe.seed, data=recipe.data)
    gen = torch.Generator().manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, recipe.steps, recipe.warmup))
    start = time.perf_counter()
    model.train()
    running = None
    for step in range(recipe.steps):
        loss = lm_loss(model, sample_windows(stream, recipe.batch, recipe.seq_len, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        sched.step()
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        if log and (step % 50 == 0 or step == recipe.steps - 1):
            log(f"pretrain step {step:4d} loss {running:.3f} ({time.perf_counter() - start:.0f}s)")
    seconds = time.perf_counter() - start
    val = evaluate(model, validation_windows(corpus, data=recipe.data))
    return model, {"train_loss": running, "val_loss": val, "seconds": seconds, "steps": recipe.steps}


def round_to_bf16_(module: torch.nn.Module) -> torch.nn.Module:
    """Round every parameter to bf16 and back, so training continues from what is stored on disk."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    return module


def insert_ttt(base: Decoder, ttt: TTTConfig, layers: tuple[int, ...], alpha_init: float, init_seed: int,
               reset_each_call: bool = False, init: TTTInit | None = None) -> Decoder:
    """A copy of ``base`` with gated TTT blocks in ``layers``, their weights drawn from ``init_seed``.

    The TTT modules are built under their own seed, after the base modules, so their initial
    values depend on nothing but (config, init_seed): ``initial_ttt_state`` re-creates them.
    """
    cfg = base.config.with_ttt(ttt, layers, alpha_init)
    if reset_each_call:
        cfg = DecoderConfig.from_dict({**cfg.to_dict(), "ttt_reset_each_call": True})
    model = build_with_ttt_init(cfg, init_seed, init)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(".ttt." not in k for k in missing):
        raise RuntimeError(f"base weights do not fit the TTT model: missing {missing}, unexpected {unexpected}")
    return model


def build_with_ttt_init(config: DecoderConfig, init_seed: int, init: TTTInit | None = None) -> Decoder:
    """A decoder whose TTT blocks carry the seeded initial values (base weights arbitrary)."""
    init = init or TTTInit()
    model = Decoder(config)
    for i, (name, gated) in enumerate(model.gated_blocks().items()):
        fresh_gen = torch.Generator().manual_seed(init_seed + 7919 * i)
        with torch.no_grad():
            for pname, p in sorted(gated.named_parameters()):
                if pname == "alpha":
                    p.fill_(config.alpha_init)
                elif pname.endswith("ttt_norm_weight") or pname.endswith("post_norm.weight"):
                    p.fill_(1.0)
                elif pname.endswith("bias") or pname.startswith("ttt.biases."):
                    p.zero_()
                elif pname.startswith("ttt.weights."):
                    p.copy_(torch.randn(p.shape, generator=fresh_gen) * init.inner_weight_std)
                elif pname.endswith("lr_weight"):
                    p.copy_(torch.randn(p.shape, generator=fresh_gen) * 0.02)
                else:  # projections wq, wk, wv, wo: nn.Linear's default scale
                    bound = 1.0 / math.sqrt(p.shape[-1])
                    p.copy_((torch.rand(p.shape, generator=fresh_gen) * 2 - 1) * bound)
            if init.tie_query_to_key:  # after all draws, so the other parameters do not depend on it
                gated.ttt.wq.weight.copy_(gated.ttt.wk.weight)
                gated.ttt.wq.bias.copy_(gated.ttt.wk.bias)
    return model


def _window_pool(model: Decoder, stream: torch.Tensor, recipe: FinetuneRecipe,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``recipe.window_pool`` random windows: their frozen prefixes [N, T, width] and next-token targets [N, T].

    Computed without a graph: nothing before the first TTT block trains (the caller froze the base)."""
    if any(p.requires_grad for n, p in model.named_parameters() if ".ttt." not in n):
        raise ValueError("a window pool needs the base frozen: its prefix is computed once")
    windows = sample_windows(stream, recipe.window_pool, recipe.seq_len, gen)
    with torch.no_grad():
        prefix = torch.cat([model.frozen_prefix(windows[i:i + recipe.batch, :-1])
                            for i in range(0, recipe.window_pool, recipe.batch)])
    return prefix, windows[:, 1:]


def finetune_ttt(model: Decoder, corpus: DialogueCorpus, recipe: FinetuneRecipe, log: Log | None = None,
                 on_step: Callable[[int, Decoder], None] | None = None) -> dict:
    """Train the TTT parameters and gates of ``model`` in place with the base frozen.

    ``on_step(done, model)`` is called after each loop step with the number of steps done (1-based),
    the model in train mode: a training run saves its checkpoints from there (``done % every == 0``).
    ``recipe.changes`` switch the learning rates and the alpha penalty mid-run (``RecipeChange``).
    """
    torch.manual_seed(recipe.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if recipe.zeroed_ttt and ".ttt." in name and name.endswith(tuple(recipe.zeroed_ttt)):
                p.zero_()
    for name, p in model.named_parameters():
        p.requires_grad_(".ttt." in name and not (recipe.frozen_ttt and name.endswith(tuple(recipe.frozen_ttt))))
    alphas = [p for n, p in model.named_parameters() if n.endswith(".ttt.alpha")]
    weights = [p for n, p in model.named_parameters() if ".ttt." in n and not n.endswith(".ttt.alpha") and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": weights, "lr": recipe.lr, "weight_decay": 0.0}, {"params": alphas, "lr": recipe.alpha_lr, "weight_decay": 0.0}],
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, recipe.steps, recipe.warmup))
    stream = corpus.tokens("train", ByteTokenizer(), seed=recipe.seed, data=recipe.data)
    gen = torch.Generator().manual_seed(recipe.seed)
    start = time.perf_counter()
    model.train()
    pool = _window_pool(model, stream, recipe, gen) if recipe.window_pool else None
    pool_seconds = time.perf_counter() - start
    running = None
    nonfinite_steps = 0
    for step in range(recipe.steps):
        change = active_change(recipe.changes, step)
        alpha_l2 = change.alpha_l2 if change is not None and change.alpha_l2 is not None else recipe.alpha_l2
        if pool is None:
            loss = lm_loss(model, sample_windows(stream, recipe.batch, recipe.seq_len, gen))
        else:
            pick = torch.randint(0, recipe.window_pool, (recipe.batch,), generator=gen)
            loss = next_token_loss(model.forward_from_prefix(pool[0][pick]), pool[1][pick])
        if alpha_l2:
            loss = loss + alpha_l2 * torch.stack([a.pow(2).mean() for a in alphas]).sum()
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            nonfinite_steps += 1  # a bad recipe may blow up; keep going so the checkpoint shows it
            if on_step is not None:
                on_step(step + 1, model)
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights + alphas, recipe.grad_clip)
        if change is not None:
            # From the scheduler's value (never the group's current lr), so a factor never compounds;
            # the next sched.step() recomputes the schedule from its base values.
            for group, scheduled, factor in zip(opt.param_groups, sched.get_last_lr(), (change.lr_factor, change.alpha_lr_factor)):
                group["lr"] = scheduled * factor
        opt.step()
        sched.step()
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        if log and (step % 50 == 0 or step == recipe.steps - 1):
            gate = effective_gate(torch.cat([a.detach() for a in alphas]))
            log(f"finetune step {step:4d} loss {running:.3f} gate mean {float(gate.mean()):.3f} "
                f"({time.perf_counter() - start:.0f}s)")
        if on_step is not None:
            on_step(step + 1, model)
    for p in model.parameters():
        p.requires_grad_(True)
    seconds = time.perf_counter() - start
    return {"train_loss": running, "seconds": seconds, "steps": recipe.steps, "nonfinite_steps": nonfinite_steps,
            **({"pool_seconds": pool_seconds} if pool is not None else {})}
