"""Sparkplug B: the codec against a decoder generated at test time from the schema
(monitor/outputs/sparkplug_b.proto, grpc_tools.protoc + google.protobuf, a pool of its own), and
the edge node against a REAL Mosquitto: births with
bdSeq/seq/aliases/datatypes, seq wrap, NDEATH as the last will, bdSeq across restarts, rebirth on
NCMD, store and forward while the primary host is offline.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Subscriber, broker_session

from monitor.outputs.mqtt import MqttSettings
from monitor.outputs.sparkplug import (
    DEVICE_METRICS,
    REBIRTH,
    SparkplugNode,
    SparkplugSettings,
    next_seq,
)
from monitor.outputs.sparkplug_pb import DataType, Metric, decode_payload, encode_payload

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[1]
PROTO = REPO / "monitor" / "outputs" / "sparkplug_b.proto"
GROUP, NODE = "plant3", "edge1"


@pytest.fixture(scope="module")
def payload_cls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Payload message class generated from the official-schema .proto (independent decoder)."""
    protoc = pytest.importorskip("grpc_tools.protoc", reason="needs grpcio-tools (dev extra)")
    import grpc_tools
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    out = tmp_path_factory.mktemp("proto") / "sparkplug_b.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        ["protoc", f"-I{PROTO.parent}", f"-I{include}", f"--descriptor_set_out={out}", PROTO.name]
    )
    assert rc == 0, f"protoc failed on {PROTO}"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    desc = pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload")
    return message_factory.GetMessageClass(desc)


# ------------------------------------------------------------------------------ encoder


SCALARS = [
    (DataType.INT8, -128, "int_value", 2**32 - 128),
    (DataType.INT16, -300, "int_value", 2**32 - 300),
    (DataType.INT32, -5, "int_value", 2**32 - 5),
    (DataType.INT32, 2**31 - 1, "int_value", 2**31 - 1),
    (DataType.INT64, -1, "long_value", 2**64 - 1),
    (DataType.INT64, -(2**63), "long_value", 2**63),
    (DataType.UINT8, 255, "int_value", 255),
    (DataType.UINT32, 2**32 - 1, "int_value", 2**32 - 1),
    (DataType.UINT64, 2**64 - 1, "long_value", 2**64 - 1),
    (DataType.DATETIME, 1714564800123, "long_value", 1714564800123),
    (DataType.FLOAT, 1.5, "float_value", 1.5),
    (DataType.DOUBLE, -0.123456789, "double_value", -0.123456789),
    (DataType.BOOLEAN, True, "boolean_value", True),
    (DataType.BOOLEAN, False, "boolean_value", False),
    (DataType.STRING, "pümp ✓ active", "string_value", "pümp ✓ active"),
    (DataType.TEXT, "", "string_value", ""),
    (DataType.BYTES, b"\x00\xff", "bytes_value", b"\x00\xff"),
]


@pytest.mark.parametrize(("datatype", "value", "field", "wire_value"), SCALARS)
def test_scalar_metrics_decode_with_generated_code(
    payload_cls: Any,
    datatype: DataType,
    value: Any,
    field: str,
    wire_value: Any,
) -> None:
    raw = encode_payload(
        [Metric(name="m", alias=7, timestamp=123, datatype=datatype, value=value)],
        timestamp=1714564800000,
        seq=42,
    )
    p = payload_cls.FromString(raw)
    assert (p.timestamp, p.seq, len(p.metrics)) == (1714564800000, 42, 1)
    m = p.metrics[0]
    assert (m.name, m.alias, m.timestamp, m.datatype) == ("m", 7, 123, int(datatype))
    assert m.WhichOneof("value") == field
    assert getattr(m, field) == wire_value
    assert not m.is_null and not m.is_historical
    # and our own decoder (used for NCMD) maps two's complement back to the signed value
    _, _, (back,) = decode_payload(raw)
    assert back.value == value


