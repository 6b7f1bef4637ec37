"""The core of the false-alarm benchmark: streams through the REAL daemon, alarms counted at MQTT.

`run_trial` starts `monitor.daemon.Daemon` (what `sonitor run` runs) in this process on one
`type: file` source per stream, replayed as fast as inference allows (`realtime: false`: alert
times are audio times, so N of M, hold and cooldown mean what they mean live), publishing to a
real MQTT broker. A subscriber on ``<prefix>/+/events`` collects what SCADA would see; a sink
records every scored window, only to turn an event's alert-clock time back into seconds of the
stream and for `resimulate`.

`analyse` attributes each alarm `start` to what was injected (a fault or a foreign burst) or to
nothing (a false alarm). `resimulate` feeds the recorded raw scores through the daemon's own alert
state machine and thresholds for other alert settings: many settings from one replay, checked
against the daemon wherever both exist (`matches`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from fab_audio import Injected

SR = 16000


@dataclass(frozen=True)
class Stream:
    """One long recording replayed as one daemon source."""

    name: str  # the source name (MQTT topic level, metric label)
    machine: str  # the package machine that scores it
    condition: str  # the operating condition the audio is in
    variant: str  # "normal", "faults", "bursts", "gain +6 dB", ...
    path: Path
    seconds: float
    synthetic: bool
    injected: tuple[Injected, ...] = ()
    base: str = ""  # variants: the normal stream whose first ``base_seconds`` they copy
    base_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stream:
        inj = tuple(Injected(**i) for i in d.pop("injected"))
        return cls(**{**d, "path": Path(d["path"]), "injected": inj})


@dataclass
class Window:
    t: float  # end of the window, seconds into the stream
    raw: float
    threshold: float
    condition: str | None
    skipped: str | None
    healthy: bool


@dataclass
class Start:
    """An alarm `start` as the subscriber received it."""

    kind: str  # "anomaly", "level", "capture", ...
    t: float  # the confirming window's end, seconds into the stream
    first_t: float  # end of the first window above the threshold, seconds into the stream
    event_id: str
    severity: str | None = None
    end: float | None = None  # when its `end` came (seconds into the stream); None: never


@dataclass
class StreamRun:
    stream: Stream
    offset: float | None = None  # alert clock - seconds into the stream
    windows: list[Window] = field(default_factory=list)
    payloads: list[dict[str, Any]] = field(default_factory=list)  # received on .../events
    emitted: int = 0  # events the daemon handed to its outputs (the sink's count)

    def starts(self, kind: str | None = None) -> list[Start]:
        """Alarm starts received, once per event id (a replayed duplicate counts once)."""
        seen: dict[str, Start] = {}
        ends = {p.get("id"): float(p["time"]) for p in self.payloads if p.get("type") == "end"}
        for p in self.payloads:
            if p.get("type") != "start" or p.get("id") in seen or self.offset is None:
                continue
            if kind is not None and p.get("kind") != kind:
                continue
            t = float(p["time"]) - self.offset
            first = float(p.get("start_time") or p["time"]) - self.offset
            end = ends.get(p["id"])
            end_t = None if end is None else end - self.offset
            seen[p["id"]] = Start(str(p.get("kind")), t, first, p["id"], p.get("severity"), end_t)
        return sorted(seen.values(), key=lambda s: s.t)


@dataclass
class TrialRun:
    label: str
    alerts: dict[str, Any]
    n_of_m: tuple[int, int]
    window_s: float
    hop_s: float
    thresholds: dict[str, dict[str, float]]  # source -> condition -> raw threshold
    runs: dict[str, StreamRun]
    wall_s: float = 0.0


# ------------------------------------------------------------------------------ the daemon


def _recorder(runs: dict[str, StreamRun]) -> Any:
    """A daemon output that only records windows and counts events (see the module docstring)."""
    from monitor.outputs.sink import Sink

    class Recorder(Sink):
        def on_window(self, r: Any) -> None:
            run = runs.get(r.source)
            if run is not None:
                t = r.end_sample / SR
                run.offset = r.t - t
                run.windows.append(Window(t, r.raw, r.threshold, r.condition, r.skipped, r.healthy))

        def on_event(self, event: Any, payload: dict[str, Any]) -> None:
            run = runs.get(event.source)
            if run is not None:
                run.emitted += 1  # one thread (the inference worker) calls the sinks

    return Recorder()


class _Subscriber:
    """A plain MQTT client on ``<prefix>/+/events`` (QoS 1): what SCADA receives."""

    def __init__(self, host: str, port: int, prefix: str, runs: dict[str, StreamRun]) -> None:
        import paho.mqtt.client as mqtt

        self.runs, self.prefix, self.count = runs, prefix, 0
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"fab-{os.getpid()}-{time.monotonic_ns()}"
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/+/events", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.close()
            raise RuntimeError(f"MQTT subscriber: no SUBACK from {host}:{port} within 10 s")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        source = msg.topic[len(self.prefix) + 1 :].split("/", 1)[0]
        payload = json.loads(msg.payload)
        with self.lock:
            self.count += 1
            if source in self.runs:
                self.runs[source].payloads.append(payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(
    path: Path,
    package: Path,
    streams: Sequence[Stream],
    alerts: dict[str, Any],
    host: str,
    port: int,
    prefix: str,
    threads: int = 1,
) -> Path:
    """The daemon config: one fast (not paced) file source per stream, MQTT on, clips and
    metrics off (neither changes when an alarm starts)."""
    cfg = {
        "node": {"name": "fab"},
        "model": {"package": str(package), "threads": threads},
        "paths": {"state_dir": str(path.parent / "state")},
        "sources": [
            {
                "name": s.name,
                "machine": s.machine,
                "type": "file",
                "path": str(s.path),
                "realtime": False,
                "loop": False,
            }
            for s in streams
        ],
        "alerts": alerts,
        "clips": {"enabled": False},
        "metrics": {"enabled": False},
        "mqtt": {"enabled": True, "host": host, "port": port, "topic_prefix": prefix},
        "logging": {"level": "WARNING"},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_trial(
    label: str,
    package: Path,
    streams: Sequence[Stream],
    alerts: dict[str, Any],
    broker: Any,
    workdir: Path,
    *,
    threads: int = 1,
    timeout: float = 7200.0,
) -> TrialRun:
    """Replay every stream through one daemon; return what the subscriber received, per stream."""
    from export.demo_replay import DaemonThread
    from monitor.config import load_config
    from monitor.daemon.daemon import Daemon
    from monitor.daemon.wiring import Pipeline, n_of_m
    from monitor.model.conditions import ConditionCalibration
    from monitor.outputs.prometheus import Metrics
    from monitor.outputs.sdnotify import Notifier

    if workdir.exists():
        shutil.rmtree(workdir)  # an earlier outbox would replay its events
    workdir.mkdir(parents=True)
    prefix = f"fab/{label}-{time.monotonic_ns()}"
    host, port = broker.host, broker.port
    cfg_path = write_config(
        workdir / "config.yaml", package, streams, alerts, host, port, prefix, threads
    )
    cfg = load_config(cfg_path)
    runs = {s.name: StreamRun(s) for s in streams}
    pipeline = Pipeline.build(cfg)  # the daemon's own rule and thresholds, for the record
    thresholds = {}
    for s in streams:
        cal = pipeline.calibrations[s.name]
        thresholds[s.name] = (
            cal.thresholds() if isinstance(cal, ConditionCalibration) else {"*": float(cal)}
        )
    nm = n_of_m(cfg, pipeline.window_seconds, pipeline.hop_seconds)
    trial = TrialRun(
        label, alerts, nm, pipeline.window_seconds, pipeline.hop_seconds, thresholds, runs
    )
    del pipeline
    recorder = _recorder(runs)
    sub = _Subscriber(broker.host, broker.port, prefix, runs)
    daemon = Daemon(
        cfg, cfg_path, notifier=Notifier({}), metrics=Metrics(process=False), sinks=[recorder]
    )
    t0 = time.perf_counter()
    runner = DaemonThread(daemon, f"fab-daemon-{label}")
    try:
        stopped = f"trial {label}: the daemon stopped"
        runner.wait_scored([s.name for s in streams], timeout, stopped, poll_s=0.2)
        daemon.wait_published(30.0)
    finally:
        runner.stop(60.0)
        trial.wall_s = time.perf_counter() - t0
        emitted = sum(r.emitted for r in runs.values())
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:  # events of the shutdown (ends) arrive last
            with sub.lock:
                got = sum(len(r.payloads) for r in runs.values())
            if got >= emitted:
                break
            time.sleep(0.1)
        sub.close()
    runner.raise_failure()
    return trial


# ------------------------------------------------------------------------------ analysis


@dataclass(frozen=True)
class FaultResult:
    """How one injected fault came out."""

    fault: Injected
    delay: float | None  # onset -> the start it raised (None: no start of its own)
    peak: float  # highest normalised score within its reach
    open_since: float | None  # an anomaly alarm was already open at its onset (since then)

    @property
    def outcome(self) -> str:
        if self.delay is not None:
            return f"{self.delay:.1f}"
        if self.open_since is not None:
            return f"alarm open (since {self.open_since:.0f} s)"
        return "missed"


@dataclass
class StreamResult:
    """One stream of one trial: alarms split by cause, and each fault's detection delay."""

    stream: Stream
    normal_seconds: float  # audio not covered by an injected fault's attribution span
    false_starts: dict[str, int]  # kind -> starts attributed to nothing injected
    faults: list[FaultResult]
    burst_alarms: list[tuple[Injected, int]]  # burst, anomaly starts attributed to it
    peak_normal: float  # highest normalised score outside attribution spans
    windows_normal: int  # scored windows outside attribution spans
    above_normal: int  # those at or above the threshold (normalised score >= 1.0)


