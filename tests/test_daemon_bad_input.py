"""Bad input: each case gets its specified behaviour, none crashes the daemon.

Config and package problems stop `sonitor run` / `check-config` with exit 2 and a message that
names the file, line and key. Audio problems (corrupt file, NaN/inf, digital silence, clipping,
a missing device) never stop the daemon: the source is reported unhealthy and a *capture* alarm
replaces anomaly alerts, while the healthy sources keep being scored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from broker import Broker, Subscriber, broker_session
from daemon_process import (
    SR,
    DaemonProcess,
    machine_audio,
    run_cli,
    write_config,
    write_wav,
)
from package_fixtures import copy_package, make_tiny_package

from monitor.cli.sonitor import main

pytestmark = pytest.mark.timeout(180)
PREFIX = "test/sonitor"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "pkg", machines=("fan",))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def fan_source(tmp_path: Path, name: str = "fan1") -> dict:
    wav = write_wav(tmp_path / f"{name}.wav", machine_audio("fan", 4, seed=2))
    return {"name": name, "type": "file", "machine": "fan", "path": str(wav)}


# --------------------------------------------------------------------------- config / package


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`sonitor ARGV` in-process (fast); (exit code, stdout, stderr)."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_malformed_yaml_stops_run_with_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  package: pkg\nsources:\n  - name: [unclosed\n")
    res = run_cli("run", "--config", str(cfg))  # the real command line, in a subprocess
    assert res.returncode == 2, res.stderr
    assert f"{cfg}:5" in res.stderr and "malformed YAML" in res.stderr
    assert "Traceback" not in res.stderr


def test_check_config_reports_malformed_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  package: pkg\nsources:\n  - name: [unclosed\n")
    code, _, err = cli(capsys, "check-config", str(cfg))
    assert code == 2 and f"{cfg}:5" in err and "malformed YAML" in err


def test_unknown_key_and_wrong_type_name_the_key(tmp_path: Path, package: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", package, [fan_source(tmp_path)])
    text = cfg.read_text().replace("  on_threshold: 1.5", "  on_threshold: high\n  on_thresh: 2")
    cfg.write_text(text)
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 2
    assert "alerts.on_threshold" in res.stderr and "'high'" in res.stderr
    assert "alerts.on_thresh: unknown key" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_package(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "no-such-pkg", [fan_source(tmp_path)])
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 2
    assert str(tmp_path / "no-such-pkg") in res.stderr and "Traceback" not in res.stderr


def test_corrupt_package_names_the_file(
    tmp_path: Path, package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = copy_package(package, tmp_path / "pkg")
    bank = next((pkg / "machines").glob("*/bank.npz"))
    data = bytearray(bank.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bank.write_bytes(bytes(data))
    cfg = write_config(tmp_path / "cfg.yaml", pkg, [fan_source(tmp_path)])
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 2
    assert str(bank) in res.stderr and "checksum" in res.stderr
    code, _, err = cli(capsys, "check-config", str(cfg))
    assert code == 2 and str(bank) in err


def test_machine_not_in_package(
    tmp_path: Path, package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = fan_source(tmp_path) | {"machine": "turbine"}
    cfg = write_config(tmp_path / "cfg.yaml", package, [src])
    code, _, err = cli(capsys, "check-config", str(cfg))
    assert code == 2
    assert "sources[0].machine" in err and "'turbine'" in err


def test_check_config_ok_and_corrupt_source_file(
    tmp_path: Path, package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", package, [fan_source(tmp_path)])
    code, out, err = cli(capsys, "check-config", str(cfg))
    assert code == 0, err
    assert "OK" in out
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" * 10)
    src = {"name": "bad", "type": "file", "machine": "fan", "path": str(corrupt)}
    cfg = write_config(tmp_path / "cfg2.yaml", package, [src])
    code, _, err = cli(capsys, "check-config", str(cfg))
    assert code == 2
    assert "sources[0].path" in err and str(corrupt) in err


def test_check_config_warns_about_a_missing_device(
    tmp_path: Path, package: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("PULSE_SERVER", "unix:/nonexistent")
    src = {"name": "mic1", "type": "device", "machine": "fan", "device": "no-such-microphone"}
    cfg = write_config(tmp_path / "cfg.yaml", package, [src])
    code, out, _ = cli(capsys, "check-config", str(cfg))
    assert code == 0  # the daemon starts and waits for the device
    assert "warning: sources[0] (mic1): device not available now" in out


# --------------------------------------------------------------------------- bad audio at run time


def test_bad_audio_marks_sources_unhealthy_and_never_crashes(
    tmp_path: Path, package: Path, broker: Broker
) -> None:
    t = np.arange(6 * SR) / SR
    silent = write_wav(tmp_path / "silent.wav", np.zeros(6 * SR, np.float32))
    square = np.sign(np.sin(2 * np.pi * 100 * t)).astype(np.float32)  # full scale: clipped
    clipped = write_wav(tmp_path / "clipped.wav", square)
    nan = machine_audio("fan", 6, seed=8).astype(np.float32)
    nan[SR : SR + 800] = np.nan
    nan[3 * SR : 3 * SR + 10] = np.inf
    nan_wav = write_wav(tmp_path / "nan.wav", nan, subtype="FLOAT")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" * 10)
    # a broken input: a DC offset and a 1 Hz drift, loud in dBFS, silent in the model's band
    dc = write_wav(tmp_path / "dc.wav", (0.3 + 0.2 * np.sin(2 * np.pi * t)).astype(np.float32))

    def src(name: str, path: Path) -> dict:
        return {"name": name, "type": "file", "machine": "fan", "path": str(path), "loop": True}

    sources = [
        src("fan1", tmp_path / "fan1.wav"),
        src("silent1", silent),
        src("clip1", clipped),
        src("nan1", nan_wav),
        src("corrupt1", corrupt),
        src("dc1", dc),
        {"name": "mic1", "type": "device", "machine": "fan", "device": "no-such-microphone"},
    ]
    write_wav(tmp_path / "fan1.wav", machine_audio("fan", 6, seed=2))
    cfg = write_config(
        tmp_path / "cfg.yaml",
        package,
        sources,
        broker=broker,
        capture={"silence_seconds": 1.5, "clipping_seconds": 1.5, "reopen_max_seconds": 2.0},
    )
    live = Subscriber(broker, [f"{PREFIX}/#"])
    daemon = DaemonProcess(cfg, env={"PULSE_SERVER": "unix:/nonexistent"})
    bad = ("silent1", "clip1", "nan1", "corrupt1", "mic1")

    def capture_starts(got: list) -> dict[str, dict]:
        out = {}
        for m in got:
            if m.topic.endswith("/events"):
                e = json.loads(m.payload)
                if e["kind"] == "capture" and e["type"] == "start":
                    out[e["source"]] = e
        return out

    try:
        got = live.collect(lambda g: set(bad) <= set(capture_starts(g)), timeout=40)
        daemon.wait_until(
            lambda: daemon.metric("sonitor_windows_total", source="fan1") >= 8, 30, "fan1 windows"
        )
        got += live.collect(lambda g: True, timeout=1)

        def nan_health(g: list) -> bool:  # published at the next health check after the alarm
            return any(m.topic.endswith("/nan1/health") and b'"nonfinite"' in m.payload for m in g)

        if not nan_health(got):
            got += live.collect(nan_health, timeout=10)
        alarms = capture_starts(got)
        assert alarms["silent1"]["reason"] == "silent"
        assert alarms["clip1"]["reason"] == "clipping"
        # NaN/inf are counted and never disguised as silence or clipping
        assert alarms["nan1"]["reason"] == "nonfinite"
        assert daemon.metric("sonitor_capture_nonfinite_samples_total", source="nan1") >= 810
        assert daemon.metric("sonitor_capture_up", source="nan1") == 0
        assert daemon.metric("sonitor_windows_invalid_total", source="nan1", reason="clipped") == 0
        assert alarms["corrupt1"]["reason"] == "error"
        assert alarms["mic1"]["reason"] in ("missing", "reopening", "stalled")
        events = [json.loads(m.payload) for m in got if m.topic.endswith("/events")]
        anomalies = [e for e in events if e["kind"] == "anomaly"]
        assert not [e for e in anomalies if e["source"] in (*bad, "dc1")], anomalies
        assert daemon.metric("sonitor_windows_total", source="dc1") == 0
        assert daemon.metric("sonitor_windows_invalid_total", source="dc1", reason="silent") > 0
        # the healthy source keeps being scored
        assert daemon.metric("sonitor_windows_total", source="fan1") >= 8
        assert np.isfinite(daemon.metric("sonitor_score_raw", source="fan1"))
        assert daemon.metric("sonitor_capture_up", source="fan1") == 1
        for name in ("silent1", "clip1", "nan1"):  # untrustworthy audio is never scored
            assert daemon.metric("sonitor_windows_total", source=name) == 0

        # retained health says what is wrong, in words that name the file
        health = {
            m.topic.split("/")[-2]: json.loads(m.payload)
            for m in got
            if m.topic.endswith("/health")
        }
        assert health["fan1"]["healthy"] is True
        assert health["corrupt1"]["healthy"] is False
        assert str(corrupt) in health["corrupt1"]["detail"]
        assert health["nan1"]["healthy"] is False and health["nan1"]["status"] == "nonfinite"
        assert str(nan_wav) in health["nan1"]["detail"]
        code, body = daemon.healthz()
        assert code == 503
        assert body["checks"]["capture"]["corrupt1"]["state"] == "error"
        assert body["checks"]["capture"]["fan1"]["ok"] is True
        assert body["checks"]["inference"]["ok"] is True
        assert daemon.alive()
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-4000:]
        live.close()
    assert "Traceback" not in daemon.log_text()
