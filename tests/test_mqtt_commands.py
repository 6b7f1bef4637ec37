"""The MQTT command parser (`command_args`, `mute_until`) on generated and mutated payloads: it
returns a value or raises ValueError, never anything else (anything else would reach paho's
network thread). Hypothesis generates thousands of payloads per run.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.outputs.mqtt.commands import MAX_COMMAND_BYTES, command_args, mute_until

MANY = settings(
    max_examples=2000,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = (
    scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=4), scalars)
)
mute_args = st.dictionaries(
    st.sampled_from(["until", "duration_s", "seconds", ""]) | st.text(max_size=5),
    json_values,
    max_size=3,
)


def nested(opener: str, depth: int) -> bytes:
    return (opener * depth).encode()


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    """A valid command payload, then bytes flipped, cut, repeated or inserted."""
    raw = bytearray(json.dumps(draw(mute_args), allow_nan=True).encode())
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        at = draw(st.integers(0, len(raw)))
        if op == "flip" and raw:
            raw[min(at, len(raw) - 1)] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            raw[at:at] = draw(st.sampled_from([b"[", b"{", b'"', b"\\", b"\xff", b"1e999", b"-"]))
        else:
            raw[at:at] = raw[at : at + 4] * draw(st.integers(1, 500))
    return bytes(raw)


def parse(payload: bytes) -> dict[str, Any] | None:
    """The parser's contract: a dict or ValueError (None here)."""
    try:
        args = command_args(payload)
    except ValueError:
        return None
    assert isinstance(args, dict)
    return args


@pytest.mark.parametrize(
    "payload",
    [nested("[", 5000), nested('{"a":', 5000), nested("[", 100_000), b"\xff\xfe", b"[1]"],
)
def test_reproductions_are_value_errors(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not JSON|JSON object|byte limit"):
        command_args(payload)


def test_payload_size_limit() -> None:
    padded = b'{"duration_s": 60}'.ljust(MAX_COMMAND_BYTES)
    assert command_args(padded) == {"duration_s": 60}
    with pytest.raises(ValueError, match=f"65537 bytes is over the {MAX_COMMAND_BYTES}-byte limit"):
        command_args(padded + b" ")


@MANY
@given(st.binary(max_size=256))
@example(nested("[", 5000))
@example(b"")
def test_any_bytes_parse_or_raise_value_error(payload: bytes) -> None:
    parse(payload)


@MANY
@given(mutated_json())
def test_mutated_payloads_parse_or_raise_value_error(payload: bytes) -> None:
    parse(payload)


@MANY
@given(st.sampled_from("[{"), st.integers(0, 20_000))
def test_any_nesting_depth(opener: str, depth: int) -> None:
    body = nested('{"a":' if opener == "{" else "[", depth)
    parse(body)
    parse(body + (b"}" if opener == "{" else b"]") * depth)


@MANY
@given(mute_args, st.floats(0, 4e9))
@example({"until": 10**400}, 1.0)
@example({"duration_s": -(10**400)}, 1.0)
def test_mute_until_returns_a_finite_time_none_or_value_error(args: dict, now: float) -> None:
    try:
        until = mute_until(args, now)
    except ValueError as exc:
        assert len(str(exc)) < 200, "the error names the key, not a huge value"
        return
    assert until is None or (isinstance(until, float) and math.isfinite(until))
