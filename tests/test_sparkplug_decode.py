"""Sparkplug B decoding of hostile bytes: one error type, memory in proportion to the payload,
and an edge node (against a REAL Mosquitto) that counts bad NCMDs and still answers good ones.

Reproductions: ``12 06 08 80 80 80 80 08`` (a metric name whose field arrives as a varint of
2**31) made the old hand decoder call ``bytes(2**31)`` (+2 GB); a float sent as a varint and a
double as a 3-byte length field raised TypeError/struct.error past ``except ValueError``.
Hypothesis generates thousands of random and mutated payloads per run.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Subscriber, broker_session
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.outputs.mqtt import MqttSettings
from monitor.outputs.sparkplug import REBIRTH, SparkplugNode, SparkplugSettings
from monitor.outputs.sparkplug_pb import (
    MAX_PAYLOAD_BYTES,
    DataType,
    Metric,
    SparkplugDecodeError,
    decode_payload,
    encode_payload,
)

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]
SCHEMA = "monitor/outputs/sparkplug_b.proto"
MANY = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REPRODUCTIONS = {
    "name as a varint of 2**31": "12 06 08 80 80 80 80 08",
    "float as a varint": "12 08 0a 04 4e 6f 64 65 60 05",
    "double as a 3-byte length field": "12 0b 0a 04 4e 6f 64 65 6a 03 01 02 03",
}
HOSTILE = [bytes.fromhex(h) for h in REPRODUCTIONS.values()] + [b"\xff" * 16]


def decode_bounded(buf: bytes) -> tuple[Any, ...] | None:
    """decode_payload's contract: a result or SparkplugDecodeError (None here), and Python
    allocations in proportion to the payload (the old decoder's bytes(n) broke this)."""
    tracemalloc.start()
    try:
        return decode_payload(buf)
    except SparkplugDecodeError as exc:
        assert str(exc) and "\n" not in str(exc)  # one log line
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 64 * 1024 + 1024 * len(buf), f"{peak} bytes traced for {len(buf)} bytes"


# ------------------------------------------------------------------------------ the classes


def drop_json_names(messages: Any) -> None:
    for message in messages:
        for f in message.field:
            f.ClearField("json_name")
        drop_json_names(message.nested_type)


def test_committed_classes_are_generated_from_the_schema(tmp_path: Path) -> None:
    """sparkplug_b_pb2.py is what protoc makes of monitor/outputs/sparkplug_b.proto today."""
    protoc = pytest.importorskip("grpc_tools.protoc", reason="needs grpcio-tools (dev extra)")
    import grpc_tools
    from google.protobuf import descriptor_pb2

    from monitor.outputs import sparkplug_b_pb2

    out = tmp_path / "schema.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{REPO}", f"-I{include}", f"--descriptor_set_out={out}",
                      str(REPO / SCHEMA)])  # fmt: skip
    assert rc == 0, f"protoc failed on {SCHEMA}"
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    drop_json_names(fresh.message_type)  # a descriptor set has them, generated code leaves them out
    committed = descriptor_pb2.FileDescriptorProto.FromString(
        sparkplug_b_pb2.DESCRIPTOR.serialized_pb
    )
    assert committed == fresh, (
        f"stale monitor/outputs/sparkplug_b_pb2.py: run `python -m grpc_tools.protoc -I. "
        f"--python_out=. --pyi_out=. {SCHEMA}` in the repository root"
    )


def test_runtime_dependency_floor_is_the_gencode_version() -> None:
    """The generated module refuses an older protobuf runtime; pyproject must not allow one."""
    code = (REPO / "monitor/outputs/sparkplug_b_pb2.py").read_text()
    found = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", code)
    assert found, "no gencode version check in sparkplug_b_pb2.py"
    runtime_deps = (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]
    assert f'"protobuf>={".".join(found.groups())},' in runtime_deps


