"""Real capture: PortAudio -> ALSA `pulse` plugin -> a private PulseAudio null sink's monitor.

Every test here runs real processes (pulseaudio, pacat) under a timeout and skips when PulseAudio
is not installed. Tones are played into the null sink; the CaptureManager records its monitor at
the device's native rate (44.1 kHz through the plugin) and resamples to 16 kHz.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from virtual_audio import VirtualAudio, pulse_env, requires_pulseaudio, tone

from monitor.audio.capture import CaptureManager, DeviceSourceSpec, LivenessSpec, SourceState

__all__ = ["pulse_env"]  # the module-scoped fixture, imported for pytest

SR = 16000
pytestmark = [requires_pulseaudio, pytest.mark.timeout(60)]
QUICK = LivenessSpec(
    check_interval_seconds=0.05,
    stall_seconds=1.0,
    silence_seconds=600,  # the keep-alive plays exact zeros between tones
    reopen_initial_seconds=0.3,
    reopen_max_seconds=1.0,
)


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def state(m: CaptureManager, name: str) -> SourceState:
    return m.source_health(name).state


def record(
    m: CaptureManager, names: list[str], seconds: float, play: Callable[[], object]
) -> dict[str, np.ndarray]:
    """Drop old audio, ``play()``, read every source for ``seconds``; check contiguous clocks."""
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    clocks = {}
    for n in names:
        start, y = m.read_new(n)
        clocks[n] = start + y.size
    play()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        for n in names:
            start, y = m.read_new(n)
            assert start == clocks[n]
            clocks[n] += y.size
            out[n].append(y)
    return {n: np.concatenate(parts) for n, parts in out.items()}


def tone_part(y: np.ndarray, floor: float = 0.02) -> np.ndarray:
    """The samples between the first and last loud sample, minus 0.1 s at each edge."""
    loud = np.flatnonzero(np.abs(y) > floor)
    assert loud.size, "no tone was captured"
    part = y[loud[0] + SR // 10 : loud[-1] - SR // 10]
    assert part.size > SR // 2, f"only {part.size} samples of tone captured"
    return part


def peak_hz(y: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.argmax(spec) * SR / y.size)


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))


@pytest.fixture()
def own_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualAudio]:
    """A server of this test alone (not started): it will be killed and restarted."""
    va = VirtualAudio(tmp_path / "pulse", settle_s=0.0)
    for key, value in va.env.items():
        monkeypatch.setenv(key, value)
    try:
        yield va
    finally:
        va.close()


def test_tone_frequency_and_level_through_one_shared_stream(pulse_env: VirtualAudio) -> None:
    specs = [
        DeviceSourceSpec("mic", device="pulse"),
        DeviceSourceSpec("mic_x2", device="pulse", gain_db=20 * np.log10(2.0)),  # same stream
    ]
    with CaptureManager(specs, liveness=QUICK) as m:
        assert wait_for(lambda: state(m, "mic") is SourceState.OK, 10), m.source_health("mic")
        got = record(m, ["mic", "mic_x2"], 2.5, lambda: pulse_env.play(tone(1000, 0.2, 1.5)))
        h = m.source_health("mic")
    assert h.samplerate == 44100 and h.input_overflows == 0  # native rate of the pulse plugin
    assert h.device is not None and "pulse" in h.device
    a, b = tone_part(got["mic"]), tone_part(got["mic_x2"])
    assert abs(peak_hz(a) - 1000) < 5
    assert rms(a) == pytest.approx(0.2 / np.sqrt(2), rel=0.05)
    assert rms(b) / rms(a) == pytest.approx(2.0, rel=0.01)  # per-source gain on one stream


def test_channels_of_one_device_are_separate_sources(pulse_env: VirtualAudio) -> None:
    stereo = np.stack([tone(440, 0.3, 1.5), tone(2500, 0.1, 1.5)], axis=1)
    specs = [
        DeviceSourceSpec("left", device="pulse", channel=0),
        DeviceSourceSpec("right", device="pulse", channel=1),
    ]
    with CaptureManager(specs, liveness=QUICK) as m:
        assert wait_for(lambda: state(m, "right") is SourceState.OK, 10), m.source_health("right")
        got = record(m, ["left", "right"], 2.5, lambda: pulse_env.play(stereo))
    left, right = tone_part(got["left"]), tone_part(got["right"], floor=0.01)
    assert abs(peak_hz(left) - 440) < 5 and abs(peak_hz(right) - 2500) < 5
    assert rms(left) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)
    assert rms(right) == pytest.approx(0.1 / np.sqrt(2), rel=0.05)


def test_kill_sound_server_then_recover_without_restart(own_server: VirtualAudio) -> None:
    own_server.start()
    with CaptureManager([DeviceSourceSpec("mic", device="pulse")], liveness=QUICK) as m:
        assert wait_for(lambda: state(m, "mic") is SourceState.OK, 15), m.source_health("mic")
        own_server.kill()
        assert wait_for(lambda: not m.source_health("mic").healthy, 5)
        assert wait_for(lambda: state(m, "mic") is SourceState.MISSING, 5)
        assert "PulseAudio" in m.source_health("mic").reason
        own_server.start()
        assert wait_for(lambda: state(m, "mic") is SourceState.OK, 15), m.source_health("mic")
        h = m.source_health("mic")
        assert h.reopen_count >= 1
        got = record(m, ["mic"], 1.6, lambda: own_server.play(tone(700, 0.2, 1.0)))["mic"]
    assert abs(peak_hz(tone_part(got)) - 700) < 5  # real audio again, same manager


def test_missing_device_at_startup_is_not_fatal(own_server: VirtualAudio) -> None:
    with CaptureManager([DeviceSourceSpec("mic", device="pulse")], liveness=QUICK) as m:
        assert wait_for(lambda: state(m, "mic") is SourceState.MISSING, 3)
        assert "no audio input device" in m.source_health("mic").reason
        assert m.read_new("mic")[1].size == 0
        own_server.start()  # the "microphone" appears later
        assert wait_for(lambda: state(m, "mic") is SourceState.OK, 15), m.source_health("mic")
        assert m.source_health("mic").frames_total > 0


def test_stalled_stream_is_detected_and_stop_is_prompt(
    pulse_env: VirtualAudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe source nobody writes to: the stream opens, but no callback ever runs.
    `stream.stop()` hangs forever on it; the manager must use abort() and stop at once."""
    pulse_env.add_pipe_source("vmic_stall")
    monkeypatch.setenv("PULSE_SOURCE", "vmic_stall")
    lv = LivenessSpec(
        check_interval_seconds=0.05,
        stall_seconds=0.8,
        reopen_initial_seconds=0.5,
        reopen_max_seconds=1.0,
    )
    m = CaptureManager([DeviceSourceSpec("mic", device="pulse")], liveness=lv)
    m.start()
    try:
        assert wait_for(lambda: state(m, "mic") is SourceState.STALLED, 5), m.source_health("mic")
        h = m.source_health("mic")
        assert "no audio frames" in h.reason and h.frames_total == 0 and not h.healthy
        assert wait_for(lambda: state(m, "mic") is SourceState.STARTING, 3)  # reopened...
        assert "after: stalled" in m.source_health("mic").reason  # ...and says why
    finally:
        t0 = time.monotonic()
        m.stop()
        took = time.monotonic() - t0
    assert took < 3.0, f"stop() took {took:.1f} s with a stalled stream"
    assert state(m, "mic") is SourceState.STOPPED


