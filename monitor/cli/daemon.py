"""`sonitor run`, `sonitor check-config` and `sonitor test-alert`.

`check-config` is what a plant engineer runs before `systemctl restart`: it validates the config
schema AND everything the config points at (package and machines, file sources, secrets, TLS
files, writable folders), so that a bad edit is found at the desk, not at 3 a.m.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from monitor.config import Config, DeviceSource, FileSource, load_config
from monitor.errors import ConfigError, SonitorError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the monitoring daemon",
        description="Listen to the configured sources, score every window against the model "
        "package, raise alerts over MQTT and serve /metrics and /healthz. SIGHUP reloads the "
        "config and the package; SIGTERM stops cleanly.",
    )
    p.add_argument("--config", "-c", type=Path, required=True, metavar="FILE", help="config YAML")
    p.set_defaults(handler=run)

    p = subparsers.add_parser(
        "check-config",
        help="validate a daemon config and what it points at",
        description="Check the schema (unknown keys, types, values), the model package and its "
        "machines, file sources, secrets, TLS files and writable folders. Exit 0 when the "
        "daemon can start with it, 2 otherwise.",
    )
    p.add_argument("config", type=Path, metavar="FILE", help="config YAML")
    p.add_argument(
        "--schema-only", action="store_true", help="check the YAML against the schema only"
    )
    p.set_defaults(handler=check_config_cmd)

    p = subparsers.add_parser(
        "test-alert",
        help="publish a test event over MQTT (kind 'test': start, then end)",
        description="Publish one test event per source (or for --source) through the same "
        "MQTT path as real alerts and wait for the broker's acknowledgement.",
    )
    p.add_argument("--config", "-c", type=Path, required=True, metavar="FILE", help="config YAML")
    p.add_argument("--source", help="only this source (default: every source)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker")
    p.set_defaults(handler=test_alert)


def run(args: argparse.Namespace) -> int:
    from monitor.daemon.daemon import run_daemon

    return run_daemon(args.config)


# --------------------------------------------------------------------------- check-config


def _writable_dir(path: Path, key: str) -> None:
    """The folder exists and is writable, or can be created (its nearest existing parent is)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}: {probe} is not a folder (needed for {path})")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {probe} is not writable by this user (needed for {path})")


def check_config(cfg: Config) -> list[str]:
    """Errors raise (ConfigError/PackageError/AudioError naming the key); returns warnings."""
    from monitor.audio.io import audio_info
    from monitor.daemon.wiring import Pipeline, clip_policy, mqtt_settings, n_of_m

    warnings: list[str] = []
    pipeline = Pipeline.build(cfg)  # package, machines, windows vs the front-end
    for i, src in enumerate(cfg.sources):
        if isinstance(src, FileSource):
            try:
                info = audio_info(src.path)
            except SonitorError as exc:
                raise ConfigError(f"sources[{i}].path (source {src.name!r}): {exc}") from None
            if src.channel is not None and src.channel >= info.channels:
                raise ConfigError(
                    f"sources[{i}].channel: {src.path} has {info.channels} channel(s), "
                    f"channel {src.channel} does not exist"
                )
            if info.duration_s * 16000 < pipeline.window_samples and not src.loop:
                warnings.append(
                    f"sources[{i}] ({src.name}): {src.path} is shorter than one window "
                    f"({info.duration_s:.2f} s): it will never be scored"
                )
        elif isinstance(src, DeviceSource):
            warnings += _check_device(i, src)
    _writable_dir(cfg.paths.state_dir, "paths.state_dir")
    if cfg.clips.enabled:
        clip_policy(cfg)
        _writable_dir(cfg.clips_dir, "clips.dir")
    if cfg.mqtt.enabled:
        settings = mqtt_settings(cfg)
        settings.read_password()
        settings.ssl_context()
        _writable_dir(cfg.outbox_path.parent, "mqtt.outbox.path")
    need = cfg.clips.pre_roll_seconds + pipeline.window_samples / 16000
    _, m = n_of_m(cfg, pipeline.window_seconds, pipeline.hop_seconds)
    need += m * pipeline.hop_samples / 16000
    if cfg.clips.enabled and cfg.capture.history_seconds < need:
        warnings.append(
            f"capture.history_seconds ({cfg.capture.history_seconds:g}) is shorter than "
            f"pre-roll + window + M hops ({need:.1f} s): clip pre-roll will be cut"
        )
    if cfg.metrics.enabled and cfg.metrics.host not in ("127.0.0.1", "localhost", "::1"):
        warnings.append(
            f"metrics.host is {cfg.metrics.host}: /metrics is reachable from the network"
        )
    return warnings


def _check_device(i: int, src: DeviceSource) -> list[str]:
    """A device that is not there now is a warning (the daemon waits for it), not an error."""
    try:
        from monitor.audio import devices as devs

        devices = devs.list_input_devices()
        devs.resolve_device(src.device, devices)
    except SonitorError as exc:
        return [f"sources[{i}] ({src.name}): device not available now ({exc}); the daemon "
                "starts anyway and keeps retrying"]  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - e.g. PortAudio missing
        return [f"sources[{i}] ({src.name}): cannot list audio devices ({exc})"]
    return []


def check_config_cmd(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    cfg = load_config(args.config)
    if args.schema_only:
        out.write(f"{args.config}: schema OK ({len(cfg.sources)} source(s))\n")
        return 0
    warnings = check_config(cfg)
    for w in warnings:
        out.write(f"warning: {w}\n")
    names = ", ".join(f"{s.name} ({s.type}, machine {s.machine})" for s in cfg.sources)
    out.write(f"{args.config}: OK: {len(cfg.sources)} source(s): {names}\n")
    return 0


# --------------------------------------------------------------------------- test-alert


def test_alert(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from monitor.daemon.wiring import mqtt_settings
    from monitor.outputs.mqtt import publish_test_alert

    out = sys.stdout if out is None else out
    cfg = load_config(args.config)
    if not cfg.mqtt.enabled:
        raise ConfigError(f"{args.config}: mqtt.enabled is false: nowhere to send a test alert")
    names = [cfg.source(args.source).name] if args.source else [s.name for s in cfg.sources]
    settings = mqtt_settings(cfg)
    for name in names:
        event_id = publish_test_alert(settings, name, timeout=args.timeout)
        out.write(
            f"test alert {event_id} for {name} acknowledged by {cfg.mqtt.host}:{cfg.mqtt.port} "
            f"on {settings.topic_prefix}/{name}/events\n"
        )
    return 0
