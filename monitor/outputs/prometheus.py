"""Prometheus metrics and the HTTP health endpoint of the daemon.

Naming follows Prometheus conventions (one `sonitor_` prefix, base units, `_total` counters,
`_info` gauges for build and model metadata). Every metric is declared once in `METRICS`; the
README table and the end-to-end Prometheus test both read that list, so a metric cannot be
documented and never recorded. Label sets are initialised to 0 for every configured source at
start, so dashboards and alert rules see series before the first event.

The server binds 127.0.0.1 by default: metrics reveal plant details and need no remote write.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from monitor import __version__
from monitor.alerting.machine import AlertEvent, AlertStatus
from monitor.outputs.sink import Sink, WindowResult

log = logging.getLogger(__name__)

PREFIX = "sonitor_"
# Stages of one window's way through the pipeline (latency histogram label `stage`).
STAGES = ("capture_to_window", "frontend", "separator", "encoder", "scoring", "publish")
SEVERITIES = ("warning", "critical")
EVENT_TYPES = ("start", "update", "end")
DROP_REASONS = ("backlog",)
INVALID_REASONS = ("nonfinite_audio", "nonfinite_score", "silent", "clipped")
RELOAD_RESULTS = ("success", "failure")
ACK_RESULTS = (
    "enrolled", "invalid", "unknown_event", "already_acked", "capture_unhealthy",
    "model_changed", "failed",
)  # fmt: skip
MQTT_ERROR_KINDS = ("command", "sparkplug_ncmd", "callback", "network_thread", "internal")
# Buckets around the real-time budget (a hop of ~1 s): sub-millisecond to 10 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # without the prefix; counters without `_total` (prometheus_client appends it)
    kind: str  # "counter" | "gauge" | "histogram" | "info"
    labels: tuple[str, ...]
    help: str

    @property
    def exposed(self) -> str:
        """The name a PromQL query uses (counters end in _total, histograms in _count etc.)."""
        full = PREFIX + self.name
        return full + "_total" if self.kind == "counter" else full


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("build_info", "info", ("version", "python", "onnxruntime"), "Build of the daemon."),
    MetricSpec(
        "model_info", "info", ("model_version", "recipe", "package"), "Loaded model package."
    ),
    MetricSpec("source_info", "info", ("source", "machine", "type"), "Configured sources."),
    MetricSpec("start_time_seconds", "gauge", (), "Unix time the daemon started."),
    MetricSpec("capture_up", "gauge", ("source",), "1 when the source's capture is healthy."),
    MetricSpec("capture_samples", "counter", ("source",), "16 kHz samples received per source."),
    MetricSpec(
        "capture_overflows",
        "counter",
        ("source",),
        "PortAudio input overflows (driver lost audio).",
    ),
    MetricSpec(
        "capture_lost_samples",
        "counter",
        ("source",),
        "Samples overwritten in the capture ring before they were read (daemon too slow).",
    ),
    MetricSpec(
        "capture_nonfinite_samples",
        "counter",
        ("source",),
        "NaN/inf samples received (never scored; the source turns `nonfinite`).",
    ),
    MetricSpec("capture_reopens", "counter", ("source",), "Device reopen attempts per source."),
    MetricSpec(
        "capture_last_sample_timestamp_seconds",
        "gauge",
        ("source",),
        "Unix time audio last arrived from the source.",
    ),
    MetricSpec("input_level_dbfs", "gauge", ("source",), "Input RMS level of the last window."),
    MetricSpec("windows", "counter", ("source",), "Windows scored per source."),
    MetricSpec(
        "windows_dropped",
        "counter",
        ("source", "reason"),
        "Windows dropped unscored (backlog: inference fell behind).",
    ),
    MetricSpec(
        "windows_invalid",
        "counter",
        ("source", "reason"),
        "Windows not scored or not alerted on: non-finite audio or score, silence, clipping.",
    ),
    MetricSpec("pending_windows", "gauge", (), "Windows waiting for inference."),
    MetricSpec(
        "processing_lag_seconds",
        "gauge",
        ("source",),
        "Seconds between a window's last sample arriving and its score.",
    ),
    MetricSpec(
        "stage_duration_seconds",
        "histogram",
        ("stage",),
        "Latency per pipeline stage (per window; per batch for separator/encoder).",
    ),
    MetricSpec(
        "last_inference_timestamp_seconds", "gauge", (), "Unix time the last window was scored."
    ),
    MetricSpec("score_raw", "gauge", ("source",), "Anomaly score of the last window."),
    MetricSpec("score_normalised", "gauge", ("source",), "Last score divided by the threshold."),
    MetricSpec("score_smoothed", "gauge", ("source",), "Smoothed normalised score."),
    MetricSpec(
        "score_threshold",
        "gauge",
        ("source",),
        "Raw-score threshold in use (that of the matched operating condition).",
    ),
    MetricSpec(
        "condition",
        "gauge",
        ("source", "condition"),
        "1 for the operating condition the last window matched, 0 for those matched before "
        "(one series per condition of the machine: a handful).",
    ),
    MetricSpec(
        "condition_changes",
        "counter",
        ("source",),
        "Times the matched operating condition changed from one window to the next.",
    ),
    MetricSpec(
        "alert_active",
        "gauge",
        ("source", "severity"),
        "1 while an event of that severity is open.",
    ),
    MetricSpec(
        "alert_events", "counter", ("source", "type"), "Alert lifecycle events (start/update/end)."
    ),
    MetricSpec("source_muted", "gauge", ("source",), "1 while the source is muted (maintenance)."),
    MetricSpec("clips_written", "counter", (), "Event clips written."),
    MetricSpec("clips_dropped", "counter", (), "Event clips dropped (writer queue full/failed)."),
    MetricSpec("clips_deleted", "counter", (), "Event clips deleted by retention."),
    MetricSpec("clips_disk_bytes", "gauge", (), "Bytes used by event clips."),
    MetricSpec("mqtt_connected", "gauge", (), "1 while connected to the broker."),
    MetricSpec("mqtt_outbox_messages", "gauge", (), "Events waiting in the durable outbox."),
    MetricSpec("mqtt_outbox_dropped", "counter", (), "Events dropped from the full outbox."),
    MetricSpec("mqtt_published", "counter", (), "Events acknowledged by the broker."),
    MetricSpec("mqtt_connects", "counter", (), "Successful (re)connections to the broker."),
    MetricSpec(
        "mqtt_errors",
        "counter",
        ("kind",),
        "MQTT failures logged and ignored: `command` (malformed or failed), `sparkplug_ncmd` "
        "(unreadable NCMD), `callback` (exception in a client callback), `network_thread` "
        "(ended unexpectedly; reconnected), `internal`.",
    ),
    MetricSpec("config_reloads", "counter", ("result",), "Config reloads (SIGHUP or command)."),
    MetricSpec(
        "acks",
        "counter",
        ("result",),
        "`ack` commands (false alarms acknowledged over MQTT): `enrolled`, or why refused: "
        "`invalid`, `unknown_event`, `already_acked`, `capture_unhealthy`, `model_changed`, "
        "`failed`.",
    ),
)


class _Sync:
    """Turns a component's cumulative count into counter increments (and survives its reset)."""

    def __init__(self) -> None:
        self._last: dict[Any, float] = {}

    def inc_to(self, child: Any, key: Any, value: float) -> None:
        last = self._last.get(key, 0.0)
        delta = value - last if value >= last else value  # a restarted component starts at 0
        if delta > 0:
            child.inc(delta)
        self._last[key] = value


