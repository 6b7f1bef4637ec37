"""The Sparkplug B ``Payload`` codec: our scalar `Metric` to and from the protobuf runtime.

Why the protobuf runtime and not a hand-written codec: a hand decoder read a name whose length
arrived as a varint of 2**31 as ``bytes(2**31)`` (+2 GB from an 8-byte NCMD) and raised
TypeError/struct.error on a float sent as a varint. The runtime (upb) checks every length against
the bytes present and allocates in proportion to the payload. The classes are generated from
``sparkplug_b.proto`` (the Eclipse Tahu schema, field for field) by protoc and committed
(``sparkplug_b_pb2.py``), so the runtime needs ``protobuf`` only, never protoc.

What the runtime lets through and this module refuses: a known field with the wrong wire type
(protobuf keeps it as an unknown field; here it is an error naming the field) and a proto2
string that is not UTF-8 (upb hands it over as bytes). Every refusal is one exception type,
`SparkplugDecodeError`. Unknown field numbers stay allowed (Payload extensions, newer schemas).

Signed integers: the schema has no ``sint`` (zigzag) fields. Sparkplug stores Int8/16/32 as the
32-bit two's complement in ``int_value`` and Int64 as the 64-bit two's complement in
``long_value``, so negative values are masked, never zigzagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as _Message
from google.protobuf.unknown_fields import UnknownFieldSet

from monitor.outputs.sparkplug_b_pb2 import Payload

# An NCMD asks for a rebirth (tens of bytes). Decoded metrics cost ~125x their wire size (2 MB of
# empty metrics: +250 MB, 6 s), so a payload past this is refused before it is parsed.
MAX_PAYLOAD_BYTES = 64 * 1024


class SparkplugDecodeError(ValueError):
    """Bytes that are not a Sparkplug B payload this node can read; the message says where."""


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
_WIRE_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "group", 4: "group", 5: "32-bit"}
# FieldDescriptor.TYPE_* of the Payload and Metric fields -> the wire type the schema implies
_SCHEMA_WIRE = {1: 1, 2: 5, 3: 0, 4: 0, 5: 0, 6: 1, 7: 5, 8: 0, 9: 2, 11: 2, 12: 2, 13: 0, 14: 0}


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


def _set_value(out: Any, m: Metric) -> None:
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
            out.int_value = v & _MASK32
        else:
            out.long_value = v & _MASK64
    elif dt == DataType.FLOAT:
        out.float_value = float(v)
    elif dt == DataType.DOUBLE:
        out.double_value = float(v)
    elif dt == DataType.BOOLEAN:
        out.boolean_value = bool(v)
    elif dt in (DataType.STRING, DataType.TEXT, DataType.UUID):
        out.string_value = str(v)
    elif dt == DataType.BYTES:
        if not isinstance(v, bytes | bytearray | memoryview):  # bytes(int) would allocate
            raise ValueError(f"metric {who}: {type(v).__name__} is not bytes")
        out.bytes_value = bytes(v)
    else:
        raise ValueError(f"metric {who}: datatype {dt} is not supported by this encoder")


def _fill(out: Any, m: Metric) -> None:
    if m.name is not None:
        out.name = m.name
    if m.alias is not None:
        out.alias = m.alias
    if m.timestamp is not None:
        out.timestamp = m.timestamp
    if m.datatype is not None and m.send_datatype:
        out.datatype = int(m.datatype)
    if m.is_historical:
        out.is_historical = True
    if m.value is None:
        out.is_null = True  # a typed metric without a value yet
    else:
        _set_value(out, m)


def encode_payload(
    metrics: list[Metric], *, timestamp: int | None = None, seq: int | None = None
) -> bytes:
    """A Sparkplug B ``Payload``: timestamp (ms), metrics, seq (absent in NDEATH)."""
    p = Payload()
    if timestamp is not None:
        p.timestamp = timestamp
    for m in metrics:
        _fill(p.metrics.add(), m)
    if seq is not None:
        p.seq = seq
    return p.SerializeToString()


# ------------------------------------------------------------------------------ decoding


def _check_wire_types(msg: _Message, where: str) -> None:
    """protobuf keeps a known field that arrived with the wrong wire type as an unknown field
    (a float sent as a varint); that is a malformed payload, not an extension."""
    fields = msg.DESCRIPTOR.fields_by_number
    for unknown in UnknownFieldSet(msg):
        known = fields.get(unknown.field_number)
        if known is not None:
            got = _WIRE_NAMES.get(unknown.wire_type, str(unknown.wire_type))
            want = _WIRE_NAMES.get(_SCHEMA_WIRE.get(known.type, -1), "another wire type")
            raise SparkplugDecodeError(
                f"{where}: field {unknown.field_number} ({known.name}) arrived as {got}; "
                f"the schema says {want}"
            )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):  # upb returns a proto2 string that is not UTF-8 as bytes
        raise SparkplugDecodeError(f"{where} is not UTF-8")
    return value


def _signed(value: int, datatype: int | None) -> int:
    """Two's complement back to a negative number for the signed datatypes."""
    if datatype in _INT_RANGE and _INT_RANGE[DataType(datatype)][0] < 0:
        bits = 32 if datatype in _INT32_FIELD else 64
        if value >= 1 << (bits - 1):
            return value - (1 << bits)
    return value


def _metric(m: Any, where: str) -> Metric:
    _check_wire_types(m, where)
    datatype = m.datatype if m.HasField("datatype") else None
    which = m.WhichOneof("value")
    value: Any = None
    if which in ("int_value", "long_value"):
        value = _signed(getattr(m, which), datatype)
    elif which in ("float_value", "double_value", "boolean_value", "bytes_value"):
        value = getattr(m, which)
    elif which == "string_value":
        value = _text(m.string_value, f"{where}: string_value")
    # dataset, template and extension values: not read by this node (value stays None)
    return Metric(
        name=_text(m.name, f"{where}: name") if m.HasField("name") else None,
        alias=m.alias if m.HasField("alias") else None,
        timestamp=m.timestamp if m.HasField("timestamp") else None,
        datatype=datatype,
        value=value,
        is_historical=m.is_historical,
    )


def decode_payload(
    buf: bytes, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[int | None, int | None, list[Metric]]:
    """(timestamp, seq, metrics) of a Payload (used for NCMD).

    Raises `SparkplugDecodeError` (and nothing else) on bytes that are not one or are longer
    than ``max_bytes``; memory stays in proportion to ``len(buf)``.
    """
    if len(buf) > max_bytes:
        raise SparkplugDecodeError(
            f"payload of {len(buf)} bytes is over the {max_bytes}-byte limit"
        )
    try:
        p = Payload.FromString(buf)
    except DecodeError as exc:
        raise SparkplugDecodeError(f"not a Sparkplug B payload ({len(buf)} bytes): {exc}") from None
    _check_wire_types(p, "payload")
    metrics = [_metric(m, f"metric {i}") for i, m in enumerate(p.metrics)]
    timestamp = p.timestamp if p.HasField("timestamp") else None
    seq = p.seq if p.HasField("seq") else None
    return timestamp, seq, metrics
