"""End to end with a real Mosquitto: an alert open when the daemon is SIGKILLed ends after the
restart with exactly one `end` (reason `restart`), through the outbox.

The daemon runs in a subprocess (tests/daemon_process.py) on a looping anomalous file, so its
alert stays open until the kill; the restarted daemon listens to normal sound only.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Broker, Subscriber, broker_session
from daemon_process import DaemonProcess, machine_audio, with_anomaly, write_config, write_wav
from package_fixtures import make_tiny_package

from monitor.outputs.outbox import Outbox

pytestmark = pytest.mark.timeout(240)
PREFIX = "test/sonitor"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "pkg", machines=("fan",))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def fan_source(path: Path, **extra: object) -> dict:
    return {"name": "fan1", "type": "file", "machine": "fan", "path": str(path), **extra}


def events(msgs: list) -> list[dict]:
    return [json.loads(m.payload) for m in msgs if m.topic == f"{PREFIX}/fan1/events"]


def test_alert_open_at_sigkill_gets_exactly_one_end_with_reason_restart(
    tmp_path: Path, package: Path, broker: Broker
) -> None:
    state_dir = tmp_path / "state"
    noisy = write_wav(tmp_path / "noisy.wav", with_anomaly("fan", 0, 6, 0))  # anomalous throughout
    cfg = write_config(
        tmp_path / "cfg.yaml",
        package,
        [fan_source(noisy, realtime=True, loop=True)],
        broker=broker,
        state_dir=state_dir,
    )
    live = Subscriber(broker, [f"{PREFIX}/+/events", f"{PREFIX}/availability"])
    daemon = DaemonProcess(cfg)
    try:
        got = live.collect(lambda g: any(e["type"] == "start" for e in events(g)), timeout=90)
        start = next(e for e in events(got) if e["type"] == "start")
        assert start["kind"] == "anomaly"
    finally:
        daemon.kill()  # SIGKILL with the alert open: no `end` can be sent now

    quiet = write_wav(tmp_path / "quiet.wav", machine_audio("fan", 6, seed=11))
    cfg2 = write_config(
        tmp_path / "cfg2.yaml",
        package,
        [fan_source(quiet, realtime=False)],
        broker=broker,
        state_dir=state_dir,
    )
    daemon = DaemonProcess(cfg2)
    try:

        def ended(g: list) -> bool:
            return any(e["id"] == start["id"] and e["type"] == "end" for e in events(g))

        got += live.collect(ended, timeout=90)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0, daemon.log_text()[-3000:]
        got += live.collect(lambda g: any(m.payload == b"stopped" for m in g), timeout=15)
        log = daemon.log_text()
    finally:
        daemon.kill()
        live.close()

    mine = [e for e in events(got) if e["id"] == start["id"]]
    ends = [e for e in mine if e["type"] == "end"]
    assert len(ends) == 1, mine
    end = ends[0]
    assert end["reason"] == "restart" and end["kind"] == "anomaly" and end is mine[-1]
    assert sorted({e["seq"] for e in mine}) == list(range(end["seq"] + 1))  # nothing missing
    assert end["start_time"] == start["start_time"] and end["clip"] is None
    assert end["duration_s"] >= 0 and end["end_time"] == end["time"]
    assert f"alert {start['id']} of fan1 was open" in log and "reason restart" in log
    # nothing is left to end at a third start, and the broker acknowledged everything
    box = Outbox(state_dir / "outbox.sqlite")
    try:
        assert box.open_alerts() == [] and box.pending() == []
    finally:
        box.close()
