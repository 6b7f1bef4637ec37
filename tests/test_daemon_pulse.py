"""Real capture: the daemon scores live audio from a virtual PulseAudio source; killing the sound
server marks the source unhealthy; starting it again recovers without restarting the daemon."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, machine_audio, write_config
from package_fixtures import make_tiny_package
from virtual_audio import VirtualAudio, requires_pulseaudio

pytestmark = [requires_pulseaudio, pytest.mark.timeout(180)]


@pytest.fixture
def sound_server(tmp_path: Path) -> Iterator[VirtualAudio]:
    va = VirtualAudio(tmp_path / "pulse")
    try:
        va.start()
        yield va
    finally:
        va.close()


def test_live_capture_scores_and_recovers_from_a_dead_sound_server(
    tmp_path: Path, sound_server: VirtualAudio
) -> None:
    package = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    source = {"name": "mic1", "type": "device", "machine": "fan", "device": "pulse"}
    cfg = write_config(
        tmp_path / "cfg.yaml",
        package,
        [source],
        capture={
            "stall_seconds": 1.0,
            "silence_seconds": 600,  # the keep-alive plays zeros between our sounds
            "reopen_initial_seconds": 0.3,
            "reopen_max_seconds": 1.0,
            "check_interval_seconds": 0.1,
        },
        health={"inference_stale_seconds": 4.0},
    )
    fan = machine_audio("fan", 20, seed=21)

    def play() -> None:
        # VirtualAudio.play writes to pacat's stdin, which blocks at the real-time pace once the
        # pipe is full: play from a thread
        threading.Thread(target=sound_server.play, args=(fan,), daemon=True).start()

    daemon = DaemonProcess(cfg, env=sound_server.env)
    try:
        daemon.wait_ready()
        play()
        daemon.wait_until(
            lambda: daemon.metric("sonitor_windows_total", source="mic1") >= 3, 40, "live windows"
        )
        raw = daemon.metric("sonitor_score_raw", source="mic1")
        level = daemon.metric("sonitor_input_level_dbfs", source="mic1")
        assert raw is not None and math.isfinite(raw) and raw > 0
        assert -30 < level < -10  # the synthetic fan plays at about -20 dBFS
        code, body = daemon.healthz()
        assert code == 200 and body["checks"]["capture"]["mic1"]["state"] == "ok", body

        sound_server.kill()
        daemon.wait_until(
            lambda: daemon.healthz()[1]["checks"]["capture"]["mic1"]["ok"] is False,
            10,
            "the source to turn unhealthy",
        )
        code, body = daemon.healthz()
        assert code == 503
        assert body["checks"]["capture"]["mic1"]["state"] in ("missing", "stalled", "reopening")
        daemon.wait_until(
            lambda: daemon.metric("sonitor_capture_up", source="mic1") == 0, 5, "capture_up 0"
        )
        before = daemon.metric("sonitor_windows_total", source="mic1")

        sound_server.start()
        play()
        daemon.wait_until(
            lambda: daemon.metric("sonitor_capture_up", source="mic1") == 1, 30, "recovery"
        )
        daemon.wait_until(
            lambda: daemon.metric("sonitor_windows_total", source="mic1") >= before + 3,
            30,
            "windows after recovery",
        )
        assert daemon.metric("sonitor_capture_reopens_total", source="mic1") >= 1
        daemon.wait_until(lambda: daemon.healthz()[0] == 200, 10, "healthy again")
        assert daemon.alive()  # the same daemon process throughout
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-4000:]