def test_sound_card_change_rescans_while_other_streams_run(
    pulse_env: VirtualAudio, tmp_path: Path
) -> None:
    """A USB microphone is missing while another source records; a card appears in
    /proc/asound: the manager re-initialises PortAudio (reopening the healthy stream)."""
    proc = tmp_path / "asound"
    proc.mkdir()
    (proc / "cards").write_text(" 0 [PCH            ]: HDA-Intel - HDA Intel PCH\n")
    specs = [DeviceSourceSpec("mic", device="pulse"), DeviceSourceSpec("usb", "usb:1234:5678")]
    m = CaptureManager(specs, liveness=QUICK, proc_asound=proc, sys_sound=tmp_path / "sys")
    with m:
        assert wait_for(lambda: state(m, "mic") is SourceState.OK, 10), m.source_health("mic")
        assert state(m, "usb") is SourceState.MISSING
        assert "no sound card has identity 'usb:1234:5678'" in m.source_health("usb").reason
        rescans = m.rescans
        (proc / "card1").mkdir()
        (proc / "card1" / "usbid").write_text("1234:5678\n")
        (proc / "cards").write_text(
            " 0 [PCH            ]: HDA-Intel - HDA Intel PCH\n"
            " 1 [Mic            ]: USB-Audio - Test Mic\n"
        )
        assert wait_for(lambda: m.rescans > rescans, 5)
        assert wait_for(lambda: m.source_health("mic").reopen_count == 1, 5)
        assert wait_for(lambda: state(m, "mic") is SourceState.OK, 10), m.source_health("mic")
        # The card is there now, but PortAudio has no capture device on it (it is fake):
        assert "has no input device that PortAudio can open" in m.source_health("usb").reason


def test_slow_consumer_overflow_on_a_live_device(pulse_env: VirtualAudio) -> None:
    spec = DeviceSourceSpec("mic", device="pulse")
    with CaptureManager([spec], liveness=QUICK, buffer_s=0.25) as m:
        assert wait_for(lambda: state(m, "mic") is SourceState.OK, 10), m.source_health("mic")
        m.read_new("mic")
        time.sleep(0.8)  # the consumer sleeps longer than the ring holds
        start, y = m.read_new("mic")
    h = m.source_health("mic")
    assert h.overflow_samples > 0.3 * 44100 and h.discontinuities >= 1
    # at most the ring's worth, resampled (the 0.8 s unbounded would be 12800 samples), with
    # room for samples the resampler held back or flushed (a reopen under load): 4319 was
    # seen once with both cores busy, cause not pinned down (not reproduced with busy loops)
    assert y.size <= int(0.25 * SR) + 512


def test_devices_command_lists_the_pulse_device(pulse_env: VirtualAudio) -> None:
    """`sonitor devices` in a fresh process (PortAudio initialised there) sees the server."""
    script = (
        "import argparse, sys; from monitor.cli import devices as cli_devices; "
        "p = argparse.ArgumentParser(); cli_devices.register(p.add_subparsers(dest='command')); "
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, "devices"],
        env=dict(os.environ, **pulse_env.env), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    assert any("pulse" in row and "ALSA" in row for row in rows), run.stdout
