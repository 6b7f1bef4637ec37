"""A small hand-written protobuf codec for the Sparkplug B ``Payload`` message.

Why hand-written: the runtime must not depend on protoc or generated code, and the daemon only
needs scalar metrics. Field numbers follow the Eclipse Sparkplug B schema
(``org.eclipse.tahu.protobuf.Payload``, proto2): Payload = timestamp 1, metrics 2, seq 3,
uuid 4, body 5; Metric = name 1, alias 2, timestamp 3, datatype 4, is_historical 5,
is_transient 6, is_null 7, then the value oneof int_value 10 (uint32), long_value 11 (uint64),
float_value 12, double_value 13, boolean_value 14, string_value 15, bytes_value 16.

Signed integers: the schema has no ``sint`` (zigzag) fields. Sparkplug stores Int8/16/32 as the
32-bit two's complement in ``int_value`` and Int64 as the 64-bit two's complement in
``long_value``, so negative values are masked, never zigzagged. The test suite checks this
module against an independent decoder generated from ``tests/sparkplug_b.proto``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class DataType(IntEnum):
    """Sparkplug B metric data types (the subset of scalar types this codec writes)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    BYTES = 17


_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_MASK32, _MASK64 = (1 << 32) - 1, (1 << 64) - 1
_INT_RANGE = {
    DataType.INT8: (-(1 << 7), (1 << 7) - 1),
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT8: (0, (1 << 8) - 1),
    DataType.UINT16: (0, (1 << 16) - 1),
    DataType.UINT32: (0, _MASK32),
    DataType.UINT64: (0, _MASK64),
    DataType.DATETIME: (0, _MASK64),
}
_INT32_FIELD = {DataType.INT8, DataType.INT16, DataType.INT32}
_UINT32_FIELD = {DataType.UINT8, DataType.UINT16, DataType.UINT32}


@dataclass(frozen=True)
class Metric:
    """One metric. ``value`` None is sent as ``is_null``; ``name`` is for births, ``alias`` for
    everything after (Sparkplug lets DATA messages carry only the alias)."""

    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None  # ms since the epoch
    datatype: int | None = None
    value: Any = None
    is_historical: bool = False
    # Births declare the datatype; DATA messages should not repeat it (Sparkplug 3.0), but the
    # encoder still needs it to pick the value field.
    send_datatype: bool = True


# ------------------------------------------------------------------------------ encoding


def varint(n: int) -> bytes:
    """Base-128 varint of an unsigned integer (0 <= n < 2**64)."""
    if n < 0 or n > _MASK64:
        raise ValueError(f"varint out of range: {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return varint((field << 3) | wire)


def _uint_field(field: int, n: int) -> bytes:
    return _key(field, _VARINT) + varint(n)


def _len_field(field: int, data: bytes) -> bytes:
    return _key(field, _LEN) + varint(len(data)) + data


def _value(m: Metric) -> bytes:
    """The value oneof of a metric, by its datatype; errors name the metric and value."""
    dt, v, who = m.datatype, m.value, m.name or f"alias {m.alias}"
    if dt is None:
        raise ValueError(f"metric {who}: a value needs a datatype")
    if dt in _INT_RANGE:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"metric {who}: {v!r} is not an integer ({DataType(dt).name})")
        lo, hi = _INT_RANGE[DataType(dt)]
        if not lo <= v <= hi:
            raise ValueError(f"metric {who}: {v} is out of range for {DataType(dt).name}")
        if dt in _INT32_FIELD or dt in _UINT32_FIELD:
            return _uint_field(10, v & _MASK32)
        return _uint_field(11, v & _MASK64)
    if dt == DataType.FLOAT:
        return _key(12, _FIXED32) + struct.pack("<f", float(v))
    if dt == DataType.DOUBLE:
        return _key(13, _FIXED64) + struct.pack("<d", float(v))
    if dt == DataType.BOOLEAN:
        return _uint_field(14, int(bool(v)))
    if dt in (DataType.STRING, DataType.TEXT, DataType.UUID):
        return _len_field(15, str(v).encode("utf-8"))
    if dt == DataType.BYTES:
        return _len_field(16, bytes(v))
    raise ValueError(f"metric {who}: datatype {dt} is not supported by this encoder")


def encode_metric(m: Metric) -> bytes:
    out = bytearray()
    if m.name is not None:
        out += _len_field(1, m.name.encode("utf-8"))
    if m.alias is not None:
        out += _uint_field(2, m.alias)
    if m.timestamp is not None:
        out += _uint_field(3, m.timestamp)
    if m.datatype is not None and m.send_datatype:
        out += _uint_field(4, int(m.datatype))
    if m.is_historical:
        out += _uint_field(5, 1)
    if m.value is None:
        out += _uint_field(7, 1)  # is_null: a typed metric without a value yet
    else:
        out += _value(m)
    return bytes(out)


def encode_payload(
    metrics: list[Metric], *, timestamp: int | None = None, seq: int | None = None
) -> bytes:
    """A Sparkplug B ``Payload``: timestamp (ms), metrics, seq (absent in NDEATH)."""
    out = bytearray()
    if timestamp is not None:
        out += _uint_field(1, timestamp)
    for m in metrics:
        out += _len_field(2, encode_metric(m))
    if seq is not None:
        out += _uint_field(3, seq)
    return bytes(out)


# ------------------------------------------------------------------------------ decoding


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field, wire type, raw value) of every field; unknown fields are kept, never an error."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: Any
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _FIXED64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _FIXED32:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == _LEN:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise ValueError(f"unsupported wire type {wire} (field {field})")
        if pos > len(buf):
            raise ValueError(f"truncated field {field}")
        out.append((field, wire, value))
    return out


def decode_metric(buf: bytes) -> Metric:
    kw: dict[str, Any] = {}
    for field, _wire, raw in _fields(buf):
        if field == 1:
            kw["name"] = bytes(raw).decode("utf-8")
        elif field in (2, 3, 4):
            kw[{2: "alias", 3: "timestamp", 4: "datatype"}[field]] = raw
        elif field == 5:
            kw["is_historical"] = bool(raw)
        elif field in (10, 11):
            kw["value"] = raw
        elif field == 12:
            kw["value"] = struct.unpack("<f", raw)[0]
        elif field == 13:
            kw["value"] = struct.unpack("<d", raw)[0]
        elif field == 14:
            kw["value"] = bool(raw)
        elif field == 15:
            kw["value"] = bytes(raw).decode("utf-8")
        elif field == 16:
            kw["value"] = bytes(raw)
    dt, v = kw.get("datatype"), kw.get("value")
    if isinstance(v, int) and not isinstance(v, bool) and dt in _INT_RANGE:
        lo, _ = _INT_RANGE[DataType(dt)]
        bits = 32 if dt in _INT32_FIELD else 64
        if lo < 0 and v >= 1 << (bits - 1):
            kw["value"] = v - (1 << bits)  # two's complement back to a negative number
    return Metric(**kw)


def decode_payload(buf: bytes) -> tuple[int | None, int | None, list[Metric]]:
    """(timestamp, seq, metrics) of a Payload; ValueError on malformed bytes. Used for NCMD."""
    timestamp = seq = None
    metrics: list[Metric] = []
    for field, wire, raw in _fields(buf):
        if field == 1 and wire == _VARINT:
            timestamp = raw
        elif field == 2 and wire == _LEN:
            metrics.append(decode_metric(bytes(raw)))
        elif field == 3 and wire == _VARINT:
            seq = raw
    return timestamp, seq, metrics
