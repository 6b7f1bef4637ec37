"""MQTT connection settings, the shared paho client factory and the topic names.

Why apart from the client: the Home Assistant discovery and the Sparkplug B node open their own
sessions on the same broker, and `sonitor check-config` validates the settings without connecting;
they all need these pieces and none of the daemon's publishing machinery.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt

from monitor.errors import ConfigError, SonitorError

COMMAND_VERBS = ("reload", "mute", "unmute", "test_alert", "ack")
_LEVEL = re.compile(r"^[^/#+\x00\s]+$")


class MqttError(SonitorError):
    """The broker could not be reached or refused us (one-shot tools such as test-alert)."""


@dataclass(frozen=True)
class MqttSettings:
    """Connection and topic settings: plain values. Defaults:

    - ``host`` 127.0.0.1, ``port`` 1883, ``keepalive_s`` 30 (the will fires ~1.5x after a hang).
    - ``topic_prefix`` ``sonitor`` (may contain ``/``, e.g. ``plant/sonitor/node1``).
    - ``client_id`` ``sonitor``: must be unique per broker (a second one kicks the first off).
    - ``qos`` 1 for state, health and availability; events use ``max(qos, 1)`` because the
      outbox removes an event only on the broker's acknowledgement.
    - ``username`` None; the password comes from ``password_env`` (a variable name) or
      ``password_file`` (first line), read at every connect, never logged.
    - ``tls`` False; ``tls_ca_file`` None (system trust store), ``tls_cert_file`` +
      ``tls_key_file`` for mutual TLS, ``tls_insecure`` False (skip the host-name check).
    - ``protocol`` ``3.1.1`` (or ``5``).
    - ``reconnect_min_s`` 1, ``reconnect_max_s`` 30: backoff, doubling, forever.
    - ``outbox_path`` None = in memory (not durable; tools and tests); ``outbox_max_rows`` 10000,
      ``outbox_max_bytes`` 50 MB.
    - ``availability`` True: publish availability and set the last will (False for one-shot
      tools, which must not mark the daemon offline).

    The rules on these values (port range, topic levels, qos, secrets given once and with a user
    name, certificate and key together...) live in the config schema (``mqtt:`` in
    ``monitor/config/outputs.py``); ``monitor.daemon.wiring.mqtt_settings`` builds this from a
    validated config. What only the environment can tell (the password variable or file, the
    certificate files) is checked when it is read: :meth:`read_password`, :meth:`ssl_context`.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "sonitor"
    client_id: str = "sonitor"
    qos: int = 1
    keepalive_s: int = 30
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_insecure: bool = False
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    outbox_path: Path | None = None
    outbox_max_rows: int = 10_000
    outbox_max_bytes: int = 50_000_000
    availability: bool = True

    def read_password(self) -> str | None:
        """The password from its variable or file; errors name the variable/file, not the value."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"mqtt.password_env: environment variable {self.password_env!r} is not set"
                )
            return value
        if self.password_file:
            try:
                lines = Path(self.password_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"mqtt.password_file: cannot read {self.password_file}: {exc.strerror}"
                ) from None
            if not lines or not lines[0]:
                raise ConfigError(f"mqtt.password_file: {self.password_file} is empty")
            return lines[0]
        return None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (None without TLS); errors name the certificate or key file."""
        if not self.tls:
            return None
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"mqtt.{key}: {path} does not exist")
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.tls_ca_file) if self.tls_ca_file else None
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.tls_ca_file: {self.tls_ca_file} is not a PEM CA file: {exc}"
            ) from None
        if self.tls_cert_file:
            try:
                ctx.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"mqtt.tls_cert_file/tls_key_file: {self.tls_cert_file} / "
                    f"{self.tls_key_file} are not a matching PEM certificate and key: {exc}"
                ) from None
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx


def paho_client(
    settings: MqttSettings,
    client_id: str,
    *,
    reconnect_on_failure: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> mqtt.Client:
    """A paho client with the config's protocol, credentials and TLS.

    Shared by the daemon's main session and the integrations' side sessions (Home Assistant,
    Sparkplug B), so they all reach a broker that requires TLS and a password the same way.
    Reads the password (ConfigError when its file or variable is missing); ``ssl_context``
    reuses a context built once, else one is built from ``settings``.
    """
    kwargs: dict[str, Any] = {"client_id": client_id, "reconnect_on_failure": reconnect_on_failure}
    if settings.protocol == "5":
        kwargs["protocol"] = mqtt.MQTTv5
    else:
        kwargs["protocol"] = mqtt.MQTTv311
        kwargs["clean_session"] = True
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    if settings.username:
        client.username_pw_set(settings.username, settings.read_password())
    ctx = ssl_context if ssl_context is not None else settings.ssl_context()
    if ctx is not None:
        client.tls_set_context(ctx)
    return client


class Topics:
    """Topic names under one prefix (the naming is part of the API: docs/mqtt.md)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")

    @staticmethod
    def check_source(source: str) -> str:
        if not _LEVEL.match(source):
            raise ConfigError(f"source name {source!r} cannot be an MQTT topic level")
        return source

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    def state(self, source: str) -> str:
        return f"{self.prefix}/{self.check_source(source)}/state"

    def health(self, source: str) -> str:
        return f"{self.prefix}/{self.check_source(source)}/health"

    def events(self, source: str) -> str:
        return f"{self.prefix}/{self.check_source(source)}/events"

    def command(self, verb: str, source: str | None = None) -> str:
        if source is None:
            return f"{self.prefix}/command/{verb}"
        return f"{self.prefix}/{self.check_source(source)}/command/{verb}"

    @property
    def command_filters(self) -> list[str]:
        return [f"{self.prefix}/command/+", f"{self.prefix}/+/command/+"]

    def parse_command(self, topic: str) -> tuple[str | None, str] | None:
        """``(source or None, verb)`` of a command topic, else None."""
        if not topic.startswith(self.prefix + "/"):
            return None
        parts = topic[len(self.prefix) + 1 :].split("/")
        if len(parts) == 2 and parts[0] == "command":
            return None, parts[1]
        if len(parts) == 3 and parts[1] == "command":
            return parts[0], parts[2]
        return None