def test_the_runtime_needs_no_protoc() -> None:
    code = (
        "import sys; sys.modules['grpc_tools'] = sys.modules['grpc'] = None\n"
        "import monitor.outputs.sparkplug\n"
        "from monitor.outputs.sparkplug_pb import decode_payload\n"
        "print(decode_payload(bytes.fromhex('0801')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, None, [])"


# ------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("hexbytes", REPRODUCTIONS.values(), ids=REPRODUCTIONS.keys())
def test_reproductions_raise_one_error_type_without_allocating(hexbytes: str) -> None:
    with pytest.raises(SparkplugDecodeError, match="metric 0: field (1|12|13) "):
        decode_payload(bytes.fromhex(hexbytes))
    assert decode_bounded(bytes.fromhex(hexbytes)) is None


def test_errors_name_the_field_and_the_wire_type() -> None:
    with pytest.raises(SparkplugDecodeError, match=r"field 12 \(float_value\) arrived as varint"):
        decode_payload(bytes.fromhex(REPRODUCTIONS["float as a varint"]))
    with pytest.raises(SparkplugDecodeError, match="name is not UTF-8"):
        decode_payload(bytes.fromhex("12 04 0a 02 ff fe"))
    with pytest.raises(SparkplugDecodeError, match="not a Sparkplug B payload"):
        decode_payload(bytes.fromhex("12 7f 0a"))  # a length past the end


def test_payload_size_limit() -> None:
    """Decoded metrics cost ~125x their wire size: NCMDs past 64 KiB are refused unparsed."""
    most = b"\x12\x00" * (MAX_PAYLOAD_BYTES // 2)  # the most metrics the limit lets through
    assert len(decode_payload(most)[2]) == MAX_PAYLOAD_BYTES // 2
    with pytest.raises(SparkplugDecodeError, match="65538 bytes is over the 65536-byte limit"):
        decode_payload(most + b"\x12\x00")


def metric_values(datatype: DataType) -> st.SearchStrategy[Any]:
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        return st.floats(allow_nan=False, width=32 if datatype == DataType.FLOAT else 64)
    if datatype == DataType.BOOLEAN:
        return st.booleans()
    if datatype in (DataType.STRING, DataType.TEXT, DataType.UUID):
        return st.text(max_size=16)
    if datatype == DataType.BYTES:
        return st.binary(max_size=16)
    lo, hi = {
        DataType.INT8: (-(2**7), 2**7 - 1),
        DataType.INT16: (-(2**15), 2**15 - 1),
        DataType.INT32: (-(2**31), 2**31 - 1),
        DataType.INT64: (-(2**63), 2**63 - 1),
        DataType.UINT8: (0, 2**8 - 1),
        DataType.UINT16: (0, 2**16 - 1),
        DataType.UINT32: (0, 2**32 - 1),
    }.get(datatype, (0, 2**64 - 1))
    return st.integers(lo, hi)


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    datatype = draw(st.sampled_from(list(DataType)))
    return Metric(
        name=draw(st.none() | st.text(max_size=12)),
        alias=draw(st.none() | st.integers(0, 2**64 - 1)),
        timestamp=draw(st.none() | st.integers(0, 2**64 - 1)),
        datatype=datatype,
        value=draw(st.none() | metric_values(datatype)),
        is_historical=draw(st.booleans()),
    )


payloads = st.builds(
    lambda ms, ts, seq: encode_payload(ms, timestamp=ts, seq=seq),
    st.lists(metrics(), max_size=4),
    st.none() | st.integers(0, 2**64 - 1),
    st.none() | st.integers(0, 255),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid payload with bytes flipped, cut, inserted or repeated, or a huge varint spliced in
    (what a length or a value of 2**31 looks like on the wire)."""
    raw = bytearray(draw(payloads))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "varint"]))
        at = draw(st.integers(0, len(raw)))
        if op == "flip" and raw:
            raw[min(at, len(raw) - 1)] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "repeat":
            raw[at:at] = raw[at : at + 8] * draw(st.integers(1, 64))
        else:
            raw[at:at] = draw(st.sampled_from([b"\x80\x80\x80\x80\x08", b"\xff" * 9 + b"\x01"]))
    return bytes(raw)


@MANY
@given(st.lists(metrics(), max_size=4), st.none() | st.integers(0, 2**64 - 1))
def test_what_we_encode_decodes_to_the_same_metrics(ms: list[Metric], ts: int | None) -> None:
    timestamp, seq, back = decode_payload(encode_payload(ms, timestamp=ts, seq=7))
    assert (timestamp, seq) == (ts, 7)
    assert [(m.name, m.alias, m.timestamp, m.datatype, m.value, m.is_historical) for m in back] == [
        (m.name, m.alias, m.timestamp, int(m.datatype or 0), m.value, m.is_historical) for m in ms
    ]


@MANY
@given(st.binary(max_size=512))
@example(bytes.fromhex(REPRODUCTIONS["name as a varint of 2**31"]))
@example(b"\x12\x00" * 256)  # the most metrics per byte
def test_any_bytes_decode_or_raise_one_error_type(buf: bytes) -> None:
    decode_bounded(buf)


@MANY
@given(mutated())
def test_mutated_payloads_decode_or_raise_one_error_type(buf: bytes) -> None:
    decode_bounded(buf)


# ------------------------------------------------------------------------------ the edge node


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


NCMD = "spBv1.0/g/NCMD/n"
REBIRTH_CMD = encode_payload([Metric(name=REBIRTH, datatype=DataType.BOOLEAN, value=True)])


def test_node_counts_hostile_ncmds_in_one_line_each_and_still_rebirths(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = MqttSettings(host=broker.host, port=broker.port, client_id="spb-hostile",
                        reconnect_min_s=0.1, reconnect_max_s=0.3)  # fmt: skip
    sub = Subscriber(broker, ["spBv1.0/g/NBIRTH/#"])
    node = SparkplugNode(conn, SparkplugSettings(group_id="g", edge_node_id="n"), ["pump1"])
    node.start()
    try:
        sub.get()  # the first NBIRTH: NCMD is subscribed before it
        with caplog.at_level(logging.WARNING, logger="monitor.outputs.sparkplug"):
            for bad in HOSTILE:
                sub.client.publish(NCMD, bad, qos=1)
            sub.client.publish(NCMD, REBIRTH_CMD, qos=1)  # in order, after the hostile ones
            sub.get()  # a second NBIRTH: the node still answers
        assert node.counters["ncmd_errors_total"] == len(HOSTILE)
        assert node.counters["rebirth_requests_total"] == 1
        warnings = [r for r in caplog.records if "NCMD" in r.getMessage()]
        assert len(warnings) == len(HOSTILE)
        assert all(r.exc_info is None and "\n" not in r.getMessage() for r in warnings)
        assert "Traceback" not in caplog.text
    finally:
        node.stop()
        sub.close()


NODE_SCRIPT = r"""
import json, resource, sys, time
import paho.mqtt.publish as publish
from monitor.outputs.mqtt import MqttSettings
from monitor.outputs.sparkplug import SparkplugNode, SparkplugSettings

host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
hostile, rebirth = bytes.fromhex(sys.argv[4]), bytes.fromhex(sys.argv[5])
conn = MqttSettings(host=host, port=port, client_id="spb-rss", reconnect_min_s=0.1)
node = SparkplugNode(conn, SparkplugSettings(group_id="g", edge_node_id="n"), ["pump1"]).start()

def rebirths():
    return node.counters["rebirth_requests_total"]

def wait(cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True

# probe until the node reads NCMD (a probe sent before it subscribed is dropped by the broker)
for _ in range(5):
    publish.single(topic, rebirth, qos=1, hostname=host, port=port)
    if wait(lambda: rebirths() >= 1, 5):
        break
else:
    sys.exit("the node never read NCMD")
seen = rebirths()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# one connection: the broker delivers the two in this order
publish.multiple([(topic, hostile, 1, False), (topic, rebirth, 1, False)],
                 hostname=host, port=port)
assert wait(lambda: rebirths() > seen, 60), "no rebirth after the hostile NCMD"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_delta_kib": after - before,
                  "ncmd_errors": node.counters.get("ncmd_errors_total")}))
node.stop()
"""


def test_8_byte_ncmd_leaves_peak_rss_alone(broker: Broker) -> None:
    """In a process of its own (ru_maxrss is per process): the 8-byte NCMD, then a rebirth."""
    hostile = REPRODUCTIONS["name as a varint of 2**31"].replace(" ", "")
    args = [broker.host, str(broker.port), NCMD, hostile, REBIRTH_CMD.hex()]
    out = subprocess.run([sys.executable, "-c", NODE_SCRIPT, *args], capture_output=True,
                         text=True, cwd=REPO, timeout=100)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["peak_rss_delta_kib"] < 50 * 1024, result
    assert result["ncmd_errors"] == 1, result
