"""SIGHUP: reload config and model package without dropping audio; a bad config keeps the old."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml
from daemon_process import DaemonProcess, machine_audio, write_config, write_wav
from package_fixtures import make_tiny_package

from monitor.model.package import ModelPackage

pytestmark = pytest.mark.timeout(180)
WINDOW, HOP, LOOKAHEAD = 32000, 8000, 256  # 2 s / 0.5 s at 16 kHz (the test package)


def windows_consistent(daemon: DaemonProcess) -> tuple[float, float]:
    """(windows scored, windows the audio read so far allows) from one scrape."""
    m = daemon.metrics()
    key = (("source", "fan1"),)
    samples = m[("sonitor_capture_samples_total", key)]
    done = m[("sonitor_windows_total", key)]
    return done, (samples - WINDOW - LOOKAHEAD) // HOP + 1


def test_sighup_reloads_config_and_package_without_dropping_audio(tmp_path: Path) -> None:
    pkg1 = make_tiny_package(tmp_path / "pkg1", machines=("fan",), seed=0)
    pkg2 = make_tiny_package(tmp_path / "pkg2", machines=("fan",), seed=1)
    v1, v2 = ModelPackage.load(pkg1).model_version, ModelPackage.load(pkg2).model_version
    assert v1 != v2
    wav = write_wav(tmp_path / "fan.wav", machine_audio("fan", 8, seed=3))
    source = {"name": "fan1", "type": "file", "machine": "fan", "path": str(wav), "loop": True}
    cfg = write_config(tmp_path / "cfg.yaml", pkg1, [source])
    daemon = DaemonProcess(cfg)
    try:
        daemon.wait_ready()
        daemon.wait_until(lambda: daemon.metric("sonitor_windows_total") >= 3, 30, "windows")
        assert daemon.metric("sonitor_model_info", model_version=v1) == 1

        # new threshold and a new package
        data = yaml.safe_load(cfg.read_text())
        data["model"]["package"] = str(pkg2)
        data["sources"][0]["threshold"] = 123.0
        cfg.write_text(yaml.safe_dump(data))
        daemon.signal(signal.SIGHUP)
        daemon.wait_until(
            lambda: daemon.metric("sonitor_config_reloads_total", result="success") == 1,
            20,
            "the reload",
        )
        assert daemon.metric("sonitor_model_info", model_version=v2) == 1
        assert daemon.metric("sonitor_model_info", model_version=v1) is None
        daemon.wait_until(
            lambda: daemon.metric("sonitor_score_threshold", source="fan1") == 123.0, 10, "thr"
        )
        scored = daemon.metric("sonitor_windows_total")
        daemon.wait_until(
            lambda: daemon.metric("sonitor_windows_total") >= scored + 4, 20, "windows after"
        )
        # no audio lost: every window the audio allows was scored (at most the newest pending)
        done, possible = windows_consistent(daemon)
        assert possible - 2 <= done <= possible, (done, possible)
        assert daemon.metric("sonitor_windows_dropped_total", source="fan1") == 0
        assert daemon.metric("sonitor_capture_lost_samples_total", source="fan1") == 0

        # an invalid config keeps the running one and says why
        cfg.write_text(cfg.read_text() + "alerts:\n  on_threshold: [oops\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_until(
            lambda: daemon.metric("sonitor_config_reloads_total", result="failure") == 1,
            20,
            "the failed reload",
        )
        assert daemon.alive()
        assert daemon.metric("sonitor_score_threshold", source="fan1") == 123.0
        assert daemon.metric("sonitor_model_info", model_version=v2) == 1
        log = daemon.log_text()
        assert "reload failed; keeping the running config" in log and str(cfg) in log
        scored = daemon.metric("sonitor_windows_total")
        daemon.wait_until(
            lambda: daemon.metric("sonitor_windows_total") >= scored + 2, 20, "still scoring"
        )
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-4000:]
