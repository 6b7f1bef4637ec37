"""End to end with a real Mosquitto: the daemon in a subprocess on file sources.

Anomaly source -> `start` then `end`; the normal source -> nothing; retained state and
availability; last will after SIGKILL; SIGTERM -> `stopped`, exit 0; broker outage and daemon
SIGKILL -> every event replayed in order, flagged `replayed`.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Broker, Subscriber, broker_session
from daemon_process import (
    DaemonProcess,
    expected_windows,
    machine_audio,
    with_anomaly,
    write_config,
    write_wav,
)
from package_fixtures import make_tiny_package

pytestmark = pytest.mark.timeout(180)
PREFIX = "test/sonitor"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "pkg", machines=("fan", "pump"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def file_source(name: str, machine: str, path: Path, **extra: object) -> dict:
    return {"name": name, "type": "file", "machine": machine, "path": str(path),
            "realtime": False, **extra}  # fmt: skip


def events_of(msgs: list, source: str) -> list[dict]:
    return [json.loads(m.payload) for m in msgs if m.topic == f"{PREFIX}/{source}/events"]


def has_type(source: str, type_: str):  # noqa: ANN201
    return lambda got: any(e["type"] == type_ for e in events_of(got, source))


def two_sources(tmp_path: Path, anomaly_tail: bool = False) -> list[dict]:
    # anomaly_tail: the file ends during the anomaly, so the event is still open at the end
    fan = with_anomaly("fan", 6, 6, 0) if anomaly_tail else with_anomaly("fan", 8, 5, 12)
    fan_wav = write_wav(tmp_path / "fan.wav", fan)
    pump_wav = write_wav(tmp_path / "pump.wav", machine_audio("pump", 20, seed=7))
    return [file_source("fan1", "fan", fan_wav), file_source("pump1", "pump", pump_wav)]


def test_alert_lifecycle_retained_state_and_last_will(
    tmp_path: Path, package: Path, broker: Broker
) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", package, two_sources(tmp_path), broker=broker)
    live = Subscriber(broker, [f"{PREFIX}/#"])
    daemon = DaemonProcess(cfg)
    try:
        got = live.collect(has_type("fan1", "end"), timeout=60)
        # let the rest of both files be scored: the normal source must stay quiet throughout
        daemon.wait_until(
            lambda: daemon.metric("sonitor_windows_total", source="pump1") >= expected_windows(20),
            30,
            "every pump1 window",
        )
        time.sleep(0.5)
        got += live.collect(lambda g: True, timeout=1)
        fan_events = [e for e in events_of(got, "fan1") if e["kind"] == "anomaly"]
        assert [e["type"] for e in fan_events] == ["start", "end"], fan_events
        start, end = fan_events
        assert start["id"] == end["id"] and start["v"] == 1
        assert start["replayed"] is False and end["replayed"] is False
        assert end["reason"] == "cleared"
        assert start["score"] >= 1.5 and start["threshold"] > 0
        assert 3.0 <= end["duration_s"] <= 15.0  # ~5 s of anomaly + window and hysteresis
        assert events_of(got, "pump1") == []  # the normal machine: nothing at all
        availability = [m.payload for m in got if m.topic == f"{PREFIX}/availability"]
        assert availability[0] == b"online"

        # a client that connects later gets the retained availability and per-source state
        late = Subscriber(broker, [f"{PREFIX}/availability", f"{PREFIX}/+/state"])
        retained = late.collect(lambda g: len(g) >= 3, timeout=10)
        assert all(m.retain for m in retained)
        by_topic = {m.topic: m.payload for m in retained}
        assert by_topic[f"{PREFIX}/availability"] == b"online"
        for source in ("fan1", "pump1"):
            state = json.loads(by_topic[f"{PREFIX}/{source}/state"])
            assert state["source"] == source and state["v"] == 1
            for key in ("score", "normalised_score", "threshold", "level_dbfs", "time"):
                assert isinstance(state[key], float), (key, state)
            assert state["normalised_score"] == pytest.approx(
                state["score"] / state["threshold"], rel=1e-6
            )
            assert state["alarm"] in ("idle", "cooldown")
            assert state["capture_healthy"] is True
            assert state["model_version"] == start["model_version"]
        late.close()

        # SIGKILL: the broker publishes the last will
        daemon.kill()
        will = live.collect(
            lambda g: any(m.topic == f"{PREFIX}/availability" and m.payload == b"offline"
                          for m in g),
            timeout=10,
        )  # fmt: skip
        assert will
        again = Subscriber(broker, [f"{PREFIX}/availability"])
        assert again.get(timeout=10).payload == b"offline"
        again.close()
    finally:
        daemon.kill()
        live.close()


def test_sigterm_ends_open_events_publishes_stopped_and_exits_zero(
    tmp_path: Path, package: Path, broker: Broker
) -> None:
    state_dir = tmp_path / "state"
    cfg = write_config(
        tmp_path / "cfg.yaml",
        package,
        two_sources(tmp_path, anomaly_tail=True),
        broker=broker,
        state_dir=state_dir,
        clips={"pre_roll_seconds": 1.0, "post_roll_seconds": 1.0},
    )
    live = Subscriber(broker, [f"{PREFIX}/#"])
    daemon = DaemonProcess(cfg)
    try:
        live.collect(has_type("fan1", "start"), timeout=60)
        daemon.wait_until(
            lambda: daemon.metric("sonitor_windows_total", source="fan1") >= expected_windows(12),
            30,
            "every fan1 window",
        )
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0, daemon.log_text()[-3000:]
        assert time.monotonic() - t0 < 8.0
        got = live.collect(
            lambda g: any(m.topic == f"{PREFIX}/availability" and m.payload == b"stopped"
                          for m in g),
            timeout=10,
        )  # fmt: skip
        ends = [e for e in events_of(got, "fan1") if e["type"] == "end"]
        assert ends and ends[0]["reason"] == "shutdown"
        # the event's clip and sidecar were written before exit
        sidecars = list((state_dir / "clips").glob("*.json"))
        assert len(sidecars) == 1
        side = json.loads(sidecars[0].read_text())
        assert side["event_id"] == ends[0]["id"] and side["end_reason"] == "shutdown"
        assert (state_dir / "clips" / side["wav"]).stat().st_size > 44
        assert side["duration_s"] >= 1.0
    finally:
        daemon.kill()
        live.close()


def _wait_events_in_outbox(daemon: DaemonProcess, n_end: int = 1) -> None:
    daemon.wait_until(
        lambda: (
            (daemon.metric("sonitor_alert_events_total", source="fan1", type="end") or 0) >= n_end
        ),
        60,
        "the anomaly's end event",
    )


def _replayed(subscriber: Subscriber) -> list[dict]:
    got = subscriber.collect(has_type("fan1", "end"), timeout=40)
    return [e for e in events_of(got, "fan1")]


def test_broker_outage_events_replayed_in_order(
    tmp_path: Path, package: Path, broker: Broker
) -> None:
    sub = Subscriber(broker, [f"{PREFIX}/+/events"], client_id="replay-sub", persistent=True)
    broker.stop()  # the daemon starts with the broker down and must retry forever
    cfg = write_config(tmp_path / "cfg.yaml", package, two_sources(tmp_path), broker=broker)
    daemon = DaemonProcess(cfg)
    try:
        _wait_events_in_outbox(daemon)
        assert daemon.metric("sonitor_mqtt_connected") == 0
        daemon.wait_until(
            lambda: daemon.metric("sonitor_mqtt_outbox_messages") >= 2, 5, "the outbox gauge"
        )
        code, body = daemon.healthz()
        assert code == 503 and body["checks"]["mqtt"]["ok"] is False
        broker.start()
        events = _replayed(sub)
        assert [e["type"] for e in events] == ["start", "end"]
        assert all(e["replayed"] is True for e in events)
        assert events[0]["id"] == events[1]["id"]
        # original timestamps (audio time of a fast replay), not the send time: both were sent
        # within milliseconds of each other after the broker came back
        assert events[1]["time"] - events[0]["time"] >= 2.0  # min_hold_seconds
        daemon.wait_until(lambda: daemon.metric("sonitor_mqtt_outbox_messages") == 0, 20, "acks")
        assert daemon.metric("sonitor_mqtt_connected") == 1
    finally:
        daemon.kill()
        sub.close()


def test_events_survive_daemon_sigkill_and_are_replayed_after_restart(
    tmp_path: Path, package: Path, broker: Broker
) -> None:
    sub = Subscriber(broker, [f"{PREFIX}/+/events"], client_id="replay-sub2", persistent=True)
    broker.stop()
    state_dir = tmp_path / "state"
    cfg = write_config(
        tmp_path / "cfg.yaml", package, two_sources(tmp_path), broker=broker, state_dir=state_dir
    )
    daemon = DaemonProcess(cfg)
    try:
        _wait_events_in_outbox(daemon)
    finally:
        daemon.kill()  # SIGKILL: nothing flushed, the outbox on disk is all that is left
    # restart on normal audio only (no new events) with the same outbox
    quiet = write_wav(tmp_path / "quiet.wav", machine_audio("fan", 6, seed=11))
    cfg2 = write_config(
        tmp_path / "cfg2.yaml",
        package,
        [file_source("fan1", "fan", quiet)],
        broker=broker,
        state_dir=state_dir,
    )
    broker.start()
    daemon = DaemonProcess(cfg2)
    try:
        events = _replayed(sub)
        assert [e["type"] for e in events] == ["start", "end"]
        assert all(e["replayed"] is True for e in events)
        assert events[0]["id"] == events[1]["id"]
    finally:
        daemon.kill()
        sub.close()


def test_commands_mute_unmute_test_alert_and_reload(
    tmp_path: Path, package: Path, broker: Broker
) -> None:
    import paho.mqtt.publish as publish

    noisy = write_wav(tmp_path / "noisy.wav", with_anomaly("fan", 0, 6, 0))  # anomalous throughout
    source = file_source("fan1", "fan", noisy, realtime=True, loop=True)
    cfg = write_config(tmp_path / "cfg.yaml", package, [source], broker=broker)
    live = Subscriber(broker, [f"{PREFIX}/#"])
    daemon = DaemonProcess(cfg)

    def send(topic: str, payload: str = "") -> None:
        publish.single(topic, payload, qos=1, hostname=broker.host, port=broker.port)

    def states(got: list) -> list[dict]:
        return [json.loads(m.payload) for m in got if m.topic == f"{PREFIX}/fan1/state"]

    try:
        live.collect(lambda g: any(m.payload == b"online" for m in g), timeout=40)
        got: list = []
        for _ in range(20):  # until the daemon has subscribed and a state says muted
            send(f"{PREFIX}/fan1/command/mute", '{"duration_s": 600}')
            try:
                got += live.collect(lambda g: any(s["alarm"] == "muted" for s in states(g)), 2)
                break
            except AssertionError:
                continue
        muted = next(s for s in states(got) if s["alarm"] == "muted")
        assert muted["muted_until"] > time.time() + 500
        # anomalous audio keeps coming, yet a muted source raises nothing
        quiet: list = []
        time.sleep(3)
        while not live.messages.empty():
            quiet.append(live.messages.get())
        assert not [e for e in events_of(quiet, "fan1") if e["type"] == "start"]
        assert all(s["alarm"] == "muted" for s in states(quiet))

        send(f"{PREFIX}/fan1/command/unmute")
        got = live.collect(has_type("fan1", "start"), timeout=20)
        assert [e["kind"] for e in events_of(got, "fan1") if e["type"] == "start"] == ["anomaly"]

        send(f"{PREFIX}/command/test_alert")
        got = live.collect(
            lambda g: sum(e["kind"] == "test" for e in events_of(g, "fan1")) >= 2, timeout=20
        )
        test_events = [e for e in events_of(got, "fan1") if e["kind"] == "test"]
        assert [e["type"] for e in test_events] == ["start", "end"]

        send(f"{PREFIX}/command/reload")
        daemon.wait_until(
            lambda: daemon.metric("sonitor_config_reloads_total", result="success") == 1,
            20,
            "the reload command",
        )
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        live.close()


def test_test_alert_command(
    tmp_path: Path, package: Path, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli.sonitor import main

    cfg = write_config(tmp_path / "cfg.yaml", package, two_sources(tmp_path), broker=broker)
    live = Subscriber(broker, [f"{PREFIX}/+/events"])
    try:
        assert main(["test-alert", "--config", str(cfg), "--source", "pump1"]) == 0
        assert "acknowledged" in capsys.readouterr().out
        got = live.collect(lambda g: len(g) >= 2, timeout=10)
        events = events_of(got, "pump1")
        assert [(e["kind"], e["type"]) for e in events] == [("test", "start"), ("test", "end")]
        assert main(["test-alert", "--config", str(cfg), "--source", "nope"]) == 2
        assert "no source named 'nope'" in capsys.readouterr().err
    finally:
        live.close()
    off = write_config(tmp_path / "off.yaml", package, two_sources(tmp_path))
    assert main(["test-alert", "--config", str(off)]) == 2
    assert "mqtt.enabled is false" in capsys.readouterr().err
