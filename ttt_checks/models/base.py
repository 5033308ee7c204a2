"""The adapter interface between the health checks and a model family.

The checks never import a model package: they receive an :class:`Adapter` and read
:class:`TTTLayerInfo`, :class:`ForwardResult` and :class:`Generation` records from it. A new
model family is one new adapter (the reference model, Moshi, ...).
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ttt_checks.ttt.gate import LEARNED  # the gate label, offered with the interface (adapters import it from here)
from ttt_checks.verdict import Verdict

GateValue = float | str  # a raw alpha value, or the string "learned" (LEARNED)


def fixed_gate(value: GateValue | None) -> float | None:
    """The raw alpha a gate request fixes, or None for the learned gate (None or "learned")."""
    if value is None or value == LEARNED:
        return None
    if isinstance(value, str):
        raise ValueError(f"gate {value!r}: use a float raw alpha, None or {LEARNED!r}")
    return float(value)


@dataclass(frozen=True)
class TTTLayerInfo:
    """Static facts about one TTT layer of a model, read from the checkpoint and config."""

    name: str  # e.g. "layers.2.ttt" or "transformer.layers.29"
    index: int  # transformer block index
    num_heads: int
    head_dim: int
    mini_batch_size: int
    causal: bool
    inner: str  # "linear" or "mlp"
    mlp_layers: int
    base_lr: float
    gate_alpha: np.ndarray  # learned raw alpha per channel (before tanh)
    # The raw alpha every channel started from (moshi-finetune ``ttt.initial_gating_alpha``, the
    # reference config's ``decoder.alpha_init``), or None where the checkpoint does not state it.
    # A gate is judged against where it started: 0.09 is a collapse from 0.3 but not from 0.1.
    gate_alpha_init: float | None = None
    # Another statement of that init in the same checkpoint (its training record) that contradicts
    # it, or None. With two inits on file, a gate that fell from one but not the other has not
    # been shown to collapse (config_consistency reports the contradiction itself).
    gate_alpha_init_disputed: float | None = None


@dataclass(frozen=True)
class RecipeField:
    """One training setting a checkpoint states twice: the value the loader builds the model
    with (and the file/key it reads) vs the value the checkpoint says it was trained with."""

    name: str  # e.g. "mini_batch_size"
    loaded: Any
    loaded_from: str  # e.g. "config.json decoder.ttt.mini_batch_size"
    trained: Any
    trained_from: str  # e.g. "config.json recipe.ttt (default of the training code)"

    @property
    def agrees(self) -> bool:
        """Equal values; numbers equal up to 1e-6 relative (a JSON float round trip is exact, an
        int written as 16.0 is the same setting)."""
        return _same_setting(self.loaded, self.trained)


def disputed_number(fields: list[RecipeField], name: str) -> float | None:
    """The other statement of setting ``name`` where it contradicts the loaded one, as a float;
    None where the setting is stated once, the statements agree, or the other one is not a number."""
    for f in fields:
        if f.name == name and not f.agrees and isinstance(f.trained, (int, float)) and not isinstance(f.trained, bool):
            return float(f.trained)
    return None


def _same_setting(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b)) <= 1e-6 * max(abs(float(a)), abs(float(b)))
    return a == b


@dataclass
class ForwardResult:
    """Teacher-forced pass over one input: per-position outer loss and the model's outputs."""

    outer_loss: np.ndarray  # [T] mean cross-entropy per position (averaged over batch/streams)
    outputs_finite: bool
    positions: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Generation:
    """What the model produced at one gate value of the sweep."""

    gate: GateValue  # the requested value ("learned" or a raw alpha)
    gate_alpha: float  # mean raw alpha actually applied
    gate_tanh: float  # tanh(clamp(alpha, -3, 3)) averaged over channels and TTT layers
    audio: np.ndarray  # mono float32 PCM
    sample_rate: int
    text: str | None  # the model's own text (reply text, inner monologue), where it has one
    tokens: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class InputError(ValueError):
    """An input the model cannot use (``--input`` file or API input): "<file>: <what>; <what to do>".

    One base class for every adapter's input errors, so a health run turns any of them into a
    failing "cannot measure" verdict and the plugin into a usage error, never a traceback.
    """


@dataclass
class ModelInputs:
    """What a health run feeds the model: one teacher-forced sequence batch and the prompts of
    the gating sweep (one generation per prompt and gate).

    ``notes`` say what was done to the input to make it fit (resampled, downmixed): the run
    shows them, because a silently converted input hides a wrong file."""

    teacher_forced: Any
    prompts: list[Any]
    description: str
    positions: int  # tokens (frames) per teacher-forced row
    notes: tuple[str, ...] = ()


