"""deploy/mosquitto: the example broker config, password file and ACL, run for real.

A throw-away CA and server certificate (tests/broker.py), a password file written with
`mosquitto_passwd -b` as the README says, the example config with its paths and port moved into
tmp, and a real `mosquitto -c`: TLS with the right password works (and `sonitor test-alert` with a
daemon config gets through), a wrong password and plain TCP are refused, and the ACL keeps every
daemon inside its topic prefix and SCADA to reading and commanding.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from broker import (
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    TlsFiles,
    free_port,
    make_tls_files,
    require_mosquitto,
)

pytestmark = pytest.mark.timeout(60)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
USERS = {"ipc1": "Ipc1-Secret-4d2f", "ipc2": "Ipc2-Secret-77c1", "scada": "Scada-Secret-0b9e"}
HOST = "127.0.0.1"


class ExampleBroker:
    """deploy/mosquitto/mosquitto.conf + acl with /etc, /var paths and port 8883 moved to tmp."""

    def __init__(
        self,
        root: Path,
        users: dict[str, str] = USERS,
        extra_acl: str = "",
        extra_conf: Callable[[ExampleBroker], str] | None = None,
    ) -> None:
        self.root = root
        self.port = free_port()
        etc = root / "etc"
        self.tls: TlsFiles = make_tls_files(etc / "certs")  # ca.crt, server.crt, server.key
        passwd = etc / "passwd"
        for i, (user, password) in enumerate(users.items()):
            create = ["-c"] if i == 0 else []  # as in README.md: -c creates the file
            subprocess.run(
                [MOSQUITTO_PASSWD, *create, "-b", str(passwd), user, password],
                check=True,
                capture_output=True,
            )
        (etc / "acl").write_text((DEPLOY / "acl").read_text() + extra_acl)
        self.log = root / "mosquitto.log"
        self.conf = root / "mosquitto.conf"
        text = render(DEPLOY / "mosquitto.conf", root, self.port, self.log)
        self.conf.write_text(text + (extra_conf(self) if extra_conf else ""))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ExampleBroker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"mosquitto refused the example config:\n{err}{self.logs()}")
            if "Opening ipv4 listen socket" in self.logs() and _port_open(self.port):
                return self
            time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def render(conf: Path, root: Path, port: int, log: Path) -> str:
    """The example with tmp paths and a free loopback port; every replaced line must exist, so a
    changed example breaks this test instead of silently testing something else."""
    text = conf.read_text()
    swaps = {
        "listener 8883\n": f"listener {port} {HOST}\n",
        "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {log}",
        "persistence_location /var/lib/mosquitto/": f"persistence_location {root}/",
        "/etc/mosquitto/": f"{root}/etc/",
    }
    for old, new in swaps.items():
        assert old in text, f"{conf} no longer has {old!r}"
        text = text.replace(old, new)
    if os.geteuid() == 0:
        text += "user root\n"  # as root mosquitto would drop to `mosquitto`, who cannot read tmp
    return text


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleBroker]:
    require_mosquitto()
    b = ExampleBroker(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield b
    finally:
        b.stop()
        print(f"---- mosquitto log ----\n{b.logs()}")


class Client:
    """A paho client that records its CONNACK and the messages of its subscriptions."""

    def __init__(
        self,
        broker: ExampleBroker,
        user: str | None,
        password: str | None,
        *,
        tls: bool = True,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311,
        client_id: str = "",
        clean_session: bool = True,
    ) -> None:
        self.connack: queue.Queue[mqtt.ReasonCode] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=clean_session,
        )
        if tls:
            self.c.tls_set(ca_certs=str(broker.tls.ca))
        if user:
            self.c.username_pw_set(user, password)
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(mid)
        self.c.on_disconnect = lambda *a: self.disconnected.set()
        self.c.reconnect_delay_set(30, 30)  # one attempt per test is enough
        self.c.connect_async(HOST, broker.port, keepalive=10)
        self.c.loop_start()

    def wait_connack(self, timeout: float = 5.0) -> mqtt.ReasonCode | None:
        try:
            return self.connack.get(timeout=timeout)
        except queue.Empty:
            return None

    def subscribe(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)
        self.subacks.get(timeout=5)

    def publish(self, topic: str, payload: str) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def received(
        self, timeout: float, until: Callable[[list[tuple[str, str]]], bool] | None = None
    ) -> list[tuple[str, str]]:
        """Messages until `until(all so far)` holds (or the timeout: then what came)."""
        out: list[tuple[str, str]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (until and until(out)):
            try:
                m = self.messages.get(timeout=max(0.01, min(0.1, deadline - time.monotonic())))
            except queue.Empty:
                continue
            out.append((m.topic, m.payload.decode()))
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def connected(broker: ExampleBroker, user: str, password: str, **kw) -> Client:  # noqa: ANN003
    client = Client(broker, user, password, **kw)
    rc = client.wait_connack()
    assert rc is not None and not rc.is_failure, f"{user}: {rc}\n{broker.logs()[-2000:]}"
    return client


def test_tls_client_with_the_right_password_publishes_and_scada_reads(
    broker: ExampleBroker,
) -> None:
    scada = connected(broker, "scada", USERS["scada"])
    ipc1 = connected(broker, "ipc1", USERS["ipc1"])
    try:
        scada.subscribe("sonitor/#")
        ipc1.publish("sonitor/ipc1/pump1/events", '{"v":1}')
        want = ("sonitor/ipc1/pump1/events", '{"v":1}')
        assert want in scada.received(5, until=lambda got: want in got)
    finally:
        ipc1.close()
        scada.close()


def test_wrong_password_and_unknown_user_are_refused(broker: ExampleBroker) -> None:
    for user, password in (("ipc1", "not-the-password"), ("nobody", "x"), (None, None)):
        client = Client(broker, user, password)
        try:
            rc = client.wait_connack()
            assert rc is not None and rc.is_failure, (user, rc)
        finally:
            client.close()


def test_plain_tcp_to_the_tls_port_gets_no_mqtt_session(broker: ExampleBroker) -> None:
    client = Client(broker, "ipc1", USERS["ipc1"], tls=False)
    try:
        # the TLS listener drops a client that speaks plain MQTT, never answering its CONNECT
        assert client.disconnected.wait(5), "the broker kept a plain-TCP connection open"
        assert client.connack.empty()
    finally:
        client.close()


def test_acl_keeps_each_daemon_in_its_prefix_and_scada_to_commands(
    broker: ExampleBroker,
) -> None:
    ipc1 = connected(broker, "ipc1", USERS["ipc1"])
    ipc2 = connected(broker, "ipc2", USERS["ipc2"])
    scada = connected(broker, "scada", USERS["scada"])
    try:
        ipc1.subscribe("sonitor/ipc1/#")
        ipc2.subscribe("sonitor/ipc2/#")
        scada.subscribe("sonitor/#")
        # ipc1 writes outside its prefix (as ipc2, and outside sonitor/), then inside it; one
        # connection keeps order, so once the allowed message arrives the others were handled
        ipc1.publish("sonitor/ipc2/pump1/events", "forged by ipc1")
        ipc1.publish("plant/anything", "outside sonitor/")
        ipc1.publish("sonitor/ipc1/pump1/state", "own")
        # scada may command but not fake an event
        scada.publish("sonitor/ipc1/pump1/events", "forged by scada")
        scada.publish("sonitor/ipc1/pump1/command/mute", '{"duration_s": 60}')
        scada.publish("sonitor/ipc1/command/reload", "{}")
        mute = ("sonitor/ipc1/pump1/command/mute", '{"duration_s": 60}')
        reload_ = ("sonitor/ipc1/command/reload", "{}")
        got1 = ipc1.received(5, until=lambda got: mute in got and reload_ in got)
        got_scada = scada.received(5, until=lambda got: ("sonitor/ipc1/pump1/state", "own") in got)
        got2 = ipc2.received(0.3)
        assert mute in got1 and reload_ in got1, got1
        assert ("sonitor/ipc1/pump1/state", "own") in got_scada, got_scada
        assert all(payload != "forged by ipc1" for _, payload in got2 + got_scada), got2
        assert all(payload != "forged by scada" for _, payload in got1), got1
        # ipc1 cannot read ipc2's topics either: a second ipc1 session subscribes to them and
        # to its own marker; ipc2's message is acknowledged before the marker is sent
        spy = connected(broker, "ipc1", USERS["ipc1"])
        try:
            spy.subscribe("sonitor/ipc2/#")
            spy.subscribe("sonitor/ipc1/marker")
            ipc2.publish("sonitor/ipc2/pump9/state", "private")
            spy.publish("sonitor/ipc1/marker", "m")
            got = spy.received(5, until=lambda got: ("sonitor/ipc1/marker", "m") in got)
            assert got == [("sonitor/ipc1/marker", "m")], got
        finally:
            spy.close()
    finally:
        for c in (ipc1, ipc2, scada):
            c.close()


def test_sonitor_test_alert_gets_through_with_a_daemon_config(
    broker: ExampleBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon's own MQTT keys (TLS CA, user name, password file) fit this broker."""
    from monitor.cli.sonitor import main

    secret = tmp_path / "mqtt-password"
    secret.write_text(USERS["ipc1"] + "\n")
    secret.chmod(0o600)
    cfg = {
        "node": {"name": "ipc1"},
        "model": {"package": str(tmp_path / "package")},
        "paths": {"state_dir": str(tmp_path / "state")},
        "sources": [{"type": "device", "name": "pump1", "machine": "pump"}],
        "mqtt": {
            "enabled": True,
            "host": HOST,
            "port": broker.port,
            "username": "ipc1",
            "password_file": str(secret),
            "tls": {"enabled": True, "ca_file": str(broker.tls.ca)},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    scada = connected(broker, "scada", USERS["scada"])
    try:
        scada.subscribe("sonitor/ipc1/#")
        assert main(["test-alert", "--config", str(path), "--timeout", "10"]) == 0
        got = scada.received(
            5, until=lambda got: sum(t == "sonitor/ipc1/pump1/events" for t, _ in got) >= 2
        )
        events = [p for t, p in got if t == "sonitor/ipc1/pump1/events"]
        assert len(events) == 2 and '"kind":"test"' in events[0].replace(" ", ""), got
    finally:
        scada.close()
    assert "acknowledged" in capsys.readouterr().out


# ------------------------------------------------------------------ the site -> central bridge

BRIDGE_USER, BRIDGE_PASSWORD = "bridge-site1", "Bridge-Secret-93aa"


def render_bridge(conf: Path, central: ExampleBroker) -> str:
    """deploy/mosquitto/bridge.conf pointed at the central test broker."""
    text = conf.read_text()
    swaps = {
        "address central.example.com:8883": f"address {HOST}:{central.port}",
        "bridge_cafile /etc/mosquitto/certs/central-ca.crt": f"bridge_cafile {central.tls.ca}",
        "remote_password CHANGE-ME": f"remote_password {BRIDGE_PASSWORD}",
        "restart_timeout 5 60": "restart_timeout 1 2",  # reconnect quickly in the test
    }
    for old, new in swaps.items():
        assert old in text, f"{conf} no longer has {old!r}"
        text = text.replace(old, new)
    return "\n" + text


@pytest.mark.timeout(90)
def test_site_broker_bridges_events_out_and_commands_in_across_an_outage(
    tmp_path: Path,
) -> None:
    require_mosquitto()
    central = ExampleBroker(
        tmp_path / "central",
        users={"scada": USERS["scada"], BRIDGE_USER: BRIDGE_PASSWORD},
        extra_acl=f"\nuser {BRIDGE_USER}\ntopic readwrite sonitor/#\n",  # as docs/scale-out.md
    ).start()
    site = ExampleBroker(
        tmp_path / "site", extra_conf=lambda _: render_bridge(DEPLOY / "bridge.conf", central)
    )
    site.start()
    clients: list[Client] = []
    try:
        deadline = time.monotonic() + 15
        while f"{BRIDGE_USER}" not in central.logs() or "as bridge-site1" not in central.logs():
            assert time.monotonic() < deadline, f"no bridge:\n{site.logs()}\n{central.logs()}"
            time.sleep(0.1)
        scada = Client(central, "scada", USERS["scada"], client_id="scada-1", clean_session=False)
        assert not scada.wait_connack().is_failure
        ipc1 = connected(site, "ipc1", USERS["ipc1"])
        clients += [scada, ipc1]
        scada.subscribe("sonitor/#")
        ipc1.subscribe("sonitor/ipc1/#")
        # out: events and state reach SCADA on the central broker
        event = ("sonitor/ipc1/pump1/events", '{"seq":0}')
        ipc1.publish(*event)
        assert event in scada.received(10, until=lambda got: event in got)
        # in: a command from SCADA reaches the daemon on site
        mute = ("sonitor/ipc1/pump1/command/mute", "{}")
        scada.publish(*mute)
        assert mute in ipc1.received(10, until=lambda got: mute in got)
        # outage of the central broker: the event waits at the site and arrives afterwards
        scada.close()
        clients.remove(scada)
        central.stop()
        late = ("sonitor/ipc1/pump1/events", '{"seq":1}')
        ipc1.publish(*late)
        central.start()
        scada = Client(central, "scada", USERS["scada"], client_id="scada-1", clean_session=False)
        clients.append(scada)
        assert not scada.wait_connack().is_failure
        got = scada.received(20, until=lambda got: late in got)
        assert late in got, f"{got}\n{site.logs()[-3000:]}"
    finally:
        for c in clients:
            c.close()
        site.stop()
        central.stop()
