"""Step 5 of `sonitor demo`: the daemon on the replay recording, watched live and judged.

The daemon (`monitor.daemon.Daemon`, as `sonitor run`) runs on the config's `type: file` source,
replayed as fast as inference allows; alert times are audio times there, so N-of-M, hold and
cooldown mean the same as live. A sink prints one line per scored window (the score as a bar
against the threshold) and each alert event with its MQTT payload, and records them; `judge`
then passes the run only when the injected fault raised the alert and nothing raised one before.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.alerting.machine import AlertEvent
from monitor.audio.frontend import SAMPLE_RATE as SR
from monitor.errors import SonitorError
from monitor.outputs.sink import Sink, WindowResult


@dataclass(frozen=True)
class Recordings:
    """The monitored unit's enrolment recording and the replay with its fault (seconds)."""

    enroll_path: Path
    replay_path: Path
    fault: dict[str, Any] | None  # training.synth_sound.draw_fault parameters, None = no fault
    fault_start: float
    fault_end: float
    seconds: float


@dataclass
class WindowScore:
    t: float  # end of the window in the recording, seconds
    raw: float
    norm: float  # raw / threshold
    state: str  # alarm state after this window
    severity: str | None


@dataclass
class EventRecord:
    event: Any  # monitor.alerting.machine.AlertEvent
    payload: dict[str, Any]  # exactly what goes to <prefix>/<source>/events
    offset: float  # alert clock - recording time (seconds)

    def rec(self, t: float | None) -> float | None:
        return None if t is None else t - self.offset


@dataclass
class ReplayRun:
    windows: list[WindowScore] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    threshold: float = float("nan")
    window_seconds: float = float("nan")
    n_of_m: tuple[int, int] = (3, 5)
    published: bool | None = None  # None: no broker configured
    topic: str | None = None


class ReplaySink(Sink):
    """A daemon output that prints one line per window and each alert event, and records them
    into ``run``. It only observes: the windows and events are the daemon's own (the same code
    path as `sonitor run`), the payloads exactly what MQTT gets."""

    def __init__(self, run: ReplayRun, recordings: Recordings, out: Callable[[str], None]) -> None:
        self.run, self.recordings, self.out = run, recordings, out
        self.offset = 0.0  # alert clock - recording time (seconds), as of the last scored window

    def on_window(self, result: WindowResult) -> None:
        run, rec, out = self.run, self.recordings, self.out
        t = result.end_sample / SR  # the replay starts at sample 0 of the file
        run.window_seconds = (result.end_sample - result.start_sample) / SR
        if result.skipped is not None:
            out(f"  {t:6.1f} s  not scored: {result.skipped}")
            return
        self.offset = result.t - t
        st = result.status
        run.threshold = result.threshold
        run.windows.append(WindowScore(t, result.raw, result.normalised, st.state, st.severity))
        in_fault = rec.fault is not None and (
            t > rec.fault_start and t - run.window_seconds < rec.fault_end
        )
        state = st.state.upper() + (f" {st.severity}" if st.state == "active" else "")
        out(
            f"  {t:6.1f} s  score {result.normalised:6.2f} x threshold "
            f"{bar(result.normalised)}  "
            f"{state:<15}{'  <- fault in window' if in_fault else ''}"
        )

    def on_event(self, event: AlertEvent, payload: dict[str, Any]) -> None:
        record = EventRecord(event, payload, self.offset)
        self.run.events.append(record)
        self.out(describe_event(record, self.recordings))
        if event.type in ("start", "end"):
            self.out(json.dumps(payload, indent=2))


def bar(norm: float, width: int = 30, full_scale: float = 3.0) -> str:
    """`[#####|    ]`: the score as a bar, `|` at the threshold (1.0), clipped at `full_scale`."""
    if not np.isfinite(norm):
        return "[" + "?" * width + "]"
    n = int(round(min(max(norm, 0.0), full_scale) / full_scale * width))
    mark = int(round(width / full_scale))
    cells = ["#" if i < n else " " for i in range(width)]
    if cells[mark] == " ":
        cells[mark] = "|"
    return "[" + "".join(cells) + "]"


