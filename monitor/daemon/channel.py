"""One source's way from capture to its outputs: ring-buffer reads -> windows -> scores -> alert
machine -> clips, events, state and health for the sinks.

Why one object per source: everything that belongs to a source (the capture manager it reads,
its windower and sample clock, audio read but not windowed yet, its last capture health, alert
machine, smoother, clip recorder, last window, when its state and health were last published)
lives in one `SourceChannel`, so adding, removing or reloading a source is that object's
business and nothing is looked up in parallel dicts.

Threads: the capture half (`read`, `rewire` and the fields they write: `manager`, `windower`,
`realtime`, `sample_clock`, `carry`, `health`, `last_audio_mono`, `cut_end`, `drained`) runs on
the main thread; the alert half (everything after the window queue: `on_window`, `check_health`,
the commands, `close`, `adopt` and the clip feeding) runs on the inference thread alone, so it
needs no locks. The inference thread only reads `manager` and `sample_clock` of the capture half
(for clip audio: a reference and an int, read whole).

Time: alerts need a clock (`AlertClock`). For real-time sources it is the wall-clock time at
which a window's last sample arrived (robust to clock drift and capture holes); for files replayed
as fast as possible it is audio time (start + samples / 16 kHz), so alert timings mean the same at
any speed.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.alerting.clips import ClipRecorder, ClipWriter
from monitor.alerting.machine import AlertEvent, AlertMachine, AlertPolicy, test_events
from monitor.audio.capture import ALARM_STATES, CaptureManager, SourceHealth, SourceState
from monitor.audio.frontend import SAMPLE_RATE
from monitor.audio.windowing import SourceWindower, Window
from monitor.model.levels import LevelReference
from monitor.outputs.payloads import event_payload, health_payload, state_payload
from monitor.outputs.prometheus import Metrics
from monitor.outputs.sink import Dispatcher, EventItem, WindowResult

log = logging.getLogger(__name__)

# Capture states that mean "do not trust this audio": anomaly alerts pause, a capture alarm runs.
UNHEALTHY_STATES = ALARM_STATES
HEALTH_PERIOD_S = 0.5  # how often the inference thread looks at capture health
HEALTH_REPUBLISH_S = 30.0  # retained health is re-published at least this often
# End reason of an anomaly event an operator acknowledged as normal (`monitor.daemon.acks`).
END_ACKNOWLEDGED = "acknowledged"


class ScoreSmoother:
    """EMA or running median of the normalised score; non-finite scores are skipped."""

    def __init__(self, method: str, alpha: float, n: int) -> None:
        self.method, self.alpha = method, alpha
        self._ema: float | None = None
        self._last: deque[float] = deque(maxlen=max(1, n))

    def update(self, x: float) -> float:
        if not math.isfinite(x):
            return self.value if self.value is not None else float("nan")
        if self.method == "ema":
            self._ema = x if self._ema is None else self.alpha * x + (1 - self.alpha) * self._ema
            return self._ema
        if self.method == "median":
            self._last.append(x)
            return float(statistics.median(self._last))
        self._ema = x
        return x

    @property
    def value(self) -> float | None:
        if self.method == "median":
            return float(statistics.median(self._last)) if self._last else None
        return self._ema


class AlertClock:
    """The alert clock of one source: wall time for real-time sources, audio time for fast files."""

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self.t0: float | None = None  # wall time of sample 0 (audio time of fast sources)

    def window_time(self, w: Window) -> float:
        if self.realtime:
            ready = w.meta.get("ready_sample", w.end_sample)
            return w.ready_wall - (ready - w.end_sample) / SAMPLE_RATE
        if self.t0 is None:
            self.t0 = w.ready_wall - w.end_sample / SAMPLE_RATE
        return self.t0 + w.end_sample / SAMPLE_RATE

    def now(self, last: WindowResult | None) -> float:
        """`now` on this clock: for a fast file, the time of its last window."""
        if self.realtime or self.t0 is None or last is None:
            return time.time()
        return last.t


@dataclass(frozen=True)
class ChannelSettings:
    """The config a channel's alert half runs on (`wiring.channel_settings`)."""

    policy: AlertPolicy
    smoothing: tuple[str, float, int]  # method, EMA alpha, median windows
    alert_on: str  # "smoothed" or "normalised": which score the alert machine sees
    state_interval_s: float  # minimum interval between state updates (events force one)
    history_s: float  # capture history held per source (clip pre-roll comes from it)
    level_shift_db: float | None = None  # level rule: dB beyond natural variation; None: off


