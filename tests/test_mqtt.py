"""MQTT against a REAL mosquitto on loopback: availability, retained state, last will, QoS 1 events,
broker outage and publisher SIGKILL with outbox replay, boot retries and commands.

Each test runs under a timeout; the broker log is printed at teardown (shown when a test fails).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Subscriber, broker_session, free_port, require_mosquitto

from monitor.alerting.machine import AlertMachine, AlertPolicy
from monitor.outputs.mqtt import Command, MqttClient, MqttError, MqttSettings, publish_test_alert
from monitor.outputs.payloads import health_payload, state_payload

pytestmark = pytest.mark.timeout(90)
REPO = Path(__file__).resolve().parents[1]
PREFIX = "plant/sonitor"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def settings(broker: Broker, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "topic_prefix": PREFIX,
        "client_id": "sonitor-test",
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "keepalive_s": 5,
    }
    base.update(kw)
    return MqttSettings(**base)


def wait_until(cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def alert_events(n_events: int, source: str = "pump1") -> list[Any]:
    """`n_events` real anomaly lifecycles (start + end) from the state machine."""
    machine = AlertMachine(source, AlertPolicy(n_above=1, m_windows=1, k_below=1, min_hold_s=0))
    events = []
    t = 1_714_564_800.0
    for i in range(n_events * 2):
        events += machine.step(t + i * 60, 3.0 if i % 2 == 0 else 0.1)
    assert len(events) == 2 * n_events
    return events


def event_msgs(got: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in got if m.topic.endswith("/events")]


CHILD = r"""
import sys, time
from pathlib import Path
from monitor.alerting.machine import AlertMachine, AlertPolicy
from monitor.outputs.mqtt import MqttClient, MqttSettings
from monitor.outputs.payloads import state_payload
host, port, outbox, mode, n = sys.argv[1:6]
port, n = int(port), int(n)
st = MqttSettings(host=host, port=port, topic_prefix="plant/sonitor", client_id="daemon",
                  reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_s=5, outbox_path=Path(outbox))
client = MqttClient(st).start()
if mode == "state":
    m = AlertMachine("pump1")
    client.publish_state("pump1", state_payload("pump1", time=time.time(), status=m.status(),
                                                score=0.1, normalised_score=0.3, threshold=0.33))
    assert client.wait_connected(20)
    # An acknowledged event proves the broker has processed the retained publishes before it.
    client.publish_alert(AlertMachine("pump1", AlertPolicy(n_above=1, m_windows=1)).step(1.0, 5)[0])
    assert client.wait_idle(20)
    print("connected", flush=True)
elif mode == "queue":
    m = AlertMachine("pump1", AlertPolicy(n_above=1, m_windows=1, k_below=1, min_hold_s=0))
    for i in range(n):
        for ev in m.step(1714564800.0 + i * 60, 3.0 if i % 2 == 0 else 0.1):
            client.publish_alert(ev, threshold=0.33)
    print("queued", len(client.outbox), flush=True)
elif mode == "replay":
    assert client.wait_connected(20)
    assert client.wait_idle(20)
    print("replayed", client.stats()["events_replayed_total"], flush=True)
    client.stop()
    sys.exit(0)
time.sleep(600)
"""


def start_child(broker: Broker, outbox: Path, mode: str, n: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, broker.host, str(broker.port), str(outbox), mode, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def read_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The child's next stdout line (its stderr on failure)."""
    box: list[str] = []
    th = threading.Thread(target=lambda: box.append(proc.stdout.readline()))  # type: ignore[union-attr]
    th.start()
    th.join(timeout)
    if not box or not box[0]:
        proc.kill()
        raise AssertionError(f"child gave no output; stderr:\n{proc.stderr.read()}")  # type: ignore[union-attr]
    return box[0].strip()


