"""CaptureManager with file sources: pacing, looping, resampling, channels, liveness, bad files."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.audio.capture import (
    CaptureManager,
    FileSourceSpec,
    LivenessSpec,
    SourceState,
)
from monitor.config import parse_config
from monitor.errors import ConfigError

SR = 16000
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAST = LivenessSpec(check_interval_seconds=0.05, silence_seconds=0.5, clipping_seconds=0.5)


def write(path: Path, x: np.ndarray, rate: int = SR, subtype: str = "FLOAT") -> Path:
    sf.write(path, x, rate, subtype=subtype)
    return path


def sine(freq: float, amp: float, seconds: float, rate: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def drain(m: CaptureManager, name: str, n: int | None = None, timeout: float = 10.0) -> np.ndarray:
    """Read until the source ended (or ``n`` samples arrived); check the clock is contiguous."""
    parts, clock = [], 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = m.source_health(name).state in (SourceState.ENDED, SourceState.ERROR)
        start, y = m.read_new(name)
        assert start == clock  # each call continues exactly where the last one ended
        clock += y.size
        parts.append(y)
        if (n is not None and clock >= n) or (ended and y.size == 0):
            break
        time.sleep(0.01)
    return np.concatenate(parts)


def peak_hz(y: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.argmax(spec) * SR / y.size)


def test_realtime_file_is_paced_and_exact(tmp_path: Path) -> None:
    x = np.random.default_rng(1).uniform(-0.5, 0.5, SR).astype(np.float32)  # 1.0 s
    spec = FileSourceSpec("a", write(tmp_path / "a.wav", x), realtime=True, block_s=0.05)
    with CaptureManager([spec], liveness=FAST) as m:
        t0 = time.monotonic()
        y = drain(m, "a")
        elapsed = time.monotonic() - t0
        assert m.source_health("a").state is SourceState.ENDED
    np.testing.assert_array_equal(y, x)  # 16 kHz float file: bit-exact through the ring
    assert 0.7 < elapsed < 3.0  # real time, loosely (a sanity bound, not a benchmark)


def test_fast_file_is_lossless_under_backpressure(tmp_path: Path) -> None:
    x = np.random.default_rng(2).uniform(-0.5, 0.5, 6 * SR).astype(np.float32)
    spec = FileSourceSpec("a", write(tmp_path / "a.flac", x, subtype="PCM_24"), realtime=False)
    with CaptureManager([spec], liveness=FAST, buffer_s=0.3) as m:  # ring far smaller than file
        t0 = time.monotonic()
        y = drain(m, "a")
        elapsed = time.monotonic() - t0
        h = m.source_health("a")
    assert y.size == x.size
    np.testing.assert_allclose(y, x, atol=2**-22)  # 24-bit FLAC
    assert h.overflow_samples == 0 and h.discontinuities == 0
    assert elapsed < 3.0  # 6 s of audio: much faster than real time


def test_slow_consumer_overflow_is_counted(tmp_path: Path) -> None:
    """A paced source does not wait for the consumer: the oldest audio is overwritten, counted."""
    x = np.random.default_rng(6).uniform(-0.5, 0.5, SR).astype(np.float32)
    spec = FileSourceSpec("a", write(tmp_path / "a.wav", x), realtime=True, block_s=0.05)
    with CaptureManager([spec], liveness=FAST, buffer_s=0.2) as m:
        assert wait_for(lambda: m.source_health("a").overflow_samples > 0, 3)  # before any read
        lost = x.size - int(0.2 * SR)  # the whole file played into a 0.2 s ring
        assert wait_for(lambda: m.source_health("a").overflow_samples == lost, 3)
        assert m.source_health("a").state is SourceState.OK  # ended, but audio left to read
        start, y = m.read_new("a")
        assert wait_for(lambda: m.source_health("a").state is SourceState.ENDED, 1)
    h = m.source_health("a")  # stop() published a final snapshot
    assert start == 0 and y.size == int(0.2 * SR)  # only the newest 0.2 s survived
    np.testing.assert_array_equal(y, x[-y.size :])
    assert h.discontinuities == 1
    assert h.overflow_samples == lost


def test_loop_repeats_the_file(tmp_path: Path) -> None:
    x = np.random.default_rng(3).uniform(-0.5, 0.5, SR // 2).astype(np.float32)  # 0.5 s
    spec = FileSourceSpec("a", write(tmp_path / "a.wav", x), realtime=False, loop=True)
    with CaptureManager([spec], liveness=FAST) as m:
        y = drain(m, "a", n=int(1.6 * SR))
        assert wait_for(lambda: m.source_health("a").state is SourceState.OK)
    np.testing.assert_array_equal(y[: 3 * x.size], np.tile(x, 3)[: y[: 3 * x.size].size])


def test_resampled_stereo_channels_gain_and_downmix(tmp_path: Path) -> None:
    rate, secs = 48000, 1.0
    stereo = np.stack([sine(440, 0.5, secs, rate), sine(3000, 0.5, secs, rate)], axis=1)
    path = write(tmp_path / "st.wav", stereo, rate=rate)
    specs = [
        FileSourceSpec("left", path, realtime=False, channel=0),
        FileSourceSpec("right", path, realtime=False, channel=1, gain_db=20 * math.log10(0.5)),
        FileSourceSpec("mean", path, realtime=False, channel=None),
    ]
    with CaptureManager(specs, liveness=FAST) as m:
        out = {s.name: drain(m, s.name) for s in specs}
        assert m.source_health("left").samplerate == rate
    for y in out.values():
        assert y.size == SR  # 48 kHz -> 16 kHz, resampler flushed at the end
    mid = slice(2000, 14000)  # away from the resampler's edges
    assert abs(peak_hz(out["left"][mid]) - 440) < 3
    assert abs(peak_hz(out["right"][mid]) - 3000) < 3
    assert np.sqrt(np.mean(out["left"][mid] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert np.sqrt(np.mean(out["right"][mid] ** 2)) == pytest.approx(0.25 / np.sqrt(2), rel=0.01)
    expected_mean = (out["left"] + 2 * out["right"]) / 2
    np.testing.assert_allclose(out["mean"][mid], expected_mean[mid], atol=1e-3)


def test_history_is_the_tail_of_what_was_read(tmp_path: Path) -> None:
    x = np.random.default_rng(4).uniform(-0.5, 0.5, SR).astype(np.float32)
    spec = FileSourceSpec("a", write(tmp_path / "a.wav", x), realtime=False)
    with CaptureManager([spec], liveness=FAST, history_s=2.0) as m:
        y = drain(m, "a")
        start, pre = m.history("a", 0.25)
    assert start == y.size - SR // 4
    np.testing.assert_array_equal(pre, y[-SR // 4 :])


def test_digital_silence_is_reported(tmp_path: Path) -> None:
    zeros = np.zeros(SR // 5, np.float32)
    quiet = np.random.default_rng(5).normal(0, 10 ** (-60 / 20), SR // 5).astype(np.float32)
    specs = [
        FileSourceSpec("dead", write(tmp_path / "z.wav", zeros), realtime=False, loop=True),
        FileSourceSpec("quiet", write(tmp_path / "q.wav", quiet), realtime=False, loop=True),
    ]
    with CaptureManager(specs, liveness=FAST) as m:
        assert wait_for(lambda: m.source_health("dead").state is SourceState.SILENT)
        h = m.source_health("dead")
        assert "exact zeros" in h.reason and h.level_dbfs == -math.inf and not h.healthy
        for _ in range(20):  # -60 dBFS is quiet, not dead
            m.read_new("quiet")
            time.sleep(0.02)
        assert m.source_health("quiet").state is SourceState.OK
        assert m.source_health("quiet").level_dbfs == pytest.approx(-60, abs=1.5)
        assert json.loads(json.dumps(h.to_dict()))["level_dbfs"] is None  # -inf is not JSON


def test_clipping_is_reported(tmp_path: Path) -> None:
    clipped = np.clip(sine(500, 2.0, 0.2), -1.0, 1.0)
    spec = FileSourceSpec("hot", write(tmp_path / "c.wav", clipped), realtime=False, loop=True)
    with CaptureManager([spec], liveness=FAST) as m:
        assert wait_for(lambda: m.source_health("hot").state is SourceState.CLIPPING)
        h = m.source_health("hot")
    assert h.clipped_fraction > 0.5 and "full scale" in h.reason


def test_corrupt_file_makes_only_its_source_unhealthy(tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" + bytes(range(200)))
    good = write(tmp_path / "good.wav", sine(1000, 0.3, 0.5))
    specs = [
        FileSourceSpec("bad", bad, realtime=False),
        FileSourceSpec("missing", tmp_path / "nope.flac", realtime=False),
        FileSourceSpec("chan", good, realtime=False, channel=3),
        FileSourceSpec("good", good, realtime=False),
    ]
    with CaptureManager(specs, liveness=FAST) as m:
        for name in ("bad", "missing", "chan"):
            assert wait_for(lambda n=name: m.source_health(n).state is SourceState.ERROR)
            assert m.read_new(name)[1].size == 0
        assert str(bad) in m.source_health("bad").reason
        assert "not found" in m.source_health("missing").reason
        assert "channel 3" in m.source_health("chan").reason
        assert drain(m, "good").size == SR // 2  # the other source is unaffected


@pytest.mark.parametrize("rate", [SR, 44100])
def test_non_finite_samples_are_counted_and_reach_the_windower(tmp_path: Path, rate: int) -> None:
    """NaN/inf are never rewritten into plausible audio (0 or full scale): they arrive as NaN
    where they were (widened by the resampler's reach), the source turns NONFINITE naming the
    file, and level and clipping are measured on the rest."""
    x = sine(300, 0.5, 0.5, rate)
    a, b = int(0.1 * rate), int(0.3 * rate)
    x[a : a + 10] = np.nan
    x[b] = np.inf
    path = write(tmp_path / "nan.wav", x, rate)
    spec = FileSourceSpec("a", path, realtime=False)
    with CaptureManager([spec], liveness=FAST) as m:
        assert wait_for(lambda: m.source_health("a").state is SourceState.NONFINITE)
        h = m.source_health("a")
        y = drain(m, "a")
    assert not h.healthy and h.nonfinite_samples == 11
    assert str(path) in h.reason and "NaN/inf" in h.reason
    assert h.clipped_fraction == 0 and h.level_dbfs == pytest.approx(-9, abs=0.5)
    assert y.size == SR // 2
    bad = np.isnan(y)
    assert bad[1600:1610].all() and bad[4800]  # 0.1 s and 0.3 s at 16 kHz
    far = np.ones(y.size, bool)
    far[1600 - 400 : 1610 + 400] = far[4800 - 400 : 4800 + 400] = False
    assert np.isfinite(y[far]).all()  # the resampler's state is never poisoned
    if rate == SR:  # no resampler: exactly the samples that were bad
        assert np.flatnonzero(bad).tolist() == [*range(1600, 1610), 4800]


def test_stop_is_prompt_with_a_paced_file(tmp_path: Path) -> None:
    spec = FileSourceSpec("a", write(tmp_path / "a.wav", sine(200, 0.1, 5.0)), realtime=True)
    m = CaptureManager([spec], liveness=FAST)
    m.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    m.stop()
    assert time.monotonic() - t0 < 1.5
    assert m.source_health("a").state is SourceState.STOPPED


SOURCES = "model:\n  package: pkg\nsources:\n  - {name: a, type: file, machine: fan, path: a.wav}\n"


@pytest.mark.parametrize(
    ("snippet", "key", "why"),
    [
        ("  - {name: a, type: device, machine: fan}\n", "sources", "duplicate source name 'a'"),
        (
            "  - {name: m, type: device, machine: fan, channel: -1}\n",
            "sources[1].channel",
            "greater than or equal to 0 (got -1)",
        ),
        (
            "  - {name: m, type: device, machine: fan, samplerate: 5}\n",
            "sources[1].samplerate",
            "greater than or equal to 8000 (got 5)",
        ),
        (
            "capture:\n  reopen_initial_seconds: 5\n  reopen_max_seconds: 1\n",
            "capture",
            "reopen_max_seconds must be >= reopen_initial_seconds",
        ),
    ],
)
def test_bad_source_settings_are_config_errors(snippet: str, key: str, why: str) -> None:
    """The schema holds the capture rules: a bad source is refused before any device is opened."""
    with pytest.raises(ConfigError) as info:
        parse_config(SOURCES + snippet, "sonitor.yaml")
    assert f"{key}:" in str(info.value) and why in str(info.value)


def test_unknown_capture_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown capture source 'zz'"):
        CaptureManager([FileSourceSpec("a", tmp_path / "x.wav")]).read_new("zz")


@pytest.mark.realdata
def test_real_recording_passes_through_unchanged() -> None:
    clips = sorted((DATA / "dcase2023_dev_sample").glob("*/train/*.wav"))
    if not clips:
        pytest.skip(f"real recordings not found under {DATA} (see ../shared/data/README.md)")
    x, rate = sf.read(clips[0], dtype="float32")
    assert rate == SR
    with CaptureManager([FileSourceSpec("real", clips[0], realtime=False)], liveness=FAST) as m:
        y = drain(m, "real")
        h = m.source_health("real")
    np.testing.assert_array_equal(y, x)
    assert h.frames_total == x.size and h.state is SourceState.ENDED
