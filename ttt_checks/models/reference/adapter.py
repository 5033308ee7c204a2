"""The reference model behind the :class:`~ttt_checks.models.base.Adapter` interface.

What the checks get from it:

- ``teacher_forced``: the input is fed through the model in streaming calls of one TTT
  mini-batch each (``chunk``), the way Moshi streams frames, so a checkpoint that resets its
  TTT state at every call (``ttt_reset_each_call``) shows it in Figure 5 (l0 == lprev), while a
  healthy one gives exactly its one-pass outputs.
- ``generate``: greedy replies to a user turn until the end-of-turn token, one batch row per
  gate value, spoken to 16 kHz audio with espeak-ng.
- ``state`` / ``expected_ttt_keys`` / ``initial_state``: the tensors as stored, the TTT names
  the config implies, and the seeded initial TTT values (re-created, not stored).
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ttt_checks.models.base import (
    LEARNED,
    Adapter,
    ForwardResult,
    GateValue,
    Generation,
    InputError,
    ModelInputs,
    RecipeField,
    TTTLayerInfo,
    disputed_number,
    fixed_gate,
)
from ttt_checks.models.reference.checkpoint import (STORE_DTYPE, CheckpointError, LoadedCheckpoint, is_ttt_key, load_checkpoint,
                                                    read_config, ttt_init_of)
from ttt_checks.models.reference.corpus import DialogueCorpus, fixed_windows
from ttt_checks.models.reference.generate import LEARNED, generate_batched, generate_sequential, streamed_loss
from ttt_checks.models.reference.tokenizer import ByteTokenizer
from ttt_checks.models.reference.train import build_with_ttt_init, default_ttt_config
from ttt_checks.metrics.fingerprint import input_fingerprint
from ttt_checks.ttt.gate import mean_effective_gate

SAMPLE_RATE = 16000
DEFAULT_PROMPTS = ("Good morning, how are you?", "What is your favorite book?", "Tell me a joke.", "Do you like music?")
DEFAULT_POSITIONS = 256  # tokens per teacher-forced row (the training window length)
DEFAULT_ROWS = 8


class ReferenceInputError(InputError, TypeError):
    """Inputs the reference adapter cannot turn into tokens; the message lists the accepted forms.

    Also a TypeError, as it was before :class:`InputError` existed (callers catch it as such)."""


AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".webm"})
# File signatures of common audio containers: an --input with one is speech, whatever its name.
_AUDIO_MAGIC = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM", b"\x1aE\xdf\xa3")


def read_dialogue_text(path: str | Path, min_bytes: int = 2) -> str:
    """The UTF-8 text of an ``--input`` file for the reference model, or a :class:`ReferenceInputError`.

    The reference model reads bytes of dialogue text; an audio file, an empty or binary file,
    or one shorter than a teacher-forced row (``min_bytes``) would measure nothing, so each is
    refused with what to pass instead. Cheap: the plugin calls it before any model loads.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReferenceInputError(f"{path}: cannot read it ({exc.strerror or exc}); check the path and its permissions") from exc
    if path.suffix.lower() in AUDIO_SUFFIXES or data.startswith(_AUDIO_MAGIC) or data[4:8] == b"ftyp":
        raise ReferenceInputError(
            f"{path}: an audio file, but the reference model reads UTF-8 dialogue text; "
            "speech input needs a speech model such as a Moshi checkpoint (--ckpt RUN_DIR)"
        )
    if not data.strip():
        what = "empty (0 bytes)" if not data else "only whitespace"
        raise ReferenceInputError(f"{path}: {what}; pass a UTF-8 text file of dialogue (at least {min_bytes} bytes)")
    if b"\0" in data:
        raise ReferenceInputError(
            f"{path}: a binary file (it holds NUL bytes), not text; pass a UTF-8 text file of dialogue, "
            "which is what the reference model reads"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReferenceInputError(
            f"{path}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); the reference model reads "
            "UTF-8 dialogue text: convert it, e.g. `iconv -t UTF-8 IN > OUT`"
        ) from None
    if len(data) < min_bytes:
        raise ReferenceInputError(
            f"{path}: {len(data)} bytes is shorter than one row of {min_bytes} tokens; "
            "pass more dialogue text or lower --max-positions"
        )
    return text


def _as_token_batch(inputs: Any, tokenizer: ByteTokenizer) -> torch.Tensor:
    """[B, T] token ids from a token tensor/list, dialogue pairs, or plain text."""
    if isinstance(inputs, torch.Tensor):
        ids = inputs.long()
    elif isinstance(inputs, np.ndarray):
        ids = torch.from_numpy(inputs).long()
    elif isinstance(inputs, str):
        ids = torch.tensor(tokenizer.encode_text(inputs))
    elif isinstance(inputs, Sequence) and inputs and all(isinstance(p, tuple) and len(p) == 2 for p in inputs):
        ids = torch.tensor(tokenizer.encode_dialogue(inputs))
    elif isinstance(inputs, Sequence) and inputs and all(isinstance(i, int) for i in inputs):
        ids = torch.tensor(list(inputs))
    else:
        raise ReferenceInputError(
            "reference adapter inputs must be token ids (tensor/array/list of int, [T] or [B, T]), "
            f"a list of (user, reply) pairs, or text; got {type(inputs).__name__}"
        )
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ReferenceInputError(f"need at least 2 tokens per row for a teacher-forced pass, got shape {tuple(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= tokenizer.vocab_size:
        raise ReferenceInputError(f"token ids must lie in [0, {tokenizer.vocab_size})")
    return ids


class ReferenceAdapter(Adapter):
    """Adapter of the embedded reference model (a checkpoint directory of the zoo)."""

    name = "reference"

    def __init__(self, checkpoint: str | Path, max_new_tokens: int = 120, voice: str = "en-us", rate_wpm: int = 160,
                 trust_pickle: bool = False) -> None:
        self.loaded: LoadedCheckpoint = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
        self.checkpoint = self.loaded.path
        self.model = self.loaded.model
        self.tokenizer = ByteTokenizer()
        self.max_new_tokens = max_new_tokens
        self.voice = voice
        self.rate_wpm = rate_wpm
        self._initial: dict[str, torch.Tensor] | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The checkpoint's JSON config (recipe, expected verdicts, measured numbers)."""
        return self.loaded.config

    # -- static ---------------------------------------------------------------------------------

    def ttt_layers(self) -> list[TTTLayerInfo]:
        cfg = self.loaded.decoder_config
        disputed = disputed_number(self.recipe_fields(), "alpha_init")
        infos = []
        for name, block in self.model.gated_blocks().items():
            t = block.ttt.config
            infos.append(TTTLayerInfo(
                name=name, index=int(name.split(".")[1]), num_heads=t.num_heads, head_dim=t.head_dim,
                mini_batch_size=t.mini_batch_size, causal=t.causal, inner=t.inner,
                mlp_layers=t.mlp_layers if t.inner == "mlp" else 1, base_lr=t.base_lr,
                gate_alpha=block.alpha.detach().float().cpu().numpy().copy(), gate_alpha_init=self._stated_alpha_init(),
                gate_alpha_init_disputed=disputed,
            ))
        if len(infos) != len(cfg.ttt_layers):
            raise RuntimeError(f"model has {len(infos)} TTT blocks, config declares {list(cfg.ttt_layers)}")
        return infos

    def _stated_alpha_init(self) -> float | None:
        """``decoder.alpha_init`` of config.json when the file states it (else the init is unknown:
        the code's default is not evidence of what this checkpoint started from)."""
        value = self.loaded.config.get("decoder", {}).get("alpha_init")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def chance_outer_loss(self) -> float:
        """Cross-entropy of uniform guessing over the byte vocabulary: ln(vocab)."""

        return math.log(self.loaded.decoder_config.vocab_size)

    def checkpoint_notes(self) -> list[str]:
        return list(self.loaded.notes)

    def training_record(self) -> dict[str, Any] | None:
        """config.json's ``training`` block (the zoo's fine-tune writes it: running train loss, held-out
        val loss), in nats per token like the outer loss measured here."""
        record = self.loaded.config.get("training")
        if not isinstance(record, dict) or not isinstance(record.get("train_loss"), (int, float)):
            return None
        val = record.get("val_loss")
        return {"train_loss": float(record["train_loss"]), "val_loss": float(val) if isinstance(val, (int, float)) else None,
                "source": "config.json training"}

    def base_reference(self) -> dict[str, Any] | None:
        """The base's loss on the default held-out input, measured when it was known to be good: the
        base's ``reference_loss`` (config.json of the base, written when the zoo builds it), else this
        checkpoint's own ``measured`` gate-0 loss (the zoo measures every checkpoint it builds on the
        default input, with the base it was trained on; rounded to 4 digits, 3e-5 relative)."""
        if self.loaded.config.get("kind") == "base":
            config, where = self.loaded.config, self.loaded.path / "config.json"
        else:
            where = self.loaded.path / str(self.loaded.config.get("base", "")) / "config.json"
            try:
                config = read_config(where.parent)
            except CheckpointError:
                config = {}
        stored = config.get("reference_loss")
        if isinstance(stored, dict) and isinstance(stored.get("loss"), (int, float)):
            return {"loss": float(stored["loss"]), "fingerprint": stored.get("fingerprint"),
                    "source": f"{where} reference_loss", "input": str(stored.get("input", ""))}
        measured = self.loaded.config.get("measured") if isinstance(self.loaded.config.get("measured"), dict) else {}
        loss = (measured.get("summary") or {}).get("val_loss_gate0")
        shape = measured.get("inputs") or {}
        if not isinstance(loss, (int, float)) or not isinstance(shape.get("rows"), int) or not isinstance(shape.get("length"), int):
            return None
        tokens = self.default_teacher_forced_inputs(length=shape["length"], rows=shape["rows"])
        return {"loss": float(loss), "fingerprint": input_fingerprint(tokens),
                "source": f"{self.loaded.path / 'config.json'} measured.summary.val_loss_gate0 (when it was built)",
                "input": f"default held-out input, {shape['rows']} rows x {shape['length']} tokens"}

    def recipe_fields(self) -> list[RecipeField]:
        """config.json's decoder (what the loader builds) vs its ``recipe`` (what it was trained
        with: ``layers``, ``alpha_init`` and TTTConfig overrides of ``default_ttt_config``). Keys
        the recipe leaves to the default are compared for the settings that shape the inner loop
        (mini_batch_size, base_lr, inner, mlp_layers, causal), labelled as the training code's default."""

        config = self.loaded.config
        recipe = config.get("recipe")
        if not isinstance(recipe, dict):
            return []
        dcfg = self.loaded.decoder_config
        out: list[RecipeField] = []
        if isinstance(recipe.get("layers"), list):
            out.append(RecipeField("ttt_layers", list(dcfg.ttt_layers), "config.json decoder.ttt_layers",
                                   list(recipe["layers"]), "config.json recipe.layers"))
        if "alpha_init" in recipe and self._stated_alpha_init() is not None:
            out.append(RecipeField("alpha_init", self._stated_alpha_init(), "config.json decoder.alpha_init",
                                   recipe["alpha_init"], "config.json recipe.alpha_init"))
        overrides = recipe.get("ttt") if isinstance(recipe.get("ttt"), dict) else {}
        loaded_ttt = dcfg.ttt
        if loaded_ttt is None:
            return out
        try:
            trained_ttt = default_ttt_config(dcfg.width, **overrides)
        except (TypeError, ValueError):
            trained_ttt = None
        keys = [k for k in overrides if hasattr(loaded_ttt, k)]
        keys += [k for k in ("mini_batch_size", "base_lr", "inner", "mlp_layers", "causal") if k not in overrides]
        for key in keys:
            stated = key in overrides
            trained = overrides[key] if stated else getattr(trained_ttt, key, None)
            if trained is None and not stated:
                continue
            where = "config.json recipe.ttt" if stated else "config.json recipe (left to default_ttt_config, the training code's default)"
            value = getattr(loaded_ttt, key)
            out.append(RecipeField(key, list(value) if isinstance(value, tuple) else value, f"config.json decoder.ttt.{key}",
                                   trained, where))
        return out

    def state(self) -> Mapping[str, torch.Tensor]:
        return dict(self.loaded.tensors)

    def expected_ttt_keys(self) -> list[str]:
        return [k for k in self.model.state_dict() if is_ttt_key(k)]

    def initial_state(self) -> Mapping[str, torch.Tensor]:
        if self._initial is None:
            # In the storage dtype: an untrained checkpoint stores exactly these values.
            fresh = build_with_ttt_init(self.loaded.decoder_config, int(self.loaded.config.get("ttt_init_seed", 0)),
                                        ttt_init_of(self.loaded.config))
            self._initial = {k: v.detach().to(STORE_DTYPE) for k, v in fresh.state_dict().items() if is_ttt_key(k)}
        return self._initial

    def ttt_modules(self) -> Mapping[str, torch.nn.Module]:
        return self.model.ttt_layers()

    # -- runs -----------------------------------------------------------------------------------

    def default_teacher_forced_inputs(self, length: int = DEFAULT_POSITIONS, rows: int = DEFAULT_ROWS) -> torch.Tensor:
        """Held-out dialogue the model never trained on: [rows, length + 1] token ids."""

        stream = self._corpus.tokens("val", self.tokenizer, seed=0, data=self.corpus_data())
        return fixed_windows(stream, length, rows)

    @functools.cached_property
    def _corpus(self) -> DialogueCorpus:
        """The corpus split the checkpoint was trained with (config.json ``corpus_split_seed``), read once:
        the default input and the default prompts both come from its validation side."""
        return DialogueCorpus.load(seed=int(self.loaded.config.get("corpus_split_seed", 0)))

    def corpus_data(self) -> str:
        """The text format this checkpoint was trained on (config.json ``corpus_data``), so held-out
        text is the same kind; checkpoints saved before the field existed read plain dialogue."""
        data = self.loaded.config.get("corpus_data", "dialogue")
        return data if isinstance(data, str) else "dialogue"

    def load_inputs(self, path: Path | None = None, max_positions: int | None = None) -> ModelInputs:
        """Held-out dialogue (default) or a UTF-8 text file, as rows of ``max_positions`` tokens.

        A text file is read as raw dialogue bytes; it is cut into up to 8 rows (at least one)
        of ``max_positions`` (default 256) fed tokens each.
        """

        length = int(max_positions or DEFAULT_POSITIONS)
        if length < 2:
            raise ReferenceInputError(f"max_positions must be >= 2, got {length}")
        if path is None:
            ids = self.default_teacher_forced_inputs(length=length)
            what = f"held-out {self._held_out_kind()}, {ids.shape[0]} rows x {length} tokens"
        else:
            path = Path(path)
            text = read_dialogue_text(path, min_bytes=length + 1)  # one byte is one token
            stream = torch.tensor(self.tokenizer.encode_text(text), dtype=torch.long)
            ids = fixed_windows(stream, length, DEFAULT_ROWS)
            what = f"{path} ({ids.shape[0]} rows x {length} tokens)"
        return ModelInputs(teacher_forced=ids, prompts=list(self.default_prompts()), description=what, positions=length)

    def default_prompts(self) -> tuple[str, ...]:
        """User turns of the kind the checkpoint was trained on: chatterbot questions for a dialogue
        model, the openings of held-out sessions for a model of the generated language (which never
        asks a chatterbot question, so a reply to one says little about how it talks)."""
        if self.corpus_data() == "fact-sessions":
            return tuple(self._corpus.session_openings(len(DEFAULT_PROMPTS)))
        return DEFAULT_PROMPTS

    def _held_out_kind(self) -> str:
        data = self.corpus_data()
        if data == "fact-sessions":
            return "sessions of the generated dialogue language (fact-sessions)"
        return f"chatterbot-corpus dialogue ({data})"

    def teacher_forced(self, inputs: Any, probe: Any | None = None, chunk: int | None = None) -> ForwardResult:
        """Per-position next-token loss over ``inputs``, fed in streaming calls of ``chunk`` tokens.

        ``chunk`` defaults to the TTT mini-batch size (one mini-batch per call).
        """
        ids = _as_token_batch(inputs, self.tokenizer)
        if chunk is None:
            layers = self.ttt_layers()
            chunk = layers[0].mini_batch_size if layers else ids.shape[1]
        with contextlib.ExitStack() as stack:
            if probe is not None:
                stack.enter_context(probe.attach(self.ttt_modules()))
            loss = streamed_loss(self.model, ids, chunk)
        finite = bool(torch.isfinite(loss).all())
        return ForwardResult(
            outer_loss=loss.double().mean(dim=0).cpu().numpy(), outputs_finite=finite, positions=int(loss.shape[1]),
            extra={"rows": int(ids.shape[0]), "chunk": int(chunk), "mean_loss": float(loss.double().mean())},
        )

    def generate(self, inputs: Any, gates: Sequence[GateValue], batched: bool = True, speak: bool = True) -> list[Generation]:
        """Greedy reply to the user turn ``inputs`` (text, or prompt token ids) at each gate value.

        ``batched=False`` runs the sequential reference path (one gate at a time);
        ``speak=False`` skips espeak-ng (audio is then an empty array and ``extra['spoken']``
        is False), for token-level tests on machines without espeak-ng.
        """
        if isinstance(inputs, str):
            prompt = self.tokenizer.encode_prompt(inputs)
        elif isinstance(inputs, Sequence) and inputs and all(isinstance(i, int) for i in inputs):
            prompt = list(inputs)
        else:
            raise ReferenceInputError(f"generate() needs a user turn (str) or prompt token ids, got {type(inputs).__name__}")
        gates = list(gates)
        run = generate_batched if batched else generate_sequential
        replies = run(self.model, prompt, gates, self.max_new_tokens)
        synth = None
        if speak:
            from ttt_checks.audio.espeak import synthesize  # lazy: espeak-ng is only needed to speak

            synth = synthesize
        results = []
        for gate, reply in zip(gates, replies):
            alpha = self._applied_alpha(gate)
            if synth is not None:
                audio = np.asarray(synth(reply.text, voice=self.voice, rate_wpm=self.rate_wpm, sample_rate=SAMPLE_RATE), dtype=np.float32)
            else:
                audio = np.zeros(0, dtype=np.float32)
            results.append(Generation(
                gate=gate, gate_alpha=float(alpha.mean()) if alpha.numel() else float("nan"),
                gate_tanh=mean_effective_gate(alpha) if alpha.numel() else 0.0,
                audio=audio, sample_rate=SAMPLE_RATE, text=reply.text, tokens=reply.tokens,
                extra={"ended": reply.ended, "prompt": self.tokenizer.describe(prompt), "batched": batched, "spoken": synth is not None},
            ))
        return results

    def _applied_alpha(self, gate: GateValue) -> torch.Tensor:
        """Raw alpha over all TTT blocks and channels for one gate request (double)."""
        blocks = list(self.model.gated_blocks().values())
        if not blocks:
            return torch.zeros(0, dtype=torch.float64)
        if gate == LEARNED:
            return torch.cat([b.alpha.detach().double() for b in blocks])
        return torch.full((sum(b.alpha.numel() for b in blocks),), float(gate), dtype=torch.float64)

    @contextlib.contextmanager
    def set_gate(self, value: GateValue | None) -> Iterator[None]:
        alpha = fixed_gate(value)
        if alpha is None:
            yield
            return
        with self.model.override_gates(alpha):
            yield


def load_adapter(checkpoint: str | Path, **kwargs: Any) -> ReferenceAdapter:
    """The adapter for a reference checkpoint directory (``fixtures/zoo/<name>``)."""
    return ReferenceAdapter(checkpoint, **kwargs)
