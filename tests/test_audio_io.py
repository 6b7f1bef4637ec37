"""monitor.audio.io: formats, resampling, channel handling, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.audio.io import (
    AudioInfo,
    audio_info,
    load_audio,
    resample,
    stream_audio,
    write_wav,
)
from monitor.errors import AudioError

SR = 16000


def tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / sr)[np.argmax(spec)])


# (format, subtype, tolerance): the tolerance is the quantisation step of the subtype.
FORMATS = [
    ("WAV", "PCM_U8", 2 / 2**8),
    ("WAV", "PCM_16", 2 / 2**16),
    ("WAV", "PCM_24", 2 / 2**24),
    ("WAV", "PCM_32", 1e-7),
    ("WAV", "FLOAT", 1e-7),
    ("WAV", "DOUBLE", 1e-7),
    ("FLAC", "PCM_16", 2 / 2**16),
    ("FLAC", "PCM_24", 2 / 2**24),
]


@pytest.mark.parametrize(("fmt", "subtype", "tol"), FORMATS)
def test_each_format_round_trips(tmp_path: Path, fmt: str, subtype: str, tol: float):
    x = tone(440, SR, 0.25) + 0.2 * tone(3000, SR, 0.25)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and y.size == x.size
    assert np.max(np.abs(y - x)) <= tol
    info = audio_info(path)
    assert info == AudioInfo(SR, 1, x.size, x.size / SR, subtype)


def test_44k1_stereo_becomes_16k_mono_with_the_tone_in_place(tmp_path: Path):
    x = tone(1234.0, 44100, 1.0)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([x, x], axis=1), 44100, subtype="PCM_16")
    y = load_audio(path, sr=SR)
    assert y.ndim == 1 and abs(y.size - SR) <= 1
    assert abs(peak_hz(y, SR) - 1234.0) <= 1.0
    assert np.sqrt(np.mean(y**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_channel_pick_versus_downmix(tmp_path: Path):
    left, right = tone(440, SR, 0.5), tone(3000, SR, 0.5, amp=0.3)
    path = tmp_path / "two.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, channel=0), left, atol=1e-6)
    np.testing.assert_allclose(load_audio(path, channel=1), right, atol=1e-6)
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-6)
    assert peak_hz(load_audio(path, channel=1), SR) == pytest.approx(3000, abs=2)


def test_float_file_outside_unit_range_is_clipped(tmp_path: Path):
    path = tmp_path / "loud.wav"
    sf.write(path, np.array([0.0, 1.5, -2.0, 0.25]), SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), np.array([0, 1, -1, 0.25], np.float32))


def test_other_sample_rate_and_dtype(tmp_path: Path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(500, 48000, 0.5), 48000, subtype="PCM_16")
    y = load_audio(path, sr=8000, dtype=np.float64)
    assert y.dtype == np.float64 and abs(y.size - 4000) <= 1
    assert peak_hz(y, 8000) == pytest.approx(500, abs=2)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.wav"
    sf.write(good, tone(440, SR, 0.5), SR, subtype="PCM_16")
    files = {"missing": tmp_path / "missing.wav"}
    files["empty"] = tmp_path / "empty.wav"
    sf.write(files["empty"], np.zeros(0), SR, subtype="PCM_16")
    files["zero_bytes"] = tmp_path / "zero.wav"
    files["zero_bytes"].write_bytes(b"")
    files["corrupt"] = tmp_path / "corrupt.wav"
    files["corrupt"].write_bytes(np.random.default_rng(0).bytes(4000))
    files["truncated_header"] = tmp_path / "truncated.wav"
    files["truncated_header"].write_bytes(good.read_bytes()[:30])
    files["folder"] = tmp_path / "folder.wav"
    files["folder"].mkdir()
    return files


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("missing", "not found"),
        ("empty", "empty"),
        ("zero_bytes", "cannot read"),
        ("corrupt", "cannot read"),
        ("truncated_header", "cannot read"),
        ("folder", "folder"),
    ],
)
def test_bad_files_raise_audio_error_naming_the_file(tmp_path: Path, case: str, cause: str):
    path = _bad_files(tmp_path)[case]
    for fn in (load_audio, audio_info, lambda p: list(stream_audio(p))):
        with pytest.raises(AudioError) as exc:
            fn(path)
        assert str(path) in str(exc.value)
        assert cause in str(exc.value)


@pytest.mark.parametrize("channel", [2, -1, 7])
def test_bad_channel_names_file_and_channel(tmp_path: Path, channel: int):
    path = tmp_path / "stereo.wav"
    sf.write(path, np.zeros((100, 2)), SR)
    with pytest.raises(AudioError, match=f"channel {channel} out of range") as exc:
        load_audio(path, channel=channel)
    assert str(path) in str(exc.value) and "2 channel(s)" in str(exc.value)


def test_nan_or_inf_in_a_float_file_is_refused(tmp_path: Path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.0, np.nan, np.inf, 0.1]), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="2 NaN or infinite") as exc:
        load_audio(path)
    assert str(path) in str(exc.value)


def test_resample_lengths_identity_and_bad_rates():
    x = tone(1000, 48000, 0.5).astype(np.float32)
    y = resample(x, 48000, SR)
    assert y.dtype == np.float32 and y.size == 8000
    assert peak_hz(y, SR) == pytest.approx(1000, abs=2)
    np.testing.assert_array_equal(resample(x, 48000, 48000), x)
    two = resample(np.stack([x, x], 1), 48000, SR)
    assert two.shape == (8000, 2)
    for bad in (0, -16000, 16000.5, True):
        with pytest.raises(ValueError, match="sample rate"):
            resample(x, bad, SR)


def test_stream_audio_matches_load_audio(tmp_path: Path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(700, 44100, 3.0) + 0.1 * tone(5000, 44100, 3.0), 44100, subtype="FLOAT")
    blocks = list(stream_audio(path, sr=SR, block_s=0.7))
    assert len(blocks) >= 4
    np.testing.assert_allclose(np.concatenate(blocks), load_audio(path, sr=SR), atol=1e-5)


def test_write_wav_round_trip_is_atomic_and_clips(tmp_path: Path):
    path = tmp_path / "sub" / "out.wav"
    x = np.array([0.0, 0.5, 1.5, -3.0, -0.25], np.float32)
    assert write_wav(path, x, comment="SYNTHETIC test") == path
    np.testing.assert_allclose(load_audio(path), np.clip(x, -1, 1), atol=1 / 2**15)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]  # no temporary left
    with sf.SoundFile(path) as f:
        assert f.subtype == "PCM_16" and f.samplerate == SR and f.comment == "SYNTHETIC test"
    write_wav(path, x, sr=8000, subtype="FLOAT")  # overwrite in place
    np.testing.assert_array_equal(load_audio(path, sr=8000), np.clip(x, -1, 1))
    flac = write_wav(tmp_path / "out.flac", x[:2], subtype="PCM_24")
    assert audio_info(flac).subtype == "PCM_24"


@pytest.mark.parametrize(
    ("name", "x", "kw", "match"),
    [
        ("a.mp4", np.zeros(4), {}, "unknown audio suffix"),
        ("a.flac", np.zeros(4), {"subtype": "FLOAT"}, "cannot be written"),
        ("a.wav", np.zeros(0), {}, "non-empty"),
        ("a.wav", np.array([0.0, np.nan]), {}, "NaN"),
    ],
)
def test_write_wav_refuses_bad_input(tmp_path: Path, name, x, kw, match):
    with pytest.raises(AudioError, match=match) as exc:
        write_wav(tmp_path / name, x, **kw)
    assert name in str(exc.value)
    assert not (tmp_path / name).exists()