class Metrics:
    """All daemon metrics on a private registry (tests can build several)."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        disable_created_metrics()  # `_created` series double the cardinality for no use here
        self.registry = registry or CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)  # process_resident_memory_bytes etc.
            PlatformCollector(registry=self.registry)
        self._m: dict[str, Any] = {}
        for spec in METRICS:
            name = PREFIX + spec.name
            if spec.kind == "counter":
                self._m[spec.name] = Counter(name, spec.help, spec.labels, registry=self.registry)
            elif spec.kind in ("gauge", "info"):
                # _info metrics are gauges fixed at 1 (the Prometheus convention for metadata)
                self._m[spec.name] = Gauge(name, spec.help, spec.labels, registry=self.registry)
            elif spec.kind == "histogram":
                self._m[spec.name] = Histogram(
                    name, spec.help, spec.labels, buckets=LATENCY_BUCKETS, registry=self.registry
                )
            else:  # pragma: no cover - table typo
                raise ValueError(f"unknown metric kind {spec.kind!r}")
        self._sync = _Sync()
        self._sources: list[str] = []
        self._set_build_info()
        for stage in STAGES:
            self._m["stage_duration_seconds"].labels(stage=stage)
        for result in RELOAD_RESULTS:
            self._m["config_reloads"].labels(result=result)
        for result in ACK_RESULTS:
            self._m["acks"].labels(result=result)
        for kind in MQTT_ERROR_KINDS:
            self._m["mqtt_errors"].labels(kind=kind)

    def __getitem__(self, name: str) -> Any:
        return self._m[name]

    def _set_build_info(self) -> None:
        try:
            import onnxruntime

            ort = onnxruntime.__version__
        except ImportError:  # pragma: no cover - a hard dependency
            ort = "none"
        self._m["build_info"].labels(
            version=__version__, python=platform.python_version(), onnxruntime=ort
        ).set(1)

    # ------------------------------------------------------------------- configuration-driven
    def init_sources(
        self,
        sources: Iterable[tuple[str, str, str]],
        conditions: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Create every per-source series at 0: (name, machine, type) per source, and one
        `condition` series per operating condition of its machine (``conditions``: machine ->
        names; default the one condition every package has, "source"). Sources no longer
        configured (after a reload) are removed so stale series do not linger."""
        sources = list(sources)
        self._m["condition"].clear()  # a new package may have other conditions
        names = [s[0] for s in sources]
        for old in set(self._sources) - set(names):
            self._remove_source(old)
        self._m["source_info"].clear()
        for name, machine, kind in sources:
            self._m["source_info"].labels(source=name, machine=machine, type=kind).set(1)
            for spec in METRICS:
                if spec.labels == ("source",) and spec.name != "source_info":
                    self._m[spec.name].labels(source=name)
            for reason in DROP_REASONS:
                self._m["windows_dropped"].labels(source=name, reason=reason)
            for reason in INVALID_REASONS:
                self._m["windows_invalid"].labels(source=name, reason=reason)
            for sev in SEVERITIES:
                self._m["alert_active"].labels(source=name, severity=sev)
            for kind_ in EVENT_TYPES:
                self._m["alert_events"].labels(source=name, type=kind_)
            for cond in (conditions or {}).get(machine, ("source",)):
                self._m["condition"].labels(source=name, condition=cond).set(0)
        self._sources = names

    def _remove_source(self, name: str) -> None:
        for spec in METRICS:
            if "source" not in spec.labels or spec.name == "source_info":
                continue
            metric = self._m[spec.name]
            for labels in list(metric._metrics):  # prometheus_client keeps children by label tuple
                if dict(zip(spec.labels, labels, strict=True)).get("source") == name:
                    metric.remove(*labels)

    def set_model_info(self, model_version: str, recipe: str, package: str) -> None:
        info = self._m["model_info"]
        info.clear()
        info.labels(model_version=model_version, recipe=recipe, package=package).set(1)

    # ------------------------------------------------------------------------------ helpers
    def observe_stage(self, stage: str, seconds: float) -> None:
        self._m["stage_duration_seconds"].labels(stage=stage).observe(max(0.0, seconds))

    def sync_counter(self, name: str, value: float, **labels: str) -> None:
        """Bring counter `name` up to a component's cumulative `value`."""
        child = self._m[name].labels(**labels) if labels else self._m[name]
        self._sync.inc_to(child, (name, tuple(sorted(labels.items()))), float(value))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsSink(Sink):
    """The daemon's outputs as series: per-window scores and counts, alert events, alarm gauges.

    Instrumentation of the pipeline itself (stage latencies, capture counters, the queue) is
    recorded where it is measured; this sink sees what the other outputs see. The daemon puts it
    after MQTT, so an event is counted only once the outbox holds it: a scrape never sees an
    event that could still be lost. ``alert_status(source)`` reads the source's alarm after its
    events (for the active/muted gauges); None for a source no longer known.
    """

    def __init__(self, metrics: Metrics, alert_status: Callable[[str], AlertStatus | None]) -> None:
        self.metrics = metrics
        self.alert_status = alert_status
        self.conditions: dict[str, str] = {}  # source -> condition its last window matched

    def on_window(self, result: WindowResult) -> None:
        m, src = self.metrics, result.source
        if result.skipped is not None and result.skipped != "unhealthy":
            m["windows_invalid"].labels(source=src, reason=result.skipped).inc()
        elif result.skipped is None and not math.isfinite(result.raw):
            m["windows_invalid"].labels(source=src, reason="nonfinite_score").inc()
        if result.skipped is not None:
            return
        m["windows"].labels(source=src).inc()
        m["last_inference_timestamp_seconds"].set(time.time())
        lag = time.monotonic() - result.ready_monotonic
        m["processing_lag_seconds"].labels(source=src).set(lag)
        m["input_level_dbfs"].labels(source=src).set(result.level_dbfs)
        m["score_threshold"].labels(source=src).set(result.threshold)
        if result.condition is not None:
            before = self.conditions.get(src)
            if before is not None and before != result.condition:
                m["condition"].labels(source=src, condition=before).set(0)
                m["condition_changes"].labels(source=src).inc()
            m["condition"].labels(source=src, condition=result.condition).set(1)
            self.conditions[src] = result.condition
        for key, value in (("score_raw", result.raw), ("score_normalised", result.normalised)):
            if math.isfinite(value):
                m[key].labels(source=src).set(value)
        if math.isfinite(result.smoothed):
            m["score_smoothed"].labels(source=src).set(result.smoothed)

    def on_event(self, event: AlertEvent, payload: dict[str, Any]) -> None:
        if event.kind == "test":
            return  # a test alert checks the delivery path; the source raised nothing
        self.metrics["alert_events"].labels(source=event.source, type=event.type).inc()
        status = self.alert_status(event.source)
        if status is None:
            return
        for sev in SEVERITIES:
            active = int(status.state == "active" and status.severity == sev)
            self.metrics["alert_active"].labels(source=event.source, severity=sev).set(active)
        self.metrics["source_muted"].labels(source=event.source).set(int(status.state == "muted"))


