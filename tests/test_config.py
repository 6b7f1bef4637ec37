"""The config schema: errors name file, line and key; the example config is generated and loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from monitor.config import (
    Config,
    FileSource,
    format_loc,
    load_config,
    parse_config,
)
from monitor.config.example import generate
from monitor.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
model:
  package: pkg
sources:
  - name: fan1
    type: file
    machine: fan
    path: audio/fan.wav
"""


def write(tmp_path: Path, text: str, name: str = "sonitor.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message  # every error names the file
    return message


def test_minimal_config_fills_defaults_and_resolves_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.model.package == tmp_path / "pkg"
    src = cfg.sources[0]
    assert isinstance(src, FileSource)
    assert src.path == tmp_path / "audio" / "fan.wav"
    assert src.realtime is True and src.loop is False and src.gain_db == 0.0
    assert cfg.metrics.host == "127.0.0.1"  # bound to localhost by default
    assert cfg.alerts.n_of_m is None  # the persistence rule for the pipeline's windows
    assert cfg.alerts.burst_seconds == 2.0 and cfg.alerts.false_alarms_per_week is None
    assert cfg.clips_dir == cfg.paths.state_dir / "clips"
    assert cfg.outbox_path == cfg.paths.state_dir / "outbox.sqlite"
    assert cfg.mqtt_client_id == "sonitor-sonitor"
    assert cfg.source("fan1") is src


def test_unknown_source_name_lookup_names_known_sources(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match="fan1"):
        cfg.source("nope")


def test_malformed_yaml_gives_line_and_column(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "model:\n  package: [pkg\nsources: []\n")
    assert "malformed YAML" in msg
    assert ":3:" in msg  # the line where the parser found the problem


def test_tab_indentation_is_malformed(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "model:\n\tpackage: pkg\n")
    assert "malformed YAML" in msg and ":2:" in msg


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "model:\n  package: other\n")
    assert "duplicate key 'model'" in msg and ":8:" in msg


def test_unknown_key_named_with_path_and_line(tmp_path: Path) -> None:
    text = MINIMAL + "    gain: 3\n"  # a typo of gain_db inside sources[0]
    msg = error_of(tmp_path, text)
    assert "sources[0].gain: unknown key" in msg
    assert f"{tmp_path / 'sonitor.yaml'}:8:" in msg


def test_unknown_top_level_section(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "alert:\n  on_threshold: 2\n")
    assert "alert: unknown key" in msg


