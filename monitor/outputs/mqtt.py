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
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt

from monitor.alerting.machine import AlertEvent
from monitor.errors import ConfigError, SonitorError
from monitor.outputs.outbox import Outbox
from monitor.outputs.payloads import (
    AVAILABILITY_OFFLINE,
    AVAILABILITY_ONLINE,
    AVAILABILITY_STOPPED,
    encode,
    event_payload,
    mark_replayed,
)

log = logging.getLogger(__name__)

COMMAND_VERBS = ("reload", "mute", "unmute", "test_alert")
_LEVEL = re.compile(r"^[^/#+\x00\s]+$")
_MAX_IN_FLIGHT = 256


class MqttError(SonitorError):
    """The broker could not be reached or refused us (one-shot tools such as test-alert)."""


@dataclass(frozen=True)
class MqttSettings:
    """Connection and topic settings. Defaults:

    - ``host`` 127.0.0.1, ``port`` 1883, ``keepalive_s`` 30 (the will fires ~1.5x after a hang).
    - ``topic_prefix`` ``sonitor`` (may contain ``/``, e.g. ``plant/sonitor/node1``).
    - ``client_id`` ``sonitor``: must be unique per broker (a second one kicks the first off).
    - ``qos`` 1 for state, health and availability; events use ``max(qos, 1)`` because the
      outbox removes an event only on the broker's acknowledgement.
    - ``username`` None; the password comes from ``password_env`` (a variable name) or
      ``password_file`` (first line), read at every connect, never logged.
    - ``tls`` False; ``tls_ca_file`` None (system trust store), ``tls_cert_file`` +
      ``tls_key_file`` for mutual TLS, ``tls_insecure`` False (skip the host-name check).
    - ``protocol`` ``3.1.1`` (or ``5``).
    - ``reconnect_min_s`` 1, ``reconnect_max_s`` 30: backoff, doubling, forever.
    - ``outbox_path`` None = in memory (not durable; tools and tests); ``outbox_max_rows`` 10000,
      ``outbox_max_bytes`` 50 MB.
    - ``availability`` True: publish availability and set the last will (False for one-shot
      tools, which must not mark the daemon offline).
    """

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "sonitor"
    client_id: str = "sonitor"
    qos: int = 1
    keepalive_s: int = 30
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_insecure: bool = False
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    outbox_path: Path | None = None
    outbox_max_rows: int = 10_000
    outbox_max_bytes: int = 50_000_000
    availability: bool = True

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"mqtt.{key}={getattr(self, key)!r}: {why}")

        if not self.host:
            raise bad("host", "must not be empty")
        if not 1 <= self.port <= 65535:
            raise bad("port", "must be 1..65535")
        if not self.topic_prefix or not all(_LEVEL.match(p) for p in self.topic_prefix.split("/")):
            raise bad("topic_prefix", "levels must be non-empty, without '+', '#' or spaces")
        if not self.client_id:
            raise bad("client_id", "must not be empty")
        if self.qos not in (0, 1, 2):
            raise bad("qos", "must be 0, 1 or 2")
        if self.keepalive_s < 1:
            raise bad("keepalive_s", "must be >= 1")
        if self.protocol not in ("3.1.1", "5"):
            raise bad("protocol", "must be '3.1.1' or '5'")
        if self.password_env and self.password_file:
            raise bad("password_file", "give password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.username:
            raise bad("username", "a password needs a username")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise bad("tls_cert_file", "tls_cert_file and tls_key_file go together")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise bad("reconnect_min_s", "need 0 < reconnect_min_s <= reconnect_max_s")

    def read_password(self) -> str | None:
        """The password from its variable or file; errors name the variable/file, not the value."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"mqtt.password_env: environment variable {self.password_env!r} is not set"
                )
            return value
        if self.password_file:
            try:
                lines = Path(self.password_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"mqtt.password_file: cannot read {self.password_file}: {exc.strerror}"
                ) from None
            if not lines or not lines[0]:
                raise ConfigError(f"mqtt.password_file: {self.password_file} is empty")
            return lines[0]
        return None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (None without TLS); errors name the certificate or key file."""
        if not self.tls:
            return None
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"mqtt.{key}: {path} does not exist")
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.tls_ca_file) if self.tls_ca_file else None
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.tls_ca_file: {self.tls_ca_file} is not a PEM CA file: {exc}"
            ) from None
        if self.tls_cert_file:
            try:
                ctx.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"mqtt.tls_cert_file/tls_key_file: {self.tls_cert_file} / "
                    f"{self.tls_key_file} are not a matching PEM certificate and key: {exc}"
                ) from None
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx


