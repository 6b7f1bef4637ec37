"""MQTT settings validation, topic naming and command parsing (no broker needed)."""

from __future__ import annotations

import math

import pytest

from monitor.config import parse_config
from monitor.errors import ConfigError
from monitor.outputs.mqtt import MqttSettings, Topics, mute_until

MINIMAL = "model:\n  package: pkg\nsources:\n  - {name: a, type: file, machine: fan, path: a.wav}\n"


@pytest.mark.parametrize(
    ("mqtt", "key", "why"),
    [
        ("{port: 0}", "mqtt.port", "greater than or equal to 1"),
        ("{topic_prefix: a/+/b}", "mqtt.topic_prefix", "should match pattern"),
        ("{topic_prefix: a//b}", "mqtt.topic_prefix", "should match pattern"),
        ("{topic_prefix: has space}", "mqtt.topic_prefix", "should match pattern"),
        ('{topic_prefix: "a/b\\0c"}', "mqtt.topic_prefix", "should match pattern"),
        ("{client_id: ''}", "mqtt.client_id", "at least 1 character"),
        ("{qos: 3}", "mqtt.qos", "Input should be 0, 1 or 2"),
        ("{protocol: '4'}", "mqtt.protocol", "'3.1.1' or '5'"),
        (
            "{username: u, password_env: A, password_file: f}",
            "mqtt",
            "either password_env or password_file, not both",
        ),
        ("{password_env: A}", "mqtt", "a password (password_env / password_file) needs a username"),
        ("{tls: {cert_file: c}}", "mqtt.tls", "cert_file and key_file must be given together"),
        (
            "{reconnect_min_seconds: 5.0, reconnect_max_seconds: 1.0}",
            "mqtt",
            "reconnect_max_seconds must be >= reconnect_min_seconds",
        ),
    ],
)
def test_schema_refuses_bad_mqtt_settings_naming_the_key(mqtt: str, key: str, why: str) -> None:
    """The rules on MqttSettings live in the schema: a bad `mqtt:` section is refused at load."""
    with pytest.raises(ConfigError) as info:
        parse_config(f"{MINIMAL}mqtt: {mqtt}\n", "sonitor.yaml")
    assert f"{key}: " in str(info.value) and why in str(info.value)


def test_settings_hold_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONITOR_PW_X", "very-secret-value")
    st = MqttSettings(username="u", password_env="SONITOR_PW_X")
    assert st.read_password() == "very-secret-value"
    assert "very-secret-value" not in repr(st)
    assert MqttSettings().read_password() is None


def test_topics() -> None:
    t = Topics("site/sonitor/")
    assert t.availability == "site/sonitor/availability"
    assert t.state("pump1") == "site/sonitor/pump1/state"
    assert t.events("pump1") == "site/sonitor/pump1/events"
    assert t.health("pump1") == "site/sonitor/pump1/health"
    assert t.command("reload") == "site/sonitor/command/reload"
    assert t.command("mute", "pump1") == "site/sonitor/pump1/command/mute"
    assert t.parse_command("site/sonitor/command/reload") == (None, "reload")
    assert t.parse_command("site/sonitor/pump1/command/mute") == ("pump1", "mute")
    assert t.parse_command("site/sonitor/pump1/state") is None
    assert t.parse_command("other/command/reload") is None
    for bad in ("a/b", "a+", "#", "", "x y"):
        with pytest.raises(ConfigError, match="source name"):
            t.state(bad)


def test_mute_until() -> None:
    assert mute_until({}, 100.0) is None
    assert mute_until({"duration_s": 60}, 100.0) == 160.0
    assert mute_until({"until": 500.5}, 100.0) == 500.5
    for bad, key in [
        ({"duration_s": -1}, "duration_s"),
        ({"duration_s": "1h"}, "duration_s"),
        ({"until": math.inf}, "until"),
        ({"until": True}, "until"),
        ({"until": 1, "duration_s": 1}, "not both"),
        ({"for": 1}, "unknown"),
    ]:
        with pytest.raises(ValueError, match=key):
            mute_until(bad, 100.0)
