"""Open alerts are kept in the outbox with their messages; a restart ends each exactly once.

Real SQLite files and the real `MqttClient.publish_event` path (the client is not started: no
broker is needed to store). The daemon end to end with Mosquitto: tests/test_crash_restart_mqtt.py.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from monitor.alerting.machine import AlertMachine, AlertPolicy
from monitor.outputs.mqtt.client import MqttClient
from monitor.outputs.mqtt.settings import MqttSettings
from monitor.outputs.open_alerts import end_open_alerts, restart_end
from monitor.outputs.outbox import Outbox
from monitor.outputs.payloads import event_payload

T0 = 1_700_000_000.0
POLICY = AlertPolicy(n_above=2, m_windows=3, k_below=2, min_hold_s=0, cooldown_s=0,
                     update_interval_s=0, peak_step=0.5)  # fmt: skip


def client_on(path: Path) -> MqttClient:
    return MqttClient(MqttSettings(outbox_path=path))


def publish(client: MqttClient, events: list, clip: str | None = "pump1-x.wav") -> None:
    for ev in events:
        payload = event_payload(ev, threshold=0.4, model_version="m1", clip=clip)
        client.publish_event(ev.source, payload)


def test_start_and_update_are_kept_open_until_the_end(tmp_path: Path) -> None:
    client = client_on(tmp_path / "o.sqlite")
    machine = AlertMachine("pump1", POLICY)
    publish(client, machine.step(T0, 1.2) + machine.step(T0 + 1, 1.3))  # start
    (event_id, latest), = client.outbox.open_alerts()  # fmt: skip
    assert json.loads(latest)["type"] == "start"
    publish(client, machine.step(T0 + 2, 2.0))  # the peak rose by 0.5: an update
    (event_id2, latest), = client.outbox.open_alerts()  # fmt: skip
    assert event_id2 == event_id and json.loads(latest)["type"] == "update"
    assert json.loads(latest)["seq"] == 1
    publish(client, machine.step(T0 + 3, 0.1) + machine.step(T0 + 4, 0.1))  # cleared
    assert client.outbox.open_alerts() == []
    assert [json.loads(m.payload)["type"] for m in client.outbox.pending()] == [
        "start", "update", "end"
    ]  # fmt: skip
    client.outbox.close()


def test_restart_ends_each_open_alert_once_through_the_outbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite"
    client = client_on(path)
    pump, fan = AlertMachine("pump1", POLICY), AlertMachine("fan1", POLICY)
    publish(client, pump.step(T0, 1.2) + pump.step(T0 + 1, 1.3) + pump.step(T0 + 2, 2.0))
    publish(client, fan.set_health(T0 + 2.5, False, "silence"), clip=None)  # a capture alarm
    client.outbox.close()  # the process dies here: no shutdown ends

    again = client_on(path)  # the next start
    with caplog.at_level(logging.WARNING, logger="monitor.outputs.open_alerts"):
        n = end_open_alerts(
            again.outbox, lambda ev, p: again.publish_event(ev.source, p), now=T0 + 100
        )
    assert n == 2 and "ending it (reason restart)" in caplog.text
    assert again.outbox.open_alerts() == []
    ends = [json.loads(m.payload) for m in again.outbox.pending()][-2:]
    pump_end, fan_end = ends
    assert pump_end["type"] == "end" and pump_end["reason"] == "restart"
    assert pump_end["id"] == "pump1-1700000000000" and pump_end["seq"] == 2  # start, update, end
    assert pump_end["time"] == pump_end["end_time"] == T0 + 100
    assert pump_end["start_time"] == T0 and pump_end["duration_s"] == 100
    assert pump_end["severity"] == "warning" and pump_end["peak_score"] == 2.0
    assert pump_end["threshold"] == 0.4 and pump_end["model_version"] == "m1"
    assert pump_end["clip"] is None  # the clip was still in memory
    assert fan_end["kind"] == "capture" and fan_end["seq"] == 1 and fan_end["reason"] == "restart"
    # a second start finds nothing open: the end went out once
    assert end_open_alerts(again.outbox, lambda ev, p: pytest.fail("ended twice")) == 0
    again.outbox.close()


def test_a_clock_set_back_never_ends_an_alert_before_its_last_message() -> None:
    latest = json.dumps({
        "kind": "anomaly", "type": "update", "id": "p-1", "seq": 3, "source": "p",
        "time": T0 + 50, "start_time": T0, "severity": "warning", "score": 1.4,
        "peak_score": 1.9, "threshold": None, "windows_above": 3, "windows": 5,
    }).encode()  # fmt: skip
    event, payload = restart_end(latest, now=T0 - 3600)  # no RTC battery: the clock is behind
    assert event.time == T0 + 50 and payload["duration_s"] == 50 and payload["seq"] == 4


def test_an_unreadable_open_alert_is_logged_and_forgotten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.put("t", b"{}", open_alert=("p-1", b"not json"))
    box.put("t", b"{}", open_alert=("p-2", b'{"kind": "anomaly", "id": "p-2"}'))
    with caplog.at_level(logging.ERROR, logger="monitor.outputs.open_alerts"):
        assert end_open_alerts(box, lambda ev, p: pytest.fail("no end")) == 0
    assert "p-1" in caplog.text and "not JSON" in caplog.text
    assert "p-2" in caplog.text and "'severity'" in caplog.text  # names the missing field
    assert box.open_alerts() == []
    box.close()


def test_put_is_one_transaction_with_its_open_alert_change(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box._db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON open_alerts WHEN NEW.event_id = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        box.put("t", b"start", open_alert=("boom", b"start"))
    assert box.pending() == [] and len(box) == 0 and box.stats()["pending_bytes"] == 0
    assert box.stats()["put_total"] == 0
    box.put("t", b"start", open_alert=("ok", b"start"))
    assert [m.payload for m in box.pending()] == [b"start"] and box.open_alerts() == [
        ("ok", b"start")
    ]
    box.close()
