"""The Moshi+TTT model of a moshi-finetune checkpoint behind the :class:`Adapter` interface.

- ``teacher_forced``: the input wav is encoded with Mimi (24 kHz, 1920-sample frames) and put in
  Moshi's own audio stream (the stream the LM predicts), the user stream holds Mimi's codes of
  silence, the text stream holds the padding token (no transcript). The LM runs over the whole
  sequence in one pass, or frame by frame in moshi streaming mode (``chunk=1``: KV cache and TTT
  state carried from frame to frame, as at inference). Outer loss per frame = text cross-entropy
  + the weighted mean cross-entropy of Moshi's audio codebooks, codebook 0 weighted by the run's
  ``first_codebook_weight_multiplier`` (moshi-finetune's own loss weighting).
- ``generate``: moshi's LMGen frame by frame (the first frame fed twice, as run_inference does),
  every gate value one batch row, Mimi decoding to 24 kHz, the inner-monologue text kept.

CUDA graphs: on a CUDA device moshi's LMGen (and Mimi's streaming state) wrap their per-frame
functions in ``moshi.utils.compile.CUDAGraphed``, which captures one frame's kernels and replays
them for every later frame. The TTT hybrid layer decides per frame in Python (open mini-batch,
carried inner weights, mini-batch boundary, Figure-5 capture), so a replayed graph would run the
first frame's decisions forever (or capture fails on a host sync). Generation and every streamed
pass therefore run under ``moshi.utils.compile.no_cuda_graph()`` (:func:`graphs_disabled`), as the
user's own ``run_inference_with_ttt.py`` does. Cost: kernel-launch overhead per frame, paid on GPU
only; on CPU moshi never graphs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ttt_checks.audio.speech_input import MIMI_FRAME_SIZE, MIMI_MIN_SAMPLES, MIMI_SAMPLE_RATE, load_speech_input
from ttt_checks.audio.wav import Audio, AudioError
from ttt_checks.models.base import (
    LEARNED,
    Adapter,
    ForwardResult,
    GateValue,
    Generation,
    InputError,
    ModelInputs,
    TTTLayerInfo,
    disputed_number,
    fixed_gate,
)
from ttt_checks.models.moshi import checks
from ttt_checks.models.moshi.checkpoint import BaseWeights, locate, recipe_fields
from ttt_checks.models.moshi.memory import MoshiMemoryModel, lm_kwargs_of, require_fits
from ttt_checks.models.moshi.model import LoadedMoshi, load_moshi, ttt_config_for
from ttt_checks.paths import SPEECH_FIXTURES
from ttt_checks.ttt.gate import mean_effective_gate

SAMPLE_RATE = MIMI_SAMPLE_RATE  # 24 kHz
FRAME_SIZE = MIMI_FRAME_SIZE  # 80 ms at 12.5 Hz


class MoshiInputError(InputError):
    """Input audio the adapter cannot use; the message says what it needs."""


def read_wav_24k(path: str | Path) -> np.ndarray:
    """Mono float32 at 24 kHz, as moshi's run_inference reads it (sphn, channel 0)."""
    import sphn

    try:
        pcm, _ = sphn.read(str(path), sample_rate=SAMPLE_RATE)
    except Exception as exc:  # sphn raises plain exceptions for unreadable files
        raise MoshiInputError(f"{path}: cannot read it as audio ({exc})") from exc
    return np.ascontiguousarray(pcm[0], dtype=np.float32)


