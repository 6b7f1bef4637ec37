"""The per-source alert state machine, driven by scripted score sequences (1 window per second)."""

from __future__ import annotations

import math

import pytest

from monitor.alerting.machine import AlertEvent, AlertMachine, AlertPolicy, event_id_for
from monitor.config import parse_config
from monitor.errors import ConfigError

T0 = 1_700_000_000.0

QUIET = AlertPolicy(
    n_above=3,
    m_windows=5,
    k_below=3,
    min_hold_s=0.0,
    cooldown_s=0.0,
    update_interval_s=0.0,
    peak_step=0.0,
    critical_threshold=2.0,
)


def run(
    machine: AlertMachine, scores: list[float], start: float = T0, healthy: bool = True
) -> list[AlertEvent]:
    """Feed scores one per second from `start`; return all events."""
    events: list[AlertEvent] = []
    for i, s in enumerate(scores):
        events += machine.step(start + i, s, healthy)
    return events


def kinds(events: list[AlertEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.type) for e in events]


def test_single_spike_does_not_alert_but_n_of_m_does() -> None:
    m = AlertMachine("pump1", QUIET)
    assert run(m, [0.2, 5.0, 0.2, 0.3, 0.1, 0.2, 5.0, 0.1]) == []
    assert m.state == "idle"
    # 3 of the last 5 windows above (not consecutive): t+6 (5.0), t+10 and t+12.
    events = m.step(T0 + 10, 1.2, True)
    events += m.step(T0 + 11, 0.5, True)
    assert events == []
    events = m.step(T0 + 12, 1.1, True)
    assert kinds(events) == [("anomaly", "start")]
    start = events[0]
    # onset = the first above window among the last M windows (t+1 fell out, t+6 is it)
    assert start.start_time == T0 + 6
    assert start.time == T0 + 12
    assert start.event_id == f"pump1-{int((T0 + 6) * 1000)}"
    assert start.event_id == event_id_for("pump1", T0 + 6)
    assert start.peak_score == 5.0 and start.score == 1.1
    assert start.severity == "warning"
    assert start.windows_above == 3 and start.windows == 5
    assert start.seq == 0
    assert m.state == "active"


def test_on_threshold_is_inclusive() -> None:
    m = AlertMachine("s", QUIET)
    assert kinds(run(m, [1.0, 1.0, 1.0])) == [("anomaly", "start")]
    m2 = AlertMachine("s", QUIET)
    assert run(m2, [0.999, 0.999, 0.999, 0.999, 0.999]) == []


def test_clear_needs_k_consecutive_below_off_threshold_hysteresis() -> None:
    m = AlertMachine("s", QUIET)  # off_threshold 0.8, k_below 3
    assert kinds(run(m, [3, 3, 3])) == [("anomaly", "start")]
    # 0.9 is below on (1.0) but not below off (0.8): it resets the count.
    assert run(m, [0.5, 0.5, 0.9, 0.5, 0.5], start=T0 + 3) == []
    assert m.state == "active"
    events = m.step(T0 + 8, 0.5, True)
    assert kinds(events) == [("anomaly", "end")]
    end = events[0]
    assert end.reason == "cleared"
    assert end.end_time == T0 + 8
    assert end.peak_score == 3.0
    assert end.seq == 1
    # The end event carries the scores seen during the event (for the clip sidecar).
    assert end.scores[0] == (T0, 3.0) and end.scores[-1] == (T0 + 8, 0.5)


def test_min_hold_keeps_event_open() -> None:
    policy = AlertPolicy(n_above=1, m_windows=1, k_below=1, min_hold_s=10.0, cooldown_s=0.0)
    m = AlertMachine("s", policy)
    assert kinds(m.step(T0, 2.0)) == [("anomaly", "start")]
    # Below from the next window on, but the event must last 10 s from when it was raised.
    events = run(m, [0.1] * 9, start=T0 + 1)
    assert events == []
    events = m.step(T0 + 10, 0.1)
    assert kinds(events) == [("anomaly", "end")]
    assert events[0].end_time - events[0].start_time == 10.0


def test_cooldown_blocks_a_new_start() -> None:
    policy = AlertPolicy(n_above=1, m_windows=1, k_below=1, min_hold_s=0.0, cooldown_s=30.0)
    m = AlertMachine("s", policy)
    assert kinds(run(m, [2.0, 0.1])) == [("anomaly", "start"), ("anomaly", "end")]
    assert m.state == "cooldown"
    assert run(m, [5.0] * 29, start=T0 + 2) == []  # t+2 .. t+30: still inside the cooldown
    events = m.step(T0 + 31, 5.0)
    assert kinds(events) == [("anomaly", "start")]
    assert events[0].event_id != event_id_for("s", T0)


def test_state_returns_to_idle_after_cooldown() -> None:
    policy = AlertPolicy(n_above=1, m_windows=1, k_below=1, min_hold_s=0.0, cooldown_s=5.0)
    m = AlertMachine("s", policy)
    run(m, [2.0, 0.1])
    assert m.state == "cooldown"
    m.step(T0 + 7, 0.1)
    assert m.state == "idle"


