"""MQTT publishing (paho-mqtt 2): availability, retained state and health, events, commands.

Topics (``<p>`` = ``MqttSettings.topic_prefix``), Frigate-style; payloads in outputs/payloads.py,
reference in docs/mqtt.md:

- ``<p>/availability``      ``online`` (retained, on every connect), last will ``offline``
  (retained), ``stopped`` (retained) on a clean exit.
- ``<p>/<source>/state``    retained JSON, latest window and alarm state.
- ``<p>/<source>/health``   retained JSON, capture liveness.
- ``<p>/<source>/events``   JSON alert lifecycle, QoS >= 1, not retained, through the outbox.
- ``<p>/command/<verb>`` and ``<p>/<source>/command/<verb>``: reload, mute, unmute, test_alert.

Why one control thread and a fresh paho client per connection: paho keeps unacknowledged QoS 1
messages in memory and re-sends them itself after a reconnect, before anything we send, with the
old payload. That would duplicate and reorder the outbox replay and could not carry the
``replayed`` flag. So each connection attempt is one client (``connect_async`` + ``loop_start``,
``reconnect_on_failure=False``) and the control thread reconnects forever with backoff; the
SQLite outbox is the only place a pending event lives. paho callbacks only enqueue (paho holds
its own locks while calling them); the control thread does all publishing and all outbox writes.

Why every callback is guarded and the network thread watched: an exception out of a callback
ends paho's thread silently (the socket stays open, commands go unread, acks pile up). The guard
(`guard.CallbackGuard`) counts, logs and swallows it; anything that still ends the thread is
seen by the control thread, which then drops the session and reconnects, and `connected` (the
daemon's health) is false from the moment the thread is gone.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from monitor.alerting.machine import AlertEvent, test_events
from monitor.errors import ConfigError
from monitor.outputs.mqtt.commands import command_args
from monitor.outputs.mqtt.guard import CallbackGuard
from monitor.outputs.mqtt.settings import MqttError, MqttSettings, Topics, paho_client
from monitor.outputs.open_alerts import open_alert_change
from monitor.outputs.outbox import Outbox
from monitor.outputs.payloads import (
    AVAILABILITY_OFFLINE,
    AVAILABILITY_ONLINE,
    AVAILABILITY_STOPPED,
    encode,
    event_payload,
    mark_replayed,
)
from monitor.outputs.sink import Command, CommandReceiver

log = logging.getLogger(__name__)

_MAX_IN_FLIGHT = 256


@dataclass
class _Session:
    """One paho client = one connection attempt and, if it succeeds, one connection."""

    sid: int
    client: mqtt.Client
    connected: bool = False
    in_flight: dict[int, int] = field(default_factory=dict)  # paho mid -> outbox id
    sent_upto: int = 0  # highest outbox id published in this session
    loop: threading.Thread | None = None  # paho's network thread (loop_start)

    def loop_alive(self) -> bool:
        return self.loop is None or self.loop.is_alive()


class MqttClient:
    """The daemon's MQTT side. Thread-safe ``publish_*``; never blocks the caller on the network.

    ``on_connection_change(connected)`` is called from the control thread (for metrics).
    Command callbacks run on the paho network thread: keep them short (set a flag, enqueue);
    an exception from one is logged and counted (``command_errors_total``).
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        outbox: Outbox | None = None,
        on_connection_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        settings.read_password()  # fail early, naming the variable or file
        self._ssl = settings.ssl_context()
        self._own_outbox = outbox is None
        self.outbox = outbox or Outbox(
            settings.outbox_path or ":memory:",
            max_rows=settings.outbox_max_rows,
            max_bytes=settings.outbox_max_bytes,
        )
        self._on_connection_change = on_connection_change
        self._commands: dict[str, CommandReceiver] = {}
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._retained: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._live: set[int] = set()
        self._session: _Session | None = None
        self._sid = 0
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._wake_pending = threading.Event()  # coalesces wake-ups: the queue stays short
        self._backoff = settings.reconnect_min_s
        self._next_attempt = 0.0
        self.last_error: str | None = None
        self._failures = 0
        self._where = f"{settings.host}:{settings.port}"
        self._guard = CallbackGuard(log, "MQTT")
        self.counters = {
            "connects_total": 0,
            "disconnects_total": 0,
            "connect_failures_total": 0,
            "events_published_total": 0,
            "events_replayed_total": 0,
            "events_acked_total": 0,
            "retained_published_total": 0,
            "commands_total": 0,
            "command_errors_total": 0,
            "internal_errors_total": 0,
            "loop_restarts_total": 0,  # paho's network thread ended unexpectedly
        }

    # ------------------------------------------------------------------ public API
    def on_command(self, verb: str, callback: CommandReceiver) -> None:
        """Register the daemon's handler of a verb (``reload``, ``mute``, ``unmute``, ...)."""
        self._commands[verb.replace("-", "_")] = callback

    def start(self) -> MqttClient:
        """Start the control thread; it connects (and reconnects) forever in the background."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sonitor-mqtt", daemon=True)
            self._thread.start()
        return self

    @property
    def connected(self) -> bool:
        """Connected with a live network thread (what health reports)."""
        session = self._session
        return self._connected.is_set() and session is not None and session.loop_alive()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def publish_event(self, source: str, payload: dict[str, Any]) -> int:
        """Store an event in the outbox (durable on return), then send it; return its outbox id."""
        topic = self.topics.events(source)
        created = payload.get("time") if isinstance(payload.get("time"), float | int) else None
        data = encode(payload)
        change = open_alert_change(payload, data)  # the next start ends what stays open
        with self._lock:
            row = self.outbox.put(
                topic, data, max(self.settings.qos, 1), False, created, open_alert=change
            )
            if self.connected:
                self._live.add(row)
        self._wake()
        return row

    def publish_alert(
        self,
        event: AlertEvent,
        *,
        threshold: float | None = None,
        model_version: str | None = None,
        clip: str | None = None,
    ) -> int:
        """Convenience: build the v1 event payload of an AlertEvent and publish it."""
        payload = event_payload(event, threshold=threshold, model_version=model_version, clip=clip)
        return self.publish_event(event.source, payload)

    def publish_state(self, source: str, payload: dict[str, Any]) -> None:
        """Retained state of a source; only the latest is kept while disconnected."""
        self._set_retained(self.topics.state(source), encode(payload))

    def publish_health(self, source: str, payload: dict[str, Any]) -> None:
        """Retained health of a source; only the latest is kept while disconnected."""
        self._set_retained(self.topics.health(source), encode(payload))

    def publish_test_alert(self, source: str, model_version: str | None = None) -> str:
        """A test event (``kind: test``, a ``start`` then an ``end``) through the outbox path."""
        events = test_events(Topics.check_source(source), time.time())
        for event in events:
            self.publish_alert(event, model_version=model_version)
        return events[0].event_id

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every outbox message is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while len(self.outbox) > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self, timeout: float = 3.0) -> None:
        """Flush in-flight events (up to ``timeout``), publish ``stopped``, disconnect cleanly."""
        if self._thread is not None:
            self._queue.put(("stop", timeout))
            self._thread.join(timeout + 5.0)
            self._thread = None
        if self._own_outbox:
            self.outbox.close()

    def stats(self) -> dict[str, Any]:
        """Snapshot for metrics: connection, counters, outbox gauges."""
        out: dict[str, Any] = {"connected": self.connected, "last_error": self.last_error}
        out.update(self.counters)
        out["callback_errors_total"] = self._guard.errors
        out.update({f"outbox_{k}": v for k, v in self.outbox.stats().items()})
        return out

    # ------------------------------------------------------------------ control thread
    def _set_retained(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._retained[topic] = payload
            self._dirty.add(topic)
        self._wake()

    def _wake(self) -> None:
        if not self._wake_pending.is_set():
            self._wake_pending.set()
            self._queue.put(("wake",))

    def _run(self) -> None:
        """Control loop: open sessions, publish, take acks. Survives its own errors (logged)."""
        while True:
            try:
                self._check_loop()
                if self._session is None and time.monotonic() >= self._next_attempt:
                    self._session = self._open_session()
                wait = 0.5
                if self._session is None:
                    wait = min(wait, max(0.0, self._next_attempt - time.monotonic()))
                try:
                    msg = self._queue.get(timeout=wait)
                except queue.Empty:
                    continue
                if msg[0] == "stop":
                    self._shutdown(msg[1])
                    return
                self._handle(msg)
            except Exception:  # noqa: BLE001 - e.g. a disk error in the outbox: log, go on
                self.counters["internal_errors_total"] += 1
                log.exception("MQTT control loop error (continuing)")
                if self._session is None:
                    self._schedule_retry()
                time.sleep(0.1)

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        session = self._session
        if kind == "wake":
            self._wake_pending.clear()
            if session is not None and session.connected:
                self._flush_retained(session)
                self._pump(session)
            return
        sid = msg[1]
        if session is None or sid != session.sid:
            return  # a late callback of a finished session
        if kind == "connected":
            self._on_session_up(session)
        elif kind == "refused":
            self.counters["connect_failures_total"] += 1
            self.last_error = f"{self._where} refused the connection: {msg[2]}"
            hint = ""
            if "authori" in msg[2].lower() or "password" in msg[2].lower():
                hint = " (check mqtt.username and the password)"
            log.error("MQTT broker %s%s; retrying in %g s", self.last_error, hint, self._backoff)
        elif kind == "ended":
            self._end_session(session, msg[2], failed_connect=msg[3])
        elif kind == "ack":
            row = session.in_flight.pop(msg[2], None)
            if row is not None:
                if self.outbox.ack(row):
                    self.counters["events_acked_total"] += 1
                with self._lock:
                    self._live.discard(row)
                self._pump(session)

    def _open_session(self) -> _Session | None:
        s = self.settings
        self._sid += 1
        sid = self._sid
        try:
            client = paho_client(s, s.client_id, reconnect_on_failure=False, ssl_context=self._ssl)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error("MQTT: %s; retrying in %g s", exc, self._backoff)
            self._schedule_retry()
            return None
        if log.isEnabledFor(logging.DEBUG):  # paho logs routine retries at ERROR level
            client.enable_logger(logging.getLogger("monitor.outputs.mqtt.paho"))
        # paho sleeps this long after a failed attempt before its thread ends (we retry ourselves)
        client.reconnect_delay_set(0.01, 0.01)  # type: ignore[arg-type]
        client.max_inflight_messages_set(_MAX_IN_FLIGHT)
        if s.availability:
            client.will_set(self.topics.availability, AVAILABILITY_OFFLINE, qos=1, retain=True)
        session = _Session(sid, client)
        post = self._queue.put
        guard = self._guard.wrap

        def on_connect(c, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
            if reason_code.is_failure:
                post(("refused", sid, str(reason_code)))
            else:
                post(("connected", sid))

        def on_connect_fail(c, userdata) -> None:  # noqa: ANN001
            post(("ended", sid, "connection failed", True))

        def on_disconnect(c, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
            post(("ended", sid, str(reason_code), not session.connected))

        def on_publish(c, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
            post(("ack", sid, mid))

        client.on_connect = guard("on_connect", on_connect)
        client.on_connect_fail = guard("on_connect_fail", on_connect_fail)
        client.on_disconnect = guard("on_disconnect", on_disconnect)
        client.on_publish = guard("on_publish", on_publish)
        client.on_message = guard("on_message", self._on_message)
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()
        session.loop = client._thread  # paho has no public handle on its network thread
        return session

    def _check_loop(self) -> None:
        """Reconnect when paho's network thread ended without telling us (no "ended" posted):
        nothing would read commands or acks on that connection again."""
        session = self._session
        if session is None or session.loop_alive() or not self._queue.empty():
            return  # (a normal end posts "ended" before its thread finishes: that comes first)
        self.counters["loop_restarts_total"] += 1
        self.last_error = "the MQTT network thread ended unexpectedly"
        log.error("MQTT: %s (connection to %s); reconnecting", self.last_error, self._where)
        with contextlib.suppress(Exception):  # best effort: a clean DISCONNECT drops the will
            session.client.disconnect()
        sock = session.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._end_session(session, "network thread ended", failed_connect=not session.connected)

    def _on_session_up(self, session: _Session) -> None:
        session.connected = True
        self.counters["connects_total"] += 1
        self._backoff = self.settings.reconnect_min_s
        log.info("MQTT connected to %s as %s", self._where, self.settings.client_id)
        self.last_error = None
        self._failures = 0
        session.client.subscribe([(t, 1) for t in self.topics.command_filters])
        with self._lock:
            self._dirty = set(self._retained)
        self._flush_retained(session)
        if self.settings.availability:
            session.client.publish(
                self.topics.availability,
                AVAILABILITY_ONLINE,
                qos=max(self.settings.qos, 1),
                retain=True,
            )
        self._pump(session)  # the replay goes out before anything new
        self._connected.set()  # only now: subscribers already find online and the state
        if self._on_connection_change:
            self._on_connection_change(True)

    def _end_session(self, session: _Session, reason: str, failed_connect: bool) -> None:
        was_connected = session.connected
        session.connected = False
        self._connected.clear()
        session.client.loop_stop()
        self._session = None
        with self._lock:
            self._live.clear()  # anything not acknowledged yet is a replay from now on
        if was_connected:
            self.counters["disconnects_total"] += 1
            self._failures = 0
            log.warning("MQTT connection to %s lost (%s); reconnecting", self._where, reason)
            self._backoff = self.settings.reconnect_min_s
            if self._on_connection_change:
                self._on_connection_change(False)
        elif reason == "connection failed":  # TCP/TLS level; a refused CONNACK was logged already
            self.counters["connect_failures_total"] += 1
            self._failures += 1
            if self._failures % 10 == 1:  # paho does not say why: find out, now and then
                self.last_error = (
                    f"cannot connect to {self._where}: {diagnose(self.settings, self._ssl)}"
                )
            # The first failure and every 10th after it: a long outage must not flood the journal.
            level = logging.WARNING if self._failures % 10 == 1 else logging.DEBUG
            log.log(
                level,
                "MQTT %s (%d attempts); retrying every <= %g s",
                self.last_error,
                self._failures,
                self.settings.reconnect_max_s,
            )
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.settings.reconnect_max_s)

    def _flush_retained(self, session: _Session) -> None:
        with self._lock:
            items = [(t, self._retained[t]) for t in sorted(self._dirty)]
            self._dirty.clear()
        for topic, payload in items:
            session.client.publish(topic, payload, qos=self.settings.qos, retain=True)
            self.counters["retained_published_total"] += 1

    def _pump(self, session: _Session) -> None:
        """Send pending outbox rows in order, at most _MAX_IN_FLIGHT unacknowledged."""
        room = _MAX_IN_FLIGHT - len(session.in_flight)
        if room <= 0 or not session.connected:
            return
        for msg in self.outbox.pending(limit=room, after_id=session.sent_upto):
            with self._lock:
                live = msg.id in self._live
            payload = msg.payload if live else mark_replayed(msg.payload)
            info = session.client.publish(msg.topic, payload, qos=msg.qos, retain=msg.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # the connection is going; the session end will reschedule
            session.in_flight[info.mid] = msg.id
            session.sent_upto = msg.id
            self.counters["events_published_total"] += 1
            if not live:
                self.counters["events_replayed_total"] += 1

    def _shutdown(self, timeout: float) -> None:
        session = self._session
        deadline = time.monotonic() + timeout
        if session is not None and session.connected:
            while session.in_flight and time.monotonic() < deadline:
                try:
                    msg = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if msg[0] != "stop":
                    self._handle(msg)
                if self._session is not session or not session.connected:
                    break
        session = self._session
        if session is not None:
            if session.connected and self.settings.availability:
                info = session.client.publish(
                    self.topics.availability, AVAILABILITY_STOPPED, qos=1, retain=True
                )
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            session.client.disconnect()
            session.client.loop_stop()
            self._session = None
        self._connected.clear()
        if self._on_connection_change:
            self._on_connection_change(False)

    # ------------------------------------------------------------------ commands (paho thread)
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = self.topics.parse_command(message.topic)
        if parsed is None:
            return
        source, verb = parsed
        verb = verb.replace("-", "_")
        self.counters["commands_total"] += 1
        callback = self._commands.get(verb)
        if callback is None:
            self.counters["command_errors_total"] += 1
            log.warning("MQTT command %s: unknown verb %r (ignored)", message.topic, verb)
            return
        try:
            args = command_args(message.payload)
        except ValueError as exc:
            self.counters["command_errors_total"] += 1
            log.warning("MQTT command %s: %s; ignored", message.topic, exc)
            return
        try:
            callback(Command(verb=verb, source=source, args=args, topic=message.topic))
        except Exception:  # noqa: BLE001 - a failing handler must not kill the network loop
            self.counters["command_errors_total"] += 1
            log.exception("MQTT command %s: handler failed", message.topic)


def diagnose(
    settings: MqttSettings, ssl_context: ssl.SSLContext | None, timeout: float = 1.0
) -> str:
    """Why a connection attempt failed (TCP or TLS), for the log and ``last_error``: paho does
    not say."""
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout)
    except OSError as exc:
        return f"TCP connect failed ({exc.strerror or exc})"
    with sock:
        if ssl_context is None:
            return "TCP connect works; the MQTT handshake failed"
        try:
            sock.settimeout(timeout)
            with ssl_context.wrap_socket(sock, server_hostname=settings.host):
                return "TLS handshake works; the MQTT handshake failed"
        except (ssl.SSLError, OSError) as exc:
            return f"TLS handshake failed ({exc})"


def publish_test_alert(settings: MqttSettings, source: str, timeout: float = 10.0) -> str:
    """``sonitor test-alert``: publish one test event through the outbox path and wait for the ack.

    Uses its own client id (``<client_id>-test-alert``) and no availability/last will, so the
    running daemon's connection and availability are untouched. Raises MqttError when the broker
    is unreachable or refuses us within ``timeout``.
    """
    from dataclasses import replace

    one_shot = replace(
        settings,
        client_id=f"{settings.client_id}-test-alert",
        availability=False,
        outbox_path=None,
        reconnect_min_s=min(settings.reconnect_min_s, 0.5),
    )
    client = MqttClient(one_shot).start()
    try:
        event_id = client.publish_test_alert(source)
        if not client.wait_idle(timeout):
            raise MqttError(
                f"test alert for {source!r} not acknowledged by {settings.host}:{settings.port} "
                f"within {timeout:.0f} s: {client.last_error or 'no connection'}"
            )
        return event_id
    finally:
        client.stop(timeout=1.0)
