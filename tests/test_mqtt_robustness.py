"""Hostile MQTT input against a REAL Mosquitto: no message may stop the client's network thread,
and when that thread ends anyway, health says so and the client reconnects.

Reproductions: ``"[" * 5000`` on a command topic made ``json.loads`` raise RecursionError, which
ended paho's thread silently (commands ignored, acks unread, yet "connected").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Subscriber, broker_session

from monitor.outputs.mqtt import Command, MqttClient, MqttSettings
from monitor.outputs.mqtt.guard import CallbackGuard

pytestmark = pytest.mark.timeout(90)
PREFIX = "plant/sonitor"
NESTED = b"[" * 5000


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def settings(broker: Broker) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        topic_prefix=PREFIX,
        client_id="sonitor-robust",
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        keepalive_s=5,
    )


class Commands:
    """The commands a client handed over, with a wait."""

    def __init__(self) -> None:
        self.got: list[Command] = []
        self._cond = threading.Condition()

    def __call__(self, command: Command) -> None:
        with self._cond:
            self.got.append(command)
            self._cond.notify_all()

    def wait_for(self, pred: Any, timeout: float = 10.0) -> Command:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(pred(c) for c in self.got), timeout)
        assert ok, f"no matching command within {timeout} s; got {self.got}"
        return next(c for c in self.got if pred(c))


def wait_until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def subscribed(pub: Subscriber, commands: Commands) -> None:
    """Wait until the client's command subscription is in place (probe until one arrives)."""
    for _ in range(50):
        pub.client.publish(f"{PREFIX}/command/reload", b"", qos=1).wait_for_publish(5)
        try:
            commands.wait_for(lambda c: c.verb == "reload", timeout=0.2)
            return
        except AssertionError:
            continue
    raise AssertionError("the client never subscribed to its command topics")


