"""Speech a model is asked to listen to (``--input``): read, judged, converted, and every conversion said.

A health run measured on audio that holds nothing (silence, a few samples) or a distorted
recording (clipping) would report on the file, not on the model; and a file converted without a
word (another sample rate, stereo) hides a wrong input. So before a speech model sees a file:

- unreadable, not a WAV, 0 bytes or 0 frames: refused (:func:`~ttt_checks.audio.wav.read_wav`);
- shorter than ``min_samples`` at the model's rate: refused, saying the length and the minimum;
- silent (peak below :data:`SILENCE_PEAK_DBFS`): refused, there is nothing to measure;
- clipped (:data:`CLIP_MAX_SHARE` or more of the samples at :data:`CLIP_LEVEL` or above): refused,
  saying the share measured;
- several channels: averaged to mono, and noted;
- another sample rate: resampled, and noted.

The notes travel with the :class:`~ttt_checks.audio.wav.Audio` to the progress line, metrics.json
and the reports. The Mimi constants live here, not in the Moshi adapter, so that the plugin can
check ``--input`` for a Moshi checkpoint without importing moshi.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ttt_checks.audio.wav import Audio, AudioError, read_wav, resample, to_mono

log = logging.getLogger(__name__)

#: Mimi, Moshi's codec, works at 24 kHz in frames of 1920 samples (80 ms, 12.5 frames/s).
MIMI_SAMPLE_RATE = 24000
MIMI_FRAME_SIZE = 1920
#: A teacher-forced pass predicts frame t+1 from frame t, so two frames are the least it measures.
MIMI_MIN_FRAMES = 2
MIMI_MIN_SAMPLES = MIMI_MIN_FRAMES * MIMI_FRAME_SIZE

#: Below this peak a file is silent for our purpose (16-bit dither sits near -90 dBFS; quiet
#: but usable speech peaks well above -40 dBFS).
SILENCE_PEAK_DBFS = -60.0
#: A sample at or above this magnitude is at full scale (16-bit full scale is 32767/32768 = 0.99997).
CLIP_LEVEL = 0.999
#: Clean speech normalised to full scale touches it a few times; a clipped recording flattens
#: whole waveform peaks. 0.1 % of the samples tells the two apart.
CLIP_MAX_SHARE = 0.001


class SpeechInputError(AudioError):
    """A readable WAV that is no usable speech input (too short, silent, clipped)."""


def _ms(samples: int, rate: int) -> str:
    return f"{1000.0 * samples / rate:.0f} ms"


def load_speech_input(path: str | os.PathLike[str], sample_rate: int, min_samples: int = 1) -> Audio:
    """Mono float32 at ``sample_rate`` from a WAV, after the rules of this module's docstring.

    ``min_samples`` counts samples at ``sample_rate`` (the rate the model reads). Raises
    :class:`AudioError` (or its :class:`SpeechInputError`) with "<file>: <what>; <what to do>".
    Clipping is judged on the samples as stored (averaging channels or resampling would smear
    it); silence on the channel average, which is what the model hears.
    """
    frames, rate = read_wav(path)
    channels = frames.shape[1]
    expected = frames.shape[0] * sample_rate // rate  # length after resampling
    if expected < min_samples:
        found = f"{frames.shape[0]} samples at {rate} Hz ({_ms(frames.shape[0], rate)})"
        raise SpeechInputError(
            f"{path}: too short: {found}, the model needs at least {_ms(min_samples, sample_rate)} "
            f"({min_samples} samples at {sample_rate} Hz); pass a longer recording"
        )
    mono = to_mono(frames) if channels > 1 else frames[:, 0]
    peak = float(np.max(np.abs(mono)))
    if peak == 0.0 or 20.0 * np.log10(peak) < SILENCE_PEAK_DBFS:
        if channels > 1 and float(np.max(np.abs(frames))) > 10.0 ** (SILENCE_PEAK_DBFS / 20.0):
            raise SpeechInputError(f"{path}: silent once its {channels} channels are averaged to mono (they cancel out: "
                                   "one is the other inverted); pass one channel, e.g. `sox IN OUT.wav remix 1`")
        level = "every sample is 0" if peak == 0.0 else f"peak {20.0 * np.log10(peak):.1f} dBFS, below {SILENCE_PEAK_DBFS:g} dBFS"
        raise SpeechInputError(f"{path}: silent ({level}): there is no speech to measure; pass a recording with speech")
    share = float(np.mean(np.abs(frames) >= CLIP_LEVEL))
    if share >= CLIP_MAX_SHARE:
        raise SpeechInputError(
            f"{path}: clipped: {100.0 * share:.2g} % of the samples are at full scale (|x| >= {CLIP_LEVEL:g}; "
            f"at most {100.0 * CLIP_MAX_SHARE:g} % allowed), the waveform is distorted; "
            "pass a recording made or exported at a lower level"
        )
    notes: list[str] = []
    if channels > 1:
        notes.append(f"downmixed {channels} channels to mono (channel average)")
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
        notes.append(f"resampled {rate} Hz -> {sample_rate} Hz")
    for note in notes:
        log.info("%s: %s", path, note)
    return Audio(pcm=np.ascontiguousarray(mono, dtype=np.float32), sample_rate=int(sample_rate), path=str(path),
                 source_channels=int(channels), source_rate=int(rate), notes=tuple(notes))