class SourceChannel:
    """Capture -> windows -> alerts -> outputs of one source (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        manager: CaptureManager,
        windower: SourceWindower,
        realtime: bool,
        settings: ChannelSettings,
        metrics: Metrics,
        dispatcher: Dispatcher,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.dispatcher = dispatcher
        # capture half (main thread)
        self.manager = manager
        self.windower = windower
        self.realtime = realtime
        self.sample_clock: int | None = None  # sample clock after the last read
        self.carry: tuple[int, np.ndarray] | None = None  # fast files: read, not yet windowed
        self.health: SourceHealth | None = None  # as of the last read
        self.last_audio_mono: float | None = None
        self.cut_end: int | None = None  # end sample of the last window cut
        self.drained = False  # capture ended and every sample read went into the windower
        # alert half (inference thread)
        self.threshold: float | None = None  # of the condition last matched, for event payloads
        self.condition: str | None = None  # the operating condition the last window matched
        self.model_version: str | None = None
        # condition -> its enrolled level and natural variation: the level rule's reference
        self.level_refs: dict[str, LevelReference] = {}
        self.recorder: ClipRecorder | None = None
        self._reset_alerts(settings, realtime)

    def _reset_alerts(self, settings: ChannelSettings, realtime: bool) -> None:
        self.settings = settings
        self.alert = AlertMachine(self.name, settings.policy)
        # "louder" apart from "sounds different": the anomaly score is level-normalised, so a
        # level change of its own is this second machine's (same rules; the capture alarm
        # stays the first one's)
        self.level = (
            AlertMachine(self.name, settings.policy, kind="level", capture_alarms=False)
            if settings.level_shift_db
            else None
        )
        self.smoother = ScoreSmoother(*settings.smoothing)
        self.clock = AlertClock(realtime)
        self.last: WindowResult | None = None
        self.scored_end: int | None = None  # end sample of the last window handled
        self.last_window_mono = 0.0
        self.last_state_pub = -1e9
        self.last_health_pub = -1e9
        self.last_health_key: tuple[Any, ...] | None = None
        self.clip_names: dict[str, str] = {}  # event id -> clip file
        self.clip_fed_upto: int | None = None  # sample clock: audio handed to the recorder

    # ================================================================== capture half
    def read(
        self, enqueue: Callable[[list[Window]], None], backlog: Callable[[], int], max_batch: int
    ) -> None:
        """Read new audio and queue the windows it completes.

        Files replayed as fast as possible are fed one hop at a time and only while inference
        keeps up (back-pressure reaches the file reader through the capture ring), so they are
        never dropped; real-time sources are always read and the queue drops their oldest
        windows when inference falls behind.
        """
        carry = self.carry
        if self.realtime or carry is None:
            try:
                self.health = self.manager.source_health(self.name)
                start, x = self.manager.read_new(self.name)
            except Exception:  # noqa: BLE001 - one broken source must not stop the others
                log.exception("capture read of %s failed", self.name)
                return
            # ENDED is only reported once read_new has returned the file's last sample
            ended = self.health.state is SourceState.ENDED
            if x.size == 0:
                self.drained = ended
                return
            self.sample_clock = start + x.size
            self.last_audio_mono = time.monotonic()
            self.metrics["capture_samples"].labels(source=self.name).inc(x.size)
            self.metrics["capture_last_sample_timestamp_seconds"].labels(source=self.name).set(
                time.time()
            )
            carry = (start, x)
        else:
            ended = False
        start, x = carry
        if self.realtime:
            self.carry = None
            self._push(start, x, enqueue)
        else:
            step = self.windower.hop
            while x.size and backlog() < max_batch:
                self._push(start, x[:step], enqueue)
                start, x = start + min(step, x.size), x[step:]
            self.carry = (start, x) if x.size else None
        self.drained = ended and self.carry is None

    def _push(self, start: int, x: np.ndarray, enqueue: Callable[[list[Window]], None]) -> None:
        health = self.health
        t0 = time.perf_counter()
        windows = self.windower.push(start, x)
        # front-end cost per hop of new audio (what the streaming front-end promises)
        self.metrics.observe_stage(
            "frontend", (time.perf_counter() - t0) * self.windower.hop / max(x.size, 1)
        )
        if not windows:
            return
        healthy = health is None or health.state not in UNHEALTHY_STATES
        state = health.state.value if health is not None else "starting"
        for w in windows:
            w.meta.update(healthy=healthy, state=state, ready_sample=start + x.size)
        self.cut_end = windows[-1].end_sample
        enqueue(windows)

    def rewire(
        self, manager: CaptureManager, windower: SourceWindower, realtime: bool
    ) -> list[Window]:
        """A reload: read on through a new windower (new package or window grid).

        The same capture manager means the same sample clock: the new windower resumes where the
        old one stopped and no audio is lost (the windows it completes at once are returned). A
        new manager starts a new clock, so nothing read from the old one carries over.
        """
        resumed: list[Window] = []
        if manager is self.manager:
            resumed = windower.resume_from(self.windower)
        else:
            self.carry = None
            self.sample_clock = None
        self.manager, self.windower, self.realtime = manager, windower, realtime
        for w in resumed:
            w.meta.setdefault("healthy", True)
        if resumed:
            self.cut_end = resumed[-1].end_sample
        return resumed

    # ================================================================== alert half
    def adopt(self, settings: ChannelSettings, realtime: bool, t: float) -> None:
        """A reload's settings: new alert rules start a new alert machine (open events end at
        ``t``); otherwise only the clock's kind and, if its settings changed, the smoother."""
        if settings.policy != self.settings.policy:
            self.close(t)
            self.finish_clip(feed=False)
            self._reset_alerts(settings, realtime)
            return
        self.clock.realtime = realtime
        if settings.smoothing != self.settings.smoothing:
            self.smoother = ScoreSmoother(*settings.smoothing)
        self.settings = settings

    def use_package(
        self,
        threshold: float | None,
        model_version: str,
        level_refs: dict[str, LevelReference] | None = None,
    ) -> None:
        """The threshold and model version event payloads name (the current package's); the
        condition is learnt again from the next scored window."""
        self.threshold, self.model_version = threshold, model_version
        self.condition = None
        self.level_refs = dict(level_refs or {})

    def use_clip_writer(self, writer: ClipWriter | None) -> None:
        """Record clips through ``writer`` (None: clips off; the current clip is finished)."""
        if writer is None:
            self.finish_clip(feed=False)
            self.recorder = None
        elif self.recorder is None or self.recorder.writer is not writer:
            self.recorder = ClipRecorder(self.name, writer.policy, writer, lambda n: np.zeros(0))

    def on_window(
        self,
        w: Window,
        raw: float,
        threshold: float,
        model_version: str,
        skipped: str | None,
        condition: str | None = None,
    ) -> WindowResult:
        """One window's scores -> alert machine -> clips; the result, its events and the state
        go to the outputs in that order. ``threshold`` is that of the operating ``condition``
        the window matched (`monitor.model.conditions`)."""
        if condition is not None:
            self.condition = condition
            self.threshold = threshold
        norm = raw / threshold if math.isfinite(raw) and threshold > 0 else float("nan")
        smoothed = self.smoother.update(norm)
        fed = smoothed if self.settings.alert_on == "smoothed" else norm
        t = self.clock.window_time(w)
        healthy = bool(w.meta.get("healthy", True))
        self.last_window_mono = time.monotonic()
        if skipped in ("silent", "clipped"):
            events: list[AlertEvent] = []  # capture liveness decides (worker.skip_reason)
        elif skipped == "unhealthy":
            # the capture state ("silent", "clipping", ...) is the alarm's stable reason; the
            # detail goes to the health topic
            events = self.alert.set_health(t, False, w.meta.get("state", "unhealthy"))
        else:
            events = self.alert.step(t, fed, healthy)
        events += self._level_step(t, w, skipped, healthy)
        result = WindowResult(
            source=self.name,
            start_sample=w.start_sample,
            end_sample=w.end_sample,
            t=t,
            raw=raw,
            normalised=norm,
            smoothed=smoothed,
            threshold=threshold,
            level_dbfs=w.level_dbfs,
            healthy=healthy,
            skipped=skipped,
            status=self.alert.status(),
            model_version=model_version,
            ready_monotonic=w.ready_monotonic,
            condition=condition,
        )
        self.last = result
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "window %s [%d, %d) raw=%.4g norm=%.3f smoothed=%.3f level=%.1f dBFS healthy=%s",
                self.name, w.start_sample, w.end_sample, raw, norm, smoothed, w.level_dbfs,
                healthy,
            )  # fmt: skip
        items = self._event_items(events, w.end_sample)
        self.dispatcher.window(result, items, self._state(force=bool(events)))
        self.scored_end = w.end_sample
        return result

    def check_health(self, now_mono: float, hop_s: float) -> None:
        """Capture health -> metrics and the health output; a capture alarm when capture is bad
        and no window arrives at all (a stalled or missing device)."""
        h = self.manager.source_health(self.name)
        m, name = self.metrics, self.name
        m["capture_up"].labels(source=name).set(int(h.state is SourceState.OK))
        m.sync_counter("capture_overflows", h.input_overflows, source=name)
        m.sync_counter("capture_lost_samples", h.overflow_samples, source=name)
        m.sync_counter("capture_reopens", h.reopen_count, source=name)
        m.sync_counter("capture_nonfinite_samples", h.nonfinite_samples, source=name)
        starved = now_mono - self.last_window_mono > hop_s + 2 * HEALTH_PERIOD_S + 1.0
        if h.state in UNHEALTHY_STATES and starved:
            self._events(self.alert.set_health(self.clock.now(self.last), False, h.state.value))
        self._publish_health(h)

    def _level_step(
        self, t: float, w: Window, skipped: str | None, healthy: bool
    ) -> list[AlertEvent]:
        """The level rule: |window level - the matched condition's enrolled level| over its
        threshold (`level_shift_db` beyond the enrolled takes' natural variation) as a
        normalised score."""
        if self.level is None:
            return []
        if skipped == "unhealthy":
            return self.level.set_health(t, False)  # ends an open level event, no alarm
        shift, threshold_db = self._level_shift(w.level_dbfs), self._level_threshold()
        if skipped is not None or shift is None or threshold_db is None:
            return []
        return self.level.step(t, abs(shift) / threshold_db, healthy)

    def _level_shift(self, level_dbfs: float) -> float | None:
        """``level_dbfs`` against the matched condition's enrolled level (None: unknown)."""
        ref = self.level_refs.get(self.condition or "")
        if ref is None or not math.isfinite(level_dbfs):
            return None
        return level_dbfs - ref.level

    def level_shift_db(self) -> float | None:
        """The last window's level against its condition's enrolled level (None: unknown)."""
        return None if self.last is None else self._level_shift(self.last.level_dbfs)

    def _level_threshold(self) -> float | None:
        """The level rule's threshold for the matched condition, dB (None: no rule or no
        enrolled level)."""
        ref = self.level_refs.get(self.condition or "")
        if ref is None or self.settings.level_shift_db is None:
            return None
        return ref.threshold_db(self.settings.level_shift_db)

    def _machines(self) -> list[AlertMachine]:
        return [self.alert] + ([self.level] if self.level is not None else [])

    def mute(self, until: float | None) -> None:
        t = self.clock.now(self.last)
        self._events([e for m in self._machines() for e in m.mute(t, until)], force_state=True)

    def unmute(self) -> None:
        t = self.clock.now(self.last)
        self._events([e for m in self._machines() for e in m.unmute(t)], force_state=True)

    def test_alert(self) -> None:
        """A test event through every output; it touches neither the alarm nor the clips."""
        items = [
            (ev, event_payload(ev, model_version=self.model_version))
            for ev in test_events(self.name, time.time())
        ]
        self.dispatcher.events(self.name, items, self._state(force=True))

    def acknowledge(self, event_id: str) -> bool:
        """End the open anomaly event ``event_id`` (reason ``acknowledged``) and forget the
        windows that raised it (they are normal, so they must not count towards the next N of
        M); False when it is not the open one. AlertMachine ends events only for reasons of its
        own, so this goes through its ``_end``, the one path of every end (cooldown included)."""
        if self.alert.status().event_id != event_id:
            return False
        end = self.alert._end(self.clock.now(self.last), END_ACKNOWLEDGED)
        self.alert._history.clear()  # as a mute does
        self._events([end], force_state=True)
        return True

    def close(self, t: float | None = None) -> None:
        """End open events (reason ``shutdown``) at ``t`` (default: now on the alert clock)."""
        t = self.clock.now(self.last) if t is None else t
        self._events([e for m in self._machines() for e in m.close(t)])

    def feed_clip(self) -> None:
        """Hand the audio read since the last call to the clip being recorded (post-roll)."""
        rec = self.recorder
        if rec is None or not rec.recording or self.clip_fed_upto is None:
            return
        end = self.sample_clock or 0
        if end > self.clip_fed_upto:
            rec.feed(self.audio_range(self.clip_fed_upto, end))
            self.clip_fed_upto = end

    def finish_clip(self, feed: bool = True) -> None:
        """Write the clip being recorded now, with the audio read so far if ``feed``."""
        if self.recorder is not None:
            if feed:
                self.feed_clip()
            self.recorder.flush()

    def audio_range(self, start: int, stop: int) -> np.ndarray:
        """16 kHz audio [start, stop) of this source from capture's history (what is still held)."""
        clock = self.sample_clock or 0
        stop = min(stop, clock)
        if stop <= start:
            return np.zeros(0, np.float32)
        seconds = min((clock - start) / SAMPLE_RATE + 0.01, self.settings.history_s)
        h_start, h = self.manager.history(self.name, seconds)
        a, b = max(start, h_start) - h_start, min(stop, h_start + h.size) - h_start
        return h[a:b] if b > a else np.zeros(0, np.float32)

    # ------------------------------------------------------------------ to the outputs
    def _events(self, events: list[AlertEvent], force_state: bool = False) -> None:
        """Events not tied to a window (health, commands, reload, shutdown), then the state."""
        if events or force_state:
            items = self._event_items(events, None)
            self.dispatcher.events(self.name, items, self._state(force=True))

    def _event_items(self, events: list[AlertEvent], anchor_sample: int | None) -> list[EventItem]:
        """Clips and logs for the lifecycle events of this source; each with its payload.

        ``anchor_sample`` is the end of the window that raised them: an event's clip starts
        its pre-roll there and is fed from there on.
        """
        items: list[EventItem] = []
        for ev in events:
            clip = self.clip_names.get(ev.event_id)
            if self.recorder is not None and ev.kind == "anomaly":
                if ev.type == "start" and anchor_sample is not None:
                    self.recorder.latest = self._latest_before(anchor_sample)
                    self.clip_fed_upto = anchor_sample
                name = self.recorder.on_event(
                    ev, threshold=self.threshold, model_version=self.model_version
                )
                if name:
                    clip = self.clip_names[ev.event_id] = name
            level = logging.WARNING if ev.type == "start" else logging.INFO
            log.log(
                level,
                "%s %s %s (%s) source=%s score=%s reason=%s",
                ev.kind,
                ev.type,
                ev.event_id,
                ev.severity,
                ev.source,
                None if ev.score is None else round(ev.score, 3),
                ev.reason,
            )
            payload = event_payload(
                ev,
                threshold=self._level_threshold() if ev.kind == "level" else self.threshold,
                model_version=self.model_version,
                clip=clip,
                condition=self.condition if ev.kind in ("anomaly", "level") else None,
                level_shift_db=self.level_shift_db() if ev.kind == "level" else None,
            )
            items.append((ev, payload))
            if ev.type == "end":
                self.clip_names.pop(ev.event_id, None)
        return items

    def _latest_before(self, end_sample: int) -> Callable[[int], np.ndarray]:
        def latest(n: int) -> np.ndarray:
            return self.audio_range(end_sample - n, end_sample)

        return latest

    def _state(self, force: bool) -> dict[str, Any] | None:
        """The state payload when one is due (always when ``force``); None before any window."""
        last = self.last
        if last is None:
            return None
        now = time.monotonic()
        if not force and now - self.last_state_pub < self.settings.state_interval_s:
            return None
        self.last_state_pub = now
        return state_payload(
            self.name,
            time=last.t,
            status=self.alert.status(),
            score=last.raw,
            normalised_score=last.normalised,
            threshold=last.threshold,
            level_dbfs=last.level_dbfs,
            capture_healthy=last.healthy,
            model_version=last.model_version,
            condition=self.condition,
            level_shift_db=self.level_shift_db(),
        )

    def _publish_health(self, h: SourceHealth) -> None:
        key = (h.state, h.reason)
        now = time.monotonic()
        if key == self.last_health_key and now - self.last_health_pub < HEALTH_REPUBLISH_S:
            return
        self.last_health_key, self.last_health_pub = key, now
        last_frame = None if h.last_frame_age_s is None else time.time() - h.last_frame_age_s
        level = h.level_dbfs if h.level_dbfs is not None and math.isfinite(h.level_dbfs) else None
        payload = health_payload(
            self.name,
            time=time.time(),
            healthy=h.state is SourceState.OK,
            status=h.state.value,
            detail=h.reason,
            level_dbfs=level,
            last_frame_time=last_frame,
            overflows_total=h.input_overflows,
            reopen_attempts=h.reopen_count,
        )
        self.dispatcher.health(self.name, payload)