def test_null_historical_and_no_seq(payload_cls: Any) -> None:
    raw = encode_payload(
        [
            Metric(alias=3, timestamp=5, datatype=DataType.DOUBLE, value=None),
            Metric(alias=4, timestamp=6, datatype=DataType.STRING, value="x", is_historical=True),
        ],
        timestamp=9,
    )
    p = payload_cls.FromString(raw)
    assert not p.HasField("seq")  # NDEATH has no seq
    a, b = p.metrics
    assert a.is_null and a.WhichOneof("value") is None and not a.HasField("name")
    assert b.is_historical and b.string_value == "x"


def test_out_of_range_and_wrong_type_name_the_metric() -> None:
    with pytest.raises(ValueError, match="level.*out of range for INT8"):
        encode_payload([Metric(name="level", datatype=DataType.INT8, value=200)])
    with pytest.raises(ValueError, match="count.*not an integer"):
        encode_payload([Metric(name="count", datatype=DataType.UINT32, value=1.5)])


def test_decoder_reads_generated_ncmd(payload_cls: Any) -> None:
    p = payload_cls(timestamp=1, seq=0)
    m = p.metrics.add()
    m.name, m.datatype, m.boolean_value = REBIRTH, int(DataType.BOOLEAN), True
    ts, seq, metrics = decode_payload(p.SerializeToString())
    assert (ts, seq) == (1, 0)
    assert metrics[0].name == REBIRTH and metrics[0].value is True


def test_seq_wraps_after_255() -> None:
    seqs = [0]
    for _ in range(300):
        seqs.append(next_seq(seqs[-1]))
    assert seqs[255] == 255 and seqs[256] == 0 and max(seqs) == 255


# ------------------------------------------------------------------------------ edge node


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def conn(broker: Broker) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id="sonitor-spb-test",
        reconnect_min_s=0.1,
        reconnect_max_s=0.3,
        keepalive_s=5,
    )


def node(broker: Broker, tmp_path: Path, **kw: Any) -> SparkplugNode:
    settings = SparkplugSettings(
        group_id=GROUP, edge_node_id=NODE, bdseq_path=tmp_path / "spb.json", **kw
    )
    return SparkplugNode(conn(broker), settings, ["pump1", "fan1"], version="0.1.0")


class Decoded:
    """One received Sparkplug message: kind (NBIRTH ...), device (or None), decoded payload."""

    def __init__(self, topic: str, raw: bytes, payload_cls: Any) -> None:
        parts = topic.split("/")
        self.topic, self.kind = topic, parts[2]
        self.device = parts[4] if len(parts) > 4 else None
        self.p = payload_cls.FromString(raw)

    def metric(self, name: str) -> Any:
        return next(m for m in self.p.metrics if m.name == name)


