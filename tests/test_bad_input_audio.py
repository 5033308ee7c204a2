"""A bad ``--input`` file never gives a green health run: it is refused with "<file>: <what>; <what to do>"
(a usage error before any model loads, a failing verdict inside a run), and a file that is only
converted (another rate, stereo) is converted and said. Moshi-level tests, which need a tiny
trained Moshi checkpoint, are in test_moshi_adapter.py (``-k bad_input`` selects both)."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pytest

from ttt_checks.audio.speech_input import (
    CLIP_LEVEL,
    MIMI_MIN_SAMPLES,
    MIMI_SAMPLE_RATE,
    SpeechInputError,
    load_speech_input,
)
from ttt_checks.audio.wav import AudioError, write_wav
from ttt_checks.models.base import Adapter, InputError, ModelInputs
from ttt_checks.models.reference.adapter import ReferenceInputError, read_dialogue_text
from ttt_checks.models.registry import check_input
from ttt_checks.report import write_report
from ttt_checks.run import HealthRun, RunOptions

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "fixtures" / "speech"
RATE = MIMI_SAMPLE_RATE


def tone(seconds: float = 1.0, rate: int = RATE, freq: float = 220.0, peak: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return peak * np.sin(2 * np.pi * freq * t)


def load(path: Path):
    """The Moshi rules: 24 kHz, at least two Mimi frames."""
    return load_speech_input(path, MIMI_SAMPLE_RATE, MIMI_MIN_SAMPLES)


# -- not audio, empty -----------------------------------------------------------------------------


def test_bad_input_text_file_named_wav_is_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are my meeting notes, not a recording\n")
    with pytest.raises(AudioError, match=r"notes\.wav: not a WAV file.*convert it first"):
        load(path)


def test_bad_input_random_bytes_are_not_audio(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="not a WAV file"):
        load(path)


def test_bad_input_zero_byte_wav_is_empty(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: the file is empty \(0 bytes\)"):
        load(path)


def test_bad_input_wav_with_zero_frames_holds_no_audio(tmp_path):
    path = write_wav(tmp_path / "frameless.wav", np.zeros((0, 1)), RATE)
    with pytest.raises(AudioError, match=r"no samples \(0 frames\)"):
        load(path)


# -- silent, clipped, short -----------------------------------------------------------------------


def test_bad_input_digital_silence_is_refused():
    with pytest.raises(SpeechInputError, match=r"silence\.wav: silent \(every sample is 0\).*pass a recording with speech"):
        load(SPEECH / "silence.wav")


def test_bad_input_audio_below_minus_60_dbfs_is_silent_and_above_is_not(tmp_path):
    quiet = write_wav(tmp_path / "quiet.wav", tone(peak=10 ** (-70 / 20), freq=250.0), RATE, float32=True)
    with pytest.raises(SpeechInputError, match=r"quiet\.wav: silent \(peak -70\.0 dBFS, below -60 dBFS\)"):
        load(quiet)
    soft = write_wav(tmp_path / "soft.wav", tone(peak=10 ** (-50 / 20), freq=250.0), RATE, float32=True)
    assert load(soft).notes == ()


def test_bad_input_stereo_channels_that_cancel_are_silent(tmp_path):
    x = tone()
    path = write_wav(tmp_path / "inverted.wav", np.stack([x, -x], axis=1), RATE)
    with pytest.raises(SpeechInputError, match="silent once its 2 channels are averaged.*pass one channel"):
        load(path)


def test_bad_input_clipped_audio_names_the_share_measured(tmp_path):
    x = np.clip(tone(freq=200.0, peak=1.0) * 1.5, -1.0, 1.0)
    share = float(np.mean(np.abs(np.round(x * 32767) / 32768) >= CLIP_LEVEL))
    path = write_wav(tmp_path / "hot.wav", x, RATE)
    with pytest.raises(SpeechInputError, match=r"hot\.wav: clipped: [\d.]+ % of the samples are at full scale") as err:
        load(path)
    assert f"{100 * share:.2g} %" in str(err.value) and "at most 0.1 % allowed" in str(err.value)


def test_bad_input_rules_pass_loud_unclipped_audio_and_the_speech_fixtures(tmp_path):
    loud = tone(peak=0.99)
    loud[::2000] = 1.0  # 12 full-scale samples in 24000 (0.05 %): a normalised recording, not a clipped one
    assert load(write_wav(tmp_path / "loud.wav", loud, RATE)).notes == ()
    clips = [c["file"] for c in json.loads((SPEECH / "manifest.json").read_text())["clips"] if c["kind"] == "speech"]
    assert clips
    for name in clips:
        audio = load(SPEECH / name)
        assert audio.notes == ("resampled 16000 Hz -> 24000 Hz",), name
        assert audio.sample_rate == RATE and np.isfinite(audio.pcm).all()


def test_bad_input_shorter_than_the_model_minimum_says_both_lengths(tmp_path):
    path = write_wav(tmp_path / "blip.wav", tone()[:1000], RATE)
    with pytest.raises(SpeechInputError, match=r"blip\.wav: too short: 1000 samples at 24000 Hz \(42 ms\), "
                                               r"the model needs at least 160 ms \(3840 samples at 24000 Hz\)"):
        load(path)
    assert len(load(write_wav(tmp_path / "just.wav", tone()[:MIMI_MIN_SAMPLES], RATE)).pcm) == MIMI_MIN_SAMPLES


def test_bad_input_shorter_than_one_frame_is_judged_at_the_model_rate(tmp_path):
    path = write_wav(tmp_path / "blip44.wav", tone(rate=44100)[:2000], 44100)  # 2000 samples at 44.1 kHz: 1088 at 24 kHz
    with pytest.raises(SpeechInputError, match=r"too short: 2000 samples at 44100 Hz \(45 ms\)"):
        load(path)


# -- converted, and said ----------------------------------------------------------------------------


def test_bad_input_44k_is_resampled_to_24k_and_said(tmp_path):
    path = write_wav(tmp_path / "cd.wav", tone(seconds=1.0, rate=44100, freq=440.0), 44100)
    audio = load(path)
    assert audio.notes == ("resampled 44100 Hz -> 24000 Hz",)
    assert audio.sample_rate == RATE and abs(len(audio.pcm) - RATE) <= 1
    spectrum = np.abs(np.fft.rfft(audio.pcm[: RATE]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1  # one second: 1 Hz bins; the pitch survived


def test_bad_input_stereo_is_averaged_not_channel_0_and_said(tmp_path):
    left, right = tone(freq=220.0, peak=0.4), tone(freq=330.0, peak=0.3)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), RATE)
    audio = load(path)
    assert audio.notes == ("downmixed 2 channels to mono (channel average)",)
    np.testing.assert_allclose(audio.pcm, (left + right) / 2, atol=1e-4)
    assert np.max(np.abs(audio.pcm - left)) > 0.1  # not channel 0, which sphn would keep


def test_bad_input_check_input_gives_notes_or_one_input_error(tmp_path):
    x = tone(rate=44100)
    ok = write_wav(tmp_path / "ok.wav", np.stack([x, x], axis=1), 44100)
    assert check_input("moshi", ok) == ["downmixed 2 channels to mono (channel average)", "resampled 44100 Hz -> 24000 Hz"]
    for bad in (SPEECH / "silence.wav", tmp_path / "text.wav"):
        if not bad.exists():
            bad.write_text("hello")
        with pytest.raises(InputError, match=str(bad.name)):
            check_input("moshi", bad)


def test_bad_input_check_needs_no_moshi_import(tmp_path):
    """The plugin validates --input before any model loads; importing moshi alone takes seconds."""
    path = write_wav(tmp_path / "ok.wav", tone(), RATE)
    code = ("import sys; from ttt_checks.models.registry import check_input; "
            f"assert check_input('moshi', {str(path)!r}) == []; "
            "assert not [m for m in sys.modules if m == 'moshi' or m.startswith('moshi.')], 'moshi was imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# -- the reference model reads text -------------------------------------------------------------


def test_bad_input_reference_given_a_wav_says_it_reads_text(tmp_path):
    wav = write_wav(tmp_path / "prompt.wav", tone(), RATE)
    with pytest.raises(ReferenceInputError, match=r"prompt\.wav: an audio file, but the reference model reads UTF-8 "
                                                  r"dialogue text; speech input needs a speech model such as a Moshi"):
        check_input("reference", wav)
    renamed = tmp_path / "prompt.txt"
    renamed.write_bytes(wav.read_bytes())  # the RIFF header gives it away, whatever the name
    with pytest.raises(InputError, match="an audio file"):
        check_input("reference", renamed)


def test_bad_input_reference_empty_text_file(tmp_path):
    path = tmp_path / "dialogue.txt"
    path.write_text("")
    with pytest.raises(InputError, match=r"dialogue\.txt: empty \(0 bytes\); pass a UTF-8 text file of dialogue"):
        check_input("reference", path)
    path.write_text("\n \n\t")
    with pytest.raises(InputError, match="only whitespace"):
        read_dialogue_text(path)


def test_bad_input_reference_binary_text_file(tmp_path):
    path = tmp_path / "dialogue.txt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"dialogue\.txt: a binary file \(it holds NUL bytes\)"):
        check_input("reference", path)
    path.write_bytes("Grüße, wie geht's? ".encode("latin-1") * 40)
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte 0xfc at offset 2\).*iconv"):
        check_input("reference", path)


def test_bad_input_reference_text_shorter_than_one_row(tmp_path):
    path = tmp_path / "dialogue.txt"
    path.write_text("Hello there.")
    with pytest.raises(InputError, match=r"12 bytes is shorter than one row of 65 tokens; pass more dialogue text or lower --max-positions"):
        check_input("reference", path, max_positions=64)
    assert check_input("reference", path, max_positions=8) == []


# -- inside a health run: failing verdicts and notes, never a traceback ---------------------------


class _InputOnlyAdapter(Adapter):
    """An adapter whose only working method is load_inputs: enough to judge what an input does."""

    name = "stub"

    def __init__(self, load: Any) -> None:
        self._load = load

    def load_inputs(self, path: Path | None = None, max_positions: int | None = None) -> ModelInputs:
        return self._load(path)

    def ttt_layers(self) -> list:
        return []

    def state(self) -> Mapping[str, Any]:
        return {}

    def expected_ttt_keys(self) -> list[str]:
        return []

    def initial_state(self) -> Mapping[str, Any]:
        return {}

    def ttt_modules(self) -> Mapping[str, Any]:
        return {}

    def teacher_forced(self, inputs: Any, probe: Any | None = None, chunk: int | None = None):
        raise AssertionError("a bad input must stop the run before the model runs")

    def generate(self, inputs: Any, gates: Sequence[Any]) -> list:
        raise AssertionError("a bad input must stop the run before the model runs")

    def set_gate(self, value: Any):
        raise AssertionError("not needed")


@pytest.mark.parametrize("error", [InputError("x.wav: silent (every sample is 0); pass a recording with speech"),
                                   AudioError("x.wav: not a WAV file; convert it first")])
def test_bad_input_inside_a_run_is_a_failing_verdict_with_the_message(tmp_path, error):
    def load(path):
        raise error

    run = HealthRun(_InputOnlyAdapter(load), RunOptions(report_dir=tmp_path, input_path=Path("x.wav")))
    for check in ("figure5_collected", "ttt_helps"):
        verdicts = run.judge(check)
        assert len(verdicts) == 1 and not verdicts[0].ok
        assert verdicts[0].explanation == f"cannot measure: {error}"


def test_bad_input_conversion_notes_reach_progress_metrics_and_reports(tmp_path):
    notes = ("downmixed 2 channels to mono (channel average)", "resampled 44100 Hz -> 24000 Hz")

    def load(path):
        return ModelInputs(teacher_forced=None, prompts=[], description=f"{path}: 12 frames", positions=12, notes=notes)

    said: list[str] = []
    run = HealthRun(_InputOnlyAdapter(load), RunOptions(report_dir=tmp_path, input_path=Path("cd.wav")), progress=said.append)
    run.inputs  # noqa: B018
    assert [f"input cd.wav: {n}" for n in notes] == [line for line in said if line.startswith("input ")]
    metrics = run.metrics()
    assert metrics["inputs"] == {"description": "cd.wav: 12 frames", "notes": list(notes)}
    paths = write_report(metrics, tmp_path)
    assert json.loads(paths["metrics"].read_text())["inputs"]["notes"] == list(notes)
    text, page = paths["report"].read_text(), paths["html"].read_text()
    assert "input      : cd.wav: 12 frames" in text
    for note in notes:
        assert f"input note : {note}" in text and html.escape(note) in page


def test_bad_input_wav_in_a_reference_run_is_a_failing_verdict(tmp_path):
    """The API path (no plugin): the embedded reference model given speech fails, saying why."""
    from ttt_checks.models.registry import resolve

    wav = write_wav(tmp_path / "prompt.wav", tone(), RATE)
    run = HealthRun(resolve(None), RunOptions(report_dir=tmp_path / "report", input_path=wav))
    [verdict] = run.judge("figure5_collected")
    assert not verdict.ok and "prompt.wav: an audio file, but the reference model reads UTF-8 dialogue text" in verdict.explanation


# -- through the plugin: a usage error before any model loads ---------------------------------------


def _fake_moshi_checkpoint(tmp_path: Path) -> Path:
    """A directory the registry detects as moshi-finetune (nothing loads it: --input is judged first)."""
    ckpt = tmp_path / "moshi_run"
    ckpt.mkdir()
    (ckpt / "training_config.json").write_text("{}")
    return ckpt


def _run_plugin(pytester, *args: str):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--device", "cpu", *args)


def test_bad_input_silent_wav_is_a_usage_error(pytester, tmp_path):
    wav = write_wav(tmp_path / "silent.wav", np.zeros(RATE), RATE)
    result = _run_plugin(pytester, "--ckpt", str(_fake_moshi_checkpoint(tmp_path)), "--input", str(wav))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--input *silent.wav: silent (every sample is 0)*pass a recording with speech*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_bad_input_not_audio_file_is_a_usage_error(pytester, tmp_path):
    path = tmp_path / "random.wav"
    path.write_bytes(os.urandom(2048))
    result = _run_plugin(pytester, "--ckpt", str(_fake_moshi_checkpoint(tmp_path)), "--input", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--input *random.wav: not a WAV file*convert it first*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_bad_input_wav_for_the_reference_model_is_a_usage_error(pytester, tmp_path):
    wav = write_wav(tmp_path / "prompt.wav", tone(), RATE)
    result = _run_plugin(pytester, "--input", str(wav))  # no --ckpt: the embedded reference checkpoint
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--input *prompt.wav: an audio file, but the reference model reads UTF-8 dialogue text*"])


def test_bad_input_conversions_alone_are_not_usage_errors(pytester, tmp_path):
    x = tone(rate=44100)
    wav = write_wav(tmp_path / "stereo44.wav", np.stack([x, 0.5 * x], axis=1), 44100)
    result = _run_plugin(pytester, "--ckpt", str(_fake_moshi_checkpoint(tmp_path)), "--input", str(wav))
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()

