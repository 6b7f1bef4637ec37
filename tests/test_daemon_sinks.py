"""Outputs behind one sink interface: the dispatcher's order and isolation, and an extra sink
plugged into a real in-process daemon (the public hook the demo uses)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from daemon_process import expected_windows, with_anomaly, write_config, write_wav
from package_fixtures import make_tiny_package

from monitor.alerting.machine import AlertEvent, AlertMachine
from monitor.outputs.sink import Command, CommandReceiver, Dispatcher, Sink, WindowResult

pytestmark = pytest.mark.timeout(120)


class Recorder(Sink):
    """Every call, in order: (kind, source, detail)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.receiver: CommandReceiver | None = None

    def on_window(self, result: WindowResult) -> None:
        self.calls.append(("window", result.source, result))

    def on_event(self, event: AlertEvent, payload: dict[str, Any]) -> None:
        self.calls.append(("event", event.source, (event, payload)))

    def on_state(self, source: str, payload: dict[str, Any]) -> None:
        self.calls.append(("state", source, payload))

    def on_health(self, source: str, payload: dict[str, Any]) -> None:
        self.calls.append(("health", source, payload))

    def on_sources(self, machines: Mapping[str, str]) -> None:
        self.calls.append(("sources", "", dict(machines)))

    def subscribe(self, receiver: CommandReceiver) -> None:
        self.receiver = receiver

    def stop(self, timeout: float) -> None:
        self.calls.append(("stop", "", timeout))


class Broken(Sink):
    def on_window(self, result: WindowResult) -> None:
        raise RuntimeError("broken output")

    def on_event(self, event: AlertEvent, payload: dict[str, Any]) -> None:
        raise RuntimeError("broken output")


def _result(source: str = "a") -> WindowResult:
    status = AlertMachine(source).status()
    return WindowResult(source, 0, 32000, 1.0, 2.0, 1.0, 1.0, 2.0, -20.0, True, None, status,
                        "v1", 0.0)  # fmt: skip


def test_dispatcher_keeps_the_order_and_survives_a_broken_sink() -> None:
    commands: list[Command] = []
    first, last = Recorder(), Recorder()
    dispatcher = Dispatcher([first, Broken(), last], on_command=commands.append)
    ev = AlertEvent("anomaly", "start", "a-1", "a", 0, 1.0, 1.0)
    dispatcher.window(_result(), [(ev, {"id": "a-1"})], {"alarm": "active"})
    dispatcher.events("a", [], None)  # nothing happened: nothing is sent
    dispatcher.health("a", {"healthy": True})
    for rec in (first, last):
        assert [c[0] for c in rec.calls] == ["window", "event", "state", "health"]
        assert rec.calls[1][2] == (ev, {"id": "a-1"})
    dispatcher.sources({"a": "fan"}, skip=[last])
    assert first.calls[-1] == ("sources", "", {"a": "fan"}) and last.calls[-1][0] == "health"
    assert first.receiver is not None
    first.receiver(Command("mute", "a", {}, "p/a/command/mute"))
    assert [c.verb for c in commands] == ["mute"]
    Sink().on_window(_result())  # the base is a no-op for every update
    Sink().stop(1.0)


def test_an_extra_sink_sees_windows_then_their_events_then_state(tmp_path: Path) -> None:
    from monitor.config import load_config
    from monitor.daemon.daemon import Daemon
    from monitor.outputs.prometheus import Metrics
    from monitor.outputs.sdnotify import Notifier

    package = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    seconds = 4 + 5 + 10
    wav = write_wav(tmp_path / "a.wav", with_anomaly("fan", 4, 5, 10))
    src = {"name": "a", "type": "file", "machine": "fan", "path": str(wav), "realtime": False}
    cfg_path = write_config(tmp_path / "c.yaml", package, [src], metrics={"enabled": False})
    sink = Recorder()
    daemon = Daemon(load_config(cfg_path), cfg_path, notifier=Notifier({}),
                    metrics=Metrics(process=False), sinks=[sink])  # fmt: skip
    runner = threading.Thread(target=daemon.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 90
        while not daemon.all_scored("a"):
            assert runner.is_alive() and time.monotonic() < deadline, "the file was not scored"
            time.sleep(0.05)
        health = daemon.source_health("a")
        assert health is not None and health.state.value == "ended"
        assert daemon.wait_published(1.0) is None  # no MQTT configured
    finally:
        daemon.request_stop()
        runner.join(15)
    assert not runner.is_alive() and daemon.exit_code == 0

    kinds = [c[0] for c in sink.calls]
    windows = [c[2] for c in sink.calls if c[0] == "window"]
    assert len(windows) == expected_windows(seconds) == daemon.windows_scored
    assert all(w.skipped is None and w.model_version for w in windows)
    events = [c[2] for c in sink.calls if c[0] == "event"]
    assert [(e.kind, e.type) for e, _ in events] == [("anomaly", "start"), ("anomaly", "end")]
    for ev, payload in events:
        assert payload["id"] == ev.event_id and payload["type"] == ev.type
        assert payload["threshold"] > 0 and payload["clip"]  # clips are on by default
    # each event right after the window that raised it (or another event), then the state
    for i, kind in enumerate(kinds):
        if kind == "event":
            assert kinds[i - 1] in ("window", "event"), kinds[i - 3 : i + 3]
            assert kinds[i + 1] in ("event", "state"), kinds[i - 3 : i + 3]
    start_at = next(i for i, c in enumerate(sink.calls) if c[0] == "event")
    raised = sink.calls[start_at - 1][2]
    assert raised.status.state == "active" and raised.normalised >= 1.5
    assert sink.calls[start_at + 1][2]["alarm"] == "active"
    assert "health" in kinds and kinds[-1] == "stop"
