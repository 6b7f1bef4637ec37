"""deploy/prometheus: the scrape config and the alert rules, checked by promtool and against the
daemon's real metric names; the rules' unit tests (sonitor-rules.test.yml) make every alert fire
where it should and stay quiet where it should."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitor.config import MetricsConfig
from monitor.outputs.prometheus import METRICS, PREFIX

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
CONFIG = DEPLOY / "prometheus.yml"
RULES = DEPLOY / "sonitor-rules.yml"
RULE_TESTS = DEPLOY / "sonitor-rules.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
# The alerts the plant engineer relies on (issue 7); more may exist.
REQUIRED_ALERTS = {
    "SonitorDown",
    "SonitorCaptureDead",
    "SonitorInferenceStalled",
    "SonitorDrops",
    "SonitorOutboxGrowing",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY)


def rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@needs_promtool
def test_promtool_accepts_the_scrape_config_without_warnings() -> None:
    res = promtool("check", "config", CONFIG.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WARNING" not in res.stdout + res.stderr, res.stdout + res.stderr


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    res = promtool("check", "rules", RULES.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(rules())} rules found" in res.stdout


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    res = promtool("test", "rules", RULE_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule that never fires fails its unit test (so the pass above means something)."""
    broken = RULES.read_text().replace('expr: up{job="sonitor"} == 0', "expr: up == 42")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    res = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert res.returncode != 0 and "SonitorDown" in res.stdout + res.stderr


def test_rules_use_only_metrics_the_daemon_exports() -> None:
    exported = {spec.exposed for spec in METRICS}
    for rule in rules():
        for name in re.findall(r"\b(sonitor_[a-z_]+)", rule["expr"]):
            assert name in exported, (
                f"{rule['alert']}: {name} is not in monitor/outputs/prometheus.py"
            )
    used = {n for r in rules() for n in re.findall(r"\b(sonitor_[a-z_]+)", r["expr"])}
    assert used, "the rules reference no sonitor metric"
    assert all(n.startswith(PREFIX) for n in used)


def test_every_alert_tells_the_engineer_what_to_do() -> None:
    names = {rule["alert"] for rule in rules()}
    assert names >= REQUIRED_ALERTS, REQUIRED_ALERTS - names
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [
        case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]  # fmt: skip
    for rule in rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} never fires in a test"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} is never quiet in a test"


def test_scrape_job_matches_the_rules_and_the_daemon_default() -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    assert RULES.name in cfg["rule_files"]
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    assert "sonitor" in jobs and 'job="sonitor"' in RULES.read_text()
    targets = [t for sc in jobs["sonitor"]["static_configs"] for t in sc["targets"]]
    defaults = MetricsConfig()
    assert f"{defaults.host}:{defaults.port}" in targets