def attribution_end(x: Injected, window_s: float, hop_s: float, m: int) -> float:
    """The latest alarm time ``x`` can cause: its last window, plus M hops of confirmation."""
    return x.end + window_s + m * hop_s


def analyse(
    run: StreamRun,
    window_s: float,
    hop_s: float,
    n_of_m: tuple[int, int],
    starts: Sequence[Start] | None = None,
) -> StreamResult:
    """Split a stream's alarm starts (received, or ``starts`` from `resimulate`) by cause."""
    s = run.stream
    starts = run.starts() if starts is None else starts
    spans = [(x, x.start, attribution_end(x, window_s, hop_s, n_of_m[1])) for x in s.injected]
    false: dict[str, int] = {}
    taken: dict[int, list[Start]] = {}
    for st in starts:
        owner = next(
            (i for i, (x, a, b) in enumerate(spans) if a < st.t <= b and st.kind == "anomaly"),
            None,
        )
        if owner is None:
            false[st.kind] = false.get(st.kind, 0) + 1
        else:
            taken.setdefault(owner, []).append(st)
    faults, bursts = [], []
    for i, (x, a, b) in enumerate(spans):
        mine = taken.get(i, [])
        peak = max(
            (w.raw / w.threshold for w in run.windows if a < w.t <= b and _ok(w)),
            default=float("nan"),
        )
        if x.kind == "fault":
            open_ = [
                st
                for st in starts
                if st.kind == "anomaly" and st.t <= x.start and (st.end is None or st.end > x.start)
            ]
            delay = (mine[0].t - x.start) if mine else None
            faults.append(FaultResult(x, delay, peak, open_[0].t if open_ else None))
        else:
            bursts.append((x, len(mine)))
    covered = sum(b - a for _, a, b in spans)
    normal = [w for w in run.windows if _ok(w) and not any(a < w.t <= b for _, a, b in spans)]
    norms = [w.raw / w.threshold for w in normal]
    return StreamResult(
        s,
        max(s.seconds - covered, 0.0),
        false,
        faults,
        bursts,
        max(norms, default=float("nan")),
        len(norms),
        sum(v >= 1.0 for v in norms),
    )


