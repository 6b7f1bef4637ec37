"""Home Assistant MQTT discovery: one HA device per source, built on the v1 topics.

Why configs only: the entities read the retained ``<prefix>/<source>/state`` and ``/health``
JSON the daemon already publishes (docs/mqtt.md) through ``value_template``s, so Home Assistant
needs no second copy of the data and the payload contract stays the one source of truth.

Configs are retained at ``<discovery_prefix>/<component>/<object_id>/config`` and published on
every connect and whenever Home Assistant announces itself (``<discovery_prefix>/status`` =
``online``, its birth message), so a broker without persistence or a fresh HA still finds them.
A source removed by a reload gets an empty retained config, which deletes its entities.
The integration has its own small paho session (client id ``<client_id>-ha``): the daemon's
main session stays exactly as documented.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt

from monitor.outputs.mqtt.guard import CallbackGuard
from monitor.outputs.mqtt.settings import MqttSettings, Topics, paho_client
from monitor.outputs.payloads import AVAILABILITY_OFFLINE, AVAILABILITY_ONLINE
from monitor.outputs.sink import Sink

log = logging.getLogger(__name__)

ALARM_STATES = ("idle", "active", "cooldown", "muted", "unhealthy")


def discovery_configs(
    topics: Topics,
    node: str,
    sources: Mapping[str, str],
    *,
    discovery_prefix: str = "homeassistant",
    sw_version: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config payload for every entity of every source.

    ``sources`` maps a source name to its machine (the HA device model). Identifiers and
    unique ids are ``sonitor_<node>_<source>[_<entity>]``: stable across restarts and reloads,
    so HA keeps the entity history and any renaming the user did.
    """
    availability = [
        {
            "topic": topics.availability,
            "payload_available": AVAILABILITY_ONLINE,
            "payload_not_available": AVAILABILITY_OFFLINE,
        }
    ]
    origin = {"name": "sonitor", "sw_version": sw_version} if sw_version else {"name": "sonitor"}
    out: dict[str, dict[str, Any]] = {}
    for source, machine in sources.items():
        base = f"sonitor_{node}_{source}"
        device: dict[str, Any] = {
            "identifiers": [base],
            "name": source,
            "manufacturer": "sonitor",
            "model": f"Acoustic monitor ({machine})",
        }
        if sw_version:
            device["sw_version"] = sw_version
        state, health = topics.state(source), topics.health(source)
        entities: list[tuple[str, str, dict[str, Any]]] = [
            (
                "sensor",
                "anomaly_score",
                {
                    "name": "Anomaly score",
                    "state_topic": state,
                    "value_template": "{{ value_json.normalised_score }}",
                    "state_class": "measurement",
                    "suggested_display_precision": 2,
                    "icon": "mdi:waveform",
                },
            ),
            (
                "binary_sensor",
                "anomaly",
                {
                    "name": "Anomaly",
                    "device_class": "problem",
                    "state_topic": state,
                    "value_template": "{{ 'ON' if value_json.alarm == 'active' else 'OFF' }}",
                },
            ),
            (
                "sensor",
                "alarm_state",
                {
                    "name": "Alarm state",
                    "device_class": "enum",
                    "options": list(ALARM_STATES),
                    "state_topic": state,
                    "value_template": "{{ value_json.alarm }}",
                },
            ),
            (
                "binary_sensor",
                "capture_problem",
                {
                    "name": "Capture problem",
                    "device_class": "problem",
                    "entity_category": "diagnostic",
                    "state_topic": health,
                    "value_template": "{{ 'OFF' if value_json.healthy else 'ON' }}",
                },
            ),
            (
                "sensor",
                "input_level",
                {
                    # dBFS is relative to digital full scale, not a sound pressure level:
                    # no device_class (sound_pressure means dB SPL).
                    "name": "Input level",
                    "unit_of_measurement": "dBFS",
                    "state_class": "measurement",
                    "entity_category": "diagnostic",
                    "state_topic": state,
                    "value_template": "{{ value_json.level_dbfs }}",
                    "suggested_display_precision": 1,
                },
            ),
        ]
        for verb, label in (("mute", "Mute"), ("unmute", "Unmute"), ("test_alert", "Test alert")):
            entities.append(
                (
                    "button",
                    verb,
                    {
                        "name": label,
                        "command_topic": topics.command(verb, source),
                        "payload_press": "{}",
                        "entity_category": "config",
                    },
                )
            )
        for component, key, config in entities:
            object_id = f"{base}_{key}"
            payload = {
                **config,
                "unique_id": object_id,
                "availability": availability,
                "device": device,
                "origin": origin,
            }
            out[f"{discovery_prefix}/{component}/{object_id}/config"] = payload
    return out


