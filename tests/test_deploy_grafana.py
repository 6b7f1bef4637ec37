"""The provisioned Grafana dashboard (deploy/grafana): every query returns data from a real
Prometheus scraping a real daemon, the JSON type-checks against Grafana's published schema, and
the static rules (datasource, ids, descriptions, metric and label names) hold.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from broker import have_mosquitto
from daemon_process import (
    DaemonProcess,
    free_port,
    machine_audio,
    with_anomaly,
    write_config,
    write_wav,
)
from prometheus_server import PrometheusServer, require_prometheus

from monitor.outputs.prometheus import METRICS, PREFIX, Metrics

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sonitor.json"
SCHEMA_CHECK = GRAFANA / "schema-check"
DS_UID = "sonitor-prometheus"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
# What the issue asks the dashboard to show; each must appear in some query.
REQUIRED_METRICS = (
    "score_normalised",
    "score_smoothed",
    "score_raw",
    "score_threshold",
    "alert_active",
    "alert_events",
    "source_muted",
    "input_level_dbfs",
    "capture_up",
    "capture_reopens",
    "capture_overflows",
    "capture_lost_samples",
    "stage_duration_seconds",
    "processing_lag_seconds",
    "windows_dropped",
    "windows_invalid",
    "mqtt_connected",
    "mqtt_outbox_messages",
    "mqtt_outbox_dropped",
    "mqtt_published",
    "clips_disk_bytes",
    "build_info",
    "model_info",
)


# --------------------------------------------------------------------------- dashboard access


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def data_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries data (rows only group panels)."""
    out = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))  # a collapsed row holds its panels
        else:
            out.append(panel)
    return out


def queries(dash: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, target) for every panel target and annotation query."""
    out = []
    for panel in data_panels(dash):
        for target in panel["targets"]:
            out.append((f"panel {panel['title']!r} target {target['refId']}", target))
    for anno in dash["annotations"]["list"]:
        out.append((f"annotation {anno['name']!r}", anno["target"]))
    return out


def exposed_names() -> set[str]:
    """Every sample name the daemon's registry can expose (incl. histogram and process ones)."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    for spec in METRICS:  # counters and histograms with no sample yet still have these names
        names.add(spec.exposed)
        if spec.kind == "histogram":
            names.update(spec.exposed + s for s in ("_bucket", "_count", "_sum"))
    return names


METRIC_RE = re.compile(r"\b((?:sonitor|process)_[a-zA-Z0-9_]+)\b(\{[^}]*\})?")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def metric_refs(expr: str) -> list[tuple[str, list[str]]]:
    """(metric name, label names in its selector) for each metric a PromQL expression names."""
    return [(m.group(1), MATCHER_RE.findall(m.group(2) or "")) for m in METRIC_RE.finditer(expr)]


def spec_labels(name: str) -> set[str] | None:
    for spec in METRICS:
        base = PREFIX + spec.name
        if name in (base, spec.exposed) or (
            spec.kind == "histogram" and name in (base + "_bucket", base + "_count", base + "_sum")
        ):
            return set(spec.labels) | ({"le"} if name.endswith("_bucket") else set())
    return None


# --------------------------------------------------------------------------- static checks


