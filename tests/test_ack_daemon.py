"""Acknowledging a false alarm end to end: the real daemon on a file, a real Mosquitto, the CLI.

The replay: fan sound, then pump sound (a regime the fan bank never heard, scored ~50x its
threshold) that is still playing when the file ends, so the alarm is open. An ``ack`` over the
broker ends it (reason ``acknowledged``), enrols the windows it scored and reloads; the same
replay again raises nothing; `sonitor revert` restores the thresholds and the replay alarms
again; then `sonitor ack --clip` acknowledges the event offline from the clip the daemon wrote.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.publish as publish
import pytest
import yaml
from broker import Broker, Subscriber, broker_session
from daemon_process import (
    DaemonProcess,
    expected_windows,
    machine_audio,
    run_cli,
    write_config,
    write_wav,
)
from package_fixtures import make_tiny_package

from monitor.model.package import ModelPackage

pytestmark = pytest.mark.timeout(300)
PREFIX = "test/sonitor"
SECONDS = 18.0  # 6 s fan + 12 s pump


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def events(msgs: list, source: str = "fan1") -> list[dict]:
    return [json.loads(m.payload) for m in msgs if m.topic == f"{PREFIX}/{source}/events"]


def test_ack_over_mqtt_then_revert_then_ack_from_the_clip(tmp_path: Path, broker: Broker) -> None:
    pkg = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    v0 = ModelPackage.load(pkg).model_version
    audio = np.concatenate([machine_audio("fan", 6, seed=3), machine_audio("pump", 12, seed=4)])
    wav = write_wav(tmp_path / "replay.wav", audio)
    # in real time: the alert clock of a file replayed as fast as possible is audio time, which
    # starts again with each replay (inside the cooldown of the event before)
    source = {"name": "fan1", "type": "file", "machine": "fan", "path": str(wav),
              "realtime": True}  # fmt: skip
    cfg = write_config(tmp_path / "cfg.yaml", pkg, [source], broker=broker)
    live = Subscriber(broker, [f"{PREFIX}/#"])
    daemon = DaemonProcess(cfg)
    reloads = 0

    def send(verb: str, payload: dict, source: str | None = "fan1") -> None:
        topic = f"{PREFIX}/{source}/command/{verb}" if source else f"{PREFIX}/command/{verb}"
        publish.single(topic, json.dumps(payload), qos=1, hostname=broker.host, port=broker.port)

    def acks(result: str) -> float | None:
        return daemon.metric("sonitor_acks_total", result=result)

    def starts() -> float | None:
        return daemon.metric("sonitor_alert_events_total", source="fan1", type="start")

    def wait_reload(what: str) -> None:
        nonlocal reloads
        reloads += 1
        daemon.wait_until(
            lambda: daemon.metric("sonitor_config_reloads_total", result="success") == reloads,
            60,
            what,
        )

    def replay_again(name: str) -> None:
        """The same audio from a new file: a new capture group replays it from the start."""
        scored = daemon.metric("sonitor_windows_total", source="fan1")
        data = yaml.safe_load(cfg.read_text())
        data["sources"][0]["path"] = str(shutil.copy(wav, tmp_path / name))
        cfg.write_text(yaml.safe_dump(data))
        daemon.signal(signal.SIGHUP)
        wait_reload(f"the reload replaying {name}")
        daemon.wait_until(
            lambda: (
                daemon.metric("sonitor_windows_total", source="fan1")
                >= scored + expected_windows(SECONDS) - 1
            ),
            60,
            f"the windows of {name}",
        )

    try:
        got = live.collect(lambda g: any(e["type"] == "start" for e in events(g)), timeout=60)
        start = next(e for e in events(got) if e["type"] == "start")
        event_id = start["id"]
        assert start["kind"] == "anomaly" and start["condition"] == "source"
        daemon.wait_until(
            lambda: (
                daemon.metric("sonitor_windows_total", source="fan1")
                >= expected_windows(SECONDS) - 1
            ),
            60,
            "every window of the replay",
        )
        for _ in range(20):  # until the daemon's command subscription is in place
            send("test_alert", {})
            try:
                live.collect(lambda g: any(e["kind"] == "test" for e in events(g)), 2)
                break
            except AssertionError:
                continue
        assert acks("enrolled") == 0

        # the acknowledgement ends the open alarm, enrols its windows and reloads the package
        send("ack", {"event_id": event_id})
        ends = lambda g: [e for e in events(g) if e["type"] == "end" and e["kind"] == "anomaly"]  # noqa: E731
        end = ends(live.collect(lambda g: bool(ends(g)), timeout=20))[0]
        assert (end["id"], end["reason"]) == (event_id, "acknowledged")
        daemon.wait_until(lambda: acks("enrolled") == 1, 60, "the enrolment")
        wait_reload("the reload after the enrolment")
        v1 = ModelPackage.load(pkg).model_version
        assert v1 != v0 and daemon.metric("sonitor_model_info", model_version=v1) == 1
        entry = ModelPackage.load(pkg).manifest.machines["fan"]
        ack = entry.history[-1]
        assert (ack["action"], ack["event_id"], ack["command"]) == ("ack", event_id, "mqtt")
        assert ack["condition"] == "source" and ack["source"] == "fan1"
        # windows one window length apart, from the onset to the end of the file
        assert 4 <= ack["n_added"] <= 7 and ack["n_added"] * 3 < ack["windows_scored"]

        # refusals: logged and counted, nothing enrolled
        send("ack", {"event_id": event_id})
        send("ack", {"event_id": "fan1-1"}, source=None)
        send("ack", {"event_id": event_id, "why": "bogus key"})
        send("ack", {"event_id": event_id}, source="pump9")
        daemon.wait_until(
            lambda: (acks("already_acked"), acks("unknown_event"), acks("invalid")) == (1, 2, 1),
            20,
            "the refusals",
        )
        log = daemon.log_text()
        assert f"ack of {event_id!r}: already acknowledged; refused" in log
        assert "ack of 'fan1-1': not one of the last 16 anomaly events" in log
        assert "unknown key(s) ['why']" in log
        assert len(ModelPackage.load(pkg).manifest.machines["fan"].history) == 2

        # the same replay again: no alarm
        replay_again("again1.wav")
        assert starts() == 1

        # revert (another process): the daemon notices the package and reloads by itself
        r = run_cli("revert", "--package", str(pkg), "--machine", "fan", "--last")
        assert r.returncode == 0, r.stderr
        wait_reload("the reload after the revert")
        replay_again("again2.wav")
        daemon.wait_until(lambda: starts() == 2, 30, "the alarm again after the revert")

        r = run_cli("history", "--package", str(pkg), "--machine", "fan")
        assert r.returncode == 0, r.stderr
        rows = [line.split() for line in r.stdout.splitlines() if line.split()[0].isdigit()]
        assert [row[2] for row in rows] == ["export", "ack", "revert"]
        assert event_id in rows[1] and "mqtt" in rows[1] and "to #0" in " ".join(rows[2])
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-4000:]
        live.close()

    # offline, from the clip the daemon wrote: the revert undid the MQTT acknowledgement, so
    # the event may be acknowledged again, once
    clip = tmp_path / "state" / "clips" / f"{event_id}.wav"
    assert json.loads(clip.with_suffix(".json").read_text())["end_reason"] == "acknowledged"
    args = ("ack", "--package", str(pkg), "--machine", "fan", "--clip", str(clip))
    r = run_cli(*args, "--condition", "pumpmode")
    assert r.returncode == 0, r.stderr
    last = ModelPackage.load(pkg).manifest.machines["fan"].history[-1]
    assert (last["event_id"], last["command"], last["condition"]) == (event_id, "cli", "pumpmode")
    assert 4 <= last["n_added"] <= 8
    r = run_cli(*args)
    assert r.returncode == 2 and "already acknowledged" in r.stderr, r.stderr
