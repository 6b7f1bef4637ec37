"""A real Prometheus scrapes the running daemon: every documented metric has data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Broker, broker_session
from daemon_process import DaemonProcess, machine_audio, write_config, write_wav
from package_fixtures import make_tiny_package
from prometheus_server import PrometheusServer, require_prometheus

from monitor.outputs.prometheus import METRICS, PREFIX

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def exposed_names(spec) -> list[str]:  # noqa: ANN001
    base = PREFIX + spec.name
    if spec.kind == "counter":
        return [base + "_total"]
    if spec.kind == "histogram":
        return [base + "_bucket", base + "_count", base + "_sum"]
    return [base]


def value(prom: PrometheusServer, expr: str) -> float:
    result = prom.query(expr)
    assert result, f"no data for {expr}"
    return float(result[0]["value"][1])


def test_prometheus_scrapes_every_documented_metric(tmp_path: Path, broker: Broker) -> None:
    require_prometheus()
    package = make_tiny_package(tmp_path / "pkg", machines=("fan", "pump"))
    fan = write_wav(tmp_path / "fan.wav", machine_audio("fan", 6, seed=3))
    pump = write_wav(tmp_path / "pump.wav", machine_audio("pump", 6, seed=4))
    sources = [
        {"name": "fan1", "type": "file", "machine": "fan", "path": str(fan), "loop": True},
        {"name": "pump1", "type": "file", "machine": "pump", "path": str(pump), "loop": True},
    ]
    cfg = write_config(tmp_path / "cfg.yaml", package, sources, broker=broker)
    daemon = DaemonProcess(cfg)
    try:
        daemon.wait_ready()
        with PrometheusServer([f"127.0.0.1:{daemon.metrics_port}"], tmp_path / "prom") as prom:
            prom.wait_for('sonitor_windows_total{source="pump1"} > 0', timeout=30)
            prom.wait_for("sonitor_mqtt_connected == 1", timeout=10)
            names = prom.series_names()
            missing = [n for spec in METRICS for n in exposed_names(spec) if n not in names]
            assert not missing, f"documented metrics without data: {missing}"
            assert "process_resident_memory_bytes" in names
            # the pipeline really moves the numbers (not just zero-initialised series)
            for source in ("fan1", "pump1"):
                assert value(prom, f'sonitor_windows_total{{source="{source}"}}') > 0
                assert value(prom, f'sonitor_capture_samples_total{{source="{source}"}}') > 0
                assert value(prom, f'sonitor_capture_up{{source="{source}"}}') == 1
                assert value(prom, f'sonitor_score_raw{{source="{source}"}}') > 0
                assert value(prom, f'sonitor_windows_dropped_total{{source="{source}"}}') == 0
            for stage in ("capture_to_window", "frontend", "encoder", "scoring", "publish"):
                expr = f'sonitor_stage_duration_seconds_count{{stage="{stage}"}}'
                assert value(prom, expr) > 0, stage
            assert value(prom, 'sonitor_stage_duration_seconds_count{stage="separator"}') == 0
            assert value(prom, "sonitor_build_info") == 1
            assert value(prom, "sonitor_model_info") == 1
            assert value(prom, "sonitor_last_inference_timestamp_seconds") > 1e9
            assert value(prom, "process_resident_memory_bytes") > 10e6
            # a latency quantile is computable from the histogram
            p90 = prom.wait_for(
                "histogram_quantile(0.9, sum by (le) "
                '(rate(sonitor_stage_duration_seconds_bucket{stage="encoder"}[10s]))) > 0',
                timeout=15,
            )
            assert 0 < float(p90[0]["value"][1]) < 10
        code, body = daemon.healthz()
        assert code == 200 and body["status"] == "ok", body
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