def _ok(w: Window) -> bool:
    return w.skipped is None and w.threshold > 0 and w.raw == w.raw


# ------------------------------------------------------------------------------ re-simulation


@dataclass(frozen=True)
class Setting:
    """Alert settings to compare: overrides of the ``alerts:`` section."""

    label: str
    alerts: dict[str, Any]
    # thresholds as if windows of one recording had this correlation (None: the package's);
    # 0.0 is the calibration before the correlation was measured (independent windows)
    correlation: float | None = None


def resimulate(
    trial: TrialRun,
    package: Path,
    alerts: dict[str, Any],
    workdir: Path,
    correlation: float | None = None,
) -> tuple[dict[str, list[Start]], tuple[int, int], dict[str, dict[str, float]]]:
    """Anomaly starts per stream under other ``alerts:`` settings, from the recorded raw scores.

    The daemon's own pieces do the work: `Pipeline.build` (the N-of-M rule and every
    condition's threshold for that rule and budget), `wiring.alert_policy` and the
    `AlertMachine`, fed as `SourceChannel.on_window` feeds it (alert_on: normalised).
    """
    from monitor.alerting.machine import AlertMachine
    from monitor.config import load_config
    from monitor.daemon.wiring import Pipeline, alert_policy, n_of_m
    from monitor.model.conditions import ConditionCalibration

    workdir.mkdir(parents=True, exist_ok=True)
    streams = [r.stream for r in trial.runs.values()]
    path = write_config(workdir / "resim.yaml", package, streams, alerts, "127.0.0.1", 1883, "x")
    cfg = load_config(path)
    if cfg.scoring.alert_on != "normalised":
        raise ValueError("resimulate follows alert_on: normalised only")
    pipe = Pipeline.build(cfg)
    w_s, h_s = pipe.window_seconds, pipe.hop_seconds
    policy = alert_policy(cfg, w_s, h_s)
    out, thr_all = {}, {}
    for name, run in trial.runs.items():
        cal = pipe.calibrations[name]
        if correlation is not None and isinstance(cal, ConditionCalibration):
            cal = replace(cal, correlation=correlation).with_rule(cal.rule)
        thr = cal.thresholds() if isinstance(cal, ConditionCalibration) else {}
        thr_all[name] = thr
        machine = AlertMachine(name, policy)
        starts: dict[str, Start] = {}
        for w in run.windows:
            if w.skipped in ("silent", "clipped"):
                continue
            if w.skipped == "unhealthy":
                events = machine.set_health(w.t, False)
            else:
                t_c = thr.get(w.condition or "", min(thr.values())) if thr else float(cal)
                events = machine.step(w.t, w.raw / t_c if w.raw == w.raw else w.raw, w.healthy)
            for e in events:
                if e.kind == "anomaly" and e.type == "start":
                    starts[e.event_id] = Start(e.kind, e.time, e.start_time, e.event_id, e.severity)
                elif e.kind == "anomaly" and e.type == "end" and e.event_id in starts:
                    starts[e.event_id].end = e.time
        out[name] = list(starts.values())
    return out, n_of_m(cfg, w_s, h_s), thr_all


def matches(trial: TrialRun, simulated: dict[str, list[Start]]) -> bool:
    """Do the re-simulated anomaly starts equal the received ones (times within 1 ms)?"""
    for name, run in trial.runs.items():
        got = [round(s.t, 3) for s in run.starts("anomaly")]
        if got != [round(s.t, 3) for s in simulated.get(name, [])]:
            return False
    return True