def test_availability_retained_state_and_last_will_after_sigkill(
    broker: Broker, tmp_path: Path
) -> None:
    child = start_child(broker, tmp_path / "outbox.sqlite", "state")
    try:
        assert read_line(child) == "connected"
        sub = Subscriber(broker, [f"{PREFIX}/#"])
        got = sub.collect(
            lambda ms: (
                {m.topic for m in ms if m.retain}
                >= {f"{PREFIX}/availability", f"{PREFIX}/pump1/state"}
            )
        )
        retained = {m.topic: m for m in got if m.retain}
        assert retained[f"{PREFIX}/availability"].payload == b"online"
        state = json.loads(retained[f"{PREFIX}/pump1/state"].payload)
        assert state["v"] == 1 and state["source"] == "pump1" and state["alarm"] == "idle"
        assert state["normalised_score"] == 0.3 and state["threshold"] == 0.33
        assert state["capture_healthy"] is True
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        got = sub.collect(lambda ms: any(m.payload == b"offline" for m in ms), timeout=15)
        will = [m for m in got if m.payload == b"offline"][0]
        assert will.topic == f"{PREFIX}/availability"
        sub.close()
        late = Subscriber(broker, [f"{PREFIX}/availability"])
        msg = late.get()
        assert msg.payload == b"offline" and msg.retain  # the will was retained
        late.close()
    finally:
        child.kill()
        child.wait()


def test_clean_stop_publishes_stopped_and_reconnect_republishes_online(broker: Broker) -> None:
    client = MqttClient(settings(broker)).start()
    try:
        assert client.wait_connected(10)
        client.publish_health("pump1", health_payload("pump1", time=1.0, healthy=True))
        broker.restart()  # the broker saves/restores retained messages, as a real one does
        wait_until(lambda: client.stats()["connects_total"] >= 2, what="reconnect")
        sub = Subscriber(broker, [f"{PREFIX}/availability", f"{PREFIX}/pump1/health"])
        got = sub.collect(lambda ms: len([m for m in ms if m.retain]) >= 2)
        assert {m.topic: m.payload for m in got if m.retain}[f"{PREFIX}/availability"] == b"online"
        sub.close()
    finally:
        client.stop()
    late = Subscriber(broker, [f"{PREFIX}/availability"])
    msg = late.get()
    assert (msg.payload, msg.retain) == (b"stopped", True)
    late.close()


def test_events_arrive_with_qos1_in_order_and_leave_the_outbox(
    broker: Broker, tmp_path: Path
) -> None:
    sub = Subscriber(broker, [f"{PREFIX}/+/events"])
    client = MqttClient(settings(broker, outbox_path=tmp_path / "o.sqlite")).start()
    try:
        assert client.wait_connected(10)
        events = alert_events(10)
        for ev in events:
            client.publish_alert(ev, threshold=0.33, model_version="m1", clip="c.wav")
        got = sub.collect(lambda ms: len(ms) >= 20)
        assert all(m.qos == 1 and not m.retain for m in got)
        assert all(m.topic == f"{PREFIX}/pump1/events" for m in got)
        payloads = event_msgs(got)
        assert [(p["id"], p["seq"], p["type"]) for p in payloads] == [
            (e.event_id, e.seq, e.type) for e in events
        ]
        assert not any(p["replayed"] for p in payloads)
        assert client.wait_idle(10)
        s = client.stats()
        assert s["events_acked_total"] == 20 and s["outbox_pending"] == 0
    finally:
        client.stop()
        sub.close()


def test_mqtt5_protocol(broker: Broker) -> None:
    sub = Subscriber(broker, [f"{PREFIX}/+/events"])
    client = MqttClient(settings(broker, protocol="5")).start()
    try:
        assert client.wait_connected(10)
        client.publish_alert(alert_events(1)[0])
        assert json.loads(sub.get().payload)["type"] == "start"
        assert client.wait_idle(10)
    finally:
        client.stop()
        sub.close()


