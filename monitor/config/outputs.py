"""Where results go: `mqtt:` (with TLS and the outbox), `homeassistant:`, `sparkplug:`,
`metrics:`, and the daemon's own `health:` and `logging:` rules."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from monitor.config.base import ConfPath, Strict

# MQTT topic levels: non-empty, no wildcard ('+', '#'), no space, no NUL (forbidden in topics).
_TOPIC_LEVELS = r"^[^#+/\s\x00]+(/[^#+/\s\x00]+)*$"
_SPARKPLUG_ID = r"^[^#+/\s\x00]+$"


class TlsConfig(Strict):
    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: ConfPath | None = Field(
        None, description="CA certificate (PEM); null = the system trust store."
    )
    cert_file: ConfPath | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: ConfPath | None = Field(None, description="Client private key (PEM).")
    insecure: bool = Field(
        False, description="Skip the broker hostname check (testing only; never in production)."
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class OutboxConfig(Strict):
    path: ConfPath | None = Field(
        None, description="SQLite outbox for events; null = <state_dir>/outbox.sqlite."
    )
    max_messages: int = Field(
        10000, ge=1, description="Bound of the outbox; the oldest are dropped (counted) beyond it."
    )
    max_bytes: int = Field(50_000_000, ge=1024, description="Bound of the outbox in bytes.")


class MqttConfig(Strict):
    enabled: bool = Field(False, description="Publish availability, state, events and health.")
    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    topic_prefix: str | None = Field(
        None,
        min_length=1,
        pattern=_TOPIC_LEVELS,
        description="Topic prefix: topics are <prefix>/availability, <prefix>/<source>/state ... "
        "null = 'sonitor/<node.name>'. Levels separated by '/', no wildcards or spaces.",
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        description="MQTT client id; null = 'sonitor-<node.name>'. Must be unique per broker.",
    )
    qos: Literal[0, 1, 2] = Field(
        1, description="QoS of state, health and availability; events always use at least 1."
    )
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version.")
    keepalive_seconds: int = Field(
        30, ge=5, le=3600, description="Keepalive; the last will fires after ~1.5x this."
    )
    username: str | None = Field(None, description="User name for password authentication.")
    password_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the password (never inline).",
    )
    password_file: ConfPath | None = Field(
        None, description="File whose first line is the password (e.g. a systemd credential)."
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Durable event outbox.")
    reconnect_min_seconds: float = Field(1.0, gt=0.0, description="First reconnect delay.")
    reconnect_max_seconds: float = Field(30.0, gt=0.0, description="Longest reconnect delay.")

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError(
                "inline 'password' is not allowed: give password_env (an environment variable "
                "name) or password_file"
            )
        return data

    @model_validator(mode="after")
    def _secrets(self) -> MqttConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give either password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("a password (password_env / password_file) needs a username")
        if self.reconnect_max_seconds < self.reconnect_min_seconds:
            raise ValueError("reconnect_max_seconds must be >= reconnect_min_seconds")
        return self


class HomeAssistantConfig(Strict):
    enabled: bool = Field(
        False,
        description="Publish Home Assistant MQTT discovery (one HA device per source, reading the "
        "retained state and health topics). Needs mqtt.enabled.",
    )
    discovery_prefix: str = Field(
        "homeassistant",
        min_length=1,
        pattern=_TOPIC_LEVELS,
        description="HA's discovery prefix; configs go to <prefix>/<component>/<id>/config and "
        "HA's birth message <prefix>/status = online makes the daemon publish them again.",
    )


class SparkplugConfig(Strict):
    enabled: bool = Field(
        False,
        description="Run a Sparkplug B edge node (for SCADA such as Ignition) on the mqtt broker "
        "connection: this daemon is the edge node, each source a device. Needs mqtt.enabled.",
    )
    group_id: str = Field(
        "sonitor", pattern=_SPARKPLUG_ID, description="Sparkplug group id (no '/', '+', '#')."
    )
    edge_node_id: str | None = Field(
        None, pattern=_SPARKPLUG_ID, description="Sparkplug edge node id; null = node.name."
    )
    primary_host_id: str | None = Field(
        None,
        pattern=_SPARKPLUG_ID,
        description="Primary host application id: births wait for its STATE online, and device "
        "data is held (store and forward) while it is offline. null = no primary host.",
    )
    store_max_messages: int = Field(
        10000,
        ge=1,
        le=1_000_000,
        description="Bound of the in-memory store-and-forward queue (DDATA messages); beyond it "
        "the oldest are dropped (counted). Not kept across restarts.",
    )


class MetricsConfig(Strict):
    enabled: bool = Field(True, description="Serve /metrics (Prometheus) and /healthz.")
    host: str = Field(
        "127.0.0.1", min_length=1, description="Listen address; 0.0.0.0 exposes it to the network."
    )
    port: int = Field(9464, ge=0, le=65535, description="Listen port (0 = any free port).")


class HealthConfig(Strict):
    inference_stale_seconds: float = Field(
        30.0,
        gt=0.0,
        description="/healthz fails and the systemd watchdog stops when no window was scored "
        "for this long.",
    )
    state_interval_seconds: float = Field(
        1.0, ge=0.0, description="Minimum interval between retained state publishes per source."
    )


class LoggingConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
