"""Home Assistant MQTT discovery against a REAL Mosquitto, next to the daemon's real MqttClient.

A test subscriber collects ``homeassistant/#`` and the daemon's topics, parses every config and
checks: one device per source with stable identifiers, unique ids unique, entity classes, every
state/availability/command topic is one the daemon really publishes or listens to, and every
``value_template`` rendered with Jinja2 (HA's template engine) on a real payload gives the
expected state. Republish on HA's birth message and deletion of a removed source.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Subscriber, broker_session

from monitor import __version__
from monitor.alerting.machine import AlertStatus
from monitor.outputs.homeassistant import HomeAssistantDiscovery, discovery_configs
from monitor.outputs.mqtt import COMMAND_VERBS, MqttClient, MqttSettings, Topics
from monitor.outputs.payloads import health_payload, state_payload

jinja2 = pytest.importorskip("jinja2", reason="value_template checks render with Jinja2")

pytestmark = pytest.mark.timeout(60)
PREFIX = "plant/sonitor"
SOURCES = {"pump1": "pump", "fan1": "fan"}


def render(template: str, payload: bytes) -> str:
    """HA renders ``value_template`` with ``value`` (text) and ``value_json`` (parsed JSON);
    a rendered ``None`` is HA's "unknown"."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    text = payload.decode()
    return env.from_string(template).render(value=text, value_json=json.loads(text)).strip()


def status(state: str = "idle", severity: str | None = None, healthy: bool = True) -> AlertStatus:
    return AlertStatus(
        state=state,  # type: ignore[arg-type]
        severity=severity,  # type: ignore[arg-type]
        event_id="pump1-1714564795000" if state == "active" else None,
        muted_until=None,
        healthy=healthy,
        capture_alarm_id=None,
        windows_total=0,
        invalid_scores_total=0,
        events_started_total=0,
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def settings(broker: Broker) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        topic_prefix=PREFIX,
        client_id="sonitor-ha-test",
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        keepalive_s=5,
    )


def configs_of(msgs: list) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in msgs:
        if m.topic.startswith("homeassistant/") and m.topic.endswith("/config"):
            out[m.topic] = json.loads(m.payload) if m.payload else {}
    return out


