"""What a command message asks for: its JSON arguments and, for ``mute``, until when.

Commands arrive on ``<p>/command/<verb>`` (every source) and ``<p>/<source>/command/<verb>``
(`Topics.parse_command`); the client decodes them here and hands a `Command` to the daemon, whose
handlers use `mute_until`. Both are pure so that a malformed command is a logged warning with the
offending key, never an exception on the network thread: they raise ValueError and nothing else,
whatever the bytes (tests/test_mqtt_commands.py checks that on generated payloads).
"""

from __future__ import annotations

import json
import math
from typing import Any

# Commands carry a few keys; a payload past this is refused unparsed (JSON objects cost several
# times their text).
MAX_COMMAND_BYTES = 64 * 1024


def command_args(payload: bytes | bytearray) -> dict[str, Any]:
    """The JSON object of a command's payload ({} when empty); ValueError says why it is not."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise ValueError(
            f"payload of {len(payload)} bytes is over the {MAX_COMMAND_BYTES}-byte limit"
        )
    try:
        text = payload.decode("utf-8").strip()
        args = json.loads(text) if text else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"payload is not JSON ({exc})") from None
    except RecursionError:  # e.g. "[" * 5000: json recurses once per level
        raise ValueError("payload is not JSON (nested too deeply)") from None
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
                raise ValueError(f"mute: {key}={_short(value)} must be a number")
            try:
                seconds = float(value)  # OverflowError for an integer beyond a double
            except OverflowError:
                seconds = math.inf
            if not math.isfinite(seconds) or (key == "duration_s" and seconds <= 0):
                raise ValueError(f"mute: {key}={_short(value)} must be finite and positive")
            return seconds if key == "until" else now + seconds
    return None


def _short(value: Any) -> str:
    """A value for an error message, cut short (a payload may hold a huge number or string)."""
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return f"<{type(value).__name__} too long to print>"
    return text if len(text) <= 40 else f"{text[:37]}..."