def test_wrong_type_names_key_value_and_line(tmp_path: Path) -> None:
    text = MINIMAL + ("  - name: pump1\n    type: device\n    machine: pump\n    gain_db: loud\n")
    msg = error_of(tmp_path, text)
    assert "sources[1].gain_db" in msg and "'loud'" in msg
    assert "sonitor.yaml:11:" in msg


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("alerts:\n  n_of_m: [5, 3]\n", "alerts.n_of_m"),
        ("alerts:\n  on_threshold: -1\n", "alerts.on_threshold"),
        ("alerts:\n  off_threshold: 2.0\n", "off_threshold"),
        ("windows:\n  window_seconds: 1.0\n  hop_seconds: 2.0\n", "hop_seconds"),
        ("mqtt:\n  port: 70000\n", "mqtt.port"),
        ("mqtt:\n  qos: 3\n", "mqtt.qos"),
        ("mqtt:\n  topic_prefix: 'a/#'\n", "mqtt.topic_prefix"),
        ('mqtt:\n  topic_prefix: "a/b\\0"\n', "mqtt.topic_prefix"),
        ("mqtt:\n  client_id: ''\n", "mqtt.client_id"),
        ("capture:\n  clip_level: 1.5\n", "capture.clip_level"),
        ("capture:\n  check_interval_seconds: 0\n", "capture.check_interval_seconds"),
        ("inference:\n  max_batch: 0\n", "inference.max_batch"),
        ("capture:\n  stall_seconds: .inf\n", "capture.stall_seconds"),
        ("scoring:\n  ema_alpha: .nan\n", "scoring.ema_alpha"),
        ("scoring:\n  smoothing: mean\n", "scoring.smoothing"),
        ("clips:\n  max_total_bytes: 0\n", "clips.max_total_bytes"),
        ("mqtt:\n  tls:\n    cert_file: c.pem\n", "cert_file and key_file"),
        ("homeassistant:\n  discovery_prefix: 'ha/+'\n", "homeassistant.discovery_prefix"),
        ("homeassistant:\n  enabled: true\n", "homeassistant.enabled: true needs mqtt.enabled"),
        ("sparkplug:\n  enabled: true\n", "sparkplug.enabled: true needs mqtt.enabled"),
        ("sparkplug:\n  group_id: 'plant/3'\n", "sparkplug.group_id"),
        ("sparkplug:\n  edge_node_id: 'a#'\n", "sparkplug.edge_node_id"),
        ("sparkplug:\n  primary_host_id: ''\n", "sparkplug.primary_host_id"),
        ("sparkplug:\n  store_max_messages: 0\n", "sparkplug.store_max_messages"),
        ("sparkplug:\n  groupid: x\n", "sparkplug.groupid: unknown key"),
    ],
)
def test_impossible_values_name_the_key(tmp_path: Path, snippet: str, key: str) -> None:
    msg = error_of(tmp_path, MINIMAL + snippet)
    assert key in msg


def test_integrations_default_off_and_derive_ids(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert not cfg.homeassistant.enabled and not cfg.sparkplug.enabled
    assert cfg.homeassistant.discovery_prefix == "homeassistant"
    text = MINIMAL + (
        "node:\n  name: press7\nmqtt:\n  enabled: true\nhomeassistant:\n  enabled: true\n"
        "sparkplug:\n  enabled: true\n  primary_host_id: scada\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.sparkplug_edge_node_id == "press7" and cfg.sparkplug.group_id == "sonitor"
    assert cfg.sparkplug_bdseq_path == cfg.paths.state_dir / "sparkplug-bdseq.json"
    assert cfg.sparkplug.primary_host_id == "scada"


def test_missing_required_keys(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "sources:\n  - name: a\n    type: file\n    machine: fan\n")
    assert "model: required key is missing" in msg
    assert "sources[0].path: required key is missing" in msg


def test_source_type_errors(tmp_path: Path) -> None:
    msg = error_of(
        tmp_path,
        "model: {package: p}\nsources:\n  - {name: a, type: mic, machine: fan}\n"
        "  - {name: b, machine: fan}\n",
    )
    assert "sources[0].type: unknown source type 'mic'" in msg
    assert "sources[1].type: required key is missing" in msg


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("gain_db: 61", "sources[1].gain_db"),  # +-60 dB (the capture code once allowed +-120)
        ("gain_db: .inf", "sources[1].gain_db"),
        ("samplerate: 768000", "sources[1].samplerate"),  # 8000..384000 Hz
        ("samplerate: 4000", "sources[1].samplerate"),
        ("channel: -1", "sources[1].channel"),
        ("blocksize: -1", "sources[1].blocksize"),
    ],
)
def test_device_source_limits(tmp_path: Path, setting: str, key: str) -> None:
    text = MINIMAL + f"  - name: pump1\n    type: device\n    machine: pump\n    {setting}\n"
    assert key in error_of(tmp_path, text)


def test_file_source_block_must_be_positive(tmp_path: Path) -> None:
    assert "sources[0].block_seconds" in error_of(tmp_path, MINIMAL + "    block_seconds: 0\n")


def test_duplicate_and_bad_source_names(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + MINIMAL.split("sources:\n", 1)[1])
    assert "duplicate source name 'fan1'" in msg
    msg = error_of(tmp_path, MINIMAL.replace("name: fan1", "name: 'fan 1/x'"))
    assert "sources[0].name" in msg and "letters, digits" in msg


