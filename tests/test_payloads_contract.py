"""The MQTT payloads are an API: exact field sets and JSON types, frozen against a fixture.

If this fails because you added a field on purpose, add it to tests/fixtures/mqtt_payloads_v1.json
AND to docs/mqtt.md. Renaming, removing or retyping a field needs schema v2 instead.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from monitor.alerting.machine import AlertEvent, AlertMachine, AlertPolicy, AlertStatus
from monitor.outputs import payloads
from monitor.outputs.mqtt import COMMAND_VERBS, Topics

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = json.loads((ROOT / "tests" / "fixtures" / "mqtt_payloads_v1.json").read_text())
DOCS = (ROOT / "docs" / "mqtt.md").read_text()


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def check(payload: dict[str, Any], kind: str) -> None:
    """Exact field set and allowed types, after a real JSON round trip."""
    spec = CONTRACT[kind]
    decoded = json.loads(payloads.encode(payload))
    assert set(decoded) == set(spec), (
        f"{kind} fields changed: added {sorted(set(decoded) - set(spec))}, "
        f"removed {sorted(set(spec) - set(decoded))}"
    )
    for key, value in decoded.items():
        assert json_type(value) in spec[key], f"{kind}.{key}: {json_type(value)} not in {spec[key]}"
    assert decoded["v"] == CONTRACT["v"] == payloads.SCHEMA_VERSION


def lifecycle_events() -> list[AlertEvent]:
    """Real events of every kind and type from the state machine."""
    m = AlertMachine("pump1", AlertPolicy(n_above=2, m_windows=3, k_below=1, min_hold_s=0.0))
    t = 1_714_564_800.0
    events: list[AlertEvent] = []
    for i, s in enumerate([1.2, 1.5, 2.5, 2.6, 2.7, 0.1]):
        events += m.step(t + i, s)
    events += m.set_health(t + 40, False, "no_frames")
    events += m.set_health(t + 41, False, "silence")
    events += m.set_health(t + 42, True)
    return events


@pytest.mark.parametrize("with_values", [True, False])
def test_event_payload_contract(with_values: bool) -> None:
    events = lifecycle_events()
    seen = {(e.kind, e.type) for e in events}
    assert seen == {
        ("anomaly", "start"),
        ("anomaly", "update"),
        ("anomaly", "end"),
        ("capture", "start"),
        ("capture", "update"),
        ("capture", "end"),
    }
    for event in events:
        kw = {"threshold": 0.32, "model_version": "m-1", "clip": "x.wav"} if with_values else {}
        p = payloads.event_payload(event, **kw)
        check(p, "event")
        enums = CONTRACT["enums"]
        assert p["kind"] in enums["event.kind"]
        assert p["type"] in enums["event.type"]
        assert p["severity"] in enums["event.severity"]
        assert p["replayed"] is False


def test_event_payload_values() -> None:
    start = lifecycle_events()[0]
    p = payloads.event_payload(start, threshold=0.5, model_version="v7", clip="c.wav")
    assert p["id"] == start.event_id and p["seq"] == 0 and p["type"] == "start"
    assert p["time_iso"] == "2024-05-01T12:00:01.000Z"
    assert p["duration_s"] == 1.0 and p["end_time"] is None
    assert p["threshold"] == 0.5 and p["model_version"] == "v7" and p["clip"] == "c.wav"


def test_state_payload_contract() -> None:
    m = AlertMachine("pump1")
    for status, values in [
        (m.status(), {}),
        (
            AlertStatus("active", "critical", "pump1-1", 1.0, True, None, 3, 0, 1),
            {
                "score": 0.4,
                "normalised_score": 1.3,
                "threshold": 0.3,
                "level_dbfs": -20.0,
                "model_version": "v1",
            },
        ),
        (m.status(), {"score": math.nan, "normalised_score": math.inf, "level_dbfs": -math.inf}),
    ]:
        p = payloads.state_payload("pump1", time=1_714_564_800.0, status=status, **values)
        check(p, "state")
        assert p["alarm"] in CONTRACT["enums"]["state.alarm"]
        assert p["severity"] in CONTRACT["enums"]["state.severity"]


def test_health_payload_contract() -> None:
    check(payloads.health_payload("pump1", time=1.0, healthy=True), "health")
    check(
        payloads.health_payload(
            "pump1",
            time=1.0,
            healthy=False,
            status="no_frames",
            detail="no audio for 30 s",
            level_dbfs=-90.0,
            last_frame_time=0.5,
            overflows_total=3,
            reopen_attempts=2,
        ),
        "health",
    )


def test_availability_and_topics_and_verbs() -> None:
    assert CONTRACT["availability"] == [
        payloads.AVAILABILITY_ONLINE,
        payloads.AVAILABILITY_OFFLINE,
        payloads.AVAILABILITY_STOPPED,
    ]
    t = Topics("plant/sonitor")
    fmt = {"prefix": "plant/sonitor", "source": "pump1", "verb": "mute"}
    spec = {k: v.format(**fmt) for k, v in CONTRACT["topics"].items()}
    assert spec == {
        "availability": t.availability,
        "state": t.state("pump1"),
        "health": t.health("pump1"),
        "events": t.events("pump1"),
        "command": t.command("mute"),
        "source_command": t.command("mute", "pump1"),
    }
    assert list(COMMAND_VERBS) == CONTRACT["command_verbs"]


def test_replayed_flag_is_the_only_change_on_replay() -> None:
    p = payloads.event_payload(lifecycle_events()[0])
    raw = payloads.encode(p)
    replayed = json.loads(payloads.mark_replayed(raw))
    assert replayed == {**p, "replayed": True}
    assert payloads.mark_replayed(b"not json") == b"not json"
    assert payloads.mark_replayed(b"[1, 2]") == b"[1, 2]"


def test_encode_rejects_nan_but_builders_never_produce_it() -> None:
    with pytest.raises(ValueError):
        payloads.encode({"x": math.nan})
    assert payloads.number(math.nan) is None and payloads.number(True) is None
    assert payloads.number("1.5") == 1.5 and payloads.iso(None) is None


def test_docs_document_every_field() -> None:
    """docs/mqtt.md has a table row for every field of every payload."""
    for kind in ("event", "state", "health"):
        section = DOCS.split(f"## {kind.capitalize()}", 1)[1].split("\n## ", 1)[0]
        documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))
        assert documented == set(CONTRACT[kind]), (
            f"docs/mqtt.md {kind} table: missing {sorted(set(CONTRACT[kind]) - documented)}, "
            f"extra {sorted(documented - set(CONTRACT[kind]))}"
        )
    for verb in CONTRACT["command_verbs"]:
        assert f"| `{verb}` |" in DOCS