def test_broker_outage_every_event_arrives_in_order_flagged_replayed(
    broker: Broker, tmp_path: Path
) -> None:
    # A persistent subscriber: it must get what is published while it reconnects too.
    sub = Subscriber(broker, [f"{PREFIX}/+/events"], client_id="scada", persistent=True)
    client = MqttClient(settings(broker, outbox_path=tmp_path / "o.sqlite")).start()
    try:
        assert client.wait_connected(10)
        events = alert_events(6)
        for ev in events[:4]:
            client.publish_alert(ev)
        live = sub.collect(lambda ms: len(ms) >= 4)
        time.sleep(0.3)  # let the subscriber's PUBACKs reach the broker before it stops
        broker.stop()
        wait_until(lambda: not client.connected, what="the client to notice the outage")
        for ev in events[4:]:
            client.publish_alert(ev)  # never blocks; waits on disk
        assert client.stats()["outbox_pending"] == 8
        time.sleep(0.5)  # a few failed reconnects while the broker is down
        broker.start()
        replayed = sub.collect(lambda ms: len(ms) >= 8, timeout=20)
        time.sleep(0.3)
        extra = [sub.get() for _ in range(sub.messages.qsize())]
        assert not extra, f"duplicates: {[(m.payload[:60], m.dup) for m in replayed + extra]}"
        assert not any(p["replayed"] for p in event_msgs(live))
        payloads = event_msgs(replayed)
        assert [(p["id"], p["seq"]) for p in payloads] == [(e.event_id, e.seq) for e in events[4:]]
        assert all(p["replayed"] is True for p in payloads)
        assert [p["time"] for p in payloads] == [e.time for e in events[4:]]  # original times
        assert client.wait_idle(10)
        assert client.stats()["events_replayed_total"] == 8
        assert client.stats()["disconnects_total"] == 1
    finally:
        client.stop()
        sub.close()


