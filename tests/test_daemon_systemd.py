"""systemd notify from the real daemon: READY=1 once up, WATCHDOG=1 only while audio and
inference progress, RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, machine_audio, write_config, write_wav
from package_fixtures import make_tiny_package

pytestmark = pytest.mark.timeout(120)


def messages_until(sock: socket.socket, cond, timeout: float) -> list[tuple[float, str]]:  # noqa: ANN001
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
        if cond(got):
            return got
    raise AssertionError(f"timed out; got {got}")


def test_ready_watchdog_only_while_progressing_reloading_stopping(tmp_path: Path) -> None:
    package = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    # 6 s of audio in real time, not looping: audio stops after 6 s
    wav = write_wav(tmp_path / "fan.wav", machine_audio("fan", 6, seed=1))
    source = {"name": "fan1", "type": "file", "machine": "fan", "path": str(wav)}
    cfg = write_config(
        tmp_path / "cfg.yaml", package, [source], health={"inference_stale_seconds": 2.0}
    )
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}  # WatchdogSec=1
    daemon = DaemonProcess(cfg, env=env)
    try:
        got = messages_until(sock, lambda g: any("WATCHDOG=1" in m for _, m in g), 40)
        assert any(m.startswith("READY=1") for _, m in got)
        daemon.signal(signal.SIGHUP)
        got = messages_until(sock, lambda g: any(m.startswith("READY=1") for _, m in g), 20)
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for _, m in got)
        # while the file plays, pings arrive about every 0.5 s (half of WatchdogSec)
        got = messages_until(sock, lambda g: sum("WATCHDOG=1" in m for _, m in g) >= 3, 10)
        # the file ends: no audio, no new windows -> the pings stop (systemd would restart us)
        time.sleep(6 + 2 + 1)
        sock.settimeout(0.1)
        while True:  # drain what was sent meanwhile
            try:
                sock.recv(4096)
            except TimeoutError:
                break
        late = []
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                late.append(sock.recv(4096).decode())
            except TimeoutError:
                break
        assert not [m for m in late if "WATCHDOG=1" in m], late
        assert daemon.alive()
        daemon.signal(signal.SIGTERM)
        got = messages_until(sock, lambda g: any("STOPPING=1" in m for _, m in g), 10)
        assert daemon.wait(10) == 0
    finally:
        daemon.kill()
        sock.close()


def test_watchdog_keeps_pinging_while_a_missing_microphone_is_retried(tmp_path: Path) -> None:
    # An unplugged microphone is a capture alarm, not a hung daemon: restarting every watchdog
    # period cannot bring it back and would make MQTT availability flap.
    package = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    source = {"name": "mic1", "type": "device", "machine": "fan", "device": "no-such-microphone"}
    cfg = write_config(
        tmp_path / "cfg.yaml",
        package,
        [source],
        health={"inference_stale_seconds": 2.0},
        capture={"reopen_max_seconds": 1.0},
    )
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = {
        "NOTIFY_SOCKET": str(sock_path),
        "WATCHDOG_USEC": "1000000",
        "PULSE_SERVER": "unix:/nonexistent",
    }
    daemon = DaemonProcess(cfg, env=env)
    try:
        messages_until(sock, lambda g: any(m.startswith("READY=1") for _, m in g), 40)
        daemon.wait_until(
            lambda: daemon.metric("sonitor_capture_up", source="mic1") == 0, 20, "capture down"
        )
        time.sleep(2 + 1)  # longer than inference_stale_seconds: no audio, no windows
        got = messages_until(sock, lambda g: sum("WATCHDOG=1" in m for _, m in g) >= 4, 6)
        assert sum("WATCHDOG=1" in m for _, m in got) >= 4
        assert daemon.alive()
    finally:
        daemon.kill()
        sock.close()
