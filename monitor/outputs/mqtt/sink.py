"""The daemon's MQTT output: the `Sink` side of `MqttClient`.

Why an adapter and not the client itself: `MqttClient` is protocol-only (it also serves
`sonitor test-alert`, which has no daemon); this class maps the daemon's updates onto its topics
and times each hand-over as the ``publish`` stage.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from monitor.alerting.machine import AlertEvent
from monitor.outputs.mqtt.client import MqttClient
from monitor.outputs.mqtt.settings import COMMAND_VERBS
from monitor.outputs.sink import CommandReceiver, Sink

if TYPE_CHECKING:
    from monitor.outputs.prometheus import Metrics

log = logging.getLogger(__name__)


class MqttSink(Sink):
    """Events go through the outbox (durable before the call returns), state and health are
    retained (only the latest is kept while disconnected), commands come back to the daemon."""

    def __init__(self, client: MqttClient, metrics: Metrics | None = None) -> None:
        self.client = client
        self.metrics = metrics

    def on_event(self, event: AlertEvent, payload: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            self.client.publish_event(event.source, payload)
        except Exception:  # noqa: BLE001 - e.g. outbox disk full: keep monitoring
            log.exception("could not queue event %s for MQTT", event.event_id)
        self._timed(t0)

    def on_state(self, source: str, payload: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        self.client.publish_state(source, payload)
        self._timed(t0)

    def on_health(self, source: str, payload: dict[str, Any]) -> None:
        self.client.publish_health(source, payload)

    def subscribe(self, receiver: CommandReceiver) -> None:
        for verb in COMMAND_VERBS:
            self.client.on_command(verb, receiver)

    def stop(self, timeout: float) -> None:
        """Flush in-flight events, publish ``stopped``, disconnect."""
        self.client.stop(timeout=timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True once the broker has acknowledged every event handed over so far."""
        return self.client.wait_idle(timeout)

    def _timed(self, t0: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_stage("publish", time.perf_counter() - t0)