def default_speech(first_only: bool = False) -> tuple[np.ndarray, str]:
    """The repo's espeak-ng speech clips (fixtures/speech, kind 'speech'), concatenated at 24 kHz
    (``first_only``: the first clip alone, one sentence: the prompt of the gating sweep)."""
    manifest = SPEECH_FIXTURES / "manifest.json"
    if not manifest.is_file():
        raise MoshiInputError(f"{manifest}: missing; pass --input a.wav (speech, any rate; it is resampled to 24 kHz)")
    clips = [c for c in json.loads(manifest.read_text())["clips"] if c.get("kind") == "speech"]
    parts, names = [], []
    for clip in clips:
        path = SPEECH_FIXTURES / clip["file"]
        if path.is_file():
            parts += [read_wav_24k(path), np.zeros(SAMPLE_RATE // 4, dtype=np.float32)]
            names.append(clip["file"])
            if first_only:
                break
    if not parts:
        raise MoshiInputError(f"{SPEECH_FIXTURES}: none of the speech clips in its manifest exists")
    return np.concatenate(parts), f"espeak-ng speech fixtures {', '.join(names)}"


def read_speech_input(path: str | Path) -> Audio:
    """A user's wav under the rules of :mod:`ttt_checks.audio.speech_input` (not sphn: it keeps
    channel 0 of stereo and resamples without a word), as 24 kHz mono with its notes."""
    try:
        return load_speech_input(path, SAMPLE_RATE, MIMI_MIN_SAMPLES)
    except AudioError as exc:
        raise MoshiInputError(str(exc)) from exc


def _as_pcm(inputs: Any) -> torch.Tensor:
    """[B, 1, N] float32 from a path, an array or a tensor (1-D, [1, N] or [B, 1, N])."""
    if isinstance(inputs, (str, Path)):
        inputs = read_speech_input(inputs).pcm
    pcm = torch.as_tensor(np.asarray(inputs, dtype=np.float32) if not isinstance(inputs, torch.Tensor) else inputs).float()
    if pcm.dim() == 1:
        pcm = pcm[None, None]
    elif pcm.dim() == 2:
        pcm = pcm[:, None]
    if pcm.dim() != 3 or pcm.shape[1] != 1:
        raise MoshiInputError(f"audio must be mono: [N], [B, N] or [B, 1, N] samples at 24 kHz, got {tuple(pcm.shape)}")
    frames = pcm.shape[-1] // FRAME_SIZE
    if frames < 2:
        raise MoshiInputError(f"need at least 2 frames of {FRAME_SIZE} samples (160 ms at 24 kHz), got {pcm.shape[-1]} samples")
    return pcm[..., : frames * FRAME_SIZE]  # a trailing partial frame is dropped, as run_inference does


def graphs_disabled() -> contextlib.AbstractContextManager:
    """moshi's ``no_cuda_graph()``: every ``CUDAGraphed`` called inside runs eagerly.

    The flag is read by ``CUDAGraphed`` at call time (not when LMGen builds its streaming state),
    so the context must stay open for every ``step``/``decode`` call, which is how the adapter
    uses it. Why graphs must be off: see the module docstring.
    """
    from moshi.utils.compile import no_cuda_graph

    return no_cuda_graph()


def _env_flag(name: str) -> bool | None:

    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


class MoshiAdapter(Adapter):
    """Adapter of a moshi-finetune TTT checkpoint (lora.safetensors or consolidated.safetensors).

    Base weights come from ``hf_repo`` in the local Hugging Face cache, or from explicit
    ``moshi_weight`` / ``mimi_weight`` / ``tokenizer`` paths (or the TTT_CHECKS_* environment
    variables, see docs/moshi.md). ``carry_state``: whether the TTT state survives from one
    streaming call to the next; default from training_config.json ``ttt.persistent_states``
    (True for the user's runs), overridable with TTT_CHECKS_MOSHI_CARRY_STATE=0/1.
    """

    name = "moshi"

    def __init__(self, checkpoint: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                 hf_repo: str | None = None, moshi_weight: str | Path | None = None,
                 mimi_weight: str | Path | None = None, tokenizer: str | Path | None = None,
                 mimi_config: str | Path | None = None, carry_state: bool | None = None,
                 sampling: bool = True, seed: int = 4242, temp: float | None = None, temp_text: float | None = None,
                 reply_seconds: float = 4.0, trust_pickle: bool = False) -> None:
        self.files = locate(checkpoint, trust_pickle=trust_pickle)
        self.checkpoint = self.files.root
        self.base = BaseWeights.from_options(hf_repo, moshi_weight, mimi_weight, tokenizer, mimi_config)
        if carry_state is None:
            carry_state = _env_flag("TTT_CHECKS_MOSHI_CARRY_STATE")
        if carry_state is None:
            carry_state = bool(self.files.ttt["persistent_states"])
        self.carry_state = carry_state
        self._memory: MoshiMemoryModel | None = None
        if torch.device(device).type == "cuda":  # refuse early, before 15 GB are read, when it cannot fit
            before = _memory_model(self.files, self.base, dtype or torch.bfloat16, configs=None)
            require_fits(before.load(), device, resident=0,
                         fix="a GPU with more free memory (check nvidia-smi for other processes), or --device cpu")
        self.loaded: LoadedMoshi = load_moshi(self.files, self.base, device=device, dtype=dtype, carry_state=carry_state)
        self.lm, self.mimi = self.loaded.lm, self.loaded.mimi
        self.device = self.loaded.device
        self.sampling, self.seed = sampling, seed
        gen_cfg = dict(self.loaded.info.lm_gen_config or {})
        self.lm_gen_kwargs: dict[str, Any] = {**gen_cfg, "use_sampling": sampling}
        if temp is not None:
            self.lm_gen_kwargs["temp"] = temp
        if temp_text is not None:
            self.lm_gen_kwargs["temp_text"] = temp_text
        self.reply_seconds = reply_seconds
        self.first_codebook_weight = float(self.files.training_config.get("first_codebook_weight_multiplier", 1.0) or 1.0)
        self._codes_cache: tuple[int, torch.Tensor] | None = None

    @classmethod
    def from_model(cls, loaded: LoadedMoshi, memory: MoshiMemoryModel, carry_state: bool = True,
                   first_codebook_weight: float = 1.0, sampling: bool = False, seed: int = 4242,
                   reply_seconds: float = 0.0, lm_gen_kwargs: Mapping[str, Any] | None = None) -> "MoshiAdapter":
        """An adapter around a model built in memory (no checkpoint files: e.g. a random-weight 7B
        for measuring memory and time, scripts/gpu_check.py). Methods that read the checkpoint
        (``state``, ``initial_state``, key lists, ``model_checks``) are not available on it."""
        self = cls.__new__(cls)
        self.files, self.checkpoint, self.base = None, None, None
        self.carry_state = carry_state
        for h in loaded.hybrids.values():
            h.carry_state = carry_state
        self._memory = memory
        self.loaded = loaded
        self.lm, self.mimi, self.device = loaded.lm, loaded.mimi, loaded.device
        self.sampling, self.seed = sampling, seed
        self.lm_gen_kwargs = {**dict(lm_gen_kwargs or {}), "use_sampling": sampling}
        self.reply_seconds = reply_seconds
        self.first_codebook_weight = float(first_codebook_weight)
        self._codes_cache = None
        return self

    def memory_model(self) -> MoshiMemoryModel:
        """The memory estimate of this model (its TTT layers as loaded), built once."""
        if self._memory is None:
            configs = {i: h.ttt.config for i, h in self.loaded.hybrids.items()}
            self._memory = _memory_model(self.files, self.base, self.loaded.dtype, configs=configs)
        return self._memory

    def _require_memory(self, phase: str, rows: int, frames: int) -> None:
        """On CUDA: stop before ``phase`` when its estimate exceeds the free memory, naming the fix."""
        if self.device.type != "cuda":
            return
        mem = self.memory_model()
        resident = mem.weight_bytes()
        free = int(torch.cuda.mem_get_info(self.device)[0])
        if phase == "generate":
            est = mem.streaming(rows)
            fits = mem.max_rows(resident + free)
            fix = (f"fewer gates per batch: at most {fits} gate row(s) fit now (--gates with <= {fits} values; each row holds "
                   f"its own KV cache), or a shorter attention context (config.json context / ttt.ttt_layer_context / "
                   f"ttt.non_ttt_layer_context)")
        else:
            est = mem.teacher_forced(frames, rows)
            fits = mem.max_frames(resident + free, rows)
            fix = (f"a shorter context: at most {fits} frames fit now (--max-positions {fits}, or a shorter --input); "
                   f"{frames} were asked for")
        require_fits(est, self.device, resident=resident, fix=fix)

    @property
    def load_report(self):
        """Missing/unexpected TTT tensors, detected layouts, load time."""
        return self.loaded.report

    # -- static ---------------------------------------------------------------------------------

    def ttt_layers(self) -> list[TTTLayerInfo]:
        out = []
        disputed = disputed_number(self.recipe_fields(), "initial_gating_alpha")
        for i, h in self.loaded.hybrids.items():
            c = h.ttt.config
            out.append(TTTLayerInfo(
                name=f"transformer.layers.{i}", index=i, num_heads=c.num_heads, head_dim=c.head_dim,
                mini_batch_size=c.mini_batch_size, causal=c.causal, inner=c.inner,
                mlp_layers=c.mlp_layers if c.inner == "mlp" else 1, base_lr=c.base_lr,
                gate_alpha=h.ttt_block.alpha.detach().float().cpu().numpy().copy(), gate_alpha_init=self._stated_alpha_init(),
                gate_alpha_init_disputed=disputed,
            ))
        return out

    def _stated_alpha_init(self) -> float | None:
        """training_config.json ``ttt.initial_gating_alpha`` when the run states it; None when the
        key is absent (moshi-finetune's default of today is no evidence of an older run's init)."""
        if "initial_gating_alpha" in self.files.ttt.defaults_used:
            return None
        return float(self.files.ttt["initial_gating_alpha"])

    def chance_outer_loss(self) -> float:
        """Uniform guessing under this adapter's outer loss: ln(text_card) for the text stream
        plus ln(card) for the (weighted mean of the) audio codebooks."""

        return math.log(self.lm.text_card) + math.log(self.lm.card)

    def checkpoint_notes(self) -> list[str]:
        return list(self.files.notes)

    def recipe_fields(self) -> list:
        """config.json vs training_config.json, and the TTT-MLP depth of the weights vs the config
        (see :func:`ttt_checks.models.moshi.checkpoint.recipe_fields`)."""

        built = {i: (h.ttt.config.inner, h.ttt.config.mlp_layers) for i, h in self.loaded.hybrids.items()}
        return recipe_fields(self.files, built)

    def state(self) -> Mapping[str, torch.Tensor]:
        return dict(self.loaded.tensors)

    def expected_ttt_keys(self) -> list[str]:
        return [k for lk in self.loaded.keys.values() for k in lk.expected]

    def unexpected_ttt_keys(self) -> list[str]:
        """TTT-looking tensors in the checkpoint that no TTT layer of the config takes."""
        return list(self.loaded.report.unexpected_ttt)

    def model_checks(self, inputs: Any) -> list:
        """Moshi-specific verdicts: gate 0 reproduces vanilla Moshi, parameters the user's code
        never applied are still at init, state carried frame by frame, the intra-mini-batch
        causality leak (a warning with its size, never hidden)."""

        return [
            checks.gate0_matches_vanilla(self, inputs),
            checks.unused_parameters_at_init(self),
            *checks.state_carried(self, inputs),
            *checks.causality_leak(self, inputs),
        ]

    def unused_ttt_keys(self) -> list[str]:
        """Tensors the user's module holds but its forward never applies (post_norm, wo, backward gate)."""
        return [k for lk in self.loaded.keys.values() for k in lk.unused]

    def initial_state(self) -> Mapping[str, torch.Tensor]:
        """TTT tensors whose initial value is known without the training seed.

        Norm scales start at 1 and biases (norm, inner, step-size) at 0; both gates start at
        ``initial_gating_alpha``. Projections and inner weights are random at init and are not
        listed (their training cannot be judged from one checkpoint). Values are rounded to the
        stored dtype, so a bf16 checkpoint compares exactly.
        """
        alpha = float(self.files.ttt["initial_gating_alpha"])
        out: dict[str, torch.Tensor] = {}
        stored = self.loaded.tensors
        for lk in self.loaded.keys.values():
            p, b = lk.ttt_prefix, lk.block_prefix
            rules = {
                p + "post_norm.weight": 1.0, p + "post_norm.bias": 0.0, p + "ttt_norm_weight": 1.0,
                p + "ttt_norm_bias": 0.0, p + "learnable_ttt_lr_bias": 0.0, p + "wo.bias": 0.0,
                b + "forward_ssm_gating.gating_alpha": alpha, b + "backward_ssm_gating.gating_alpha": alpha,
            }
            rules.update({k: 0.0 for k in lk.mapping if k[len(p):] in ("b1", "b2") or k[len(p):].startswith("biases.")})
            for key, value in rules.items():
                if key in stored:
                    ref = stored[key]
                    out[key] = torch.full(ref.shape, value, dtype=torch.float32).to(ref.dtype)
        return out

    def ttt_modules(self) -> Mapping[str, torch.nn.Module]:
        return {f"transformer.layers.{i}": h.ttt for i, h in self.loaded.hybrids.items()}

    # -- inputs ---------------------------------------------------------------------------------

    def load_inputs(self, path: Path | None = None, max_positions: int | None = None) -> ModelInputs:
        """A wav (default: the repo's speech fixtures), cut to ``max_positions`` frames of 80 ms.

        The default sweep prompt is the first speech clip alone (one sentence, then
        ``reply_seconds`` of silence for the answer); with ``path`` the prompt is the input itself.
        A given wav passes :mod:`ttt_checks.audio.speech_input` first: silent, clipped or too short
        is a :class:`MoshiInputError`; stereo and other rates are converted and said in ``notes``.
        """
        notes: tuple[str, ...] = ()
        if path is None:
            pcm, what = default_speech()
            prompt = default_speech(first_only=True)[0]
        else:
            audio = read_speech_input(path)
            pcm, what, notes = audio.pcm, str(path), audio.notes
            prompt = None
        frames = len(pcm) // FRAME_SIZE
        if max_positions is not None:
            frames = min(frames, int(max_positions))
        if frames < 2:
            raise MoshiInputError(f"{what}: {frames} frames of 80 ms, a teacher-forced pass needs 2; "
                                  "pass a longer --input or a larger --max-positions")
        pcm = pcm[: frames * FRAME_SIZE]
        prompt = pcm if prompt is None else prompt[: frames * FRAME_SIZE]
        return ModelInputs(teacher_forced=pcm, prompts=[prompt], positions=frames, notes=notes,
                           description=f"{what}: {frames} frames ({frames * FRAME_SIZE / SAMPLE_RATE:.2f} s at 24 kHz)")

    @torch.no_grad()
    def encode(self, inputs: Any) -> torch.Tensor:
        """Mimi codes [B, K, T] of the input audio (one-shot encode equals streaming encode)."""
        pcm = _as_pcm(inputs)
        key = hash((tuple(pcm.shape), float(pcm.double().sum()), float(pcm.double().abs().sum())))
        if self._codes_cache is not None and self._codes_cache[0] == key:
            return self._codes_cache[1]
        codes = self.mimi.encode(pcm.to(self.device))
        self._codes_cache = (key, codes)
        return codes

    def lm_codes(self, inputs: Any) -> torch.Tensor:
        """[B, 1 + n_q, T]: padding text, the input in Moshi's stream, Mimi silence in the user's."""
        lm = self.lm
        audio = self.encode(inputs)
        B, _, T = audio.shape
        dep_q, n_q = lm.dep_q, lm.n_q
        user_q = n_q - dep_q
        if audio.shape[1] < max(dep_q, user_q):
            raise MoshiInputError(f"Mimi gave {audio.shape[1]} codebooks, the LM needs {max(dep_q, user_q)}")
        with torch.no_grad():
            silence = self.mimi.encode(torch.zeros(B, 1, T * FRAME_SIZE, device=self.device))
        text = torch.full((B, 1, T), lm.text_padding_token_id, dtype=torch.long, device=self.device)
        return torch.cat([text, audio[:, :dep_q], silence[:, :user_q]], dim=1)

    # -- teacher-forced -------------------------------------------------------------------------

    def teacher_forced(self, inputs: Any, probe: Any | None = None, chunk: int | None = None) -> ForwardResult:
        """Per-frame outer loss; ``chunk`` feeds that many frames per streaming call (None: one pass)."""
        if self.device.type == "cuda":  # before Mimi runs: the LM pass is what may not fit
            pcm = _as_pcm(inputs)
            self._require_teacher_forced(rows=pcm.shape[0], frames=pcm.shape[-1] // FRAME_SIZE, chunk=chunk)
        return self.teacher_forced_codes(self.lm_codes(inputs), probe=probe, chunk=chunk)

    def _require_teacher_forced(self, rows: int, frames: int, chunk: int | None) -> None:
        if chunk is None:
            self._require_memory("teacher_forced", rows=rows, frames=frames)
        else:  # streamed: a KV cache per row, one chunk of activations
            self._require_memory("generate", rows=rows, frames=0)

    def teacher_forced_codes(self, codes: torch.Tensor, probe: Any | None = None, chunk: int | None = None) -> ForwardResult:
        """:meth:`teacher_forced` on LM codes [B, 1 + n_q, T] (text, Moshi's audio, the user's audio)
        instead of audio: what a check on random-weight models or precomputed codes calls."""
        self._require_teacher_forced(rows=int(codes.shape[0]), frames=int(codes.shape[-1]), chunk=chunk)
        with contextlib.ExitStack() as stack:
            if probe is not None:
                stack.enter_context(probe.attach(self.ttt_modules()))
            text_ce, text_mask, audio_ce, audio_mask, finite = self._losses(codes, chunk)
        # Scored positions keep their value, NaN included (a NaN logit must fail the checks, never
        # be averaged away); positions a delayed stream cannot score are left out by the masks.
        w = torch.ones(audio_ce.shape[1], dtype=torch.float64)
        w[0] = self.first_codebook_weight
        wm = audio_mask.double() * w[None, :, None]
        audio = torch.where(audio_mask, audio_ce, 0.0).mul(w[None, :, None]).sum(1) / wm.sum(1).clamp_min(1e-12)
        text = torch.where(text_mask, text_ce, 0.0)
        per_row = torch.where(audio_mask.any(1), text + audio, text)  # [B, T]
        per_pos = per_row.mean(0)
        audio_scored = torch.where(audio_mask.any(1), audio, torch.nan)
        return ForwardResult(
            outer_loss=per_pos.numpy(), outputs_finite=finite, positions=int(codes.shape[-1]),
            extra={"chunk": chunk, "text_loss": float(text.mean()), "audio_loss": float(audio_scored[audio_mask.any(1)].mean()),
                   "audio_loss_per_codebook": [float(audio_ce[:, k][audio_mask[:, k]].mean()) for k in range(audio_ce.shape[1])],
                   "first_codebook_weight": self.first_codebook_weight,
                   "weighting": "text CE + (w0*CE_0 + sum_k>0 CE_k) / (w0 + K - 1) over Moshi's audio codebooks"},
        )

    @torch.no_grad()
    def transformer_outputs(self, codes: torch.Tensor, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(delayed input codes [B, K, T+1], transformer_out [B, T, D], text_logits [B, 1, T, card])."""
        from moshi.models.lm import _delay_sequence

        lm = self.lm
        B, K, T = codes.shape
        initial = lm._get_initial_token().expand(B, -1, -1)
        delayed = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], dim=2)
        seq = delayed[:, :, :-1]
        if chunk is None:
            out, text_logits = lm.forward_text(seq)
        else:
            if chunk < 1:
                raise ValueError(f"chunk must be >= 1, got {chunk}")
            outs, texts = [], []
            with graphs_disabled(), lm.streaming(B):
                for lo in range(0, T, chunk):
                    o, tl = lm.forward_text(seq[:, :, lo: lo + chunk])
                    outs.append(o)
                    texts.append(tl)
            out, text_logits = torch.cat(outs, 1), torch.cat(texts, 2)
        return delayed, out, text_logits

    @torch.no_grad()
    def logits(self, codes: torch.Tensor, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Undelayed (audio_logits [B, dep_q, T, card], audio_mask, text_logits [B, 1, T, text_card], text_mask)."""
        from moshi.models.lm import _undelay_sequence

        lm = self.lm
        delayed, out, text_logits = self.transformer_outputs(codes, chunk)
        audio_logits = lm.forward_depformer_training(delayed[:, :, 1:], out)
        audio_logits, audio_mask = _undelay_sequence(lm.delays[1: 1 + lm.dep_q], audio_logits, fill_value=float("nan"))
        audio_mask &= codes[:, 1: 1 + lm.dep_q] != lm.zero_token_id
        text_logits, text_mask = _undelay_sequence(lm.delays[:1], text_logits, fill_value=float("nan"))
        text_mask &= codes[:, :1] != lm.zero_token_id
        return audio_logits, audio_mask, text_logits, text_mask

    def _losses(self, codes: torch.Tensor, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Per-position CE and scored masks: text [B, T], audio [B, dep_q, T]."""
        audio_logits, audio_mask, text_logits, text_mask = self.logits(codes, chunk)
        finite = bool(torch.isfinite(audio_logits[audio_mask]).all() and torch.isfinite(text_logits[text_mask]).all())

        def ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            logp = torch.log_softmax(logits.double(), dim=-1)  # NaN rows stay NaN
            nll = -logp.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
            return torch.where(mask, nll, torch.nan).cpu()

        lm = self.lm
        audio_ce = ce(audio_logits, codes[:, 1: 1 + lm.dep_q], audio_mask)
        text_ce = ce(text_logits, codes[:, :1], text_mask)[:, 0]
        return text_ce, text_mask[:, 0].cpu(), audio_ce, audio_mask.cpu(), finite

    # -- gates ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def set_gate(self, value: GateValue | None) -> Iterator[None]:
        alpha = fixed_gate(value)
        if alpha is None:
            yield
            return
        with contextlib.ExitStack() as stack:
            for h in self.loaded.hybrids.values():
                stack.enter_context(h.ttt_block.override_gate(alpha))
            yield

    def _gate_rows(self, gates: Sequence[GateValue]) -> contextlib.ExitStack:
        """Per batch row raw alpha [B, width] on every TTT layer ('learned' rows keep the learned alpha)."""
        stack = contextlib.ExitStack()
        for h in self.loaded.hybrids.values():
            alpha = h.ttt_block.alpha.detach()
            rows = [alpha if g == LEARNED else torch.full_like(alpha, float(g)) for g in gates]
            stack.enter_context(h.ttt_block.override_gate(torch.stack(rows)))
        return stack

    def _applied(self, gate: GateValue) -> tuple[float, float]:
        alphas = [h.ttt_block.alpha.detach().double().cpu() for h in self.loaded.hybrids.values()]
        if not alphas:
            return float("nan"), 0.0
        a = torch.cat(alphas) if gate == LEARNED else torch.full((sum(x.numel() for x in alphas),), float(gate), dtype=torch.float64)
        return float(a.mean()), mean_effective_gate(a)

    # -- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, inputs: Any, gates: Sequence[GateValue]) -> list[Generation]:
        """One reply per gate, all gates in one batched streaming pass.

        The prompt is followed by ``reply_seconds`` of silence so the model has room to answer;
        output length equals that input length (one 80 ms frame out per frame in). Runs with
        moshi's CUDA graphs off (:func:`graphs_disabled`); on CUDA it first checks that a batch of
        ``len(gates)`` rows fits the free GPU memory (:mod:`~ttt_checks.models.moshi.memory`).
        """
        from moshi.models import LMGen

        gates = list(gates)
        if not gates:
            raise ValueError("generate() needs at least one gate value")
        for g in gates:
            if isinstance(g, str) and g != LEARNED:
                raise ValueError(f"gate {g!r}: use a float raw alpha or {LEARNED!r}")
        self._require_memory("generate", rows=len(gates), frames=0)
        pcm = _as_pcm(inputs)[:1]
        if self.reply_seconds > 0:
            pad = int(round(self.reply_seconds * SAMPLE_RATE / FRAME_SIZE)) * FRAME_SIZE
            pcm = torch.cat([pcm, torch.zeros(1, 1, pad)], dim=-1)
        B = len(gates)
        lm, mimi = self.lm, self.mimi
        user_q = lm.n_q - lm.dep_q
        codes = mimi.encode(pcm.to(self.device))[:, :user_q]  # [1, user_q, T]
        T = codes.shape[-1]
        torch.manual_seed(self.seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(self.seed)
        lm_gen = LMGen(lm, **self.lm_gen_kwargs)
        text_ids: list[list[int]] = [[] for _ in range(B)]
        pieces: list[list[str]] = [[] for _ in range(B)]
        audio: list[torch.Tensor] = []
        tok = self.loaded.tokenizer
        with graphs_disabled(), self._gate_rows(gates), mimi.streaming(B), lm_gen.streaming(B):
            for t in range(T):
                frame = codes[:, :, t: t + 1].expand(B, -1, -1)
                if t == 0:
                    lm_gen.step(frame)  # returns None: the first frame is replaced by the initial token
                tokens = lm_gen.step(frame)
                if tokens is None:
                    continue
                audio.append(mimi.decode(tokens[:, 1: 1 + lm.dep_q]).float().cpu())
                for b in range(B):
                    t_id = int(tokens[b, 0, 0])
                    text_ids[b].append(t_id)
                    if t_id not in (0, 3):
                        pieces[b].append(tok.id_to_piece(t_id).replace("\u2581", " "))
        pcm_out = torch.cat(audio, dim=-1) if audio else torch.zeros(B, 1, 0)
        results = []
        for b, gate in enumerate(gates):
            alpha, tanh = self._applied(gate)
            wav = pcm_out[b, 0].numpy().astype(np.float32)
            results.append(Generation(
                gate=gate, gate_alpha=alpha, gate_tanh=tanh, audio=wav, sample_rate=SAMPLE_RATE,
                text="".join(pieces[b]).strip(), tokens=text_ids[b],
                extra={"frames": len(text_ids[b]), "finite": bool(np.isfinite(wav).all()),
                       "sampling": self.sampling, "seed": self.seed, "batch_row": b},
            ))
        return results


def _memory_model(files: Any, base: BaseWeights, dtype: torch.dtype, configs: dict | None) -> MoshiMemoryModel:
    """The estimate for a checkpoint: its config.json LM, its TTT layers (``configs``, or before
    loading the TTT-MLP the training config names), its attention contexts, base Mimi's config."""

    kwargs = lm_kwargs_of(files.config)
    ttt = files.ttt
    num_layers = int(kwargs["num_layers"])
    indices = ttt.layer_indices(num_layers)
    if configs is None:
        configs = {i: ttt_config_for(int(kwargs["dim"]), int(kwargs["num_heads"]), "mlp", int(ttt["ttt_mlp_layers"]), ttt)
                   for i in indices}
    contexts: dict[int, int] = {}
    for i in range(num_layers):
        override = ttt["ttt_layer_context"] if i in configs else ttt["non_ttt_layer_context"]
        if override is not None:
            contexts[i] = int(override)
    mimi_config = json.loads(Path(base.mimi_config).read_text()) if base.mimi_config else None
    return MoshiMemoryModel(kwargs, configs, dtype_bytes=torch.finfo(dtype).bits // 8, mimi_config=mimi_config,
                            contexts=contexts)


def load_adapter(checkpoint: str | Path, **options: Any) -> MoshiAdapter:
    """The adapter for a moshi-finetune checkpoint (run dir, checkpoint_NNNNNN or consolidated/)."""
    return MoshiAdapter(checkpoint, **options)