def test_deeply_nested_command_is_ignored_and_the_client_carries_on(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    commands = Commands()
    client = MqttClient(settings(broker))
    for verb in ("reload", "mute"):
        client.on_command(verb, commands)
    client.start()
    pub = Subscriber(broker, [f"{PREFIX}/+/events"])
    try:
        assert client.wait_connected(10)
        subscribed(pub, commands)
        errors_before = client.stats()["command_errors_total"]
        pub.client.publish(f"{PREFIX}/command/mute", NESTED, qos=1).wait_for_publish(5)
        pub.client.publish(f"{PREFIX}/pump1/command/mute", b'{"duration_s": 60}', qos=1)
        mute = commands.wait_for(lambda c: c.verb == "mute")
        assert (mute.source, mute.args) == ("pump1", {"duration_s": 60})
        assert [c.verb for c in commands.got].count("mute") == 1  # the nested one was dropped
        stats = client.stats()
        assert stats["command_errors_total"] == errors_before + 1
        assert stats["connected"] and stats["loop_restarts_total"] == 0
        assert stats["callback_errors_total"] == 0  # handled as a bad command, not a crash
        assert "nested too deeply" in caplog.text
        # acknowledgements are still read: an event leaves the outbox
        client.publish_event("pump1", {"v": 1, "kind": "test", "type": "start"})
        assert client.wait_idle(10), "the broker's ack was never read"
        pub.collect(lambda got: len(got) >= 1)
    finally:
        client.stop()
        pub.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # on purpose
def test_a_dead_network_thread_is_reported_and_replaced(broker: Broker) -> None:
    """A handler that raises SystemExit (a BaseException: no guard catches it) ends paho's
    network thread; the client must say it is down, count it, reconnect and work again."""
    commands = Commands()
    changes: list[bool] = []
    client = MqttClient(settings(broker), on_connection_change=changes.append)
    client.on_command("reload", commands)
    client.on_command("mute", commands)

    def fatal(command: Command) -> None:
        raise SystemExit("a handler that exits")

    client.on_command("unmute", fatal)
    client.start()
    pub = Subscriber(broker, [f"{PREFIX}/+/events"])
    try:
        assert client.wait_connected(10)
        subscribed(pub, commands)
        pub.client.publish(f"{PREFIX}/command/unmute", b"", qos=1).wait_for_publish(5)
        commands.got.clear()
        subscribed(pub, commands)  # a command works again: a new network thread reads it
        # the new session announces itself right after it subscribed
        wait_until(lambda: changes == [True, False, True], "health (mqtt_connected) to follow")
        stats = client.stats()
        assert stats["loop_restarts_total"] == 1
        assert stats["connects_total"] == 2
        assert stats["connected"] and client.last_error is None
        pub.client.publish(f"{PREFIX}/pump1/command/mute", b"{}", qos=1)
        commands.wait_for(lambda c: c.verb == "mute")
        client.publish_event("pump1", {"v": 1, "kind": "test", "type": "start"})
        assert client.wait_idle(10)
    finally:
        client.stop()
        pub.close()


def test_callback_guard_counts_logs_once_per_kind_and_swallows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = CallbackGuard(logging.getLogger("test.guard"), "MQTT")
    calls: list[int] = []

    def on_message(n: int) -> None:
        calls.append(n)
        if n % 2:
            raise ValueError(f"bad {n}")
        raise RecursionError("deep")

    wrapped = guard.wrap("on_message", on_message)
    with caplog.at_level(logging.DEBUG, logger="test.guard"):
        for n in range(6):
            wrapped(n)
    assert calls == list(range(6)) and guard.errors == 6
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, "one ERROR (with traceback) per callback and exception type"
    assert all(r.exc_info for r in errors)
    assert {r.getMessage().split("(")[1].split(";")[0] for r in errors} == {
        "ValueError",
        "RecursionError",
    }
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 4


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a process, KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


@pytest.mark.timeout(180)
def test_daemon_ignores_hostile_command_and_ncmd_and_stays_healthy(
    broker: Broker, tmp_path: Path
) -> None:
    """`sonitor run` with MQTT and Sparkplug: ``"[" * 5000`` on a command topic and the 8-byte
    NCMD are counted and ignored; a valid mute and a rebirth NCMD still work, /healthz says the
    broker is fine (and is right), and the NCMD did not raise the daemon's peak RSS."""
    import paho.mqtt.publish as publish
    from daemon_process import DaemonProcess, machine_audio, write_config, write_wav
    from package_fixtures import make_tiny_package

    from monitor.outputs.sparkplug import REBIRTH
    from monitor.outputs.sparkplug_pb import DataType, Metric, encode_payload

    package = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    wav = write_wav(tmp_path / "fan.wav", machine_audio("fan", 6, seed=3))
    source = {"name": "fan1", "type": "file", "machine": "fan", "path": str(wav),
              "realtime": True, "loop": True}  # fmt: skip
    spb = {"enabled": True, "group_id": "g"}
    cfg = write_config(
        tmp_path / "cfg.yaml", package, [source], broker=broker, topic_prefix=PREFIX, sparkplug=spb
    )
    ncmd = "spBv1.0/g/NCMD/e2e"  # edge node id = node.name
    live = Subscriber(broker, [f"{PREFIX}/#", "spBv1.0/g/NBIRTH/#"])
    daemon = DaemonProcess(cfg)

    def send(topic: str, payload: bytes) -> None:
        publish.single(topic, payload, qos=1, hostname=broker.host, port=broker.port)

    def births(got: list) -> int:
        return sum("/NBIRTH/" in m.topic for m in got)

    def muted(got: list) -> bool:
        return any(m.topic == f"{PREFIX}/fan1/state" and json.loads(m.payload)["alarm"] == "muted"
                   for m in got)  # fmt: skip

    try:
        # `online` follows the command subscription, NBIRTH the NCMD one (same connection)
        live.collect(lambda g: any(m.payload == b"online" for m in g) and births(g) == 1, 60)
        daemon.wait_until(  # warmed up: the inference buffers exist before the baseline
            lambda: (daemon.metric("sonitor_windows_total", source="fan1") or 0) >= 6,
            60,
            "windows scored",
        )
        peak = peak_rss_kib(daemon.proc.pid)
        send(f"{PREFIX}/command/mute", NESTED)
        send(ncmd, bytes.fromhex("12 06 08 80 80 80 80 08"))
        send(f"{PREFIX}/fan1/command/mute", b'{"duration_s": 600}')
        live.collect(muted, 30)
        send(ncmd, encode_payload([Metric(name=REBIRTH, datatype=DataType.BOOLEAN, value=True)]))
        live.collect(lambda g: births(g) >= 1, 30)  # a fresh NBIRTH: NCMD still answered
        daemon.wait_until(
            lambda: (
                daemon.metric("sonitor_mqtt_errors_total", kind="command") == 1
                and daemon.metric("sonitor_mqtt_errors_total", kind="sparkplug_ncmd") == 1
            ),
            20,
            "the hostile messages counted",
        )
        _, health = daemon.healthz()
        assert health["checks"]["mqtt"]["ok"] is True
        assert daemon.metric("sonitor_mqtt_connected") == 1
        assert daemon.metric("sonitor_mqtt_errors_total", kind="network_thread") == 0
        assert daemon.metric("sonitor_mqtt_errors_total", kind="callback") == 0
        grown = peak_rss_kib(daemon.proc.pid) - peak
        print(f"daemon peak RSS grew by {grown} KiB")
        assert grown < 50 * 1024, f"peak RSS grew by {grown} KiB"
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        live.close()