def paho_client(
    settings: MqttSettings,
    client_id: str,
    *,
    reconnect_on_failure: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> mqtt.Client:
    """A paho client with the config's protocol, credentials and TLS.

    Shared by the daemon's main session and the integrations' side sessions (Home Assistant,
    Sparkplug B), so they all reach a broker that requires TLS and a password the same way.
    Reads the password (ConfigError when its file or variable is missing); ``ssl_context``
    reuses a context built once, else one is built from ``settings``.
    """
    kwargs: dict[str, Any] = {"client_id": client_id, "reconnect_on_failure": reconnect_on_failure}
    if settings.protocol == "5":
        kwargs["protocol"] = mqtt.MQTTv5
    else:
        kwargs["protocol"] = mqtt.MQTTv311
        kwargs["clean_session"] = True
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    if settings.username:
        client.username_pw_set(settings.username, settings.read_password())
    ctx = ssl_context if ssl_context is not None else settings.ssl_context()
    if ctx is not None:
        client.tls_set_context(ctx)
    return client


class Topics:
    """Topic names under one prefix (the naming is part of the API: docs/mqtt.md)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")

    @staticmethod
    def check_source(source: str) -> str:
        if not _LEVEL.match(source):
            raise ConfigError(f"source name {source!r} cannot be an MQTT topic level")
        return source

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    def state(self, source: str) -> str:
        return f"{self.prefix}/{self.check_source(source)}/state"

    def health(self, source: str) -> str:
        return f"{self.prefix}/{self.check_source(source)}/health"

    def events(self, source: str) -> str:
        return f"{self.prefix}/{self.check_source(source)}/events"

    def command(self, verb: str, source: str | None = None) -> str:
        if source is None:
            return f"{self.prefix}/command/{verb}"
        return f"{self.prefix}/{self.check_source(source)}/command/{verb}"

    @property
    def command_filters(self) -> list[str]:
        return [f"{self.prefix}/command/+", f"{self.prefix}/+/command/+"]

    def parse_command(self, topic: str) -> tuple[str | None, str] | None:
        """``(source or None, verb)`` of a command topic, else None."""
        if not topic.startswith(self.prefix + "/"):
            return None
        parts = topic[len(self.prefix) + 1 :].split("/")
        if len(parts) == 2 and parts[0] == "command":
            return None, parts[1]
        if len(parts) == 3 and parts[1] == "command":
            return parts[0], parts[2]
        return None


@dataclass(frozen=True)
class Command:
    """A command from the broker: ``args`` is the JSON object payload ({} when empty)."""

    verb: str
    source: str | None
    args: dict[str, Any]
    topic: str


CommandCallback = Callable[[Command], None]


@dataclass
class _Session:
    """One paho client = one connection attempt and, if it succeeds, one connection."""

    sid: int
    client: mqtt.Client
    connected: bool = False
    in_flight: dict[int, int] = field(default_factory=dict)  # paho mid -> outbox id
    sent_upto: int = 0  # highest outbox id published in this session


class MqttClient:
    """The daemon's MQTT side. Thread-safe ``publish_*``; never blocks the caller on the network.

    ``on_connection_change(connected)`` is called from the control thread (for metrics).
    Command callbacks run on the paho network thread: keep them short (set a flag, enqueue).
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
        self._commands: dict[str, CommandCallback] = {}
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
        }

    # ------------------------------------------------------------------ public API
    def on_command(self, verb: str, callback: CommandCallback) -> None:
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
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def publish_event(self, source: str, payload: dict[str, Any]) -> int:
        """Store an event in the outbox (durable on return), then send it; return its outbox id."""
        topic = self.topics.events(source)
        created = payload.get("time") if isinstance(payload.get("time"), float | int) else None
        with self._lock:
            row = self.outbox.put(topic, encode(payload), max(self.settings.qos, 1), False, created)
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
        t = time.time()
        event_id = f"{Topics.check_source(source)}-test-{int(t * 1000)}-{uuid.uuid4().hex[:6]}"
        for seq, type_ in enumerate(("start", "end")):
            event = AlertEvent(
                kind="test",
                type=type_,  # type: ignore[arg-type]
                event_id=event_id,
                source=source,
                seq=seq,
                time=t,
                start_time=t,
                end_time=t if type_ == "end" else None,
                reason="test_alert",
            )
            self.publish_alert(event, model_version=model_version)
        return event_id

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

        client.on_connect = on_connect
        client.on_connect_fail = on_connect_fail
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = self._on_message
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()
        return session

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
                self.last_error = f"cannot connect to {self._where}: {self._diagnose()}"
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

    def _diagnose(self, timeout: float = 1.0) -> str:
        """Why a connection attempt failed (TCP or TLS), for the log and ``last_error``."""
        try:
            sock = socket.create_connection((self.settings.host, self.settings.port), timeout)
        except OSError as exc:
            return f"TCP connect failed ({exc.strerror or exc})"
        with sock:
            if self._ssl is None:
                return "TCP connect works; the MQTT handshake failed"
            try:
                sock.settimeout(timeout)
                with self._ssl.wrap_socket(sock, server_hostname=self.settings.host):
                    return "TLS handshake works; the MQTT handshake failed"
            except (ssl.SSLError, OSError) as exc:
                return f"TLS handshake failed ({exc})"

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
            text = message.payload.decode("utf-8").strip()
            args = json.loads(text) if text else {}
        except (UnicodeDecodeError, ValueError) as exc:
            self.counters["command_errors_total"] += 1
            log.warning("MQTT command %s: payload is not JSON (%s); ignored", message.topic, exc)
            return
        if not isinstance(args, dict):
            self.counters["command_errors_total"] += 1
            log.warning("MQTT command %s: payload must be a JSON object; ignored", message.topic)
            return
        try:
            callback(Command(verb=verb, source=source, args=args, topic=message.topic))
        except Exception:  # noqa: BLE001 - a failing handler must not kill the network loop
            self.counters["command_errors_total"] += 1
            log.exception("MQTT command %s: handler failed", message.topic)


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


def mute_until(args: dict[str, Any], now: float) -> float | None:
    """End time of a ``mute`` command: ``{"until": epoch}``, ``{"duration_s": s}`` or ``{}``.

    ``None`` means indefinitely. Raises ValueError naming the key for anything else.
    """
    unknown = set(args) - {"until", "duration_s"}
    if unknown:
        raise ValueError(f"mute: unknown key(s) {sorted(unknown)}; use 'until' or 'duration_s'")
    if "until" in args and "duration_s" in args:
        raise ValueError("mute: give 'until' or 'duration_s', not both")
    for key in ("until", "duration_s"):
        if key in args:
            value = args[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"mute: {key}={value!r} must be a number")
            if not math.isfinite(value) or (key == "duration_s" and value <= 0):
                raise ValueError(f"mute: {key}={value!r} must be finite and positive")
            return float(value) if key == "until" else now + float(value)
    return None
