"""The one configuration schema of the daemon (pydantic v2) and its loader.

Every key the daemon reads is declared here, with its default and a description; the example
config (`monitor/config/example.py`) is generated from these declarations, so the schema is the
single source of truth. Unknown keys, wrong types and impossible values are errors that name the
file, the line and the key path (e.g. `sources[1].gain_db`), because a daemon that silently
ignores a typo in `on_threshold` fails in the worst possible way: quietly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from monitor.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Relative paths are relative to the config file's folder, not to the working directory."""
    if value is None:
        return None
    value = Path(os.path.expanduser(str(value)))
    base = (info.context or {}).get("base_dir") if info.context else None
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


ConfPath = Annotated[Path, AfterValidator(_resolve_path)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    """Base: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------- sections


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


class _SourceBase(Strict):
    name: Name = Field(
        description="Unique source name (one machine per source): used in topics and metrics.",
        json_schema_extra={"example": "pump1"},
    )
    machine: str = Field(
        min_length=1,
        description="Machine in the model package whose bank and threshold score this source.",
        json_schema_extra={"example": "pump"},
    )
    gain_db: float = Field(0.0, ge=-60.0, le=60.0, description="Gain applied to the input, dB.")
    threshold: float | None = Field(
        None,
        gt=0.0,
        description="Raw-score threshold for this source; null uses the package's calibrated one.",
    )


class DeviceSource(_SourceBase):
    type: Literal["device"] = Field(description="A live input device (sounddevice/PortAudio).")
    device: str | int | None = Field(
        None,
        description="Device: name substring, PortAudio index, or stable identity "
        "(see `sonitor devices`, e.g. 'usb:0d8c:0014:SERIAL'); null = the default input.",
    )
    channel: int = Field(
        0, ge=0, le=255, description="Channel of the device this source listens to (0-based)."
    )
    samplerate: int | None = Field(
        None,
        ge=8000,
        le=384000,
        description="Capture rate in Hz; null = the device's native rate (resampled to 16 kHz).",
    )
    blocksize: int = Field(
        0, ge=0, le=65536, description="PortAudio block size in frames; 0 lets PortAudio choose."
    )
    latency: Literal["low", "high"] | Annotated[float, Field(gt=0.0, le=2.0)] = Field(
        "high",
        description="PortAudio suggested input latency: low, high, or seconds. 'high' is the "
        "robust choice for monitoring (no need for low latency).",
    )


class FileSource(_SourceBase):
    type: Literal["file"] = Field(description="A WAV/FLAC file (tests, demos, replays).")
    path: ConfPath = Field(
        description="Audio file (WAV or FLAC, any rate; resampled to 16 kHz).",
        json_schema_extra={"example": "/var/lib/sonitor/replay.wav"},
    )
    channel: int | None = Field(
        None, ge=0, le=255, description="Channel to read; null = mean of all channels."
    )
    realtime: bool = Field(
        True, description="Pace the file at real time; false = as fast as inference allows."
    )
    loop: bool = Field(False, description="Start again at the end of the file.")
    block_seconds: float = Field(
        0.1, gt=0.0, le=10.0, description="Read block length (the real-time pacing granularity)."
    )


SourceConfig = Annotated[DeviceSource | FileSource, Field(discriminator="type")]
SOURCE_TYPES = ("device", "file")


class CaptureConfig(Strict):
    buffer_seconds: float = Field(
        10.0,
        gt=0.0,
        le=600.0,
        description="Ring buffer per source at the native rate, seconds: how long the daemon may "
        "lag before audio is overwritten (counted as overflows).",
    )
    history_seconds: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="16 kHz audio kept per source for clip pre-roll; must cover the pre-roll, "
        "one window and the N-of-M confirmation.",
    )
    stall_seconds: float = Field(
        5.0, gt=0.0, description="No frames for this long marks a source unhealthy (stalled)."
    )
    silence_seconds: float = Field(
        10.0, gt=0.0, description="Digital silence for this long marks a source unhealthy."
    )
    silence_dbfs: float = Field(
        -90.0, le=0.0, description="Level (dBFS RMS) at or below which input counts as silence."
    )
    clip_fraction: float = Field(
        0.01,
        gt=0.0,
        le=1.0,
        description="Fraction of samples at full scale over which a block counts as clipped.",
    )
    clipping_seconds: float = Field(
        5.0, gt=0.0, description="Clipping for this long marks a source unhealthy."
    )
    clip_level: float = Field(
        0.999, gt=0.0, le=1.0, description="|sample| at or above this counts as full scale."
    )
    check_interval_seconds: float = Field(
        0.25, gt=0.0, le=10.0, description="Period of the liveness checks."
    )
    reopen_initial_seconds: float = Field(
        1.0, gt=0.0, description="First delay before reopening an unhealthy device."
    )
    reopen_max_seconds: float = Field(
        30.0, gt=0.0, description="Longest delay between reopen attempts (exponential backoff)."
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> CaptureConfig:
        if self.reopen_max_seconds < self.reopen_initial_seconds:
            raise ValueError("reopen_max_seconds must be >= reopen_initial_seconds")
        return self


class WindowsConfig(Strict):
    window_seconds: float | None = Field(
        None,
        gt=0.0,
        le=60.0,
        description="Analysis window length, seconds; null = the package's window.",
    )
    hop_seconds: float | None = Field(
        None, gt=0.0, le=60.0, description="Hop between windows, seconds; null = the package's hop."
    )

    @model_validator(mode="after")
    def _hop_le_window(self) -> WindowsConfig:
        w, h = self.window_seconds, self.hop_seconds
        if w is not None and h is not None and h > w:
            raise ValueError(f"hop_seconds ({h}) must not exceed window_seconds ({w})")
        return self


class InferenceConfig(Strict):
    max_batch: int = Field(
        8, ge=1, le=256, description="Most windows (of all sources) in one encoder call."
    )
    max_pending_windows: int = Field(
        32,
        ge=1,
        le=10000,
        description="Windows waiting for inference; beyond this the oldest are dropped (counted). "
        "Keep it >= 2x the number of sources: every source completes a window each hop.",
    )


class ScoringConfig(Strict):
    smoothing: Literal["ema", "median", "none"] = Field(
        "ema", description="Smoothing of the normalised score: ema, median (of the last n), none."
    )
    ema_alpha: float = Field(
        0.3, gt=0.0, le=1.0, description="EMA weight of the newest window (1 = no smoothing)."
    )
    median_windows: int = Field(
        5, ge=1, le=1000, description="Windows in the running median (smoothing: median)."
    )
    alert_on: Literal["smoothed", "normalised"] = Field(
        "normalised",
        description="Score fed to the alert state machine (its N-of-M rule already debounces).",
    )


class AlertsConfig(Strict):
    on_threshold: float = Field(
        1.0, gt=0.0, description="Normalised score at or above which a window counts as anomalous."
    )
    off_threshold: float = Field(
        0.8, gt=0.0, description="Normalised score below which a window counts as normal again."
    )
    critical_threshold: float = Field(
        2.0,
        gt=0.0,
        description="Critical severity when N of the last M windows reach this normalised score.",
    )
    n_of_m: tuple[int, int] = Field(
        (3, 5), description="[N, M]: raise when N of the last M windows are anomalous."
    )
    clear_windows: int = Field(
        5, ge=1, le=10000, description="Consecutive normal windows needed to end an event."
    )
    min_hold_seconds: float = Field(
        10.0, ge=0.0, description="An event lasts at least this long before it can end."
    )
    cooldown_seconds: float = Field(
        30.0, ge=0.0, description="After an end, no new event for the same source this long."
    )
    update_interval_seconds: float = Field(
        60.0, ge=0.0, description="Periodic `update` events while an event is open (0 = never)."
    )
    peak_step: float = Field(
        0.5,
        ge=0.0,
        description="Send an `update` when the peak normalised score rises this much (0 = never).",
    )
    invalid_limit: int = Field(
        10,
        ge=1,
        description="Consecutive invalid (NaN/inf) scores that end an open event.",
    )
    capture_alarm_delay_seconds: float = Field(
        0.0, ge=0.0, description="Capture must stay unhealthy this long before a capture alarm."
    )

    @field_validator("n_of_m")
    @classmethod
    def _n_of_m(cls, value: tuple[int, int]) -> tuple[int, int]:
        n, m = value
        if not 1 <= n <= m <= 10000:
            raise ValueError(f"must be [N, M] with 1 <= N <= M <= 10000, got [{n}, {m}]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AlertsConfig:
        if self.off_threshold > self.on_threshold:
            raise ValueError(
                f"off_threshold ({self.off_threshold}) must not exceed on_threshold "
                f"({self.on_threshold})"
            )
        if self.critical_threshold < self.on_threshold:
            raise ValueError(
                f"critical_threshold ({self.critical_threshold}) must be >= on_threshold "
                f"({self.on_threshold})"
            )
        return self


class ClipsConfig(Strict):
    enabled: bool = Field(True, description="Write a WAV clip + JSON sidecar for every event.")
    dir: ConfPath | None = Field(None, description="Clip folder; null = <state_dir>/clips.")
    pre_roll_seconds: float = Field(5.0, ge=0.0, le=600.0, description="Audio before the start.")
    post_roll_seconds: float = Field(5.0, ge=0.0, le=600.0, description="Audio after the end.")
    max_event_seconds: float = Field(
        120.0, gt=0.0, le=3600.0, description="Longest clip body; longer events are truncated."
    )
    max_age_days: float = Field(30.0, gt=0.0, description="Clips older than this are deleted.")
    max_total_bytes: int = Field(
        1_000_000_000, gt=0, description="Oldest clips are deleted beyond this total size."
    )
    min_free_bytes: int = Field(
        100_000_000, ge=0, description="Oldest clips are deleted to keep this much disk free."
    )
    retention_interval_seconds: float = Field(
        900.0, gt=0.0, description="Retention also runs on this timer (clips age without writes)."
    )


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
        pattern=r"^[^#+/\s]+(/[^#+/\s]+)*$",
        description="Topic prefix: topics are <prefix>/availability, <prefix>/<source>/state ... "
        "null = 'sonitor/<node.name>'. Levels separated by '/', no wildcards or spaces.",
    )
    client_id: str | None = Field(
        None, description="MQTT client id; null = 'sonitor-<node.name>'. Must be unique per broker."
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


_TOPIC_LEVELS = r"^[^#+/\s]+(/[^#+/\s]+)*$"
_SPARKPLUG_ID = r"^[^#+/\s]+$"


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


# ------------------------------------------------------------------------------------ loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def format_loc(loc: tuple[Any, ...]) -> str:
    """('sources', 1, 'file', 'gain_db') -> 'sources[1].gain_db' (union tags dropped)."""
    out = ""
    prev_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_index = True
            continue
        if prev_index and part in SOURCE_TYPES:
            prev_index = False
            continue
        prev_index = False
        part = str(part)
        if part.startswith(("function-", "tagged-union[", "union[")):
            continue
        out += f".{part}" if out else part
    return out or "(top level)"


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (or of its deepest existing parent)."""
    node = root
    if node is None:
        return None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for key_node, value_node in node.value:
                if getattr(key_node, "value", None) == str(part):
                    nxt = value_node
                    break
            if nxt is None:
                if isinstance(part, str) and part in SOURCE_TYPES:
                    continue  # discriminated-union tag: not a YAML key
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
    return node.start_mark.line + 1


def _describe(err: dict[str, Any]) -> str:
    msg, kind = err["msg"], err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag")
        return f"unknown source type {tag!r} (expected one of: {', '.join(SOURCE_TYPES)})"
    if kind == "union_tag_not_found":
        return f"required key is missing (one of: {', '.join(SOURCE_TYPES)})"
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_PATTERN:
        msg = "must be 1-64 letters, digits, '_' or '-', starting with a letter or digit"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "input" in err and err["type"] not in ("model_type", "union_tag_not_found"):
        value = err["input"]
        if not isinstance(value, dict | list):
            return f"{msg} (got {value!r})"
    return msg


def parse_config(text: str, path: Path | str = "<config>") -> Config:
    """Parse and validate YAML text; `path` names the file in errors and anchors relative paths."""
    path = Path(path)
    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections, got {type(data).__name__}"
        )
    try:
        return Config.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc += ("type",)
            line = _node_line(root, loc)
            where = f"{path}:{line}" if line else str(path)
            lines.append(f"{where}: {format_loc(loc)}: {_describe(err)}")
        head = f"{path}: invalid config ({len(lines)} error{'s' if len(lines) > 1 else ''})"
        raise ConfigError(head + "\n  " + "\n  ".join(lines)) from None


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; every problem is a ConfigError naming file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    return parse_config(text, path)


__all__ = [
    "Config",
    "DeviceSource",
    "FileSource",
    "SourceConfig",
    "load_config",
    "parse_config",
    "format_loc",
]
