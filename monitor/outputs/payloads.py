"""Versioned MQTT payloads: the public API that SCADA and Home Assistant automations bind to.

Why one module of builders: the field names and types are a contract (docs/mqtt.md), frozen by
tests/test_payloads_contract.py against a checked-in fixture. Additive changes keep ``v`` = 1;
renaming or removing a field needs ``v`` = 2. Every number is finite or ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from monitor.alerting.machine import AlertEvent, AlertStatus

SCHEMA_VERSION = 1

# Availability is a plain string (not JSON), the Home Assistant / Frigate convention.
AVAILABILITY_ONLINE = "online"
AVAILABILITY_OFFLINE = "offline"  # the broker publishes it (last will) when we vanish
AVAILABILITY_STOPPED = "stopped"  # published on a clean exit


def iso(t: float | None) -> str | None:
    """Epoch seconds -> UTC ISO 8601 with milliseconds (``2024-05-01T12:00:00.000Z``)."""
    value = number(t)
    if value is None:
        return None
    stamp = datetime.fromtimestamp(value, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def number(x: object) -> float | None:
    """A finite float, or None for None/NaN/inf/non-numbers (so that payloads stay valid JSON)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def event_payload(
    event: AlertEvent,
    *,
    threshold: float | None = None,
    model_version: str | None = None,
    clip: str | None = None,
    condition: str | None = None,
    level_shift_db: float | None = None,
) -> dict[str, Any]:
    """Payload of ``<prefix>/<source>/events``: one lifecycle message of an alert.

    ``threshold`` is the raw-score threshold (raw score = normalised score x threshold) of the
    operating ``condition`` the machine sounded closest to, ``clip`` the clip's file name (it
    appears after the event's post-roll; it may be pruned later).
    """
    end = number(event.end_time)
    return {
        "v": SCHEMA_VERSION,
        "kind": event.kind,
        "type": event.type,
        "id": event.event_id,
        "seq": int(event.seq),
        "source": event.source,
        "time": number(event.time),
        "time_iso": iso(event.time),
        "start_time": number(event.start_time),
        "end_time": end,
        "duration_s": number((end if end is not None else event.time) - event.start_time),
        "severity": event.severity,
        "score": number(event.score),
        "peak_score": number(event.peak_score),
        "threshold": number(threshold),
        "windows_above": int(event.windows_above),
        "windows": int(event.windows),
        "reason": event.reason,
        "model_version": model_version,
        "condition": condition,
        "level_shift_db": number(level_shift_db),
        "clip": clip,
        "replayed": False,
    }


def state_payload(
    source: str,
    *,
    time: float,
    status: AlertStatus,
    score: float | None = None,
    normalised_score: float | None = None,
    threshold: float | None = None,
    level_dbfs: float | None = None,
    capture_healthy: bool | None = None,
    model_version: str | None = None,
    condition: str | None = None,
    level_shift_db: float | None = None,
) -> dict[str, Any]:
    """Payload of ``<prefix>/<source>/state`` (retained): the latest window and the alarm state."""
    return {
        "v": SCHEMA_VERSION,
        "source": source,
        "time": number(time),
        "time_iso": iso(time),
        "score": number(score),
        "normalised_score": number(normalised_score),
        "threshold": number(threshold),
        "alarm": status.state,
        "severity": status.severity,
        "event_id": status.event_id,
        "muted_until": number(status.muted_until),
        "level_dbfs": number(level_dbfs),
        "capture_healthy": bool(status.healthy if capture_healthy is None else capture_healthy),
        "model_version": model_version,
        "condition": condition,
        "level_shift_db": number(level_shift_db),
    }


def health_payload(
    source: str,
    *,
    time: float,
    healthy: bool,
    status: str = "ok",
    detail: str | None = None,
    level_dbfs: float | None = None,
    last_frame_time: float | None = None,
    overflows_total: int = 0,
    reopen_attempts: int = 0,
) -> dict[str, Any]:
    """Payload of ``<prefix>/<source>/health`` (retained): capture liveness of one source.

    ``status`` is the capture state (`monitor.audio.capture.SourceState`: ``ok``, ``silent``,
    ``clipping``, ``stalled``, ``missing`` ...), ``detail`` a human sentence.
    """
    return {
        "v": SCHEMA_VERSION,
        "source": source,
        "time": number(time),
        "time_iso": iso(time),
        "healthy": bool(healthy),
        "status": status,
        "detail": detail,
        "level_dbfs": number(level_dbfs),
        "last_frame_time": number(last_frame_time),
        "overflows_total": int(overflows_total),
        "reopen_attempts": int(reopen_attempts),
    }


def encode(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; raises ValueError on NaN/inf (the builders never produce them)."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def mark_replayed(payload: bytes) -> bytes:
    """The stored payload with ``"replayed": true``: sent after a reconnect or a restart.

    Payloads that are not a JSON object are returned unchanged (nothing to flag).
    """
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload
    if not isinstance(data, dict):
        return payload
    data["replayed"] = True
    return encode(data)
