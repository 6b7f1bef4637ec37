"""Daemon metrics: naming, zero-initialised label sets, the HTTP server and /healthz."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.outputs.prometheus import METRICS, PREFIX, STAGES, Metrics, MetricsServer


def families(m: Metrics) -> dict[str, list]:
    return {fam.name: fam.samples for fam in text_string_to_metric_families(m.render().decode())}


def test_names_follow_prometheus_conventions() -> None:
    names = [spec.name for spec in METRICS]
    assert len(names) == len(set(names))
    for spec in METRICS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), spec.name
        assert not spec.name.endswith("_total"), "prometheus_client appends _total to counters"
        if spec.kind == "info":
            assert spec.name.endswith("_info")
        # base units only: no ms, percent, kilobytes
        assert not re.search(r"(milli|_ms$|percent|kilo|_kb$|_mb$)", spec.name), spec.name
        if "latency" in spec.name or "duration" in spec.name or "lag" in spec.name:
            assert spec.name.endswith("_seconds")
        assert spec.help.endswith("."), spec.name
        assert "event_id" not in spec.labels and "file" not in spec.labels  # bounded labels


def test_every_documented_metric_is_exposed_with_source_labels_at_zero() -> None:
    m = Metrics(process=False)
    m.init_sources([("fan1", "fan", "file"), ("pump1", "pump", "device")])
    m.set_model_info("abc123", "stage1", "pkg")
    fams = families(m)
    for spec in METRICS:
        base = PREFIX + spec.name
        assert base in fams, f"{base} not exposed"
        samples = fams[base]
        assert samples, f"{base} has no series before any event"
        if "source" in spec.labels:
            sources = {s.labels.get("source") for s in samples}
            assert {"fan1", "pump1"} <= sources, base
    dropped = {s.name: s.value for s in fams[PREFIX + "windows_dropped"]}
    assert dropped[PREFIX + "windows_dropped_total"] == 0
    stages = {s.labels["stage"] for s in fams[PREFIX + "stage_duration_seconds"]}
    assert stages == set(STAGES)
    info = fams[PREFIX + "model_info"][0]
    assert info.labels["model_version"] == "abc123" and info.value == 1
    assert not any(name.endswith("_created") for name in m.render().decode().split())


def test_counter_sync_survives_component_restart() -> None:
    m = Metrics(process=False)
    m.init_sources([("a", "fan", "file")])
    m.sync_counter("capture_lost_samples", 100, source="a")
    m.sync_counter("capture_lost_samples", 250, source="a")
    m.sync_counter("capture_lost_samples", 40, source="a")  # the source restarted: from 0 again
    m.sync_counter("mqtt_published", 3)
    fams = families(m)
    lost = {s.name: s.value for s in fams[PREFIX + "capture_lost_samples"]}
    assert lost[PREFIX + "capture_lost_samples_total"] == 290
    assert fams[PREFIX + "mqtt_published"][0].value == 3


def test_reload_removes_stale_sources() -> None:
    m = Metrics(process=False)
    m.init_sources([("a", "fan", "file"), ("b", "pump", "file")])
    m.init_sources([("a", "fan", "file")])
    text = m.render().decode()
    assert 'source="a"' in text and 'source="b"' not in text


def test_process_metrics_for_resident_memory() -> None:
    assert "process_resident_memory_bytes" in Metrics().render().decode()


def test_server_serves_metrics_and_health_on_loopback() -> None:
    m = Metrics(process=False)
    m.init_sources([("a", "fan", "file")])
    state = {"ok": True}

    def health() -> tuple[bool, dict]:
        return state["ok"], {"status": "ok" if state["ok"] else "unhealthy", "checks": {}}

    server = MetricsServer(m, health, port=0).start()
    host, port = server.address
    assert host == "127.0.0.1"  # the default binds to loopback only
    base = f"http://{host}:{port}"
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert r.status == 200
            assert "sonitor_windows_total" in r.read().decode()
            assert r.headers["Content-Type"].startswith("text/plain")
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert r.status == 200 and json.load(r)["status"] == "ok"
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert info.value.code == 503
        assert json.load(info.value)["status"] == "unhealthy"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert info.value.code == 404
    finally:
        server.stop()


def test_broken_health_check_answers_503_not_crash() -> None:
    def health() -> tuple[bool, dict]:
        raise RuntimeError("bug")

    server = MetricsServer(Metrics(process=False), health, port=0).start()
    host, port = server.address
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5)
        assert info.value.code == 503
        assert json.load(info.value)["error"] == "bug"
    finally:
        server.stop()


def test_port_in_use_and_stop_without_start() -> None:
    first = MetricsServer(Metrics(process=False), lambda: (True, {}), port=0).start()
    try:
        with pytest.raises(OSError):
            MetricsServer(Metrics(process=False), lambda: (True, {}), port=first.address[1])
    finally:
        first.stop()
    MetricsServer(Metrics(process=False), lambda: (True, {}), port=0).stop()  # returns at once


def test_a_scraper_hanging_up_mid_response_prints_nothing(capfd: pytest.CaptureFixture) -> None:
    """A scraper that times out or restarts resets its connection while the answer is being
    written: the server carries on, and stderr (the journal) gets no socketserver traceback."""
    import socket
    import struct
    import threading

    big = {"detail": "x" * 8_000_000}  # far more than socket buffers: the write must meet the RST
    server = MetricsServer(Metrics(process=False), lambda: (True, big), port=0).start()
    try:
        for _ in range(3):
            with socket.create_connection(server.address) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # closed with linger 0: a reset, as a killed scraper leaves it
        with urllib.request.urlopen(f"http://127.0.0.1:{server.address[1]}/metrics") as r:
            assert r.status == 200  # still serving (so the resets were accepted before)
        for t in threading.enumerate():  # let their handlers finish whatever they print
            if "process_request" in t.name:
                t.join(10)
    finally:
        server.stop()
    assert capfd.readouterr().err == ""