def test_inline_password_refused_and_secret_not_echoed(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "mqtt:\n  password: hunter2\n")
    assert "password_env" in msg
    assert "hunter2" not in msg


def test_both_secret_references_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "mqtt:\n  password_env: X\n  password_file: f\n")
    assert "either password_env or password_file" in msg
    msg = error_of(tmp_path, MINIMAL + "mqtt:\n  password_env: X\n")
    assert "needs a username" in msg


def read_password(cfg: Config) -> str | None:
    """The secret as the daemon reads it: config -> MqttSettings -> env variable or file."""
    from monitor.daemon.wiring import mqtt_settings

    return mqtt_settings(cfg).read_password()


def test_read_password_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONITOR_TEST_PW", "s3cret")
    cfg = load_config(
        write(tmp_path, MINIMAL + "mqtt:\n  username: u\n  password_env: SONITOR_TEST_PW\n")
    )
    assert read_password(cfg) == "s3cret"
    (tmp_path / "pw.txt").write_text("filepw\nignored\n")
    cfg = load_config(write(tmp_path, MINIMAL + "mqtt:\n  username: u\n  password_file: pw.txt\n"))
    assert read_password(cfg) == "filepw"
    monkeypatch.delenv("SONITOR_TEST_PW")
    cfg = load_config(
        write(tmp_path, MINIMAL + "mqtt:\n  username: u\n  password_env: SONITOR_TEST_PW\n")
    )
    with pytest.raises(ConfigError, match="SONITOR_TEST_PW"):
        read_password(cfg)
    cfg = load_config(
        write(tmp_path, MINIMAL + "mqtt:\n  username: u\n  password_file: nope.txt\n")
    )
    with pytest.raises(ConfigError, match="nope.txt"):
        read_password(cfg)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("- a\n- b\n", "top level must be a mapping"), ("42\n", "mapping")],
)
def test_not_a_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error_of(tmp_path, text)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="folder"):
        load_config(tmp_path)


def test_binary_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


def test_format_loc_drops_union_tags() -> None:
    assert format_loc(("sources", 1, "file", "gain_db")) == "sources[1].gain_db"
    assert format_loc(("mqtt", "tls", "ca_file")) == "mqtt.tls.ca_file"
    assert format_loc(()) == "(top level)"


def test_parse_config_equals_load(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert parse_config(MINIMAL, path) == load_config(path)


# --------------------------------------------------------------------------- example config


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _leaf_paths(ann, f"{prefix}{name}.")
        elif name != "sources":
            out.add(prefix + name)
    return out


def _yaml_paths(data: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _yaml_paths(value, f"{prefix}{key}.")
        elif key != "sources":
            out.add(prefix + key)
    return out


def test_committed_example_is_up_to_date() -> None:
    committed = (REPO / "config.example.yaml").read_text()
    assert committed == generate(), (
        "config.example.yaml is stale: run `python -m monitor.config.example > config.example.yaml`"
    )


def test_example_loads_and_documents_every_key() -> None:
    path = REPO / "config.example.yaml"
    cfg = load_config(path)
    data = yaml.safe_load(path.read_text())
    assert _yaml_paths(data) == _leaf_paths(Config)
    kinds = {src["type"] for src in data["sources"]}
    assert kinds == {"device", "file"}
    for src_yaml, src in zip(data["sources"], cfg.sources, strict=True):
        assert set(src_yaml) == set(type(src).model_fields)
    # every key carries its description as a comment, the defaults are the schema's
    text = path.read_text()
    assert "# Normalised score at or above which a window counts as anomalous." in text
    defaults = Config.model_validate(
        {"model": {"package": "/var/lib/sonitor/package"}, "sources": data["sources"]}
    )
    assert cfg == defaults


def test_example_module_runs_as_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "monitor.config.example"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out == generate()