def test_every_panel_has_datasource_unique_id_title_and_description() -> None:
    dash = load_dashboard()
    ids = [p["id"] for p in dash["panels"]] + [
        c["id"] for p in dash["panels"] if p["type"] == "row" for c in p.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    panels = data_panels(dash)
    assert len(panels) >= 20
    for panel in panels:
        name = f"panel {panel.get('id')} {panel.get('title')!r}"
        assert panel.get("title"), name
        assert len(panel.get("description", "")) >= 40, f"{name}: no useful description"
        assert panel.get("datasource") == DS_REF, f"{name}: datasource {panel.get('datasource')}"
        assert panel["targets"], f"{name}: no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{name}: duplicate refIds {refs}"
        for target in panel["targets"]:
            assert target.get("datasource") == DS_REF, f"{name}: target datasource"
            assert target["expr"].strip(), f"{name}: empty query"
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, f"{name}: {pos}"


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_datasource_and_source_variables() -> None:
    dash = load_dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == DS_UID  # the provisioned data source's uid
    assert variables["source"]["query"].startswith("label_values(sonitor_source_info")
    for anno in dash["annotations"]["list"]:
        assert anno["datasource"] == DS_REF and anno["target"]["datasource"] == DS_REF


def test_every_metric_and_label_in_the_queries_exists() -> None:
    dash = load_dashboard()
    known = exposed_names()
    variables = [
        (f"variable {v['name']}", {"expr": v["query"]})
        for v in dash["templating"]["list"]
        if v["type"] == "query"
    ]
    used = set()
    for where, target in queries(dash) + variables:
        refs = metric_refs(target["expr"])
        assert refs, f"{where}: no sonitor metric in {target['expr']!r}"
        for name, labels in refs:
            assert name in known, f"{where}: unknown metric {name!r}"
            used.add(name)
            allowed = spec_labels(name)
            if allowed is not None:  # target labels added by Prometheus are always there
                unknown = set(labels) - allowed - {"instance", "job"}
                assert not unknown, f"{where}: {name} has no label(s) {sorted(unknown)}"
    missing = [m for m in REQUIRED_METRICS if not any(u.startswith(PREFIX + m) for u in used)]
    assert not missing, f"metrics the dashboard must show but does not: {missing}"


def test_metric_parser_catches_a_misspelt_name() -> None:
    refs = metric_refs('rate(sonitor_windows_totl{source=~"$source"}[5m])')
    assert refs == [("sonitor_windows_totl", ["source"])]
    assert "sonitor_windows_totl" not in exposed_names()
    assert spec_labels("sonitor_windows_total") == {"source"}


def test_provisioning_files_point_to_the_dashboard_folder_in_the_readme() -> None:
    readme = (GRAFANA / "README.md").read_text()
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "sonitor.yaml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == DS_UID
    assert source["url"].startswith("http")
    boards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "sonitor.yaml").read_text())
    assert boards["apiVersion"] == 1
    (provider,) = boards["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path.startswith("/") and path in readme, f"{path} is not what the README copies to"
    for name in ("provisioning/datasources/sonitor.yaml", "provisioning/dashboards/sonitor.yaml"):
        assert name in readme


def test_datasource_time_interval_is_the_scrape_interval_of_the_sonitor_job() -> None:
    """$__rate_interval is derived from timeInterval: too short a value gives empty rates."""
    prom_cfg = REPO / "deploy" / "prometheus" / "prometheus.yml"
    if not prom_cfg.exists():
        pytest.skip(f"{prom_cfg} is not in this checkout")
    prom = yaml.safe_load(prom_cfg.read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "sonitor"]
    scrape = job.get("scrape_interval", prom.get("global", {}).get("scrape_interval", "1m"))
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "sonitor.yaml").read_text())
    assert ds["datasources"][0]["jsonData"]["timeInterval"] == scrape


# --------------------------------------------------------------------------- schema check


def run_schema_check(dashboard: Path | None = None) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (Debian: apt-get install nodejs npm)")
    if not (SCHEMA_CHECK / "node_modules" / "@grafana" / "schema").is_dir():
        pytest.skip(
            "the schema checker is not installed: npm ci --prefix deploy/grafana/schema-check"
        )
    args = [node, str(SCHEMA_CHECK / "check.mjs")] + ([str(dashboard)] if dashboard else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_dashboard_type_checks_against_grafana_schema() -> None:
    result = run_schema_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "matches the Grafana schema" in result.stdout


def test_schema_check_rejects_wrong_field_types_and_unknown_options(tmp_path: Path) -> None:
    dash = copy.deepcopy(load_dashboard())
    first, second = [p for p in dash["panels"] if p["type"] == "timeseries"][:2]
    first["gridPos"]["h"] = "8"  # a string where the schema has a number
    second["options"]["legendd"] = {"showLegend": True}  # not a time series option
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dash))
    result = run_schema_check(bad)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"[panel {dash['panels'].index(first)}: {json.dumps(first['title'])}]" in result.stderr
    assert "not assignable to type 'number'" in result.stderr
    assert "'\"legendd\"' does not exist" in result.stderr
    assert not list(SCHEMA_CHECK.glob(".check-*")), "the checker left its work folder"


# --------------------------------------------------------------------------- real Prometheus

SCRAPE_S = 1  # tests/prometheus_server.py scrapes every second
STEP_S = 1
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 * scrape interval)
RATE_INTERVAL = f"{max(STEP_S + SCRAPE_S, 4 * SCRAPE_S)}s"


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $name and ${name} as Grafana does; an unknown variable fails the test."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"unknown variable ${name} in {expr!r}"
        return values[name]

    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)
    return out


def multi_value(values: list[str]) -> str:
    """A multi-value variable in a Prometheus regex matcher, as Grafana formats it: regex
    metacharacters escaped with a backslash that is itself escaped in the PromQL string."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def prom_get(prom: PrometheusServer, path: str, params: list[tuple[str, str]]) -> Any:
    url = f"{prom.url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as exc:  # a query Prometheus rejects: say which and why
        raise AssertionError(f"{path} {params}: {exc.code} {exc.read().decode()}") from exc
    assert body["status"] == "success", body
    return body["data"]


def label_values(prom: PrometheusServer, query: str, start: float, end: float) -> list[str]:
    """Grafana's `label_values(selector, label)` through the series API."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert m, f"unsupported variable query {query!r}"
    params = [("match[]", m.group(1)), ("start", str(start)), ("end", str(end))]
    series = prom_get(prom, "/api/v1/series", params)
    return sorted({s[m.group(2)] for s in series if m.group(2) in s})


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    out = []
    for series in result:
        points = series.get("values") or [series["value"]]
        out += [float(v) for _, v in points if math.isfinite(float(v))]
    return out


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Any]:
    """A real broker where mosquitto is installed (MQTT panels then show real traffic)."""
    if not have_mosquitto():
        yield None
        return
    from broker import broker_session

    yield from broker_session(tmp_path)