class HomeAssistantDiscovery(Sink):
    """Publishes the discovery configs (retained) on every connect and on HA's birth message.

    ``set_sources`` (after a reload) publishes the new configs and deletes removed ones.
    paho reconnects by itself (no last will here: availability is the main session's).
    As the daemon's output it needs no per-window updates: the entities read the main session's
    state and health topics; only a change of sources (`on_sources`) concerns it.
    """

    def __init__(
        self,
        settings: MqttSettings,
        node: str,
        sources: Mapping[str, str],
        *,
        discovery_prefix: str = "homeassistant",
        sw_version: str | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.node = node
        self.discovery_prefix = discovery_prefix
        self.sw_version = sw_version
        self.status_topic = f"{discovery_prefix}/status"
        self._lock = threading.Lock()
        self._configs = self._build(sources)
        self.published_total = 0
        self._client = paho_client(settings, f"{settings.client_id}-ha")
        self._client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
        self._guard = CallbackGuard(log, "Home Assistant discovery")  # never end paho's thread
        self._client.on_connect = self._guard.wrap("on_connect", self._on_connect)
        self._client.on_message = self._guard.wrap("on_message", self._on_message)
        self._started = False

    def _build(self, sources: Mapping[str, str]) -> dict[str, bytes]:
        configs = discovery_configs(
            self.topics,
            self.node,
            sources,
            discovery_prefix=self.discovery_prefix,
            sw_version=self.sw_version,
        )
        return {t: json.dumps(p, separators=(",", ":")).encode() for t, p in configs.items()}

    def start(self) -> HomeAssistantDiscovery:
        s = self.settings
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()
        self._started = True
        return self

    def stop(self, timeout: float = 0.0) -> None:
        """Disconnect; the configs stay (HA shows the entities unavailable via availability).
        Nothing is pending here, so there is nothing to wait ``timeout`` for."""
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False

    def set_sources(self, sources: Mapping[str, str]) -> None:
        """New source set (a reload): publish every config, delete those of removed sources."""
        new = self._build(sources)
        with self._lock:
            removed = sorted(set(self._configs) - set(new))
            self._configs = new
        for topic in removed:
            self._client.publish(topic, b"", qos=1, retain=True)  # empty retained = delete
        self.publish_all()

    def on_sources(self, machines: Mapping[str, str]) -> None:
        self.set_sources(machines)

    @property
    def callback_errors(self) -> int:
        """Exceptions caught in this client's paho callbacks (logged, ignored)."""
        return self._guard.errors

    def publish_all(self) -> None:
        with self._lock:
            items = sorted(self._configs.items())
        for topic, payload in items:
            self._client.publish(topic, payload, qos=1, retain=True)
        self.published_total += len(items)

    # paho thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.warning("Home Assistant discovery: broker refused the connection: %s", reason_code)
            return
        client.subscribe(self.status_topic, qos=1)
        self.publish_all()
        log.info("Home Assistant discovery published (%d entities)", len(self._configs))

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        if message.topic == self.status_topic and message.payload.strip() == b"online":
            self.publish_all()  # HA (re)started: it may have lost non-persisted configs
