"""Sparkplug B edge node: the daemon is one edge node, every source one device.

Topics (Sparkplug 3.0): ``spBv1.0/<group>/NBIRTH|NDEATH|NCMD/<node>`` (no NDATA: the node's own
metrics never change within a session) and
``spBv1.0/<group>/DBIRTH|DDATA|DDEATH/<node>/<source>``; the primary host application's state
is ``spBv1.0/STATE/<host_id>`` (retained JSON ``{"online": bool, "timestamp": ms}``).

Session rules this module keeps:
- bdSeq: 0..255, +1 for every connection attempt (CONNECT), persisted in a small JSON file so
  that a restarted daemon goes on counting; the NDEATH last will and that session's NBIRTH carry
  the same value.
- seq: 0..255 wrapping; NBIRTH is 0, then every DBIRTH/DDATA/DDEATH takes the next. NDEATH has none.
- Births declare every metric with name, alias and datatype (null values flagged ``is_null``);
  DATA messages carry only alias, timestamp and value of metrics that changed (report by
  exception; the spec says DATA should not repeat the datatype).
- An NCMD writing ``Node Control/Rebirth`` = true gets a fresh NBIRTH + DBIRTHs (same bdSeq).
  An NCMD that is not a readable Sparkplug B payload is one WARNING line and counted
  (``ncmd_errors_total``); the node goes on.
- Store and forward: with ``primary_host_id`` set, nothing is born before that host's STATE says
  online. While it is offline or unknown (or the broker is unreachable) device data is held in a
  bounded in-memory queue (``store_max_messages`` DDATA records; beyond it the oldest are dropped
  and counted). When the host is online again: NBIRTH, DBIRTHs with the current values, then the
  held records in order with their original timestamps and ``is_historical`` = true.
  Deviation from the letter of the spec: on host offline the node keeps its MQTT session (it
  does not publish NDEATH and reconnect); it stops publishing and re-births when the host returns.

Why a control thread with one fresh paho client per session: the last will (NDEATH) carries the
session's bdSeq, so every connection attempt needs its own will; paho callbacks only enqueue
(and are guarded: an exception must not end paho's network thread).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from monitor.errors import ConfigError
from monitor.outputs.mqtt.guard import CallbackGuard
from monitor.outputs.mqtt.settings import MqttSettings, paho_client
from monitor.outputs.sink import Sink
from monitor.outputs.sparkplug_pb import (
    DataType,
    Metric,
    SparkplugDecodeError,
    decode_payload,
    encode_payload,
)

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
# (metric name, datatype) of every device; the value comes from the state/health payloads.
DEVICE_METRICS: tuple[tuple[str, DataType], ...] = (
    ("score", DataType.DOUBLE),
    ("normalised_score", DataType.DOUBLE),
    ("threshold", DataType.DOUBLE),
    ("alarm/active", DataType.BOOLEAN),
    ("alarm/state", DataType.STRING),
    ("alarm/severity", DataType.STRING),
    ("capture/healthy", DataType.BOOLEAN),
    ("level_dbfs", DataType.DOUBLE),
)
_TYPES = dict(DEVICE_METRICS)


@dataclass(frozen=True)
class SparkplugSettings:
    """Sparkplug identity and store-and-forward bound; the broker connection is MqttSettings."""

    group_id: str = "sonitor"
    edge_node_id: str = "sonitor"
    primary_host_id: str | None = None
    bdseq_path: Path | None = None  # None: not persisted (tests, one-shot tools)
    store_max_messages: int = 10_000
    client_id: str | None = None  # None: "<mqtt client_id>-spb"


def state_metrics(payload: dict[str, Any]) -> dict[str, Any]:
    """Device metric values of a v1 state payload (docs/mqtt.md)."""
    return {
        "score": payload.get("score"),
        "normalised_score": payload.get("normalised_score"),
        "threshold": payload.get("threshold"),
        "alarm/active": payload.get("alarm") == "active",
        "alarm/state": payload.get("alarm"),
        "alarm/severity": payload.get("severity"),
        "capture/healthy": payload.get("capture_healthy"),
        "level_dbfs": payload.get("level_dbfs"),
    }


def health_metrics(payload: dict[str, Any]) -> dict[str, Any]:
    """Device metric values of a v1 health payload."""
    return {"capture/healthy": payload.get("healthy")}


def next_seq(seq: int) -> int:
    """Sparkplug message sequence: 0..255, wrapping."""
    return (seq + 1) % 256


class BdSeqStore:
    """The last bdSeq used, in a small JSON file; ``next()`` returns and persists the next one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._last: int | None = None
        if path is not None and path.exists():
            try:
                value = json.loads(path.read_text(encoding="utf-8"))["bdSeq"]
                if isinstance(value, int) and 0 <= value <= 255:
                    self._last = value
                else:
                    raise ValueError(f"bdSeq={value!r}")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("Sparkplug: ignoring unreadable bdSeq file %s (%s)", path, exc)

    def next(self) -> int:
        value = 0 if self._last is None else (self._last + 1) % 256
        self._last = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"bdSeq": value}), encoding="utf-8")
            os.replace(tmp, self.path)  # atomic: a crash never leaves half a file
        return value


