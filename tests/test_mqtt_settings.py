"""MQTT settings validation, topic naming and command parsing (no broker needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from monitor.errors import ConfigError
from monitor.outputs.mqtt import MqttSettings, Topics, mute_until


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"port": 0}, "port"),
        ({"topic_prefix": "a/+/b"}, "topic_prefix"),
        ({"topic_prefix": "a//b"}, "topic_prefix"),
        ({"topic_prefix": "has space"}, "topic_prefix"),
        ({"client_id": ""}, "client_id"),
        ({"qos": 3}, "qos"),
        ({"protocol": "4"}, "protocol"),
        ({"username": "u", "password_env": "A", "password_file": Path("f")}, "password_file"),
        ({"password_env": "A"}, "username"),
        ({"tls_cert_file": Path("c")}, "tls_cert_file"),
        ({"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, "reconnect_min_s"),
    ],
)
def test_settings_validation_names_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"mqtt.{key}"):
        MqttSettings(**kwargs)


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
