"""TLS (CA + client certificate) and password authentication against a real mosquitto; secrets
never reach the logs; bad secrets and certificates are reported naming the variable or file."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Subscriber, TlsFiles, broker_session, make_tls_files

from monitor.errors import ConfigError
from monitor.outputs.mqtt import MqttClient, MqttSettings
from monitor.outputs.payloads import health_payload

pytestmark = pytest.mark.timeout(60)
PASSWORD = "Corr3ct-Horse-Battery-9f1c"
WRONG = "Wr0ng-Pony-Staple-77ab"
ENV = "SONITOR_TEST_MQTT_PASSWORD"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def broker(tmp_path: Path, tls: TlsFiles) -> Iterator[Broker]:
    yield from broker_session(tmp_path, tls=tls, passwords={"sonitor": PASSWORD, "scada": "s"})


def tls_settings(broker: Broker, tls: TlsFiles, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "topic_prefix": "secure",
        "client_id": "sonitor-tls",
        "username": "sonitor",
        "password_env": ENV,
        "tls": True,
        "tls_ca_file": tls.ca,
        "tls_cert_file": tls.client_cert,
        "tls_key_file": tls.client_key,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
    }
    base.update(kw)
    return MqttSettings(**base)


def test_tls_and_password_from_env(
    broker: Broker, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, PASSWORD)
    sub = Subscriber(broker, ["secure/#"], tls=tls, auth=("scada", "s"))
    client = MqttClient(tls_settings(broker, tls)).start()
    try:
        assert client.wait_connected(10), client.last_error
        client.publish_health("pump1", health_payload("pump1", time=1.0, healthy=True))
        got = sub.collect(lambda ms: any(m.topic == "secure/pump1/health" for m in ms))
        health = [m for m in got if m.topic == "secure/pump1/health"][0]
        assert json.loads(health.payload)["healthy"] is True
    finally:
        client.stop()
        sub.close()


def test_password_from_file(broker: Broker, tls: TlsFiles, tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    st = tls_settings(broker, tls, password_env=None, password_file=secret)
    client = MqttClient(st).start()
    try:
        assert client.wait_connected(10), client.last_error
    finally:
        client.stop()


def test_wrong_password_is_reported_and_never_logged(
    broker: Broker,
    tls: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(ENV, WRONG)
    caplog.set_level(logging.DEBUG)  # paho's own logger is on at DEBUG too
    st = tls_settings(broker, tls)
    client = MqttClient(st).start()
    try:
        deadline = time.monotonic() + 10
        while client.stats()["connect_failures_total"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not client.connected
        assert "refused" in (client.last_error or "")
        assert "Not authorized" in client.last_error or "password" in client.last_error.lower()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(f"{broker.host}:{broker.port}" in r.getMessage() for r in errors)
        assert any("password" in r.getMessage() for r in errors)  # the hint
        assert any(
            r.name == "monitor.outputs.mqtt.paho" for r in caplog.records
        )  # paho was logging
        everything = caplog.text + repr(st) + json.dumps(client.stats()) + broker.log_text()
        assert WRONG not in everything and PASSWORD not in everything
    finally:
        client.stop()


def test_wrong_ca_is_reported_as_tls_failure(
    broker: Broker, tls: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, PASSWORD)
    other = make_tls_files(tmp_path / "other")  # a CA that did not sign the server
    client = MqttClient(tls_settings(broker, tls, tls_ca_file=other.ca)).start()
    try:
        deadline = time.monotonic() + 10
        while client.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not client.connected
        assert "TLS handshake failed" in (client.last_error or "")
        assert "certificate verify failed" in client.last_error.lower()
    finally:
        client.stop()


def test_missing_secret_and_bad_certificates_name_the_culprit(
    tls: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {"username": "u", "tls": True, "tls_ca_file": tls.ca}
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ConfigError, match=ENV):
        MqttClient(MqttSettings(password_env=ENV, **base))
    with pytest.raises(ConfigError, match="nope.txt"):
        MqttClient(MqttSettings(password_file=tmp_path / "nope.txt", **base))
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        MqttClient(MqttSettings(password_file=empty, **base))
    with pytest.raises(ConfigError, match="missing-ca.pem"):
        MqttClient(MqttSettings(tls=True, tls_ca_file=tmp_path / "missing-ca.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="junk.pem"):
        MqttClient(MqttSettings(tls=True, tls_ca_file=junk))
    with pytest.raises(ConfigError, match="client.crt"):
        # certificate and key that do not belong together
        MqttClient(
            MqttSettings(
                tls=True, tls_ca_file=tls.ca, tls_cert_file=tls.client_cert, tls_key_file=tls.ca
            )
        )