class Adapter(abc.ABC):
    """Base class of model adapters: a subclass that misses a method cannot be instantiated."""

    name: str = "adapter"
    checkpoint: Path | None = None

    @abc.abstractmethod
    def ttt_layers(self) -> list[TTTLayerInfo]:
        """The TTT layers the checkpoint declares, in block order."""

    @abc.abstractmethod
    def state(self) -> Mapping[str, torch.Tensor]:
        """Every tensor of the checkpoint as loaded (for key, finiteness and dead-parameter checks)."""

    @abc.abstractmethod
    def expected_ttt_keys(self) -> list[str]:
        """The TTT tensor names the config says must be present."""

    @abc.abstractmethod
    def initial_state(self) -> Mapping[str, torch.Tensor]:
        """TTT parameters as they were at initialisation, for the dead-parameter check."""

    @abc.abstractmethod
    def ttt_modules(self) -> Mapping[str, torch.nn.Module]:
        """The TTT layer modules by name, so a Figure5Probe can be attached to them."""

    @abc.abstractmethod
    def load_inputs(self, path: Path | None = None, max_positions: int | None = None) -> "ModelInputs":
        """The inputs of a health run: the adapter's own fixture when ``path`` is None (held-out
        dialogue and prompts for the reference model, a wav for Moshi), cut to ``max_positions``."""

    @abc.abstractmethod
    def teacher_forced(self, inputs: Any, probe: Any | None = None, chunk: int | None = None) -> ForwardResult:
        """One teacher-forced pass; when ``probe`` is given, Figure-5 capture runs on every TTT
        layer. ``chunk`` feeds the sequence in streaming calls of that many tokens, the TTT state
        handled exactly as the model's own inference code handles it (carried, or not)."""

    @abc.abstractmethod
    def generate(self, inputs: Any, gates: Sequence[GateValue]) -> list[Generation]:
        """One generation per gate value; batched over gates where the model allows it."""

    @abc.abstractmethod
    def set_gate(self, value: GateValue | None) -> contextlib.AbstractContextManager[None]:
        """Override every TTT gate with one raw alpha value (a context manager); restores the
        learned values on exit."""

    @contextlib.contextmanager
    def inner_steps_off(self) -> Iterator[None]:
        """Every TTT layer runs with its inner step size set to 0, so W_t = W_0 at every token and
        the TTT branch is a static layer; restored on exit. The outer loss with the steps off
        against the learned one is what test-time training itself buys, apart from what the branch
        adds as an ordinary trained layer. Raises NotImplementedError for TTT modules that do
        not expose ``inner_step_scale`` (``ttt_checks.ttt.TTTLayer`` does)."""
        modules = dict(self.ttt_modules())
        opaque = [name for name, m in modules.items() if not hasattr(m, "inner_step_scale")]
        if opaque or not modules:
            raise NotImplementedError(f"cannot turn off the inner steps of TTT modules {opaque or '(none found)'}: "
                                      "they do not expose inner_step_scale")
        saved = {name: m.inner_step_scale for name, m in modules.items()}
        try:
            for m in modules.values():
                m.inner_step_scale = 0.0
            yield
        finally:
            for name, m in modules.items():
                m.inner_step_scale = saved[name]

    def chance_outer_loss(self) -> float | None:
        """The outer loss of a model that predicts uniformly over its vocabularies (the same
        per-position sum the adapter's ``outer_loss`` takes), or None where unknown. A gate-0 loss
        near it means the base predicts nothing: it cannot "talk", whatever an ASR hears."""
        return None

    def recipe_fields(self) -> list[RecipeField]:
        """Training settings the checkpoint states twice (config vs training record, config vs
        weights), for the config-consistency check; empty where it states them once."""
        return []

    def checkpoint_notes(self) -> list[str]:
        """What loading changed in the checkpoint's own naming (e.g. a DDP ``module.`` prefix
        stripped), so the report says it instead of hiding it."""
        return []

    def unexpected_ttt_keys(self) -> list[str]:
        """TTT-looking tensors in the checkpoint that no TTT layer of the config takes (a save or
        naming bug); empty where the adapter cannot tell."""
        return []

    def unused_ttt_keys(self) -> list[str]:
        """Trainable TTT tensors the forward never applies (no recipe can train them), so
        ``dead_parameters`` does not count them as a training fault; empty by default."""
        return []

    def training_record(self) -> dict[str, Any] | None:
        """What the checkpoint says its training measured: ``{"train_loss": ..., "val_loss": ...
        (or None), "source": where it was read}``, in the units of :meth:`teacher_forced`'s outer
        loss, or None where the checkpoint keeps no such record. A measured outer loss far above the
        recorded one means the weights were trained on another objective or other data."""
        return None

    def base_reference(self) -> dict[str, Any] | None:
        """The base model's own loss on the default input, measured when the base was known to be
        good: ``{"loss": ..., "fingerprint": the input's hash (checks.base_model.input_fingerprint),
        "source": where it was read, "input": what the input was}``, or None where the checkpoint
        stores none (then only ``--base-reference`` can check the base). The check compares it with
        the loss at gate 0 on the same tokens."""
        return None

    def model_checks(self, inputs: Any) -> list[Verdict]:
        """Verdicts only this model family can give (Moshi: gate 0 reproduces the vanilla model,
        state carried frame by frame, ...), reported under ``model_specific``; none by default."""
        return []
