"""The daemon's one config schema (pydantic), a module per concern, and its loader.

`Config` is the root; `load_config(path)` reads and validates a file and raises `ConfigError`
naming the file, line and key. `example.py` generates `config.example.yaml` from the schema.
"""

from monitor.config.config import Config, ModelConfig, NodeConfig, PathsConfig
from monitor.config.detection import (
    AlertsConfig,
    ClipsConfig,
    InferenceConfig,
    ScoringConfig,
    WindowsConfig,
)
from monitor.config.loader import format_loc, load_config, parse_config
from monitor.config.outputs import (
    HealthConfig,
    HomeAssistantConfig,
    LoggingConfig,
    MetricsConfig,
    MqttConfig,
    OutboxConfig,
    SparkplugConfig,
    TlsConfig,
)
from monitor.config.sources import CaptureConfig, DeviceSource, FileSource, SourceConfig

__all__ = [
    "AlertsConfig",
    "CaptureConfig",
    "ClipsConfig",
    "Config",
    "DeviceSource",
    "FileSource",
    "HealthConfig",
    "HomeAssistantConfig",
    "InferenceConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "MqttConfig",
    "NodeConfig",
    "OutboxConfig",
    "PathsConfig",
    "ScoringConfig",
    "SourceConfig",
    "SparkplugConfig",
    "TlsConfig",
    "WindowsConfig",
    "format_loc",
    "load_config",
    "parse_config",
]
