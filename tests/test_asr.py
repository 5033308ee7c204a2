"""Whisper transcription: spec parsing, the CTranslate2 -> openai-whisper converter, both
backends on the espeak-ng fixtures, and the ``transcribe`` command.

Measured on the committed fixtures (tiny.en, this suite's decoding options): guarded word
counts are exact on 4 of 6 sentences and off by +2 at most ("checked the weather every" is
heard as "check to the weather and we're"); the corpus WER is 13/62 = 0.21 for both backends
and the worst clip is 4/9 = 0.44 (espeak's "brown fox ... dog" heard as "round-fark ...
nog"). The bounds below (corpus 0.30, any clip 0.55) leave room for CPU-dependent int8
kernels while a broken pipeline (wrong sample rate, mis-mapped weights, wrong tokenizer)
scores near 1.0.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ttt_checks.asr import AsrError, AsrSpec, default_ct2_dir, get_transcriber, make_transcriber, parse_asr_spec
from ttt_checks.asr.backends import FasterWhisperTranscriber
from ttt_checks.asr.convert import (
    ConversionError,
    Ct2Model,
    convert_ct2_to_openai,
    ct2_to_openai_state,
    read_ct2_model,
)
from ttt_checks.audio import load_audio, write_wav
from ttt_checks.metrics.talk import normalize_text, talk_metrics, wer, words_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
SPEECH = [c for c in MANIFEST["clips"] if c["kind"] == "speech"]
NON_SPEECH = [c for c in MANIFEST["clips"] if c["kind"] != "speech"]

CORPUS_WER_MAX = 0.30
CLIP_WER_MAX = 0.55
WORD_COUNT_SLACK = 2


@pytest.fixture(scope="module")
def audio() -> dict[str, np.ndarray]:
    return {c["file"]: load_audio(FIXTURES / c["file"]).pcm for c in MANIFEST["clips"]}


@pytest.fixture(scope="module")
def backends() -> dict[str, object]:
    """Both backends on the bundled tiny.en, shared (process-wide) with the other test modules."""
    return {"default": get_transcriber("default"), "openai-whisper:default": get_transcriber("openai-whisper:default")}


@pytest.fixture(scope="module")
def heard(backends, audio):
    """Transcript of a fixture by a backend, each decoded once per module (CPU time is scarce)."""
    cache: dict[tuple[str, str], object] = {}

    def get(backend: str, clip: str):
        if (backend, clip) not in cache:
            cache[backend, clip] = backends[backend].transcribe(audio[clip], 16000)
        return cache[backend, clip]

    return get


# ---------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("default", AsrSpec("faster-whisper", "default")),
        ("faster-whisper:/models/ct2 tiny", AsrSpec("faster-whisper", "/models/ct2 tiny")),
        ("openai-whisper:tiny.en", AsrSpec("openai-whisper", "tiny.en")),
        ("openai-whisper:C:/w/base.pt", AsrSpec("openai-whisper", "C:/w/base.pt")),
    ],
)
def test_asr_spec_forms_parse(spec: str, expected: AsrSpec) -> None:
    assert parse_asr_spec(spec) == expected


def test_asr_spec_expands_home() -> None:
    assert parse_asr_spec("openai-whisper:~/w.pt").model == str(Path.home() / "w.pt")


@pytest.mark.parametrize("spec", ["", "whisper", "whisperx:tiny", "openai-whisper:", "faster-whisper"])
def test_bad_asr_spec_error_lists_the_accepted_forms(spec: str) -> None:
    with pytest.raises(AsrError, match="use `default`, `faster-whisper:PATH_OR_NAME`"):
        parse_asr_spec(spec)


def test_missing_openai_model_name_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(AsrError, match=r"'tiny\.en' is not in .*Copy tiny\.en\.pt there.*openai-whisper:default"):
        make_transcriber("openai-whisper:tiny.en")


def test_missing_faster_whisper_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AsrError, match="does not exist; check the path"):
        make_transcriber(f"faster-whisper:{tmp_path}/absent")


def test_ct2_dir_without_tokenizer_is_refused_before_any_download(tmp_path: Path) -> None:
    (tmp_path / "model.bin").symlink_to(default_ct2_dir() / "model.bin")
    shutil.copy(default_ct2_dir() / "config.json", tmp_path)
    with pytest.raises(AsrError, match="no tokenizer.json; faster-whisper would download one"):
        make_transcriber(f"faster-whisper:{tmp_path}")


def test_unknown_openai_model_is_a_clear_error() -> None:
    with pytest.raises(AsrError, match="neither an existing .pt file nor a known name"):
        make_transcriber("openai-whisper:no-such-model")


# ---------------------------------------------------------------------------- converter


@pytest.fixture(scope="module")
def ct2() -> Ct2Model:
    return read_ct2_model(default_ct2_dir() / "model.bin")


def test_converted_state_holds_the_ct2_numbers_unchanged(ct2: Ct2Model) -> None:
    dims, sd = ct2_to_openai_state(ct2)
    assert dims == {
        "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4,
        "n_vocab": 51864, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4,
    }  # fmt: skip
    qkv = ct2.variables["decoder/layer_2/self_attention/linear_0/weight"]
    np.testing.assert_array_equal(sd["decoder.blocks.2.attn.query.weight"], qkv[:384])
    np.testing.assert_array_equal(sd["decoder.blocks.2.attn.key.weight"], qkv[384:768])
    np.testing.assert_array_equal(sd["decoder.blocks.2.attn.value.weight"], qkv[768:])
    kv = ct2.variables["decoder/layer_3/attention/linear_1/bias"]
    np.testing.assert_array_equal(sd["decoder.blocks.3.cross_attn.value.bias"], kv[384:])
    assert "decoder.blocks.3.cross_attn.key.bias" not in sd
    total = sum(a.size for k, a in ct2.variables.items() if a.dtype.kind == "f" and a.ndim > 0)
    key_biases = 4 * 384 + 4 * 384 * 2  # encoder self + decoder self and cross: zeros, dropped
    assert sum(a.size for a in sd.values()) == total - key_biases


def test_converter_refuses_quantized_weights(ct2: Ct2Model) -> None:
    variables = dict(ct2.variables)
    w = variables["encoder/conv1/weight"]
    variables["encoder/conv1/weight"] = np.zeros(w.shape, dtype=np.int8)
    with pytest.raises(ConversionError, match="quantized model.*cannot be converted back exactly"):
        ct2_to_openai_state(Ct2Model(ct2.spec_name, ct2.spec_revision, variables, ct2.aliases))


def test_converter_refuses_a_nonzero_key_bias(ct2: Ct2Model) -> None:
    variables = dict(ct2.variables)
    b = variables["encoder/layer_0/self_attention/linear_0/bias"].copy()
    b[400] = 1.0
    variables["encoder/layer_0/self_attention/linear_0/bias"] = b
    with pytest.raises(ConversionError, match="non-zero bias"):
        ct2_to_openai_state(Ct2Model(ct2.spec_name, ct2.spec_revision, variables, ct2.aliases))


def test_converter_refuses_other_model_kinds(ct2: Ct2Model) -> None:
    with pytest.raises(ConversionError, match="not a WhisperSpec"):
        ct2_to_openai_state(Ct2Model("TransformerSpec", 1, ct2.variables, ct2.aliases))


def test_non_ct2_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"\x07\x00\x00\x00junk")
    with pytest.raises(ConversionError, match="binary version 7"):
        read_ct2_model(tmp_path / "model.bin")


def test_converted_checkpoint_loads_strictly_and_matches_ctranslate2_encoder(tmp_path: Path, audio) -> None:
    """The converted model's encoder reproduces CTranslate2's (float32) on real speech."""
    import ctranslate2
    import torch
    import whisper

    out = convert_ct2_to_openai(default_ct2_dir(), tmp_path / "tiny.pt")
    model = whisper.load_model(str(out), device="cpu")  # strict load_state_dict inside
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio["fox_us_160.wav"])))
    with torch.no_grad():
        ours = model.encoder(mel[None]).numpy()
    ref = ctranslate2.models.Whisper(str(default_ct2_dir()), device="cpu", compute_type="float32")
    theirs = np.array(ref.encode(ctranslate2.StorageView.from_array(mel[None].numpy()), to_cpu=True))
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.max(np.abs(ours - theirs)) < 2e-3 * np.max(np.abs(theirs))


def test_conversion_is_cached_by_source_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ttt_checks.asr import convert

    monkeypatch.setenv("TTT_CHECKS_CACHE", str(tmp_path))
    calls = []
    real = convert.convert_ct2_to_openai
    monkeypatch.setattr(convert, "convert_ct2_to_openai", lambda s, o: calls.append(o) or real(s, o))
    first = convert.cached_openai_checkpoint(default_ct2_dir())
    second = convert.cached_openai_checkpoint(default_ct2_dir())
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path / "whisper" and convert.file_sha256(default_ct2_dir() / "model.bin")[:20] in first.name
    assert not list(first.parent.glob("*.tmp")), "no temporary file may be left behind"


# ---------------------------------------------------------------------------- backends


@pytest.mark.parametrize("backend", ["default", "openai-whisper:default"])
def test_word_counts_and_wer_on_fixture_speech(backend: str, heard, audio) -> None:
    errors = words = 0
    for clip in SPEECH:
        pcm = audio[clip["file"]]
        m = talk_metrics(pcm, 16000, heard(backend, clip["file"]), reference=clip["text"])
        assert abs(m.words - clip["words"]) <= WORD_COUNT_SLACK, f"{clip['file']}: heard {m.text!r}"
        assert m.wer is not None and m.wer <= CLIP_WER_MAX, f"{clip['file']}: WER {m.wer:.2f} for {m.text!r}"
        n = len(words_of(clip["text"]))
        errors += round(m.wer * n)
        words += n
    assert errors / words <= CORPUS_WER_MAX


@pytest.mark.parametrize("clip", [c["file"] for c in NON_SPEECH])
def test_non_speech_gives_no_words_with_the_default_backend(clip: str, heard, audio) -> None:
    m = talk_metrics(audio[clip], 16000, heard("default", clip))
    assert m.words == 0, f"{clip}: counted {m.text!r}"


@pytest.mark.parametrize("clip", ["silence.wav", "noise.wav"])
def test_non_speech_gives_no_words_with_openai_whisper(clip: str, heard, audio) -> None:
    # The tone is left to the default backend: openai-whisper decodes its 224-token "beep"
    # hallucination in about 30 s on two CPU cores, which the suite's time budget cannot carry.
    m = talk_metrics(audio[clip], 16000, heard("openai-whisper:default", clip))
    assert m.words == 0, f"{clip}: counted {m.text!r}"


def test_tone_hallucination_is_written_but_not_counted(heard, audio) -> None:
    """Whisper does invent words on the tone; the guard is what keeps them out."""
    t = heard("default", "tone.wav")
    m = talk_metrics(audio["tone.wav"], 16000, t)
    assert m.transcript_words > 10 and m.words == 0 and m.dropped


def test_float32_faster_whisper_and_converted_openai_whisper_agree_exactly(heard, audio) -> None:
    """Same weights, two decoder implementations: the converter lost nothing."""
    fw32 = FasterWhisperTranscriber(default_ct2_dir(), compute_type="float32")
    for clip in SPEECH:
        pcm = audio[clip["file"]]
        a = fw32.transcribe(pcm, 16000)
        b = heard("openai-whisper:default", clip["file"])
        assert normalize_text(a.text) == normalize_text(b.text), clip["file"]
        assert abs(a.segments[0].avg_logprob - b.segments[0].avg_logprob) < 0.05


def test_default_int8_backend_agrees_with_openai_whisper(heard) -> None:
    # Measured: identical on all six clips; int8 kernels differ by CPU, so allow a little.
    for clip in SPEECH:
        a = heard("default", clip["file"]).text
        b = heard("openai-whisper:default", clip["file"]).text
        assert wer(b, a) <= 0.1, f"{clip['file']}: {a!r} vs {b!r}"


def test_transcription_is_repeatable(backends, heard, audio) -> None:
    assert backends["default"].transcribe(audio["train_rp_190.wav"], 16000) == heard("default", "train_rp_190.wav")


def test_other_rates_are_resampled_and_noted(backends, audio) -> None:
    from ttt_checks.audio import resample

    pcm = audio["call_gb_150.wav"]
    t = backends["default"].transcribe(resample(pcm, 16000, 24000), 24000)
    assert t.notes == ("resampled 24000 Hz -> 16000 Hz for Whisper",)
    assert wer(SPEECH[1]["text"], t.text) <= 0.1


def test_empty_audio_gives_an_empty_transcript(backends) -> None:
    t = backends["default"].transcribe(np.zeros(0, dtype=np.float32), 16000)
    assert t.text == "" and t.segments == () and t.duration_s == 0.0


def test_stereo_array_is_refused_with_the_fix(backends) -> None:
    with pytest.raises(AsrError, match="mono samples.*downmix first"):
        backends["default"].transcribe(np.zeros((16000, 2), dtype=np.float32), 16000)


def test_nan_audio_is_refused(backends) -> None:
    with pytest.raises(AsrError, match="NaN or Inf"):
        backends["default"].transcribe(np.full(16000, np.nan, dtype=np.float32), 16000)


# ---------------------------------------------------------------------------- CLI


def test_cli_json_has_exactly_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from ttt_checks.cli import main

    files = [str(FIXTURES / "window_usm3_140.wav"), str(FIXTURES / "silence.wav")]
    assert main(["transcribe", "--json", *files]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == files
    for r in rows:
        assert set(r) == {"file", "text", "words", "duration_s", "speech_s"}
        assert isinstance(r["text"], str) and isinstance(r["words"], int)
        assert isinstance(r["duration_s"], float) and isinstance(r["speech_s"], float)
    assert rows[0]["words"] == 11 and 2.5 < rows[0]["speech_s"] < rows[0]["duration_s"]
    assert rows[1] == {"file": files[1], "text": "", "words": 0, "duration_s": 2.0, "speech_s": 0.0}


def test_cli_text_output_says_what_was_converted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ttt_checks.cli import main

    pcm = load_audio(FIXTURES / "call_gb_150.wav").pcm
    from ttt_checks.audio import resample

    stereo = np.stack([resample(pcm, 16000, 44100)] * 2, 1)
    write_wav(tmp_path / "cd.wav", stereo, 44100)
    assert main(["transcribe", str(tmp_path / "cd.wav")]) == 0
    out, err = capsys.readouterr()
    assert "downmixed 2 channels to mono" in err and "resampled 44100 Hz -> 16000 Hz" in err
    assert "11 words" in out and "please call me back" in out.lower()


def test_cli_bad_files_exit_nonzero_with_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ttt_checks.cli import main

    (tmp_path / "text.wav").write_text("hello")
    (tmp_path / "empty.wav").write_bytes(b"")
    code = main(["transcribe", "--json", str(tmp_path / "gone.wav"), str(tmp_path / "text.wav"),
                 str(tmp_path / "empty.wav"), str(FIXTURES / "silence.wav")])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert "gone.wav: no such file" in err and "text.wav: not a WAV file" in err and "empty.wav: the file is empty" in err
    assert "3 of 4 files could not be read" in err
    assert [r["file"] for r in json.loads(out)] == [str(FIXTURES / "silence.wav")]


def test_cli_bad_asr_spec_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from ttt_checks.cli import main

    assert main(["transcribe", "--asr", "whisperx:big", str(FIXTURES / "silence.wav")]) == 2
    assert "bad --asr value 'whisperx:big'" in capsys.readouterr().err



def test_cpu_transcription_threads_follow_omp_num_threads(monkeypatch):
    from ttt_checks.asr.backends import default_cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_cpu_threads() == 3
    for unset in ("", "0", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert default_cpu_threads() == min(4, os.cpu_count() or 1)