def test_severity_critical_start_and_escalation_without_deescalation() -> None:
    m = AlertMachine("s", QUIET)
    assert run(m, [2.5, 2.5, 2.5])[0].severity == "critical"

    m = AlertMachine("s", QUIET)
    start = run(m, [1.2, 1.2, 1.2])
    assert start[0].severity == "warning"
    events = run(m, [2.1, 2.2, 2.3], start=T0 + 3)
    assert kinds(events) == [("anomaly", "update")]
    assert events[0].reason == "severity" and events[0].severity == "critical"
    assert events[0].event_id == start[0].event_id and events[0].seq == 1
    # Back to warning-level scores: still critical (escalate only), no update.
    assert run(m, [1.2, 1.2, 1.2, 1.2], start=T0 + 6) == []
    assert m.status().severity == "critical"


def test_peak_and_periodic_updates() -> None:
    policy = AlertPolicy(
        n_above=1,
        m_windows=1,
        k_below=1,
        min_hold_s=0.0,
        update_interval_s=10.0,
        peak_step=0.5,
        critical_threshold=5.0,
    )
    m = AlertMachine("s", policy)
    assert kinds(m.step(T0, 1.2)) == [("anomaly", "start")]
    assert m.step(T0 + 1, 1.5) == []  # rose 0.3 < peak_step
    events = m.step(T0 + 2, 1.8)  # 0.6 above the published peak 1.2
    assert [e.reason for e in events] == ["peak"]
    assert events[0].peak_score == 1.8
    assert run(m, [1.3] * 9, start=T0 + 3) == []  # t+3 .. t+11: 9 s since the last update
    events = m.step(T0 + 12, 1.3)
    assert [e.reason for e in events] == ["periodic"]
    assert [e.seq for e in events] == [2]


def test_unhealthy_ends_event_and_raises_capture_alarm() -> None:
    m = AlertMachine("mic", QUIET)
    start = run(m, [3, 3, 3])[0]
    events = m.step(T0 + 3, 3.0, healthy=False)
    assert kinds(events) == [("anomaly", "end"), ("capture", "start")]
    assert events[0].reason == "capture_unhealthy" and events[0].event_id == start.event_id
    cap = events[1]
    assert cap.event_id == f"mic-capture-{int((T0 + 3) * 1000)}"
    assert m.state == "unhealthy"
    # No anomaly alerts while unhealthy, however high the scores.
    assert run(m, [9.0] * 10, start=T0 + 4, healthy=False) == []
    # Health path says "recovered": capture alarm ends; anomaly needs N fresh windows again.
    events = m.set_health(T0 + 14, True)
    assert kinds(events) == [("capture", "end")]
    assert events[0].reason == "recovered" and events[0].event_id == cap.event_id
    assert m.step(T0 + 15, 9.0) == [] and m.step(T0 + 16, 9.0) == []
    assert kinds(m.step(T0 + 17, 9.0)) == [("anomaly", "start")]


def test_capture_alarm_delay_and_reason_update() -> None:
    m = AlertMachine("mic", AlertPolicy(capture_alarm_delay_s=5.0))
    assert m.set_health(T0, False, "no_frames") == []
    assert m.set_health(T0 + 4, False, "no_frames") == []
    events = m.set_health(T0 + 5, False, "no_frames")
    assert kinds(events) == [("capture", "start")]
    assert events[0].reason == "no_frames" and events[0].start_time == T0
    events = m.set_health(T0 + 6, False, "silence")
    assert kinds(events) == [("capture", "update")] and events[0].reason == "silence"
    assert m.set_health(T0 + 7, False, "silence") == []
    # A short glitch below the delay raises nothing.
    m2 = AlertMachine("mic", AlertPolicy(capture_alarm_delay_s=5.0))
    assert m2.set_health(T0, False, "silence") == [] and m2.set_health(T0 + 2, True) == []
    assert m2.set_health(T0 + 3, False, "silence") == []


def test_window_after_capture_outage_counts_as_recovery() -> None:
    m = AlertMachine("mic", QUIET)
    m.set_health(T0, False, "no_frames")
    events = m.step(T0 + 1, 0.1, healthy=True)
    assert kinds(events) == [("capture", "end")]
    assert m.state == "idle"


def test_mute_indefinitely_and_unmute() -> None:
    m = AlertMachine("s", QUIET)
    run(m, [3, 3, 3])
    events = m.mute(T0 + 3)
    assert kinds(events) == [("anomaly", "end")] and events[0].reason == "muted"
    assert m.state == "muted"
    assert m.status().muted_until is None
    assert run(m, [9.0] * 100, start=T0 + 4) == []
    assert m.set_health(T0 + 200, False, "no_frames") == []  # no capture alarm either
    assert m.state == "muted"
    # Unmute while capture is still bad: the capture alarm is raised now.
    assert kinds(m.unmute(T0 + 201)) == [("capture", "start")]
    assert kinds(m.step(T0 + 202, 0.1)) == [("capture", "end")]
    assert run(m, [9.0] * 2, start=T0 + 203) == []  # fresh history after unmute
    assert kinds(m.step(T0 + 205, 9.0)) == [("anomaly", "start")]