@dataclass
class _Held:
    source: str
    timestamp: int  # ms
    values: dict[str, Any]


class SparkplugNode(Sink):
    """The edge node. ``update_state``/``update_health`` are thread-safe and never block.

    As the daemon's output it takes the same state and health payloads as MQTT (`Sink`): a
    source's state and health become its device's metrics.
    """

    def __init__(
        self,
        conn: MqttSettings,
        settings: SparkplugSettings,
        sources: Iterable[str],
        *,
        version: str | None = None,
    ) -> None:
        self.conn, self.settings, self.version = conn, settings, version
        g, n = settings.group_id, settings.edge_node_id
        self.topic_nbirth = f"{NAMESPACE}/{g}/NBIRTH/{n}"
        self.topic_ndeath = f"{NAMESPACE}/{g}/NDEATH/{n}"
        self.topic_ncmd = f"{NAMESPACE}/{g}/NCMD/{n}"
        self.topic_state = (
            f"{NAMESPACE}/STATE/{settings.primary_host_id}" if settings.primary_host_id else None
        )
        self.client_id = settings.client_id or f"{conn.client_id}-spb"
        conn.read_password()  # fail early, naming the variable or file
        self._bdseq_store = BdSeqStore(settings.bdseq_path)
        self.bdseq: int | None = None
        self.seq = 0
        self._sources: list[str] = list(sources)
        self._values: dict[str, dict[str, Any]] = {s: {} for s in self._sources}
        self._aliases: dict[tuple[str, str], int] = {}
        self._held: deque[_Held] = deque()
        self._host_online = self.topic_state is None
        self._host_ts = -1
        self._born = False
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._client: mqtt.Client | None = None
        self._sid = 0
        self._connected = False
        self._backoff = conn.reconnect_min_s
        self._next_attempt = 0.0
        self._thread: threading.Thread | None = None
        self._guard = CallbackGuard(log, "Sparkplug")
        self.counters = {
            "births_total": 0,
            "data_published_total": 0,
            "historical_published_total": 0,
            "held_dropped_total": 0,
            "rebirth_requests_total": 0,
            "ncmd_errors_total": 0,  # NCMDs that are not a readable Sparkplug B payload
        }

    # ------------------------------------------------------------------ public API
    def start(self) -> SparkplugNode:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sonitor-sparkplug", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Publish NDEATH (a clean exit is a death too) and disconnect."""
        if self._thread is not None:
            self._queue.put(("stop", timeout))
            self._thread.join(timeout + 5.0)
            self._thread = None

    def update_state(self, source: str, payload: dict[str, Any]) -> None:
        t = payload.get("time")
        self._queue.put(("data", source, _ms(t), state_metrics(payload)))

    def update_health(self, source: str, payload: dict[str, Any]) -> None:
        t = payload.get("time")
        self._queue.put(("data", source, _ms(t), health_metrics(payload)))

    def set_sources(self, sources: Iterable[str]) -> None:
        """A reload changed the sources: DDEATH for removed ones, then a full rebirth."""
        self._queue.put(("sources", list(sources)))

    # the daemon's updates (Sink)
    def on_state(self, source: str, payload: dict[str, Any]) -> None:
        self.update_state(source, payload)

    def on_health(self, source: str, payload: dict[str, Any]) -> None:
        self.update_health(source, payload)

    def on_sources(self, machines: Mapping[str, str]) -> None:
        self.set_sources(list(machines))

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def born(self) -> bool:
        return self._born

    @property
    def callback_errors(self) -> int:
        """Exceptions caught in this node's paho callbacks (logged, ignored)."""
        return self._guard.errors

    # ------------------------------------------------------------------ control thread
    def _run(self) -> None:
        while True:
            try:
                if self._client is None and time.monotonic() >= self._next_attempt:
                    self._open_session()
                try:
                    msg = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if msg[0] == "stop":
                    self._shutdown(msg[1])
                    return
                self._handle(msg)
            except Exception:  # noqa: BLE001 - keep the node alive; log and go on
                log.exception("Sparkplug control loop error (continuing)")
                time.sleep(0.1)

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "data":
            self._on_data(msg[1], msg[2], msg[3])
        elif kind == "sources":
            self._on_sources(msg[1])
        elif msg[1] != self._sid:
            return  # a late callback of an ended session
        elif kind == "connected":
            self._connected = True
            self._backoff = self.conn.reconnect_min_s
            log.info("Sparkplug node %s connected (bdSeq %s)", self.client_id, self.bdseq)
            self._client.subscribe(self.topic_ncmd, qos=1)  # type: ignore[union-attr]
            if self.topic_state:
                self._client.subscribe(self.topic_state, qos=1)  # type: ignore[union-attr]
            self._maybe_birth()
        elif kind == "ended":
            self._end_session(msg[2])
        elif kind == "message":
            self._on_message(msg[2], msg[3])

    def _open_session(self) -> None:
        self._sid += 1
        sid = self._sid
        try:
            # we reconnect ourselves: every session needs a new will (the next bdSeq)
            client = paho_client(self.conn, self.client_id, reconnect_on_failure=False)
        except ConfigError as exc:  # e.g. the password file went away: retry with backoff
            log.error("Sparkplug: %s; retrying in %g s", exc, self._backoff)
            self._end_session(str(exc))
            return
        self.bdseq = self._bdseq_store.next()
        client.reconnect_delay_set(0.01, 0.01)  # type: ignore[arg-type]
        will = encode_payload(
            [Metric(name=BDSEQ, datatype=DataType.INT64, value=self.bdseq)],
            timestamp=_ms(time.time()),
        )
        client.will_set(self.topic_ndeath, will, qos=1, retain=False)
        post = self._queue.put

        def on_connect(c, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
            if reason_code.is_failure:
                log.error("Sparkplug: broker refused the connection: %s", reason_code)
            else:
                post(("connected", sid))

        guard = self._guard.wrap
        client.on_connect = guard("on_connect", on_connect)
        client.on_connect_fail = guard(
            "on_connect_fail", lambda c, u: post(("ended", sid, "connection failed"))
        )
        client.on_disconnect = guard(
            "on_disconnect", lambda c, u, f, rc, p: post(("ended", sid, str(rc)))
        )
        client.on_message = guard(
            "on_message", lambda c, u, m: post(("message", sid, m.topic, m.payload))
        )
        self._client = client
        client.connect_async(self.conn.host, self.conn.port, keepalive=self.conn.keepalive_s)
        client.loop_start()

    def _end_session(self, reason: str) -> None:
        if self._client is not None:
            self._client.loop_stop()
        if self._connected:
            log.warning("Sparkplug connection lost (%s); reconnecting", reason)
        self._client, self._connected, self._born = None, False, False
        self._host_online = self.topic_state is None  # wait for the host's STATE again
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.conn.reconnect_max_s)

    def _shutdown(self, timeout: float) -> None:
        client = self._client
        if client is not None and self._connected:
            death = encode_payload(
                [Metric(name=BDSEQ, datatype=DataType.INT64, value=self.bdseq)],
                timestamp=_ms(time.time()),
            )
            info = client.publish(self.topic_ndeath, death, qos=1)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
            client.disconnect()
        if client is not None:
            client.loop_stop()
        self._client, self._connected, self._born = None, False, False

    # ------------------------------------------------------------------ births and data
    def _publishable(self) -> bool:
        return self._connected and self._born

    def _maybe_birth(self) -> None:
        if self._connected and self._host_online and not self._born:
            self._birth()
            self._flush_held()

    def _publish(self, topic: str, metrics: list[Metric]) -> None:
        assert self._client is not None
        payload = encode_payload(metrics, timestamp=_ms(time.time()), seq=self.seq)
        self._client.publish(topic, payload, qos=0, retain=False)
        self.seq = next_seq(self.seq)

    def _device_topic(self, kind: str, source: str) -> str:
        g, n = self.settings.group_id, self.settings.edge_node_id
        return f"{NAMESPACE}/{g}/{kind}/{n}/{source}"

    def _birth(self) -> None:
        """NBIRTH (seq 0) then one DBIRTH per source; aliases are (re)assigned here."""
        now = _ms(time.time())
        self.seq = 0
        self._aliases = {}
        alias = 1
        node_metrics = [
            Metric(name=BDSEQ, timestamp=now, datatype=DataType.INT64, value=self.bdseq),
            Metric(
                name=REBIRTH, alias=alias, timestamp=now, datatype=DataType.BOOLEAN, value=False
            ),
        ]
        self._aliases[("", REBIRTH)] = alias
        if self.version:
            alias += 1
            node_metrics.append(
                Metric(
                    name="Properties/sonitor version",
                    alias=alias,
                    timestamp=now,
                    datatype=DataType.STRING,
                    value=self.version,
                )
            )
        self._publish(self.topic_nbirth, node_metrics)
        for source in self._sources:
            metrics = []
            for name, datatype in DEVICE_METRICS:
                alias += 1
                self._aliases[(source, name)] = alias
                value = self._values[source].get(name)
                metrics.append(Metric(name, alias, now, datatype, value))
            self._publish(self._device_topic("DBIRTH", source), metrics)
        self._born = True
        self.counters["births_total"] += 1

    def _on_data(self, source: str, timestamp: int, values: dict[str, Any]) -> None:
        current = self._values.get(source)
        if current is None:
            return  # not (or no longer) a configured source
        changed = {k: v for k, v in values.items() if k not in current or current[k] != v}
        current.update(values)
        if not changed:
            return
        if self._publishable():
            self._publish_ddata(source, timestamp, changed, historical=False)
            return
        if len(self._held) >= self.settings.store_max_messages:
            self._held.popleft()
            self.counters["held_dropped_total"] += 1
        self._held.append(_Held(source, timestamp, changed))

    def _publish_ddata(
        self, source: str, timestamp: int, values: dict[str, Any], *, historical: bool
    ) -> None:
        metrics = [
            Metric(
                alias=self._aliases[(source, name)],
                timestamp=timestamp,
                datatype=_TYPES[name],
                value=value,
                is_historical=historical,
                send_datatype=False,
            )
            for name, value in values.items()
        ]
        self._publish(self._device_topic("DDATA", source), metrics)
        key = "historical_published_total" if historical else "data_published_total"
        self.counters[key] += 1

    def _flush_held(self) -> None:
        while self._held and self._publishable():
            rec = self._held.popleft()
            if rec.source in self._values:
                self._publish_ddata(rec.source, rec.timestamp, rec.values, historical=True)

    def _on_sources(self, sources: list[str]) -> None:
        removed = [s for s in self._sources if s not in sources]
        if self._publishable():
            for source in removed:
                self._publish(self._device_topic("DDEATH", source), [])
        self._sources = list(sources)
        self._values = {s: self._values.get(s, {}) for s in sources}
        if self._born:
            self._born = False
            self._maybe_birth()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.topic_state:
            self._on_host_state(payload)
        elif topic == self.topic_ncmd:
            try:
                _, _, metrics = decode_payload(payload)
            except SparkplugDecodeError as exc:
                self.counters["ncmd_errors_total"] += 1
                log.warning("Sparkplug NCMD on %s ignored: %s", topic, exc)
                return
            rebirth_alias = self._aliases.get(("", REBIRTH))
            for m in metrics:
                asked = m.name == REBIRTH or (m.name is None and m.alias == rebirth_alias)
                if asked and m.value is True:
                    self.counters["rebirth_requests_total"] += 1
                    log.info("Sparkplug rebirth requested")
                    self._born = False
                    self._maybe_birth()

    def _on_host_state(self, payload: bytes) -> None:
        try:
            data = json.loads(payload)
            online, ts = data["online"], data.get("timestamp", 0)
            if not isinstance(online, bool) or not isinstance(ts, int):
                raise ValueError(f"online={online!r}, timestamp={ts!r}")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("Sparkplug: ignoring malformed STATE on %s (%s)", self.topic_state, exc)
            return
        if ts < self._host_ts:
            return  # an older STATE than one already seen (spec: ignore it)
        self._host_ts = ts
        was = self._host_online
        self._host_online = online
        if online and not was:
            log.info("Sparkplug primary host %s online", self.settings.primary_host_id)
            self._born = False
            self._maybe_birth()
        elif not online and was:
            log.warning(
                "Sparkplug primary host %s offline: holding data (up to %d records)",
                self.settings.primary_host_id,
                self.settings.store_max_messages,
            )
            self._born = False


def _ms(t: Any) -> int:
    """Epoch seconds -> integer ms (now when missing)."""
    if isinstance(t, int | float) and not isinstance(t, bool) and t == t:
        return int(round(float(t) * 1000))
    return int(time.time() * 1000)