class DaemonThread:
    """A daemon run in a thread of this process until its file sources have been scored: the
    demo's replay and the false-alarm benchmark's (`benchmarks/fab_replay.py`)."""

    def __init__(self, daemon: Any, name: str) -> None:
        self.daemon = daemon
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._body, name=name, daemon=True)
        self.thread.start()

    def _body(self) -> None:
        try:
            self.daemon.run(install_signals=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self.failure.append(exc)

    def wait_scored(
        self, sources: Sequence[str], timeout: float, stopped: str, poll_s: float = 0.05
    ) -> None:
        """Until every one of ``sources`` has been scored to its end; the daemon's own error if
        it died, else a SonitorError (``stopped``: what the early end means)."""
        from monitor.audio.capture import SourceState

        deadline = time.monotonic() + timeout
        pending = set(sources)
        while pending:
            if not self.thread.is_alive():
                if self.failure:
                    raise self.failure[0]
                raise SonitorError(stopped)
            for name in sorted(pending):
                health = self.daemon.source_health(name)
                if health is not None and health.state is SourceState.ERROR:
                    raise SonitorError(f"source {name!r}: {health.reason}")
                if self.daemon.all_scored(name):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise SonitorError(
                    f"the replay did not finish within {timeout:g} s: "
                    f"{', '.join(sorted(pending))} not scored to the end"
                )
            if pending:
                time.sleep(poll_s)

    def stop(self, join_s: float) -> None:
        self.daemon.request_stop()
        self.thread.join(join_s)

    def raise_failure(self) -> None:
        """The daemon thread's error, if it had one (after `stop`)."""
        if self.failure:
            raise self.failure[0]


def run_replay(
    config_path: Path,
    recordings: Recordings,
    out: Callable[[str], None] = print,
    timeout: float = 600.0,
) -> ReplayRun:
    """Run the daemon on the config's file source until the file has been scored; observe it."""
    from monitor.config import load_config
    from monitor.daemon.daemon import Daemon
    from monitor.daemon.wiring import n_of_m
    from monitor.model.package import Manifest

    cfg = load_config(config_path)
    name = cfg.sources[0].name
    manifest = Manifest.load(cfg.model.package)  # the alert rule in force for its windows
    win = cfg.windows.window_seconds or manifest.window_seconds
    run = ReplayRun(n_of_m=n_of_m(cfg, win, cfg.windows.hop_seconds or manifest.hop_seconds))
    daemon = Daemon(cfg, config_path, sinks=[ReplaySink(run, recordings, out)])
    runner = DaemonThread(daemon, "sonitor-demo-daemon")
    try:
        stopped = f"the daemon stopped before the end of {recordings.replay_path}"
        runner.wait_scored([name], timeout, stopped)
        published = daemon.wait_published(10.0)
        if published is not None:  # MQTT is on
            run.topic = f"{cfg.mqtt_topic_prefix}/{name}/events"
            run.published = published
    finally:
        runner.stop(30.0)
    if run.published:  # the events that shutdown ended must have reached the broker too
        run.published = daemon.wait_published(0.0) is True
    runner.raise_failure()
    return run


def describe_event(rec: EventRecord, recordings: Recordings) -> str:
    """`ALERT pump: start at 63.5 s (fault injected at 60.0 s) ...`, in recording time."""
    ev = rec.event
    if ev.kind != "anomaly":
        return f"{ev.kind.upper()} {ev.source}: {ev.type} at {rec.rec(ev.time):.1f} s ({ev.reason})"
    injected = (
        f"fault injected at {recordings.fault_start:.1f} s"
        if recordings.fault is not None
        else "no fault injected"
    )
    if ev.type == "start":
        return (
            f"ALERT {ev.source}: start at {rec.rec(ev.time):.1f} s ({injected}; first window over "
            f"the threshold ended at {rec.rec(ev.start_time):.1f} s), severity {ev.severity}, "
            f"score {ev.score:.2f} x threshold, {ev.windows_above} of {ev.windows} windows above"
        )
    if ev.type == "end":
        stopped = (
            f"fault stopped at {recordings.fault_end:.1f} s"
            if recordings.fault is not None
            else "no fault injected"
        )
        return (
            f"ALERT {ev.source}: end at {rec.rec(ev.end_time or ev.time):.1f} s ({stopped}), "
            f"reason {ev.reason}, lasted {(ev.end_time or ev.time) - ev.start_time:.1f} s, "
            f"peak {ev.peak_score:.2f} x threshold"
        )
    return (
        f"ALERT {ev.source}: update at {rec.rec(ev.time):.1f} s ({ev.reason}), severity "
        f"{ev.severity}, peak {ev.peak_score:.2f} x threshold"
    )


def judge(run: ReplayRun, recordings: Recordings, hop_seconds: float) -> tuple[bool, str]:
    """Pass only when an alert was raised because of the fault and at no other time.

    A start raised at or before the fault's onset was confirmed by normal windows only: a false
    alarm. The fault can raise an alert until the last window that overlaps it, plus M hops of
    the N-of-M confirmation; a start after that is a false alarm too.
    """
    starts = [e for e in run.events if e.event.kind == "anomaly" and e.event.type == "start"]
    peak = max((w.norm for w in run.windows if np.isfinite(w.norm)), default=float("nan"))
    if not run.windows:
        return False, "FAIL: the daemon scored no window of the replay"
    fs, fe = recordings.fault_start, recordings.fault_end
    latest = fe + run.window_seconds + run.n_of_m[1] * hop_seconds
    early = [e for e in starts if e.rec(e.event.time) <= fs]
    late = [e for e in starts if e.rec(e.event.time) > latest]
    hits = [e for e in starts if fs < e.rec(e.event.time) <= latest]
    if recordings.fault is None:
        if starts:
            t = starts[0].rec(starts[0].event.time)
            return False, f"FAIL: false alarm at {t:.1f} s (no fault was injected)"
        return False, (
            f"FAIL: no alert, as expected without a fault (peak score {peak:.2f} x threshold): "
            "the demo passes only when it detects the fault it injects"
        )
    if early:
        t = early[0].rec(early[0].event.time)
        return False, f"FAIL: false alarm at {t:.1f} s, before the fault was injected at {fs:.1f} s"
    if late:
        t = late[0].rec(late[0].event.time)
        return False, f"FAIL: false alarm at {t:.1f} s, after the fault ended at {fe:.1f} s"
    if not hits:
        fault_peak = max(
            (w.norm for w in run.windows if w.t > fs and w.t - run.window_seconds < fe),
            default=float("nan"),
        )
        return False, (
            f"FAIL: missed the fault injected at {fs:.1f}-{fe:.1f} s: no alert (peak score during "
            f"the fault {fault_peak:.2f} x threshold; {run.n_of_m[0]} of {run.n_of_m[1]} windows "
            "must reach 1.00)"
        )
    t = hits[0].rec(hits[0].event.time)
    return True, (
        f"PASS: the alert was raised at {t:.1f} s, {t - fs:.1f} s after the fault was injected, "
        f"and no alert before it (peak score {peak:.2f} x threshold)"
    )
