"""Per-source alert state machine: turns a stream of window scores into alert lifecycle events.

Why a state machine and not a bare threshold: one loud window must not page anyone (N-of-M
confirmation), a score hovering at the threshold must not flap (hysteresis: a lower off-threshold,
K windows below it and a minimum hold), and an event that just ended must not restart at once
(cooldown). A dead microphone must not look like a healthy machine either: while capture is
unhealthy no anomaly alert is raised and a separate *capture* alarm is emitted instead.

Pure logic: no clock, no I/O, no threads. Times are whatever the caller passes (the daemon uses
the window end time in epoch seconds), so every behaviour is reproducible from a scripted sequence.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal["anomaly", "level", "capture", "test"]
EventType = Literal["start", "update", "end"]
Severity = Literal["warning", "critical"]
AlarmState = Literal["idle", "active", "cooldown", "muted", "unhealthy"]

# End reasons (the `reason` of an `end` event).
END_CLEARED = "cleared"
END_CAPTURE_UNHEALTHY = "capture_unhealthy"
END_MUTED = "muted"
END_INVALID_SCORES = "invalid_scores"
END_RECOVERED = "recovered"  # capture alarms only
END_SHUTDOWN = "shutdown"
# The daemon died with the alert open (SIGKILL, crash, power cut); the next start ends it
# (monitor/outputs/open_alerts.py).
END_RESTART = "restart"
# Update reasons.
UPDATE_SEVERITY = "severity"
UPDATE_PEAK = "peak"
UPDATE_PERIODIC = "periodic"


@dataclass(frozen=True)
class AlertPolicy:
    """Alert rules for one source. Scores are *normalised* (raw score / threshold: 1.0 = threshold).

    Defaults, assuming a 1 s hop:
    - ``on_threshold`` 1.0: a window is "above" when its normalised score is >= this.
    - ``critical_threshold`` 1.5: severity is critical when N of the last M windows are >= this.
    - ``off_threshold`` 0.8: clearing counts windows strictly below this (hysteresis).
    - ``n_above`` 3 of ``m_windows`` 5: confirmation before an event starts.
    - ``k_below`` 3: consecutive windows below ``off_threshold`` needed to end an event.
    - ``min_hold_s`` 10: an event lasts at least this long (unless capture dies or it is muted).
    - ``cooldown_s`` 30: after an end, no new start for this long.
    - ``update_interval_s`` 30: periodic `update` while active (0 disables).
    - ``peak_step`` 0.5: `update` when the peak rises this much above the last published one
      (0 disables).
    - ``invalid_limit`` 10: this many consecutive NaN/inf scores end an open event
      (reason ``invalid_scores``); single invalid windows are skipped and counted.
    - ``capture_alarm_delay_s`` 0: how long capture must stay unhealthy before a capture alarm.
    - ``max_event_scores`` 3600: per-event score history kept for the clip sidecar (bounded).

    Plain values: the rules on them (N <= M, off <= on <= critical, non-negative times...) live in
    the config schema (``alerts:`` in ``monitor/config/detection.py``), and
    ``monitor.daemon.wiring.alert_policy`` builds this from a validated config.
    """

    on_threshold: float = 1.0
    critical_threshold: float = 1.5
    off_threshold: float = 0.8
    n_above: int = 3
    m_windows: int = 5
    k_below: int = 3
    min_hold_s: float = 10.0
    cooldown_s: float = 30.0
    update_interval_s: float = 30.0
    peak_step: float = 0.5
    invalid_limit: int = 10
    capture_alarm_delay_s: float = 0.0
    max_event_scores: int = 3600


@dataclass(frozen=True)
class AlertEvent:
    """One lifecycle message of an alert. All messages of one alert share ``event_id``.

    ``time`` is when this message happened; ``start_time`` is the end time of the first window
    above the on-threshold (anomaly) or when capture went bad (capture). ``score`` and
    ``peak_score`` are normalised; ``scores`` (end events only) are the (time, score) pairs
    seen during the event, for the clip sidecar.
    """

    kind: EventKind
    type: EventType
    event_id: str
    source: str
    seq: int
    time: float
    start_time: float
    end_time: float | None = None
    severity: Severity = "warning"
    score: float | None = None
    peak_score: float | None = None
    windows_above: int = 0
    windows: int = 0
    reason: str | None = None
    scores: tuple[tuple[float, float], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class AlertStatus:
    """Snapshot for the retained state topic and metrics."""

    state: AlarmState
    severity: Severity | None
    event_id: str | None
    muted_until: float | None
    healthy: bool
    capture_alarm_id: str | None
    windows_total: int
    invalid_scores_total: int
    events_started_total: int


def event_id_for(source: str, t: float, kind: EventKind = "anomaly") -> str:
    """Stable, readable id: ``<source>-<epoch_ms>`` (``<source>-<kind>-<ms>`` for capture/test)."""
    ms = int(round(t * 1000.0))
    return f"{source}-{ms}" if kind == "anomaly" else f"{source}-{kind}-{ms}"


def test_events(source: str, t: float) -> list[AlertEvent]:
    """A test alert: a ``start`` then an ``end`` of kind ``test`` at ``t``, through the same path
    as real events (``sonitor test-alert``, the ``test_alert`` command). The random suffix keeps
    two tests in the same millisecond apart."""
    event_id = f"{source}-test-{int(t * 1000)}-{uuid.uuid4().hex[:6]}"
    start = AlertEvent("test", "start", event_id, source, 0, t, t, reason="test_alert")
    end = AlertEvent("test", "end", event_id, source, 1, t, t, end_time=t, reason="test_alert")
    return [start, end]


def _valid(score: object) -> float | None:
    try:
        value = float(score)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass
class _Open:
    """Book-keeping of the open anomaly event."""

    event_id: str
    start_time: float
    raised_time: float
    severity: Severity
    peak: float
    published_peak: float
    last_update: float
    seq: int = 0
    below: int = 0
    last_score: float | None = None
    scores: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class _Capture:
    """Book-keeping of the open capture alarm."""

    event_id: str
    start_time: float
    reason: str
    seq: int = 0


class AlertMachine:
    """Alert state for one source. Feed every scored window to :meth:`step`.

    The health path calls :meth:`set_health` too (capture can die between windows, and then no
    window arrives at all). Every method returns the lifecycle events it produced, in order.
    """

    def __init__(
        self,
        source: str,
        policy: AlertPolicy | None = None,
        *,
        kind: EventKind = "anomaly",
        capture_alarms: bool = True,
    ) -> None:
        """``kind``: what this machine's score-driven events are called ("anomaly"; "level" for
        the level-shift rule, which feeds |level change| / its threshold as the score).
        ``capture_alarms=False``: unhealthy capture still ends an open event, but only the
        source's main machine raises the capture alarm."""
        self.source = source
        self.policy = policy or AlertPolicy()
        self.kind: EventKind = kind
        self.capture_alarms = capture_alarms
        self._history: deque[tuple[float, float]] = deque(maxlen=self.policy.m_windows)
        self._open: _Open | None = None
        self._capture: _Capture | None = None
        self._cooldown_until: float | None = None
        self._muted = False
        self._muted_until: float | None = None
        self._healthy = True
        self._unhealthy_since: float | None = None
        self._unhealthy_reason = "capture_unhealthy"
        self._consecutive_invalid = 0
        self._last_t: float | None = None
        self.windows_total = 0
        self.invalid_scores_total = 0
        self.events_started_total = 0

    # ------------------------------------------------------------------ public API
    def step(self, t: float, normalised_score: float, healthy: bool = True) -> list[AlertEvent]:
        """Process one window ending at ``t``. NaN/inf/non-numbers are counted, never raised."""
        self._last_t = t
        self.windows_total += 1
        events = self._expire_mute(t)
        if not healthy:
            return events + self.set_health(t, False)
        if not self._healthy or self._capture is not None:
            events += self.set_health(t, True)
        score = _valid(normalised_score)
        if score is None:
            self.invalid_scores_total += 1
            self._consecutive_invalid += 1
            if (
                self._open is not None
                and self._consecutive_invalid >= self.policy.invalid_limit
                and not self._muted
            ):
                events.append(self._end(t, END_INVALID_SCORES))
                self._history.clear()
            return events
        self._consecutive_invalid = 0
        if self._muted:
            return events
        self._history.append((t, score))
        if self._open is None:
            events += self._maybe_start(t)
        else:
            events += self._while_open(t, score)
        return events

    def set_health(self, t: float, healthy: bool, reason: str | None = None) -> list[AlertEvent]:
        """Report capture health. Unhealthy ends an open anomaly event and raises a capture alarm.

        Call it on every health check (e.g. once a second), not only on changes, so that a
        ``capture_alarm_delay_s`` can elapse while no windows arrive.
        """
        self._last_t = t
        events = self._expire_mute(t)
        if healthy:
            self._healthy = True
            self._unhealthy_since = None
            if self._capture is not None:
                events.append(self._capture_msg(t, "end", END_RECOVERED, end=True))
                self._capture = None
            return events
        reason = reason or "capture_unhealthy"
        if self._healthy:
            self._healthy = False
            self._unhealthy_since = t
            self._history.clear()
        self._unhealthy_reason = reason
        if self._muted:
            return events
        if self._open is not None:
            events.append(self._end(t, END_CAPTURE_UNHEALTHY))
        events += self._capture_step(t)
        return events

    def mute(self, t: float, until: float | None = None) -> list[AlertEvent]:
        """Maintenance mute until ``until`` (same clock as ``t``) or indefinitely (``None``).

        Open events end (reason ``muted``) so that no consumer is left with a dangling alarm;
        after that nothing is emitted until :meth:`unmute` or ``until`` passes.
        """
        self._last_t = t
        events: list[AlertEvent] = []
        if self._open is not None:
            events.append(self._end(t, END_MUTED))
        if self._capture is not None:
            events.append(self._capture_msg(t, "end", END_MUTED, end=True))
            self._capture = None
        self._muted = True
        self._muted_until = until
        self._history.clear()
        return events

    def unmute(self, t: float) -> list[AlertEvent]:
        """End a mute. If capture is still unhealthy the capture alarm is raised again."""
        self._last_t = t
        if not self._muted:
            return []
        self._muted = False
        self._muted_until = None
        self._history.clear()
        if not self._healthy:
            return self._capture_step(t)
        return []

    def close(self, t: float) -> list[AlertEvent]:
        """End whatever is open (reason ``shutdown``): the daemon calls it on a clean exit."""
        events: list[AlertEvent] = []
        if self._open is not None:
            events.append(self._end(t, END_SHUTDOWN))
        if self._capture is not None:
            events.append(self._capture_msg(t, "end", END_SHUTDOWN, end=True))
            self._capture = None
        return events

    @property
    def state(self) -> AlarmState:
        """``muted`` > ``unhealthy`` > ``active`` > ``cooldown`` > ``idle``."""
        if self._muted:
            return "muted"
        if not self._healthy:
            return "unhealthy"
        if self._open is not None:
            return "active"
        if (
            self._cooldown_until is not None
            and self._last_t is not None
            and self._last_t < self._cooldown_until
        ):
            return "cooldown"
        return "idle"

    def status(self) -> AlertStatus:
        """A snapshot for the retained state topic and for metrics."""
        return AlertStatus(
            state=self.state,
            severity=self._open.severity if self._open else None,
            event_id=self._open.event_id if self._open else None,
            muted_until=self._muted_until if self._muted else None,
            healthy=self._healthy,
            capture_alarm_id=self._capture.event_id if self._capture else None,
            windows_total=self.windows_total,
            invalid_scores_total=self.invalid_scores_total,
            events_started_total=self.events_started_total,
        )

    # ------------------------------------------------------------------ anomaly lifecycle
    def _counts(self) -> tuple[int, int]:
        above = sum(1 for _, s in self._history if s >= self.policy.on_threshold)
        crit = sum(1 for _, s in self._history if s >= self.policy.critical_threshold)
        return above, crit

    def _severity(self, crit: int) -> Severity:
        return "critical" if crit >= self.policy.n_above else "warning"

    def _maybe_start(self, t: float) -> list[AlertEvent]:
        if self._cooldown_until is not None and t < self._cooldown_until:
            return []
        above, crit = self._counts()
        if above < self.policy.n_above:
            return []
        first = next(ts for ts, s in self._history if s >= self.policy.on_threshold)
        peak = max(s for _, s in self._history)
        score = self._history[-1][1]
        self._open = _Open(
            event_id=event_id_for(self.source, first, self.kind),
            start_time=first,
            raised_time=t,
            severity=self._severity(crit),
            peak=peak,
            published_peak=peak,
            last_update=t,
            last_score=score,
        )
        self._open.scores.extend(self._history)
        del self._open.scores[: max(0, len(self._open.scores) - self.policy.max_event_scores)]
        self.events_started_total += 1
        return [self._anomaly_msg(t, "start", None)]

    def _while_open(self, t: float, score: float) -> list[AlertEvent]:
        ev = self._open
        assert ev is not None
        ev.last_score = score
        ev.peak = max(ev.peak, score)
        if len(ev.scores) < self.policy.max_event_scores:
            ev.scores.append((t, score))
        ev.below = ev.below + 1 if score < self.policy.off_threshold else 0
        if ev.below >= self.policy.k_below and t - ev.raised_time >= self.policy.min_hold_s:
            return [self._end(t, END_CLEARED)]
        _, crit = self._counts()
        reason = None
        if ev.severity == "warning" and self._severity(crit) == "critical":
            ev.severity = "critical"  # escalate only: an event never de-escalates, it ends
            reason = UPDATE_SEVERITY
        elif self.policy.peak_step > 0 and ev.peak >= ev.published_peak + self.policy.peak_step:
            reason = UPDATE_PEAK
        elif (
            self.policy.update_interval_s > 0
            and t - ev.last_update >= self.policy.update_interval_s
        ):
            reason = UPDATE_PERIODIC
        if reason is None:
            return []
        ev.published_peak = ev.peak
        ev.last_update = t
        return [self._anomaly_msg(t, "update", reason)]

    def _end(self, t: float, reason: str) -> AlertEvent:
        msg = self._anomaly_msg(t, "end", reason, end=True)
        self._open = None
        self._cooldown_until = t + self.policy.cooldown_s
        return msg

    def _anomaly_msg(
        self, t: float, type_: EventType, reason: str | None, end: bool = False
    ) -> AlertEvent:
        ev = self._open
        assert ev is not None
        above, _ = self._counts()
        msg = AlertEvent(
            kind=self.kind,
            type=type_,
            event_id=ev.event_id,
            source=self.source,
            seq=ev.seq,
            time=t,
            start_time=ev.start_time,
            end_time=t if end else None,
            severity=ev.severity,
            score=ev.last_score,
            peak_score=ev.peak,
            windows_above=above,
            windows=len(self._history),
            reason=reason,
            scores=tuple(ev.scores) if end else (),
        )
        ev.seq += 1
        return msg

    # ------------------------------------------------------------------ capture alarm / mute
    def _capture_step(self, t: float) -> list[AlertEvent]:
        if not self.capture_alarms:
            return []
        if self._capture is not None:
            if self._capture.reason != self._unhealthy_reason:
                self._capture.reason = self._unhealthy_reason
                return [self._capture_msg(t, "update", None)]
            return []
        since = self._unhealthy_since if self._unhealthy_since is not None else t
        if t - since < self.policy.capture_alarm_delay_s:
            return []
        self._capture = _Capture(
            event_id=event_id_for(self.source, since, "capture"),
            start_time=since,
            reason=self._unhealthy_reason,
        )
        return [self._capture_msg(t, "start", self._unhealthy_reason)]

    def _capture_msg(
        self, t: float, type_: EventType, reason: str | None, end: bool = False
    ) -> AlertEvent:
        cap = self._capture
        assert cap is not None
        if type_ == "update":
            reason = cap.reason  # an update says what is wrong now
        msg = AlertEvent(
            kind="capture",
            type=type_,
            event_id=cap.event_id,
            source=self.source,
            seq=cap.seq,
            time=t,
            start_time=cap.start_time,
            end_time=t if end else None,
            severity="warning",
            reason=reason,
        )
        cap.seq += 1
        return msg

    def _expire_mute(self, t: float) -> list[AlertEvent]:
        if self._muted and self._muted_until is not None and t >= self._muted_until:
            return self.unmute(t)
        return []