class Spb:
    """Test client: subscribes to spBv1.0/# and decodes everything it received so far."""

    def __init__(self, broker: Broker, payload_cls: Any) -> None:
        self.sub = Subscriber(broker, ["spBv1.0/#"])
        self.client = self.sub.client
        self.Payload = payload_cls
        self.all: list[Decoded] = []

    def poll(self) -> list[Decoded]:
        while not self.sub.messages.empty():
            m = self.sub.messages.get()
            if "/STATE/" not in m.topic:  # STATE is the host's JSON, not a Sparkplug payload
                self.all.append(Decoded(m.topic, m.payload, self.Payload))
        return self.all

    def wait(self, until: Any, timeout: float = 10.0) -> list[Decoded]:
        deadline = time.monotonic() + timeout
        while not until(self.poll()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {[(d.topic, d.p.seq) for d in self.all]}")
            time.sleep(0.02)
        return self.all

    def close(self) -> None:
        self.sub.close()


def kinds(got: list[Decoded]) -> list[str]:
    return [d.kind for d in got]


def state(source: str, t: float, score: float, alarm: str = "idle", **kw: Any) -> dict:
    return {
        "v": 1, "source": source, "time": t, "score": score, "normalised_score": score / 0.5,
        "threshold": 0.5, "alarm": alarm, "severity": "warning" if alarm == "active" else None,
        "level_dbfs": -23.5, "capture_healthy": True, **kw,
    }  # fmt: skip


def test_births_declare_every_metric_then_ddata_by_alias(
    broker: Broker, tmp_path: Path, payload_cls: Any
) -> None:
    sub = Spb(broker, payload_cls)
    n = node(broker, tmp_path).start()
    try:
        got = sub.wait(lambda g: kinds(g).count("DBIRTH") == 2)
        nbirth, d1, d2 = got
        assert nbirth.topic == f"spBv1.0/{GROUP}/NBIRTH/{NODE}"
        assert nbirth.p.seq == 0 and nbirth.p.timestamp > 0
        bd = nbirth.metric("bdSeq")
        assert bd.datatype == DataType.INT64 and bd.long_value == 0  # first session ever
        rb = nbirth.metric(REBIRTH)
        assert rb.datatype == DataType.BOOLEAN and rb.boolean_value is False and rb.alias
        assert [(d.kind, d.device, d.p.seq) for d in (d1, d2)] == [
            ("DBIRTH", "pump1", 1),
            ("DBIRTH", "fan1", 2),
        ]
        aliases = [rb.alias] + [m.alias for d in (d1, d2) for m in d.p.metrics]
        assert len(set(aliases)) == len(aliases), "aliases must be unique across the node"
        for d in (d1, d2):
            declared = {m.name: m.datatype for m in d.p.metrics}
            assert declared == {name: int(t) for name, t in DEVICE_METRICS}
            assert all(m.is_null for m in d.p.metrics)  # nothing scored yet
        alias_of = {m.name: m.alias for m in d1.p.metrics}

        n.update_state("pump1", state("pump1", 1714564800.0, 0.8, alarm="active"))
        got = sub.wait(lambda g: "DDATA" in kinds(g))
        dd = got[-1]
        assert dd.topic == f"spBv1.0/{GROUP}/DDATA/{NODE}/pump1" and dd.p.seq == 3
        by_alias = {m.alias: m for m in dd.p.metrics}
        assert all(not m.HasField("name") and not m.HasField("datatype") for m in dd.p.metrics)
        assert by_alias[alias_of["score"]].double_value == pytest.approx(0.8)
        assert by_alias[alias_of["normalised_score"]].double_value == pytest.approx(1.6)
        assert by_alias[alias_of["alarm/active"]].boolean_value is True
        assert by_alias[alias_of["alarm/state"]].string_value == "active"
        assert by_alias[alias_of["alarm/severity"]].string_value == "warning"
        assert by_alias[alias_of["level_dbfs"]].double_value == pytest.approx(-23.5)
        assert by_alias[alias_of["score"]].timestamp == 1714564800000
        # report by exception: an unchanged health check sends nothing, a changed one one metric
        n.update_health("pump1", {"time": 1714564801.0, "healthy": True})
        n.update_health("pump1", {"time": 1714564802.0, "healthy": False})
        got = sub.wait(lambda g: kinds(g).count("DDATA") == 2)
        (only,) = got[-1].p.metrics
        assert only.alias == alias_of["capture/healthy"] and only.boolean_value is False
        assert got[-1].p.seq == 4
    finally:
        n.stop()
        sub.close()


def test_ddata_seq_increments_and_wraps_on_the_wire(
    broker: Broker, tmp_path: Path, payload_cls: Any
) -> None:
    sub = Spb(broker, payload_cls)
    n = node(broker, tmp_path).start()
    try:
        sub.wait(lambda g: kinds(g).count("DBIRTH") == 2)
        for i in range(260):
            n.update_state("pump1", state("pump1", 1714564800.0 + i, 0.1 + i * 1e-3))
        got = sub.wait(lambda g: kinds(g).count("DDATA") == 260, timeout=20)
        seqs = [d.p.seq for d in got]
        assert seqs[:4] == [0, 1, 2, 3]
        assert all(b == (a + 1) % 256 for a, b in zip(seqs, seqs[1:], strict=False)), seqs
        assert 0 in seqs[4:], "seq wrapped after 255"
    finally:
        n.stop()
        sub.close()


def test_ndeath_will_on_killed_connection_and_bdseq_on_restart(
    broker: Broker, tmp_path: Path, payload_cls: Any
) -> None:
    sub = Spb(broker, payload_cls)
    first = node(broker, tmp_path).start()
    try:
        got = sub.wait(lambda g: "NBIRTH" in kinds(g))
        bd0 = got[0].metric("bdSeq").long_value
        # the connection dies without DISCONNECT: the broker publishes the will
        first._client.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        got = sub.wait(lambda g: kinds(g).count("NBIRTH") == 2)
        death = next(d for d in got if d.kind == "NDEATH")
        assert death.topic == f"spBv1.0/{GROUP}/NDEATH/{NODE}"
        assert death.metric("bdSeq").long_value == bd0 and not death.p.HasField("seq")
        reborn = [d for d in got if d.kind == "NBIRTH"][1]
        assert reborn.metric("bdSeq").long_value == bd0 + 1 and reborn.p.seq == 0
    finally:
        first.stop()  # a clean stop publishes NDEATH itself
    got = sub.wait(lambda g: kinds(g).count("NDEATH") == 2)
    assert [d for d in got if d.kind == "NDEATH"][1].metric("bdSeq").long_value == bd0 + 1
    assert json.loads((tmp_path / "spb.json").read_text()) == {"bdSeq": bd0 + 1}
    second = node(broker, tmp_path).start()  # a restarted daemon goes on counting
    try:
        got = sub.wait(lambda g: kinds(g).count("NBIRTH") == 3)
        assert [d for d in got if d.kind == "NBIRTH"][2].metric("bdSeq").long_value == bd0 + 2
    finally:
        second.stop()
        sub.close()


def test_ncmd_rebirth_gives_a_new_birth_with_current_values(
    broker: Broker, tmp_path: Path, payload_cls: Any
) -> None:
    sub = Spb(broker, payload_cls)
    n = node(broker, tmp_path).start()
    try:
        sub.wait(lambda g: kinds(g).count("DBIRTH") == 2)
        n.update_state("fan1", state("fan1", 1714564800.0, 0.25))
        sub.wait(lambda g: "DDATA" in kinds(g))
        cmd = payload_cls(timestamp=int(time.time() * 1000))
        m = cmd.metrics.add()
        m.name, m.datatype, m.boolean_value = REBIRTH, int(DataType.BOOLEAN), True
        sub.client.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", cmd.SerializeToString(), qos=1)
        got = sub.wait(lambda g: kinds(g).count("DBIRTH") == 4)
        births = [d for d in got if d.kind == "NBIRTH"]
        assert len(births) == 2 and births[1].p.seq == 0
        assert births[1].metric("bdSeq").long_value == births[0].metric("bdSeq").long_value
        fan = [d for d in got if d.kind == "DBIRTH" and d.device == "fan1"][-1]
        assert fan.metric("score").double_value == pytest.approx(0.25)
        assert fan.metric("alarm/severity").is_null
    finally:
        n.stop()
        sub.close()


def host_state(sub: Spb, online: bool, ts: int) -> None:
    payload = json.dumps({"online": online, "timestamp": ts})
    sub.client.publish("spBv1.0/STATE/scada", payload, qos=1, retain=True).wait_for_publish(5)


def test_store_and_forward_while_primary_host_offline(
    broker: Broker, tmp_path: Path, payload_cls: Any
) -> None:
    sub = Spb(broker, payload_cls)
    n = node(broker, tmp_path, primary_host_id="scada", store_max_messages=3).start()
    try:
        time.sleep(0.5)
        assert sub.poll() == [], "no birth before the primary host is online"
        host_state(sub, True, 1000)
        sub.wait(lambda g: kinds(g).count("DBIRTH") == 2)
        host_state(sub, False, 2000)
        time.sleep(0.3)
        for i in range(5):  # 5 records, bound 3: the 2 oldest are dropped
            n.update_state("pump1", state("pump1", 1714564800.0 + i, 0.1 * (i + 1)))
        time.sleep(0.5)
        assert kinds(sub.poll()) == ["NBIRTH", "DBIRTH", "DBIRTH"], "DDATA held"
        assert n.held == 3 and n.counters["held_dropped_total"] == 2
        host_state(sub, True, 3000)
        got = sub.wait(lambda g: kinds(g).count("DDATA") == 3)[3:]
        assert kinds(got) == ["NBIRTH", "DBIRTH", "DBIRTH", "DDATA", "DDATA", "DDATA"]
        assert [d.p.seq for d in got] == [0, 1, 2, 3, 4, 5]
        pump = got[1] if got[1].device == "pump1" else got[2]
        assert pump.metric("score").double_value == pytest.approx(0.5)  # current value
        score_alias = pump.metric("score").alias
        held = []
        for d in got[3:]:
            m = next(m for m in d.p.metrics if m.alias == score_alias)
            assert m.is_historical
            held.append((m.timestamp, round(m.double_value, 6)))
        assert held == [(1714564802000, 0.3), (1714564803000, 0.4), (1714564804000, 0.5)]
        n.update_state("pump1", state("pump1", 1714564805.0, 0.9))
        live = sub.wait(lambda g: kinds(g).count("DDATA") == 4)[-1]
        assert not any(m.is_historical for m in live.p.metrics) and live.p.seq == 6
    finally:
        n.stop()
        sub.close()


def test_malformed_state_is_ignored(broker: Broker, tmp_path: Path, payload_cls: Any) -> None:
    sub = Spb(broker, payload_cls)
    n = node(broker, tmp_path, primary_host_id="scada").start()
    try:
        sub.client.publish("spBv1.0/STATE/scada", b"ONLINE", qos=1, retain=True)
        time.sleep(0.5)
        assert not n.born
        host_state(sub, True, 10)
        sub.wait(lambda g: "NBIRTH" in kinds(g))
    finally:
        n.stop()
        sub.close()


def test_float_metric_bytes_are_little_endian() -> None:
    raw = encode_payload([Metric(alias=1, datatype=DataType.FLOAT, value=1.0)])
    assert struct.pack("<f", 1.0) in raw


# ------------------------------------------------------------------------------ the daemon


@pytest.mark.timeout(120)
def test_daemon_feeds_the_edge_node(broker: Broker, tmp_path: Path, payload_cls: Any) -> None:
    """`sonitor run` with sparkplug enabled: an anomaly in a file source reaches DDATA as
    alarm/active = true; SIGTERM publishes NDEATH with the session's bdSeq."""
    from daemon_process import DaemonProcess, with_anomaly, write_config, write_wav
    from package_fixtures import make_tiny_package

    package = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    wav = write_wav(tmp_path / "fan.wav", with_anomaly("fan", 8, 5, 12))
    source = {"name": "fan1", "type": "file", "machine": "fan", "path": str(wav), "realtime": False}
    cfg = write_config(
        tmp_path / "cfg.yaml",
        package,
        [source],
        broker=broker,
        sparkplug={"enabled": True, "group_id": "plant"},
        health={"state_interval_seconds": 0},
    )
    sub = Spb(broker, payload_cls)
    daemon = DaemonProcess(cfg)
    try:
        got = sub.wait(lambda g: "DBIRTH" in kinds(g), timeout=40)
        birth = next(d for d in got if d.kind == "DBIRTH")
        assert birth.topic == "spBv1.0/plant/DBIRTH/e2e/fan1"  # edge node id = node.name
        active = birth.metric("alarm/active").alias

        def alarmed(g: list[Decoded]) -> bool:
            return any(
                m.alias == active and m.boolean_value
                for d in g
                if d.kind == "DDATA"
                for m in d.p.metrics
            )

        sub.wait(alarmed, timeout=60)
        nbirth = next(d for d in sub.all if d.kind == "NBIRTH")
        assert daemon.stop() == 0
        got = sub.wait(lambda g: "NDEATH" in kinds(g))
        death = next(d for d in got if d.kind == "NDEATH")
        assert death.metric("bdSeq").long_value == nbirth.metric("bdSeq").long_value
        assert (tmp_path / "state" / "sparkplug-bdseq.json").exists()
    finally:
        daemon.kill()
        sub.close()


def test_removed_source_gets_ddeath_and_a_rebirth(
    broker: Broker, tmp_path: Path, payload_cls: Any
) -> None:
    sub = Spb(broker, payload_cls)
    n = node(broker, tmp_path).start()
    try:
        sub.wait(lambda g: kinds(g).count("DBIRTH") == 2)
        n.set_sources(["pump1"])  # a reload removed fan1
        got = sub.wait(lambda g: kinds(g).count("NBIRTH") == 2)
        got = sub.wait(lambda g: kinds(g).count("DBIRTH") == 3)[3:]
        assert [(d.kind, d.device) for d in got] == [
            ("DDEATH", "fan1"),
            ("NBIRTH", None),
            ("DBIRTH", "pump1"),
        ]
        assert got[0].p.seq == 3 and got[1].p.seq == 0
        n.update_state("fan1", state("fan1", 1714564800.0, 0.3))  # no longer a device: ignored
        n.update_state("pump1", state("pump1", 1714564800.0, 0.3))
        last = sub.wait(lambda g: "DDATA" in kinds(g))[-1]
        assert last.device == "pump1" and last.p.seq == 2
    finally:
        n.stop()
        sub.close()


def test_unreadable_bdseq_file_restarts_at_zero(tmp_path: Path) -> None:
    from monitor.outputs.sparkplug import BdSeqStore

    path = tmp_path / "spb.json"
    path.write_text("{not json")
    store = BdSeqStore(path)
    assert store.next() == 0
    assert json.loads(path.read_text()) == {"bdSeq": 0}
    path.write_text(json.dumps({"bdSeq": 255}))
    assert BdSeqStore(path).next() == 0  # wraps
    path.write_text(json.dumps({"bdSeq": 7}))
    assert BdSeqStore(path).next() == 8


def test_side_sessions_use_the_mqtt_tls_and_password(
    tmp_path: Path, payload_cls: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Sparkplug node and HA discovery connect with the mqtt section's TLS client certificate
    and password (shared `outputs.mqtt.paho_client`), against a broker that requires both."""
    from broker import make_tls_files

    from monitor.outputs.homeassistant import HomeAssistantDiscovery

    tls = make_tls_files(tmp_path / "tls")
    monkeypatch.setenv("SONITOR_TEST_SPB_PASSWORD", "s3cret-spb")
    brokers = broker_session(tmp_path, tls=tls, passwords={"sonitor": "s3cret-spb", "t": "t"})
    secure = next(brokers)
    settings = MqttSettings(
        host=secure.host,
        port=secure.port,
        client_id="sonitor-secure",
        username="sonitor",
        password_env="SONITOR_TEST_SPB_PASSWORD",
        tls=True,
        tls_ca_file=tls.ca,
        tls_cert_file=tls.client_cert,
        tls_key_file=tls.client_key,
        reconnect_min_s=0.1,
        reconnect_max_s=0.3,
    )
    sub = Subscriber(secure, ["spBv1.0/#", "homeassistant/#"], tls=tls, auth=("t", "t"))
    n = SparkplugNode(settings, SparkplugSettings(group_id=GROUP, edge_node_id=NODE), ["pump1"])
    ha = HomeAssistantDiscovery(settings, "node1", {"pump1": "pump"})
    try:
        n.start()
        ha.start()
        got = sub.collect(
            lambda g: (
                {m.topic.split("/")[2] for m in g if m.topic.startswith("spBv1.0/")}
                >= {"NBIRTH", "DBIRTH"}
                and sum(m.topic.startswith("homeassistant/") for m in g) == 8
            )
        )
        nbirth = next(m for m in got if "/NBIRTH/" in m.topic)
        assert payload_cls.FromString(nbirth.payload).seq == 0
    finally:
        n.stop()
        ha.stop()
        sub.close()
        with contextlib.suppress(StopIteration):
            next(brokers)