def test_every_dashboard_query_returns_data_from_a_real_daemon(tmp_path: Path, broker: Any) -> None:
    require_prometheus()
    from package_fixtures import make_tiny_package

    package = make_tiny_package(tmp_path / "pkg", machines=("fan", "pump"))
    # fan1: 3 s normal, 5 s broadband noise (an alarm), 4 s normal, looped in real time
    fan = write_wav(tmp_path / "fan.wav", with_anomaly("fan", 3, 5, 4))
    pump = write_wav(tmp_path / "pump.wav", machine_audio("pump", 12, seed=7))
    sources = [
        {"name": "fan1", "type": "file", "machine": "fan", "path": str(fan), "loop": True},
        {"name": "pump1", "type": "file", "machine": "pump", "path": str(pump), "loop": True},
    ]
    port = free_port()
    cfg = write_config(
        tmp_path / "cfg.yaml", package, sources, metrics_port=port, broker=broker,
        clips={"pre_roll_seconds": 1.0, "post_roll_seconds": 1.0},
    )  # fmt: skip
    dash = load_dashboard()
    # Prometheus first: its first scrape sees the counters at 0, so the alarm's start is a
    # real increase (as on a plant, where Prometheus outlives daemon restarts).
    with PrometheusServer([f"127.0.0.1:{port}"], tmp_path / "prom") as prom:
        start = time.time()
        daemon = DaemonProcess(cfg)
        try:
            daemon.wait_ready(timeout=90)  # a loaded 2-core CI machine starts it slowly
            prom.wait_for(
                'increase(sonitor_alert_events_total{source="fan1",type="end"}[2m]) > 0', 50
            )
            prom.wait_for('sonitor_windows_total{source="pump1"} > 0', 5)
            prom.wait_for("sonitor_clips_written_total > 0", 15)  # after the post-roll
            # range queries evaluate on a 1 s grid: let the grid pass the newest scrape
            time.sleep(STEP_S + SCRAPE_S)
            end = time.time()
            check_every_query(prom, dash, start, end, broker is not None)
            # the check fails for a broken panel: a misspelt metric in one query
            broken = copy.deepcopy(dash)
            target = data_panels(broken)[0]["targets"][0]
            target["expr"] = target["expr"].replace("sonitor_score_", "sonitor_scores_")
            with pytest.raises(AssertionError, match="broken panels") as info:
                check_every_query(prom, broken, start, end, broker is not None)
            assert "sonitor_scores_" in str(info.value)
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]


def check_every_query(
    prom: PrometheusServer, dash: dict[str, Any], start: float, end: float, mqtt: bool
) -> None:
    values = {
        "__rate_interval": RATE_INTERVAL,
        "__interval": f"{STEP_S}s",
        "__range": f"{math.ceil(end - start) + 1}s",
        "datasource": DS_UID,
    }
    for var in dash["templating"]["list"]:  # in order: later queries use earlier variables
        if var["type"] != "query":
            continue
        found = label_values(prom, substitute(var["query"], values), start, end)
        assert found, f"variable {var['name']}: {var['query']!r} has no values"
        values[var["name"]] = multi_value(found)
    assert values["source"] == "(fan1|pump1)"

    results: dict[str, list[dict[str, Any]]] = {}
    broken = []
    for where, target in queries(dash):
        expr = substitute(target["expr"], values)
        if target.get("instant"):
            params = [("query", expr), ("time", str(end))]
            result = prom_get(prom, "/api/v1/query", params)["result"]
        else:
            params = [("query", expr), ("start", str(start)), ("end", str(end)),
                      ("step", f"{STEP_S}s")]  # fmt: skip
            result = prom_get(prom, "/api/v1/query_range", params)["result"]
        if not finite_values(result):
            broken.append(f"{where}: {expr}")
        results[where] = result
    assert not broken, "queries without data (broken panels):\n" + "\n".join(broken)

    # the data means what the panels say: the anomaly crossed the threshold and raised an
    # alarm on fan1, an annotation marks its start, and the normal pump stayed quiet
    def series(where: str, **labels: str) -> list[float]:
        hits = [
            r for r in results[where] if all(r["metric"].get(k) == v for k, v in labels.items())
        ]
        return finite_values(hits)

    score = "panel 'Anomaly score (normalised)' target A"
    assert max(series(score, source="fan1")) > 1.0
    alarm = "panel 'Alarm state' target A"
    assert max(series(alarm, source="fan1", severity="warning")) == 1
    assert max(series(alarm, source="pump1", severity="warning")) == 0
    started = "annotation 'Alarm started'"
    assert {r["metric"]["source"] for r in results[started]} == {"fan1"}
    assert max(series("panel 'Alarms started in range' target A")) >= 1
    assert max(series("panel 'Event clips in range' target A")) >= 1
    assert max(series("panel 'Event clips on disk' target A")) > 0
    if mqtt:  # the events reached the broker
        assert max(series("panel 'MQTT connected' target A")) == 1
        assert max(series("panel 'Events published' target A")) > 0
