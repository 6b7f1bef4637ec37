"""What a command message asks for: its JSON arguments and, for ``mute``, until when.

Commands arrive on ``<p>/command/<verb>`` (every source) and ``<p>/<source>/command/<verb>``
(`Topics.parse_command`); the client decodes them here and hands a `Command` to the daemon, whose
handlers use `mute_until`. Both are pure so that a malformed command is a logged warning with the
offending key, never an exception on the network thread.
"""

from __future__ import annotations

import json
import math
from typing import Any


def command_args(payload: bytes | bytearray) -> dict[str, Any]:
    """The JSON object of a command's payload ({} when empty); ValueError says why it is not."""
    try:
        text = payload.decode("utf-8").strip()
        args = json.loads(text) if text else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"payload is not JSON ({exc})") from None
    if not isinstance(args, dict):
        raise ValueError("payload must be a JSON object")
    return args


def mute_until(args: dict[str, Any], now: float) -> float | None:
    """End time of a ``mute`` command: ``{"until": epoch}``, ``{"duration_s": s}`` or ``{}``.

    ``None`` means indefinitely. Raises ValueError naming the key for anything else.
    """
    unknown = set(args) - {"until", "duration_s"}
    if unknown:
        raise ValueError(f"mute: unknown key(s) {sorted(unknown)}; use 'until' or 'duration_s'")
    if "until" in args and "duration_s" in args:
        raise ValueError("mute: give 'until' or 'duration_s', not both")
    for key in ("until", "duration_s"):
        if key in args:
            value = args[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"mute: {key}={value!r} must be a number")
            if not math.isfinite(value) or (key == "duration_s" and value <= 0):
                raise ValueError(f"mute: {key}={value!r} must be finite and positive")
            return float(value) if key == "until" else now + float(value)
    return None