HealthFn = Callable[[], tuple[bool, dict[str, Any]]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.render(), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/health"):
            try:
                ok, body = self.server.health()
            except Exception as exc:  # a bug in a health check must still answer
                log.exception("health check failed")
                ok, body = False, {"status": "error", "error": str(exc)}
            data = json.dumps(body, sort_keys=True).encode()
            self._send(200 if ok else 503, data, "application/json")
        elif path == "/":
            self._send(200, b"sonitor: /metrics /healthz\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http %s - " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], metrics: Metrics, health: HealthFn) -> None:
        super().__init__(addr, _Handler)
        self.metrics = metrics
        self.health = health

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that hangs up mid-response (timed out, restarted) is routine: a debug line,
        not socketserver's traceback on stderr, which is the journal. Anything else is a bug of
        ours: logged with its traceback (at error priority), and the server carries on."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            log.debug("http %s: the client went away (%s)", client_address[0], exc)
        else:
            log.error("http request from %s failed", client_address[0], exc_info=True)


class MetricsServer:
    """Serves `/metrics` and `/healthz` (200 healthy / 503 not, JSON body) on a thread."""

    def __init__(
        self, metrics: Metrics, health: HealthFn, host: str = "127.0.0.1", port: int = 9464
    ) -> None:
        self._server = _Server((host, port), metrics, health)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sonitor-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever on a server never started
            self._server.shutdown()
            self._thread.join(timeout=2)
        self._server.server_close()


def metrics_markdown() -> str:
    """The metric reference (`docs/metrics.md`), generated from `METRICS` so it cannot drift."""
    lines = [
        "# Prometheus metrics",
        "",
        "Generated by `python -m monitor.outputs.prometheus`; do not edit.",
        "Served on `/metrics` (127.0.0.1:9464 by default); `/healthz` answers 200 or 503 with a",
        "JSON body saying which part of the pipeline (capture, inference, broker) is stalled.",
        "",
        "| metric | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    for m in METRICS:
        name = m.exposed if m.kind != "info" else PREFIX + m.name
        labels = ", ".join(f"`{label}`" for label in m.labels)
        lines.append(f"| `{name}` | {m.kind} | {labels} | {m.help} |")
    lines += ["", f"Latency stages (`stage` label): {', '.join(f'`{s}`' for s in STAGES)}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(metrics_markdown(), end="")
