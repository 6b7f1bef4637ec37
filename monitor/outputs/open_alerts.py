"""Alerts left open by a daemon that died (SIGKILL, crash, power cut) end at the next start.

Why: docs/mqtt.md promises that every alert ends with exactly one ``end``. A clean exit ends open
alerts (reason ``shutdown``), but a killed daemon cannot, and a restarted one has a fresh alert
machine that knows nothing of them: the SCADA alarm would stay raised forever. So the outbox
keeps the latest message of every open alert in the transaction that stores it
(:func:`open_alert_change`), and the next start turns each one into an ``end`` with reason
``restart`` (:func:`restart_end`) that goes through the outbox like any other event; storing that
``end`` forgets the alert in the same transaction, so it is sent once even if this start dies too.

Ended rather than resumed: the evidence (the N-of-M history, the scores, the clip's audio) died
with the process, and the machine may have changed meanwhile. If the anomaly goes on, a new alert
starts after the usual confirmation, with a new id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, cast, get_args

from monitor.alerting.machine import END_RESTART, AlertEvent, EventKind, Severity
from monitor.outputs.outbox import OpenAlertChange, Outbox
from monitor.outputs.payloads import event_payload

log = logging.getLogger(__name__)

_KINDS = get_args(EventKind)
_SEVERITIES = get_args(Severity)


def open_alert_change(payload: dict[str, Any], encoded: bytes) -> OpenAlertChange | None:
    """What storing this event payload does to the open alerts: a ``start`` or ``update``
    records it as its alert's latest message, an ``end`` forgets the alert; None for anything
    that is not a lifecycle message."""
    event_id, type_ = payload.get("id"), payload.get("type")
    if not isinstance(event_id, str) or type_ not in ("start", "update", "end"):
        return None
    return event_id, None if type_ == "end" else encoded


def restart_end(latest: bytes, now: float) -> tuple[AlertEvent, dict[str, Any]]:
    """The ``end`` (reason ``restart``) of an alert whose latest stored message is ``latest``.

    ``time`` and ``end_time`` are ``now`` (the restart), never before that message: a clock set
    back during the outage must not make the duration negative. ``clip`` is null: the clip was
    still in memory. Raises ValueError naming the field when the payload cannot be read.
    """
    try:
        last = json.loads(latest)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"stored alert message is not JSON: {exc}") from None
    if not isinstance(last, dict):
        raise ValueError("stored alert message is not a JSON object")

    def field(key: str, kind: type | tuple[type, ...]) -> Any:
        value = last.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"stored alert message: field {key!r} is {value!r}")
        return value

    kind, severity = field("kind", str), field("severity", str)
    if kind not in _KINDS or severity not in _SEVERITIES:
        raise ValueError(f"stored alert message: kind {kind!r}, severity {severity!r}")
    number = (int, float)
    t = max(float(now), float(field("time", number)))
    score, peak = last.get("score"), last.get("peak_score")
    event = AlertEvent(
        kind=cast(EventKind, kind),
        type="end",
        event_id=field("id", str),
        source=field("source", str),
        seq=field("seq", int) + 1,
        time=t,
        start_time=float(field("start_time", number)),
        end_time=t,
        severity=cast(Severity, severity),
        score=float(score) if isinstance(score, number) else None,
        peak_score=float(peak) if isinstance(peak, number) else None,
        windows_above=int(last.get("windows_above") or 0),
        windows=int(last.get("windows") or 0),
        reason=END_RESTART,
    )
    threshold, version = last.get("threshold"), last.get("model_version")
    payload = event_payload(
        event,
        threshold=float(threshold) if isinstance(threshold, number) else None,
        model_version=version if isinstance(version, str) else None,
        clip=None,
    )
    return event, payload


def end_open_alerts(
    outbox: Outbox,
    emit: Callable[[AlertEvent, dict[str, Any]], None],
    now: float | None = None,
) -> int:
    """At start, before any window: ``emit`` the ``end`` of every alert the outbox holds open
    (``emit`` must store it through the outbox, which forgets the alert); return how many.

    A stored message that cannot be read back is logged and forgotten: it cannot be ended, and
    keeping it would repeat the error at every start.
    """
    t = time.time() if now is None else now
    ended = 0
    for event_id, latest in outbox.open_alerts():
        try:
            event, payload = restart_end(latest, t)
        except ValueError as exc:
            log.error(
                "open alert %s in %s cannot be ended: %s; forgotten", event_id, outbox.path, exc
            )
            outbox.forget_open_alert(event_id)
            continue
        log.warning(
            "%s alert %s of %s was open when the daemon stopped without a shutdown "
            "(killed, crashed or power lost); ending it (reason %s)",
            event.kind,
            event.event_id,
            event.source,
            END_RESTART,
        )
        emit(event, payload)
        ended += 1
    return ended
