"""WAV I/O, conversion to mono 16 kHz (said, not silent), clear errors, espeak-ng speech."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from ttt_checks.audio import AudioError, load_audio, read_wav, resample, write_wav
from ttt_checks.audio import espeak
from ttt_checks.audio.espeak import EspeakError, synthesize


def _tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_pcm16_round_trip_is_within_one_quantisation_step(tmp_path: Path) -> None:
    x = _tone(300, 16000, 0.5)
    write_wav(tmp_path / "a.wav", x, 16000)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and y.shape == (len(x), 1)
    assert np.max(np.abs(y[:, 0] - x)) <= 1.0 / 32767


def test_float32_round_trip_is_exact(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-1.5, 1.5, size=(1000, 2)).astype(np.float32)
    write_wav(tmp_path / "f.wav", x, 22050, float32=True)
    y, rate = read_wav(tmp_path / "f.wav")
    assert rate == 22050
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("width,tolerance", [(1, 1 / 127), (2, 1 / 32767), (3, 2.0**-22)])
def test_files_from_the_stdlib_wave_writer_are_read_correctly(tmp_path: Path, width: int, tolerance: float) -> None:
    """An independent writer (stdlib ``wave``) for 8-, 16- and 24-bit PCM, stereo."""
    left, right = _tone(200, 8000, 0.25, 0.6), _tone(500, 8000, 0.25, -0.3)
    scale = {1: 127, 2: 32767, 3: 2**23 - 1}[width]
    ints = np.round(np.stack([left, right], 1) * scale).astype(np.int64).reshape(-1)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif width == 2:
        raw = ints.astype("<i2").tobytes()
    else:
        raw = b"".join(struct.pack("<i", int(v))[:3] for v in ints)
    with wave.open(str(tmp_path / "w.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(raw)
    y, rate = read_wav(tmp_path / "w.wav")
    assert rate == 8000 and y.shape == (len(left), 2)
    assert np.max(np.abs(y[:, 0] - left)) <= 2 * tolerance
    assert np.max(np.abs(y[:, 1] - right)) <= 2 * tolerance


def _riff(fmt: bytes, data: bytes | None) -> bytes:
    """A RIFF/WAVE file from a 'fmt ' body and sample bytes, written by hand (not by the reader under test)."""
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if data is not None:
        chunks += b"data" + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def _fmt(tag: int, channels: int, rate: int, bits: int, extensible_subformat: int | None = None) -> bytes:
    align = channels * bits // 8
    head = struct.pack("<HHIIHH", 0xFFFE if extensible_subformat else tag, channels, rate, rate * align, align, bits)
    if extensible_subformat is None:
        return head
    guid_tail = bytes.fromhex("000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_{PCM,IEEE_FLOAT}
    return head + struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", extensible_subformat) + guid_tail


_INT32 = np.array([-(2**31), -(2**31) + 1, -1, 0, 1, 123456789, 2**31 - 1], dtype=np.int64)


@pytest.mark.parametrize("name, fmt, data, expected", [
    ("pcm_u8", _fmt(1, 1, 8000, 8), bytes([0, 1, 127, 128, 129, 255]),
     (np.array([0, 1, 127, 128, 129, 255]) - 128) / 128),
    ("pcm_32", _fmt(1, 1, 8000, 32), _INT32.astype("<i4").tobytes(), _INT32 / 2.0**31),
    ("float_64", _fmt(3, 1, 8000, 64), np.array([0.25, -1.5, 1e-3, 3.0]).astype("<f8").tobytes(),
     np.array([0.25, -1.5, 1e-3, 3.0])),
    ("extensible_pcm_24", _fmt(1, 1, 8000, 24, extensible_subformat=1),
     b"".join(struct.pack("<i", v)[:3] for v in (-(2**23), -1, 0, 1, 2**23 - 1)),
     np.array([-(2**23), -1, 0, 1, 2**23 - 1]) / 2.0**23),
    ("extensible_float_32", _fmt(3, 1, 8000, 32, extensible_subformat=3), np.array([0.5, -2.0], "<f4").tobytes(),
     np.array([0.5, -2.0])),
])
def test_every_supported_encoding_reads_with_the_wav_scaling(tmp_path: Path, name: str, fmt: bytes, data: bytes,
                                                             expected: np.ndarray) -> None:
    """Integer PCM is x / 2^(bits-1) (8-bit unsigned, offset 128), floats are as stored: the
    arithmetic is exact in float32 up to one rounding of a 32-bit integer or a float64 (rtol 2^-24)."""
    (tmp_path / f"{name}.wav").write_bytes(_riff(fmt, data))
    y, rate = read_wav(tmp_path / f"{name}.wav")
    assert rate == 8000 and y.dtype == np.float32 and y.shape == (len(expected), 1)
    np.testing.assert_allclose(y[:, 0], expected, rtol=2.0**-24, atol=0)


def test_write_keeps_16_bit_pcm_by_default_and_32_bit_float_on_request(tmp_path: Path) -> None:
    import soundfile

    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0])
    write_wav(tmp_path / "p.wav", x, 16000)
    write_wav(tmp_path / "f.wav", x, 16000, float32=True)
    assert (soundfile.info(str(tmp_path / "p.wav")).format, soundfile.info(str(tmp_path / "p.wav")).subtype) == ("WAV", "PCM_16")
    assert soundfile.info(str(tmp_path / "f.wav")).subtype == "FLOAT"
    ints, _ = soundfile.read(str(tmp_path / "p.wav"), dtype="int16")
    np.testing.assert_array_equal(ints, [0, 16384, -16384, 32767, -32767, 32767, -32767])  # round(clip(x) * 32767)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_damaged_wav_names_the_file_and_keeps_libsndfiles_reason(tmp_path: Path) -> None:
    import soundfile

    p = tmp_path / "hollow_header.wav"
    p.write_bytes(_riff(_fmt(1, 1, 16000, 16), None))  # a header, then no 'data' chunk
    with pytest.raises(AudioError, match=r"hollow_header\.wav: a damaged or unsupported WAV file \(libsndfile: .+\); "
                                         r"regenerate it, or re-encode it with `sox") as err:
        read_wav(p)
    cause = err.value.__cause__
    assert isinstance(cause, soundfile.LibsndfileError) and cause.error_string in str(err.value)


def test_write_refuses_a_rate_libsndfile_cannot_write_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"cannot write .*z\.wav as a PCM_16 WAV of 1 channels at 0 Hz \(libsndfile: ") as err:
        write_wav(tmp_path / "z.wav", np.zeros(100), 0)
    assert err.value.__cause__ is not None
    assert list(tmp_path.iterdir()) == []


def test_missing_file_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"nope\.wav: no such file"):
        load_audio(tmp_path / "nope.wav")


def test_non_audio_file_error_says_it_is_not_a_wav(tmp_path: Path) -> None:
    p = tmp_path / "notes.wav"
    p.write_text("these are my meeting notes, not audio\n")
    with pytest.raises(AudioError, match="not a WAV file.*convert it first"):
        load_audio(p)


def test_zero_byte_file_error_says_empty(tmp_path: Path) -> None:
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty \(0 bytes\)"):
        load_audio(p)


def test_wav_with_header_but_no_samples_is_an_error(tmp_path: Path) -> None:
    with wave.open(str(tmp_path / "hollow.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(AudioError, match=r"no samples \(0 frames\)"):
        load_audio(tmp_path / "hollow.wav")


def test_directory_is_not_taken_for_a_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_stereo_is_downmixed_and_the_note_says_so(tmp_path: Path) -> None:
    left, right = _tone(440, 16000, 0.5, 0.4), _tone(440, 16000, 0.5, 0.2)
    write_wav(tmp_path / "st.wav", np.stack([left, right], 1), 16000, float32=True)
    audio = load_audio(tmp_path / "st.wav")
    assert audio.source_channels == 2 and audio.pcm.ndim == 1
    assert any("downmixed 2 channels to mono" in n for n in audio.notes)
    np.testing.assert_allclose(audio.pcm, (left + right) / 2, atol=1e-6)


def test_44k1_is_resampled_to_16k_and_the_note_says_so(tmp_path: Path) -> None:
    write_wav(tmp_path / "cd.wav", _tone(1000, 44100, 1.0), 44100)
    audio = load_audio(tmp_path / "cd.wav")
    assert audio.sample_rate == 16000 and audio.source_rate == 44100
    assert any("resampled 44100 Hz -> 16000 Hz" in n for n in audio.notes)
    assert len(audio.pcm) == 16000
    assert abs(_peak_hz(audio.pcm, 16000) - 1000) < 5


def test_16k_mono_input_gets_no_notes(tmp_path: Path) -> None:
    write_wav(tmp_path / "ok.wav", _tone(300, 16000, 0.2), 16000)
    assert load_audio(tmp_path / "ok.wav").notes == ()


def test_resample_keeps_frequency_and_length_ratio() -> None:
    x = _tone(700, 22050, 1.0)
    y = resample(x, 22050, 16000)
    assert len(y) == 16000 and y.dtype == np.float32
    assert abs(_peak_hz(y, 16000) - 700) < 5


def test_write_refuses_nan(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="NaN or Inf"):
        write_wav(tmp_path / "bad.wav", np.array([0.0, np.nan]), 16000)


def test_synthesize_gives_float32_mono_speech_at_the_requested_rate() -> None:
    x = synthesize("Hello there, how are you today?", voice="en-us", rate_wpm=160, sample_rate=16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert 1.0 < len(x) / 16000 < 4.0, "a six-word sentence at 160 wpm lasts about two seconds"
    assert 0.05 < float(np.max(np.abs(x))) <= 1.0
    y = synthesize("Hello there, how are you today?", voice="en-us", rate_wpm=160, sample_rate=8000)
    assert abs(len(y) * 2 - len(x)) <= 2


def test_synthesize_is_deterministic_and_rate_changes_duration() -> None:
    a = synthesize("One more sentence to say slowly.", rate_wpm=120)
    b = synthesize("One more sentence to say slowly.", rate_wpm=120)
    fast = synthesize("One more sentence to say slowly.", rate_wpm=240)
    np.testing.assert_array_equal(a, b)
    assert len(fast) < 0.75 * len(a)


def test_synthesize_speaks_text_that_starts_with_a_dash() -> None:
    assert len(synthesize("-v is not an option here")) > 8000


def test_synthesize_of_blank_text_is_empty_audio() -> None:
    assert synthesize("   \n").shape == (0,)


def test_synthesize_unknown_voice_error_names_the_voice_list() -> None:
    with pytest.raises(EspeakError, match=r"voice 'xx-nowhere'.*espeak-ng --voices"):
        synthesize("hello", voice="xx-nowhere")


def test_missing_espeak_error_names_apt_get(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(espeak.shutil, "which", lambda name: None)
    with pytest.raises(EspeakError, match="apt-get install -y espeak-ng"):
        synthesize("hello")