def test_events_survive_sigkill_of_the_publisher(broker: Broker, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite"
    sub = Subscriber(broker, [f"{PREFIX}/+/events"], client_id="scada", persistent=True)
    broker.stop()
    # The daemon starts while the broker is down, stores 5 lifecycles, and is SIGKILLed.
    first = start_child(broker, outbox, "queue", 10)
    try:
        assert read_line(first) == "queued 10"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    broker.start()
    second = start_child(broker, outbox, "replay")
    try:
        assert read_line(second) == "replayed 10"
        assert second.wait(20) == 0
    finally:
        second.kill()
        second.wait()
    got = sub.collect(lambda ms: len(ms) >= 10, timeout=20)
    payloads = event_msgs(got)
    expected = alert_events(5)
    assert [(p["id"], p["seq"], p["type"]) for p in payloads] == [
        (e.event_id, e.seq, e.type) for e in expected
    ]
    assert all(p["replayed"] is True and p["threshold"] == 0.33 for p in payloads)
    assert [p["time"] for p in payloads] == [e.time for e in expected]
    sub.close()


def test_retries_forever_when_the_broker_is_down_at_start(tmp_path: Path) -> None:
    require_mosquitto()
    broker = Broker(tmp_path / "b", port=free_port())
    client = MqttClient(settings(broker)).start()  # nothing listens yet
    try:
        wait_until(lambda: client.stats()["connect_failures_total"] >= 3, what="retries")
        assert not client.connected and "cannot connect" in (client.last_error or "")
        client.publish_state(
            "pump1", state_payload("pump1", time=1.0, status=AlertMachine("pump1").status())
        )
        broker.start()
        assert client.wait_connected(10)
        sub = Subscriber(broker, [f"{PREFIX}/pump1/state"])
        assert json.loads(sub.get().payload)["source"] == "pump1"  # cached state went out
        sub.close()
    finally:
        client.stop()
        broker.stop()
        print(broker.log_text())


def test_commands_reach_their_callbacks(broker: Broker) -> None:
    client = MqttClient(settings(broker))
    got: list[Command] = []
    for verb in ("reload", "mute", "unmute"):
        client.on_command(verb, got.append)
    client.on_command("test_alert", lambda c: client.publish_test_alert(c.source or "all"))
    client.on_command("boom", lambda c: 1 / 0)
    client.start()
    sub = Subscriber(broker, [f"{PREFIX}/+/events"])
    try:
        assert client.wait_connected(10)
        time.sleep(0.2)  # the client subscribes right after CONNACK
        pub = sub.client
        pub.publish(f"{PREFIX}/command/reload", b"", qos=1)
        pub.publish(f"{PREFIX}/pump1/command/mute", b'{"duration_s": 3600}', qos=1)
        pub.publish(f"{PREFIX}/pump1/command/mute", b"not json", qos=1)
        pub.publish(f"{PREFIX}/pump1/command/frobnicate", b"", qos=1)
        pub.publish(f"{PREFIX}/pump1/command/boom", b"", qos=1)
        pub.publish(f"{PREFIX}/pump2/command/unmute", b"{}", qos=1)
        pub.publish(f"{PREFIX}/pump2/command/test-alert", b"", qos=1)
        tests = sub.collect(lambda ms: len(ms) >= 2)
        wait_until(lambda: len(got) >= 3, what="commands")
        assert [(c.verb, c.source, c.args) for c in got] == [
            ("reload", None, {}),
            ("mute", "pump1", {"duration_s": 3600}),
            ("unmute", "pump2", {}),
        ]
        assert got[1].topic == f"{PREFIX}/pump1/command/mute"
        payloads = event_msgs(tests)
        assert [(p["kind"], p["type"], p["source"]) for p in payloads] == [
            ("test", "start", "pump2"),
            ("test", "end", "pump2"),
        ]
        s = client.stats()
        assert s["commands_total"] == 7 and s["command_errors_total"] == 3
    finally:
        client.stop()
        sub.close()


def test_publish_test_alert_one_shot_leaves_the_daemon_alone(broker: Broker) -> None:
    daemon = MqttClient(settings(broker)).start()  # same settings, so the same client id
    try:
        assert daemon.wait_connected(10)
        sub = Subscriber(broker, [f"{PREFIX}/#"])
        assert sub.get().payload == b"online"  # retained
        publish_test_alert(settings(broker), "pump1")
        got = sub.collect(lambda ms: len(ms) >= 2)
        time.sleep(0.3)
        while not sub.messages.empty():
            got.append(sub.get())
        assert [m.topic for m in got] == [f"{PREFIX}/pump1/events"] * 2  # availability untouched
        payloads = event_msgs(got)
        assert payloads[0]["id"] == payloads[1]["id"] and payloads[0]["kind"] == "test"
        assert daemon.connected and daemon.stats()["disconnects_total"] == 0  # not kicked off
        sub.close()
    finally:
        daemon.stop()


def test_publish_test_alert_reports_an_unreachable_broker(tmp_path: Path) -> None:
    st = MqttSettings(host="127.0.0.1", port=free_port(), reconnect_min_s=0.1)
    t = time.monotonic()
    with pytest.raises(MqttError, match=r"not acknowledged by 127\.0\.0\.1:\d+ within 1 s"):
        publish_test_alert(st, "pump1", timeout=1.0)
    assert time.monotonic() - t < 10


def test_outbox_survives_client_restart_in_process(broker: Broker, tmp_path: Path) -> None:
    """Stop the client while disconnected with events pending; a new client sends them."""
    path = tmp_path / "o.sqlite"
    sub = Subscriber(broker, [f"{PREFIX}/+/events"], client_id="scada", persistent=True)
    broker.stop()
    first = MqttClient(settings(broker, outbox_path=path)).start()
    for ev in alert_events(2):
        first.publish_alert(ev)
    first.stop(timeout=0.5)
    assert os.path.exists(path)
    broker.start()
    second = MqttClient(settings(broker, outbox_path=path)).start()
    try:
        payloads = event_msgs(sub.collect(lambda ms: len(ms) >= 4, timeout=20))
        assert [p["type"] for p in payloads] == ["start", "end", "start", "end"]
        assert all(p["replayed"] for p in payloads)
    finally:
        second.stop()
        sub.close()
