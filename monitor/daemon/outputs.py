"""The daemon's outputs as the config asks for them: MQTT, Home Assistant discovery, the
Sparkplug B node and Prometheus as sinks behind one `Dispatcher`, the sinks a caller adds, and
the clip writer the channels record through.

Why apart from the daemon: a reload restarts only what its config changed (a new broker, other
integration settings, other clip settings) and tells the rest about the new sources; that
bookkeeping stays in one place.

Threads: built on the main thread before the inference thread starts and stopped on it after
that thread ended; `adopt` and the clip-writer swap run on the inference thread, which is the
only one that dispatches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from monitor import __version__
from monitor.alerting.clips import ClipWriter
from monitor.alerting.machine import AlertStatus
from monitor.config import Config
from monitor.daemon.wiring import (
    clip_policy,
    integrations_key,
    mqtt_settings,
    source_machines,
    sparkplug_settings,
)
from monitor.outputs.open_alerts import end_open_alerts
from monitor.outputs.prometheus import MQTT_ERROR_KINDS, Metrics, MetricsSink
from monitor.outputs.sink import CommandReceiver, Dispatcher, Sink

if TYPE_CHECKING:
    from monitor.outputs.mqtt.sink import MqttSink

MQTT_STOP_TIMEOUT_S = 2.0
CLIP_CLOSE_TIMEOUT_S = 2.0  # at shutdown: time for the writer to write the queued clips


class Outputs:
    """Builds, re-configures and stops the daemon's outputs; `dispatcher` reaches all of them.

    Sink order (the dispatcher's): MQTT, Sparkplug B, Home Assistant, Prometheus, then the extra
    sinks in the order given. Prometheus comes after MQTT so an event is counted once the outbox
    holds it; extra sinks come last and so see every event after it is durable.
    """

    def __init__(
        self,
        metrics: Metrics,
        alert_status: Callable[[str], AlertStatus | None],
        on_command: CommandReceiver,
        extra: Sequence[Sink] = (),
    ) -> None:
        self.metrics = metrics
        self.dispatcher = Dispatcher(on_command=on_command)
        self.extra = [self.dispatcher.attach(sink) for sink in extra]
        self.metrics_sink = MetricsSink(metrics, alert_status)
        self.mqtt: MqttSink | None = None
        self.homeassistant: Sink | None = None  # HomeAssistantDiscovery
        self.sparkplug: Sink | None = None  # SparkplugNode
        self.clip_writer: ClipWriter | None = None

    def start(self, cfg: Config) -> None:
        """Open what the config enables (every setting was validated by then)."""
        if cfg.clips.enabled:
            self.clip_writer = ClipWriter(clip_policy(cfg)).start()
        if cfg.mqtt.enabled:
            self.mqtt = self._start_mqtt(cfg)
        self._start_integrations(cfg)
        self._relist()
        if self.mqtt is not None:  # alerts a killed predecessor left open: end them, once
            end_open_alerts(
                self.mqtt.client.outbox,
                lambda event, payload: self.dispatcher.events(
                    event.source, [(event, payload)], None
                ),
            )

    def _relist(self) -> None:
        builtin = [s for s in (self.mqtt, self.sparkplug, self.homeassistant) if s is not None]
        self.dispatcher.sinks = [*builtin, self.metrics_sink, *self.extra]

    def _start_mqtt(self, cfg: Config) -> MqttSink:
        from monitor.outputs.mqtt.client import MqttClient
        from monitor.outputs.mqtt.sink import MqttSink

        client = MqttClient(
            mqtt_settings(cfg),
            on_connection_change=lambda up: self.metrics["mqtt_connected"].set(int(up)),
        )
        sink = self.dispatcher.attach(MqttSink(client, self.metrics))
        client.start()
        return sink

    def _start_integrations(self, cfg: Config) -> list[Sink]:
        """Home Assistant discovery and the Sparkplug B node: side sessions on the mqtt broker,
        fed from the same state and health as MQTT."""
        started: list[Sink] = []
        if cfg.homeassistant.enabled:
            from monitor.outputs.homeassistant import HomeAssistantDiscovery

            self.homeassistant = HomeAssistantDiscovery(
                mqtt_settings(cfg),
                cfg.node.name,
                source_machines(cfg),
                discovery_prefix=cfg.homeassistant.discovery_prefix,
                sw_version=__version__,
            ).start()
            started.append(self.homeassistant)
        if cfg.sparkplug.enabled:
            from monitor.outputs.sparkplug import SparkplugNode

            self.sparkplug = SparkplugNode(
                mqtt_settings(cfg),
                sparkplug_settings(cfg),
                list(source_machines(cfg)),
                version=__version__,
            ).start()
            started.append(self.sparkplug)
        return started

    def _stop_integrations(self) -> None:
        if self.homeassistant is not None:
            self.homeassistant.stop(MQTT_STOP_TIMEOUT_S)
            self.homeassistant = None
        if self.sparkplug is not None:
            self.sparkplug.stop(MQTT_STOP_TIMEOUT_S)  # publishes NDEATH
            self.sparkplug = None

    # ------------------------------------------------------------------ reload (inference thread)
    def clips_change(self, cfg: Config) -> bool:
        """Whether ``cfg`` replaces or removes the clip writer (channels finish their clips
        first: they go to the old writer)."""
        if cfg.clips.enabled:
            return self.clip_writer is None or clip_policy(cfg) != self.clip_writer.policy
        return self.clip_writer is not None

    def restart_clips(self, cfg: Config) -> None:
        if self.clip_writer is not None:
            self.clip_writer.close()
        self.clip_writer = ClipWriter(clip_policy(cfg)).start() if cfg.clips.enabled else None

    def adopt(self, old_cfg: Config, cfg: Config) -> None:
        """Restart the connections whose settings changed; tell the others about new sources."""
        fresh: list[Sink] = []
        old_mqtt = mqtt_settings(old_cfg) if old_cfg.mqtt.enabled else None
        new_mqtt = mqtt_settings(cfg) if cfg.mqtt.enabled else None
        if (cfg.mqtt.enabled, new_mqtt) != (old_cfg.mqtt.enabled, old_mqtt):
            if self.mqtt is not None:
                self.mqtt.stop(MQTT_STOP_TIMEOUT_S)
                self.mqtt = None
            if cfg.mqtt.enabled:
                self.mqtt = self._start_mqtt(cfg)
                fresh.append(self.mqtt)
        if integrations_key(cfg) != integrations_key(old_cfg):
            self._stop_integrations()
            fresh += self._start_integrations(cfg)
        self._relist()
        if source_machines(cfg) != source_machines(old_cfg):
            # HA deletes the entities of removed sources; Sparkplug sends their DDEATH, then
            # a rebirth
            self.dispatcher.sources(source_machines(cfg), skip=fresh)

    # ------------------------------------------------------------------ health and metrics
    def sync_metrics(self) -> None:
        """Counters of the clip writer and the MQTT client -> Prometheus."""
        m = self.metrics
        if self.clip_writer is not None:
            st = self.clip_writer.stats()
            m.sync_counter("clips_written", st["written_total"])
            m.sync_counter("clips_dropped", st["dropped_total"])
            m.sync_counter("clips_deleted", st["deleted_total"])
            m["clips_disk_bytes"].set(st["disk_bytes"])
        if self.mqtt is not None:
            stats = self.mqtt.client.stats()
            m["mqtt_connected"].set(int(stats["connected"]))
            m["mqtt_outbox_messages"].set(stats.get("outbox_pending", 0))
            m.sync_counter("mqtt_outbox_dropped", stats.get("outbox_dropped_total", 0))
            m.sync_counter("mqtt_published", stats.get("events_acked_total", 0))
            m.sync_counter("mqtt_connects", stats.get("connects_total", 0))
        for kind, count in self._mqtt_errors().items():
            m.sync_counter("mqtt_errors", count, kind=kind)

    def _mqtt_errors(self) -> dict[str, int]:
        """Failures the MQTT client, the Sparkplug node and HA discovery logged and ignored."""
        errors = dict.fromkeys(MQTT_ERROR_KINDS, 0)
        if self.mqtt is not None:
            stats = self.mqtt.client.stats()
            errors["command"] = stats["command_errors_total"]
            errors["callback"] = stats["callback_errors_total"]
            errors["network_thread"] = stats["loop_restarts_total"]
            errors["internal"] = stats["internal_errors_total"]
        if self.sparkplug is not None:
            from monitor.outputs.sparkplug import SparkplugNode  # loaded already: it is running

            if isinstance(self.sparkplug, SparkplugNode):
                errors["sparkplug_ncmd"] = self.sparkplug.counters["ncmd_errors_total"]
                errors["callback"] += self.sparkplug.callback_errors
        if self.homeassistant is not None:
            from monitor.outputs.homeassistant import HomeAssistantDiscovery

            if isinstance(self.homeassistant, HomeAssistantDiscovery):
                errors["callback"] += self.homeassistant.callback_errors
        return errors

    def mqtt_check(self) -> dict[str, Any] | None:
        """The broker part of /healthz (None without MQTT)."""
        if self.mqtt is None:
            return None
        return {"ok": bool(self.mqtt.client.connected), "last_error": self.mqtt.client.last_error}

    def wait_published(self, timeout: float) -> bool | None:
        """True once the broker acknowledged every event so far; None without MQTT."""
        return None if self.mqtt is None else self.mqtt.wait_idle(timeout)

    # ------------------------------------------------------------------ shutdown (main thread)
    def stop(self) -> None:
        """MQTT (flushes events, publishes ``stopped``), the integrations, the clip writer, then
        the extra sinks. The MQTT sink stays readable (`wait_published`) after its stop."""
        if self.mqtt is not None:
            self.mqtt.stop(MQTT_STOP_TIMEOUT_S)
        self._stop_integrations()
        if self.clip_writer is not None:
            self.clip_writer.close(timeout=CLIP_CLOSE_TIMEOUT_S)
        for sink in self.extra:
            Dispatcher.guarded(sink, "stop", sink.stop, MQTT_STOP_TIMEOUT_S)
