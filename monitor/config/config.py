"""The whole daemon configuration: one pydantic model assembled from the sections.

Every key the daemon reads is declared in this package, with its default and a description; the
example config (`monitor/config/example.py`) is generated from these declarations, so the schema
is the single source of truth. Unknown keys, wrong types and impossible values are errors that
name the file, the line and the key path (e.g. `sources[1].gain_db`), because a daemon that
silently ignores a typo in `on_threshold` fails in the worst possible way: quietly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from monitor.config.base import ConfPath, Name, Strict
from monitor.config.detection import (
    AlertsConfig,
    ClipsConfig,
    InferenceConfig,
    ScoringConfig,
    WindowsConfig,
)
from monitor.config.outputs import (
    HealthConfig,
    HomeAssistantConfig,
    LoggingConfig,
    MetricsConfig,
    MqttConfig,
    SparkplugConfig,
)
from monitor.config.sources import CaptureConfig, DeviceSource, FileSource, SourceConfig
from monitor.errors import ConfigError


class NodeConfig(Strict):
    name: Name = Field(
        "sonitor",
        description="Name of this daemon instance: used in MQTT topics, client id and payloads. "
        "Letters, digits, '_' and '-'.",
    )


class ModelConfig(Strict):
    package: ConfPath = Field(
        description="Model package folder written by `sonitor export` / `sonitor enroll`.",
        json_schema_extra={"example": "/var/lib/sonitor/package"},
    )
    threads: int = Field(
        1, ge=1, le=64, description="onnxruntime intra-op threads for the separator and encoder."
    )
    precision: Literal["fp32", "int8"] | None = Field(
        None,
        description="Encoder precision: fp32, or int8 (dynamic quantisation, when the package has "
        "it); null = the package's default.",
    )


class PathsConfig(Strict):
    state_dir: ConfPath = Field(
        Path("/var/lib/sonitor"),
        description="Writable folder for the MQTT outbox and (by default) event clips.",
    )


class Config(Strict):
    """The whole daemon configuration."""

    node: NodeConfig = Field(default_factory=NodeConfig, description="This daemon instance.")
    model: ModelConfig = Field(description="The model package.")
    paths: PathsConfig = Field(default_factory=PathsConfig, description="Writable state.")
    sources: list[SourceConfig] = Field(
        min_length=1, description="Audio sources; each is one machine."
    )
    capture: CaptureConfig = Field(
        default_factory=CaptureConfig, description="Capture buffers and liveness."
    )
    windows: WindowsConfig = Field(default_factory=WindowsConfig, description="Analysis windows.")
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="Batching and back-pressure."
    )
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Score smoothing.")
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig, description="Alert state machine (per source)."
    )
    clips: ClipsConfig = Field(default_factory=ClipsConfig, description="Event clips.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT publishing.")
    homeassistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant MQTT discovery."
    )
    sparkplug: SparkplugConfig = Field(
        default_factory=SparkplugConfig, description="Sparkplug B edge node."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics and health endpoint."
    )
    health: HealthConfig = Field(default_factory=HealthConfig, description="Health rules.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[DeviceSource | FileSource]) -> list:
        seen: dict[str, int] = {}
        for i, src in enumerate(sources):
            if src.name in seen:
                raise ValueError(
                    f"duplicate source name {src.name!r} in sources[{seen[src.name]}] "
                    f"and sources[{i}]"
                )
            seen[src.name] = i
        return sources

    @model_validator(mode="after")
    def _integrations_need_mqtt(self) -> Config:
        for key in ("homeassistant", "sparkplug"):
            if getattr(self, key).enabled and not self.mqtt.enabled:
                raise ValueError(
                    f"{key}.enabled: true needs mqtt.enabled: true (it uses the mqtt connection)"
                )
        return self

    # Derived values live here so every consumer resolves defaults the same way.
    @property
    def clips_dir(self) -> Path:
        return self.clips.dir if self.clips.dir is not None else self.paths.state_dir / "clips"

    @property
    def outbox_path(self) -> Path:
        if self.mqtt.outbox.path is not None:
            return self.mqtt.outbox.path
        return self.paths.state_dir / "outbox.sqlite"

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"sonitor-{self.node.name}"

    @property
    def mqtt_topic_prefix(self) -> str:
        return self.mqtt.topic_prefix or f"sonitor/{self.node.name}"

    @property
    def sparkplug_edge_node_id(self) -> str:
        return self.sparkplug.edge_node_id or self.node.name

    @property
    def sparkplug_bdseq_path(self) -> Path:
        """The last Sparkplug bdSeq, so that a restarted node increments it."""
        return self.paths.state_dir / "sparkplug-bdseq.json"

    def source(self, name: str) -> DeviceSource | FileSource:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(f"no source named {name!r} in the config (sources: {known})")
