"""Acknowledging a false alarm: the ``ack`` command enrols the event's windows as normal sound.

Why the daemon keeps embeddings: an operator who says "this alarm was normal" means exactly
the sound that raised it, and the daemon has already embedded it. So while a source has an
open anomaly event, the inference thread hands each scored window's embedding to
`Acknowledgements.on_window`; an ``ack`` enrols those (`monitor.model.history.enroll_ack`),
not a re-embedding of a clip. Kept per event: windows at least one window length apart
(overlapping windows are near-duplicates whose tiny leave-one-out distances would pull the
threshold down, the rule of `sonitor enroll`), at most `MAX_ACK_WINDOWS` (beyond, every second
one is dropped and the spacing doubled: an even thinning of a long event), for the last
`MAX_EVENTS` events. A window belongs to the event from the onset (the first window above the
on-threshold, encoded in the event id) to its end.

Threads: `on_window` and `command` run on the inference thread and never wait: the enrolment
(loading the package, refitting, recalibrating, writing it atomically) runs on a background
thread of lower priority, which then asks the daemon for a reload (new thresholds without
dropping audio). An acknowledged open event ends at once (reason ``acknowledged``).

Refusals are logged and counted (``sonitor_acks_total{result=...}``): a malformed payload
(``invalid``), an event this daemon does not hold (``unknown_event``), one acknowledged before
(``already_acked``: in memory, or in the package's history), capture unhealthy
(``capture_unhealthy``), a package or machine changed since the event (``model_changed``), an
enrolment that failed (``failed``). MQTT has no reply topic: the log and the counter answer.

`PackageWatch` makes the daemon pick up a package changed by another process (`sonitor ack`,
`sonitor revert`, `sonitor enroll`) the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.daemon.channel import UNHEALTHY_STATES
from monitor.errors import PackageError, SonitorError
from monitor.model.conditions import DEFAULT_CONDITION, validate_condition_name
from monitor.model.history import MAX_ACK_WINDOWS, AckRefused, enroll_ack
from monitor.model.package import MANIFEST, manifest_version

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from monitor.daemon.channel import SourceChannel
    from monitor.daemon.wiring import Pipeline
    from monitor.outputs.prometheus import Metrics
    from monitor.outputs.sink import Command, WindowResult

log = logging.getLogger(__name__)

MAX_EVENTS = 16  # recent anomaly events whose windows are held
RECENT_WINDOWS = 64  # per source: windows before an onset (the N of M that raised it)
ENROL_NICE = 10  # the enrolment thread's niceness above the daemon's (Linux: per thread)


def ack_args(args: Mapping[str, Any]) -> tuple[str, str | None]:
    """(event id, condition or None) of an ``ack`` payload; ValueError naming the key."""
    unknown = set(args) - {"event_id", "condition"}
    if unknown:
        raise ValueError(f"ack: unknown key(s) {sorted(unknown)}; use 'event_id' and 'condition'")
    event_id = args.get("event_id")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 200:
        raise ValueError(f"ack: 'event_id' must be an anomaly event's id; got {event_id!r:.60}")
    condition = args.get("condition")
    if condition is not None:
        if not isinstance(condition, str):
            raise ValueError(f"ack: 'condition' must be a string; got {condition!r:.60}")
        validate_condition_name(condition)
    return event_id, condition


def event_start_ms(event_id: str, source: str) -> int | None:
    """The onset (epoch ms) an anomaly event id ``<source>-<ms>`` names (docs/mqtt.md)."""
    head, _, ms = event_id.rpartition("-")
    return int(ms) if head == source and ms.isdigit() else None


@dataclass
class _Window:
    start_sample: int
    t: float
    embedding: np.ndarray
    condition: str


@dataclass
class EventWindows:
    """The windows of one anomaly event that an acknowledgement would enrol."""

    event_id: str
    source: str
    machine: str
    package: str  # the package the windows were embedded with
    spacing: int  # minimum samples between kept window starts (one window, doubled by thinning)
    max_windows: int = MAX_ACK_WINDOWS
    windows: list[_Window] = field(default_factory=list)
    scored: int = 0  # windows of the event scored (kept or not)
    open: bool = True
    acked: bool = False

    def add(self, w: _Window) -> None:
        self.scored += 1
        if self.windows:
            gap = w.start_sample - self.windows[-1].start_sample
            if 0 <= gap < self.spacing:  # overlaps the last kept one (a new clock starts at 0)
                return
        self.windows.append(w)
        if len(self.windows) > self.max_windows:
            self.windows = self.windows[::2]
            self.spacing *= 2

    def embeddings(self) -> np.ndarray:
        return np.stack([w.embedding for w in self.windows])

    def condition(self) -> str:
        """The condition most of its windows matched (the first of those tied)."""
        return Counter(w.condition for w in self.windows).most_common(1)[0][0]


@dataclass(frozen=True)
class _Job:
    record: EventWindows
    embeddings: np.ndarray
    condition: str


class Acknowledgements:
    """The recent events' windows and the ``ack`` command (see the module docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        on_enrolled: Callable[[], None],
        max_events: int = MAX_EVENTS,
        max_windows: int = MAX_ACK_WINDOWS,
    ) -> None:
        self.metrics = metrics
        self.on_enrolled = on_enrolled
        self.max_events = max_events
        self.max_windows = max_windows
        self.events: OrderedDict[str, EventWindows] = OrderedDict()
        self._open: dict[str, str] = {}  # source -> id of its open event
        self._recent: dict[str, deque[_Window]] = {}
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ inference thread
    def on_window(self, result: WindowResult, embedding: np.ndarray, pipeline: Pipeline) -> None:
        """A scored window of ``result.source`` and its embedding (after the alert machine)."""
        src = result.source
        w = _Window(
            result.start_sample, result.t, np.array(embedding, np.float32),
            result.condition or DEFAULT_CONDITION,
        )  # fmt: skip
        recent = self._recent.setdefault(src, deque(maxlen=RECENT_WINDOWS))
        recent.append(w)
        event_id = result.status.event_id
        before = self._open.get(src)
        if before is not None and before != event_id:
            if before in self.events:
                self.events[before].open = False
            del self._open[src]
        if event_id is None:
            return
        record = self.events.get(event_id)
        if record is not None:
            record.add(w)
            return
        pkg = pipeline.package
        record = EventWindows(
            event_id, src, pipeline.machines[src], str(pkg.archive or pkg.path),
            pipeline.window_samples, self.max_windows,
        )  # fmt: skip
        onset = event_start_ms(event_id, src)  # the windows since then raised it
        since = [r for r in recent if onset is not None and round(r.t * 1000) >= onset]
        for r in since or [w]:
            record.add(r)
        self.events[event_id] = record
        self._open[src] = event_id
        while len(self.events) > self.max_events:
            self.events.popitem(last=False)

    def command(
        self, cmd: Command, channels: Mapping[str, SourceChannel], pipeline: Pipeline
    ) -> None:
        """An ``ack``: checks, ends the event if open, queues the enrolment; never blocks."""
        try:
            event_id, condition = ack_args(cmd.args)
        except ValueError as exc:
            self._refuse("invalid", f"MQTT command {cmd.topic}: {exc}")
            return
        record = self.events.get(event_id)
        if record is None or (cmd.source is not None and record.source != cmd.source):
            where = f"source {cmd.source!r}" if cmd.source else "its sources"
            self._refuse(
                "unknown_event",
                f"ack of {event_id!r}: not one of the last {self.max_events} anomaly events of "
                f"{where} this daemon holds (an older one: `sonitor ack --clip` with its clip)",
            )
            return
        if record.acked:
            self._refuse("already_acked", f"ack of {event_id!r}: already acknowledged")
            return
        channel = channels.get(record.source)
        if channel is None:
            self._refuse("unknown_event", f"ack of {event_id!r}: source {record.source!r} is gone")
            return
        state = channel.manager.source_health(channel.name).state
        if state in UNHEALTHY_STATES or not channel.alert.status().healthy:
            self._refuse(
                "capture_unhealthy",
                f"ack of {event_id!r}: the capture of source {record.source!r} is unhealthy "
                f"({state.value}); acknowledge once it is healthy again",
            )
            return
        pkg = pipeline.package
        machine = pipeline.machines.get(record.source)
        if str(pkg.archive or pkg.path) != record.package or machine != record.machine:
            self._refuse(
                "model_changed",
                f"ack of {event_id!r}: its windows were embedded for machine {record.machine!r} "
                f"of {record.package}; the source now uses {machine!r} of "
                f"{pkg.archive or pkg.path}",
            )
            return
        record.acked = True
        ended = channel.acknowledge(event_id)
        job = _Job(record, record.embeddings(), condition or record.condition())
        log.info(
            "event %s of source %s acknowledged as normal%s: enrolling %d of its %d window(s) "
            "into condition %r of machine %r",
            event_id, record.source, " (ended it)" if ended else "", len(job.embeddings),
            record.scored, job.condition, record.machine,
        )  # fmt: skip
        self._jobs.put(job)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="sonitor-ack", daemon=True)
            self._thread.start()

    def _refuse(self, result: str, message: str) -> None:
        log.warning("%s; refused", message)
        self.metrics["acks"].labels(result=result).inc()

    # ------------------------------------------------------------------ background thread
    def _run(self) -> None:
        # Linux niceness is per thread: the inference thread keeps the CPU it needs
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ENROL_NICE)
        while (job := self._jobs.get()) is not None:
            self._enrol(job)

    def _enrol(self, job: _Job) -> None:
        rec = job.record
        t0 = time.monotonic()
        try:
            res = enroll_ack(
                rec.package, rec.machine, job.embeddings, job.condition,
                event_id=rec.event_id, command="mqtt", windows_scored=rec.scored,
                source=rec.source,
            )  # fmt: skip
        except AckRefused as exc:
            self._refuse(exc.result, f"ack of {rec.event_id!r}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - logged and counted; the thread carries on
            rec.acked = False  # may be tried again (one attribute: no lock needed)
            log.error("ack of %r: enrolment failed: %s", rec.event_id, exc, exc_info=True)
            self.metrics["acks"].labels(result="failed").inc()
            return
        self.metrics["acks"].labels(result="enrolled").inc()
        log.info(
            "ack of %s enrolled in %.1f s: %s", rec.event_id, time.monotonic() - t0, res.summary()
        )
        self.on_enrolled()

    def stop(self, timeout: float) -> None:
        """Let a running enrolment finish (up to ``timeout`` s); queued ones are dropped (an
        interrupted write leaves the old package intact)."""
        if self._thread is None:
            return
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        self._jobs.put(None)
        self._thread.join(timeout)


class PackageWatch:
    """Whether the model package on disk is no longer the loaded one (checked every
    ``period_s``: a stat, and a manifest hash when the stat changed)."""

    def __init__(self, period_s: float = 2.0) -> None:
        self.period_s = period_s
        self._next = 0.0
        self._seen: tuple[Any, ...] | None = None

    def changed(self, path: Path, loaded_version: str) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.period_s
        target = path / MANIFEST if path.is_dir() else path
        try:
            st = target.stat()
        except OSError:
            return False  # being swapped, or gone: the next look (or a reload) tells
        seen = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            return manifest_version(path) != loaded_version
        except (PackageError, SonitorError, OSError):
            return False