def test_discovery_on_a_real_broker(broker: Broker) -> None:
    s = settings(broker)
    daemon = MqttClient(s).start()
    ha = HomeAssistantDiscovery(s, "node1", SOURCES, sw_version=__version__).start()
    sub = Subscriber(broker, ["homeassistant/#", f"{PREFIX}/#"])
    try:
        assert daemon.wait_connected(10)
        t = 1714564800.0
        daemon.publish_state(
            "pump1",
            state_payload(
                "pump1", time=t, status=status("active", "warning"), score=0.42,
                normalised_score=1.31, threshold=0.32, level_dbfs=-23.5, model_version="m1",
            ),
        )  # fmt: skip
        daemon.publish_state("fan1", state_payload("fan1", time=t, status=status()))
        daemon.publish_health("pump1", health_payload("pump1", time=t, healthy=True))
        daemon.publish_health(
            "fan1", health_payload("fan1", time=t, healthy=False, status="silence")
        )
        n_entities = 8 * len(SOURCES)

        def complete(got: list) -> bool:
            topics = {m.topic for m in got}
            return (
                len(configs_of(got)) == n_entities
                and {f"{PREFIX}/{s}/{k}" for s in SOURCES for k in ("state", "health")} <= topics
                and f"{PREFIX}/availability" in topics
            )

        got = sub.collect(complete)
        configs = configs_of(got)
        published = {m.topic: m.payload for m in got if m.topic.startswith(PREFIX)}
        assert published[f"{PREFIX}/availability"] == b"online"

        # one device per source, stable identifiers; unique ids unique
        devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
        assert len(devices) == len(SOURCES)
        ids = sorted(tuple(c["device"]["identifiers"]) for c in configs.values())
        assert {i[0] for i in ids} == {"sonitor_node1_pump1", "sonitor_node1_fan1"}
        uids = [c["unique_id"] for c in configs.values()]
        assert len(set(uids)) == len(uids)
        for topic, c in configs.items():
            component, object_id = topic.split("/")[1:3]
            assert (
                object_id == c["unique_id"]
                and topic == f"homeassistant/{component}/{object_id}/config"
            )
            dev = c["device"]
            assert dev["manufacturer"] == "sonitor" and dev["sw_version"] == __version__
            assert dev["model"] in ("Acoustic monitor (pump)", "Acoustic monitor (fan)")
            (av,) = c["availability"]
            assert av == {
                "topic": f"{PREFIX}/availability",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
            if "state_topic" in c:
                assert c["state_topic"] in published, f"{c['state_topic']} is never published"
            if component == "button":
                parsed = Topics(PREFIX).parse_command(c["command_topic"])
                assert parsed is not None and parsed[1] in COMMAND_VERBS
                assert json.loads(c["payload_press"]) == {}

        def entity(source: str, key: str) -> dict[str, Any]:
            (c,) = [
                c for c in configs.values() if c["unique_id"] == f"sonitor_node1_{source}_{key}"
            ]
            return c

        def value(source: str, key: str) -> str:
            c = entity(source, key)
            return render(c["value_template"], published[c["state_topic"]])

        component = {c["unique_id"]: t.split("/")[1] for t, c in configs.items()}
        kinds = {key: component[f"sonitor_node1_pump1_{key}"] for key in (
            "anomaly_score", "anomaly", "alarm_state", "capture_problem", "input_level", "mute",
            "unmute", "test_alert",
        )}  # fmt: skip
        assert kinds == {
            "anomaly_score": "sensor", "anomaly": "binary_sensor", "alarm_state": "sensor",
            "capture_problem": "binary_sensor", "input_level": "sensor", "mute": "button",
            "unmute": "button", "test_alert": "button",
        }  # fmt: skip
        score = entity("pump1", "anomaly_score")
        assert "device_class" not in score and score["state_class"] == "measurement"
        assert float(value("pump1", "anomaly_score")) == pytest.approx(1.31)
        assert value("fan1", "anomaly_score") == "None"  # null before the first window: unknown
        alarm = entity("pump1", "anomaly")
        assert alarm["device_class"] == "problem"
        assert (value("pump1", "anomaly"), value("fan1", "anomaly")) == ("ON", "OFF")
        enum = entity("pump1", "alarm_state")
        assert enum["device_class"] == "enum" and value("pump1", "alarm_state") in enum["options"]
        assert value("fan1", "alarm_state") == "idle"
        cap = entity("fan1", "capture_problem")
        assert cap["device_class"] == "problem" and cap["state_topic"].endswith("/fan1/health")
        assert (value("fan1", "capture_problem"), value("pump1", "capture_problem")) == (
            "ON",
            "OFF",
        )
        level = entity("pump1", "input_level")
        assert level["unit_of_measurement"] == "dBFS" and "device_class" not in level
        assert float(value("pump1", "input_level")) == pytest.approx(-23.5)

        # Home Assistant restarts: its birth message makes us publish every config again
        before = ha.published_total
        sub.client.publish("homeassistant/status", "online", qos=1)
        again = sub.collect(lambda g: len(configs_of(g)) == n_entities)
        assert configs_of(again) == configs and ha.published_total == before + n_entities

        # a reload removed fan1: its configs are deleted (empty retained payload)
        ha.set_sources({"pump1": "pump"})
        gone = sub.collect(lambda g: sum(1 for c in configs_of(g).values() if not c) == 8)
        deleted = {t for t, c in configs_of(gone).items() if not c}
        assert deleted == {t for t, c in configs.items() if c["device"]["name"] == "fan1"}
    finally:
        sub.close()
        ha.stop()
        daemon.stop()
    # retained: a late subscriber (HA starting after us) finds exactly the live configs
    late = Subscriber(broker, ["homeassistant/#"])
    try:
        got = late.collect(lambda g: len(configs_of(g)) == 8)
        time.sleep(0.3)
        got += late.collect(lambda g: True, timeout=1)
        assert {c["device"]["name"] for c in configs_of(got).values()} == {"pump1"}
    finally:
        late.close()


def test_configs_are_deterministic_and_follow_the_prefix() -> None:
    a = discovery_configs(Topics("x/y"), "n", SOURCES, discovery_prefix="ha", sw_version="1")
    b = discovery_configs(Topics("x/y"), "n", dict(reversed(SOURCES.items())), sw_version="1")
    assert set(a) == {t.replace("homeassistant/", "ha/", 1) for t in b}
    assert all(t.startswith("ha/") for t in a)
    assert {c["availability"][0]["topic"] for c in a.values()} == {"x/y/availability"}


@pytest.mark.timeout(120)
def test_daemon_publishes_discovery_and_deletes_a_removed_source(
    broker: Broker, tmp_path: Path
) -> None:
    """`sonitor run` with homeassistant enabled: configs for each source, the templates read the
    daemon's own retained state (an anomaly shows ON, the score equals normalised_score), and a
    reload (SIGHUP) that removes a source deletes its entities."""
    import signal

    from daemon_process import DaemonProcess, machine_audio, with_anomaly, write_config, write_wav
    from package_fixtures import make_tiny_package

    package = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    wav = write_wav(tmp_path / "fan.wav", with_anomaly("fan", 8, 5, 12))
    quiet = write_wav(tmp_path / "fan2.wav", machine_audio("fan", 6, seed=3))
    fan1 = {"name": "fan1", "type": "file", "machine": "fan", "path": str(wav), "realtime": False}
    fan2 = {"name": "fan2", "type": "file", "machine": "fan", "path": str(quiet)}
    sections: dict[str, Any] = {
        "topic_prefix": PREFIX,
        "homeassistant": {"enabled": True},
        "health": {"state_interval_seconds": 0},
    }
    cfg = write_config(tmp_path / "cfg.yaml", package, [fan1, fan2], broker=broker, **sections)
    sub = Subscriber(broker, ["homeassistant/#", f"{PREFIX}/#"])
    daemon = DaemonProcess(cfg)
    state_topic = f"{PREFIX}/fan1/state"
    try:

        def active_state(got: list) -> bool:
            return any(
                m.topic == state_topic and json.loads(m.payload)["alarm"] == "active" for m in got
            )

        got = sub.collect(lambda g: len(configs_of(g)) == 16 and active_state(g), timeout=60)
        configs = configs_of(got)
        assert {c["device"]["identifiers"][0] for c in configs.values()} == {
            "sonitor_e2e_fan1",
            "sonitor_e2e_fan2",
        }
        by_key = {
            c["unique_id"].removeprefix("sonitor_e2e_fan1_"): c
            for c in configs.values()
            if c["device"]["name"] == "fan1"
        }
        active = next(
            m.payload
            for m in got
            if m.topic == state_topic and json.loads(m.payload)["alarm"] == "active"
        )
        assert render(by_key["anomaly"]["value_template"], active) == "ON"
        assert render(by_key["alarm_state"]["value_template"], active) == "active"
        norm = json.loads(active)["normalised_score"]
        assert float(render(by_key["anomaly_score"]["value_template"], active)) == norm

        write_config(cfg, package, [fan1], broker=broker, **sections)  # fan2 removed
        daemon.signal(signal.SIGHUP)
        got = sub.collect(lambda g: sum(1 for c in configs_of(g).values() if not c) == 8)
        deleted = {t for t, c in configs_of(got).items() if not c}
        assert deleted == {t for t, c in configs.items() if c["device"]["name"] == "fan2"}
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        sub.close()