def test_mute_until_expires_on_its_own() -> None:
    m = AlertMachine("s", QUIET)
    assert m.mute(T0, until=T0 + 60) == []
    assert m.status().muted_until == T0 + 60
    assert run(m, [5.0] * 60, start=T0) == []
    assert m.state == "muted"
    events = run(m, [5.0] * 3, start=T0 + 60)
    assert m.state == "active"
    assert kinds(events) == [("anomaly", "start")]


def test_mute_ends_open_capture_alarm() -> None:
    m = AlertMachine("s", QUIET)
    m.set_health(T0, False, "silence")
    events = m.mute(T0 + 1)
    assert kinds(events) == [("capture", "end")] and events[0].reason == "muted"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None, "x", object()])
def test_invalid_scores_are_counted_and_skipped(bad: object) -> None:
    m = AlertMachine("s", QUIET)
    events = run(m, [1.5, bad, 1.5, bad, 1.5])  # type: ignore[list-item]
    assert kinds(events) == [("anomaly", "start")]  # invalid windows neither help nor hurt
    assert m.invalid_scores_total == 2
    assert m.status().invalid_scores_total == 2
    assert m.windows_total == 5


def test_persistent_invalid_scores_end_an_open_event() -> None:
    policy = AlertPolicy(n_above=1, m_windows=1, invalid_limit=4)
    m = AlertMachine("s", policy)
    m.step(T0, 3.0)
    assert run(m, [math.nan] * 3, start=T0 + 1) == []
    events = m.step(T0 + 4, math.nan)
    assert kinds(events) == [("anomaly", "end")] and events[0].reason == "invalid_scores"
    assert m.invalid_scores_total == 4


def test_close_ends_everything_with_shutdown() -> None:
    m = AlertMachine("s", QUIET)
    run(m, [3, 3, 3])
    m.set_health(T0 + 3, False)  # ends the anomaly, opens a capture alarm
    events = m.close(T0 + 4)
    assert kinds(events) == [("capture", "end")] and events[0].reason == "shutdown"
    m2 = AlertMachine("s", QUIET)
    run(m2, [3, 3, 3])
    assert [e.reason for e in m2.close(T0 + 4)] == ["shutdown"]
    assert m2.close(T0 + 5) == []


def test_deterministic_for_a_scripted_sequence() -> None:
    scores = [0.1, 1.5, 2.5, 1.1, 3.0, 0.2, math.nan, 0.1, 0.1, 0.1, 2.0, 2.0, 2.0, 0.1] * 4
    policy = AlertPolicy(min_hold_s=2.0, cooldown_s=3.0, k_below=2, update_interval_s=5.0)
    a = run(AlertMachine("s", policy), scores)
    b = run(AlertMachine("s", policy), scores)
    assert a == b and len(a) >= 4
    # Every event: start first, end last, one id, seq 0..n-1.
    by_id: dict[str, list[AlertEvent]] = {}
    for e in a:
        by_id.setdefault(e.event_id, []).append(e)
    for evs in by_id.values():
        assert evs[0].type == "start"
        assert [e.seq for e in evs] == list(range(len(evs)))
        assert all(e.type == "update" for e in evs[1:-1])


CONFIG = "model:\n  package: pkg\nsources:\n  - {name: a, type: file, machine: fan, path: a.wav}\n"


@pytest.mark.parametrize(
    ("alerts", "key", "why"),
    [
        ("{n_of_m: [6, 5]}", "alerts.n_of_m", "1 <= N <= M <= 10000, got [6, 5]"),
        ("{off_threshold: 1.2}", "alerts", "off_threshold (1.2) must not exceed on_threshold"),
        ("{critical_threshold: 0.5}", "alerts", "critical_threshold (0.5) must be >= on_threshold"),
        ("{cooldown_seconds: -1.0}", "alerts.cooldown_seconds", "greater than or equal to 0"),
        ("{n_of_m: [0, 0]}", "alerts.n_of_m", "1 <= N <= M <= 10000, got [0, 0]"),
        ("{clear_windows: 0}", "alerts.clear_windows", "greater than or equal to 1"),
        ("{on_threshold: .inf}", "alerts.on_threshold", "finite number"),
    ],
)
def test_schema_refuses_bad_alert_policy_naming_the_key(alerts: str, key: str, why: str) -> None:
    """The rules on AlertPolicy live in the schema (`alerts:`); the policy is built from it."""
    with pytest.raises(ConfigError) as info:
        parse_config(f"{CONFIG}alerts: {alerts}\n", "sonitor.yaml")
    assert f"{key}: " in str(info.value) and why in str(info.value)


def test_alert_policy_is_built_from_the_config() -> None:
    from monitor.daemon.wiring import alert_policy

    cfg = parse_config(f"{CONFIG}alerts: {{n_of_m: [2, 4], clear_windows: 7}}\n", "sonitor.yaml")
    policy = alert_policy(cfg)
    assert (policy.n_above, policy.m_windows, policy.k_below) == (2, 4, 7)
    assert policy.off_threshold <= policy.on_threshold <= policy.critical_threshold
