"""What a capture source is and when it counts as unhealthy: the settings the daemon config maps to.

Every check raises ConfigError naming the source and the key, so that a bad config is reported
before any device is opened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import ConfigError


@dataclass(frozen=True)
class LivenessSpec:
    """When a source counts as unhealthy, and how fast a dead device is retried.

    Field names match ``capture:`` in the config schema (``monitor/config/``), so the config
    converts with ``LivenessSpec(**capture.model_dump(exclude={"buffer_seconds"}))``.
    """

    stall_seconds: float = 5.0  # no frames for this long -> stalled (device sources)
    silence_seconds: float = 10.0  # audio at/below silence_dbfs for this long -> silent
    silence_dbfs: float = -90.0  # RMS level of "digital silence" (exact zeros are -inf)
    clip_fraction: float = 0.01  # a check block with more samples at full scale is clipped
    clipping_seconds: float = 5.0  # clipped blocks for this long -> clipping
    reopen_initial_seconds: float = 1.0  # first retry delay after a failed (re)open
    reopen_max_seconds: float = 30.0  # backoff cap
    clip_level: float = 0.999  # |x| at or above this (times min(1, gain)) counts as full scale
    check_interval_seconds: float = 0.25  # supervisor period (one check block of audio)


@dataclass(frozen=True)
class DeviceSourceSpec:
    """One machine heard through one channel of a sounddevice input device."""

    name: str
    device: str | int | None = None  # name substring, index, usb:/alsa: identity, None = default
    channel: int = 0
    gain_db: float = 0.0
    samplerate: int | None = None  # None: the device's default (native) rate
    blocksize: int = 0  # frames per callback; 0 lets PortAudio choose
    latency: str | float = "high"  # PortAudio suggested latency ("low", "high" or seconds)
    liveness: LivenessSpec | None = None  # None: the manager's


@dataclass(frozen=True)
class FileSourceSpec:
    """A WAV/FLAC file played as a source: for tests, demos and replays."""

    name: str
    path: Path
    realtime: bool = True  # paced to the wall clock; False: as fast as the consumer reads
    loop: bool = False
    gain_db: float = 0.0
    channel: int | None = 0  # None: the mean of all channels
    block_s: float = 0.1  # producer block length (the pacing granularity)
    liveness: LivenessSpec | None = None


SourceSpec = DeviceSourceSpec | FileSourceSpec


def validate_specs(specs: Sequence[SourceSpec]) -> None:
    """Reject impossible source settings with a :class:`ConfigError` naming source and key."""
    seen: set[str] = set()
    for spec in specs:
        where = f"source {spec.name!r}"
        if not spec.name or not isinstance(spec.name, str):
            raise ConfigError(f"every source needs a non-empty name, got {spec.name!r}")
        if spec.name in seen:
            raise ConfigError(f"{where}: duplicate source name")
        seen.add(spec.name)
        file_mean = isinstance(spec, FileSourceSpec) and spec.channel is None
        bad_channel = not isinstance(spec.channel, int) or isinstance(spec.channel, bool)
        if not file_mean and (bad_channel or spec.channel < 0):  # type: ignore[operator]
            raise ConfigError(f"{where}: channel must be an integer >= 0, got {spec.channel!r}")
        if not math.isfinite(spec.gain_db) or abs(spec.gain_db) > 120:
            raise ConfigError(f"{where}: gain_db must be finite within +-120, got {spec.gain_db}")
        if isinstance(spec, DeviceSourceSpec):
            if spec.samplerate is not None and not 1000 <= spec.samplerate <= 768000:
                raise ConfigError(f"{where}: samplerate {spec.samplerate} is not a sound rate")
            if spec.blocksize < 0:
                raise ConfigError(f"{where}: blocksize must be >= 0, got {spec.blocksize}")
        elif isinstance(spec, FileSourceSpec):
            if not spec.block_s > 0:
                raise ConfigError(f"{where}: block_s must be > 0, got {spec.block_s}")
        else:
            raise ConfigError(f"{where}: unknown source type {type(spec).__name__}")
        validate_liveness(spec.liveness, where)


def validate_liveness(lv: LivenessSpec | None, where: str) -> None:
    if lv is None:
        return
    for key in (
        "check_interval_seconds", "stall_seconds", "silence_seconds", "clipping_seconds",
        "reopen_initial_seconds",
    ):  # fmt: skip
        if not getattr(lv, key) > 0:
            raise ConfigError(f"{where}: liveness.{key} must be > 0, got {getattr(lv, key)}")
    if lv.reopen_max_seconds < lv.reopen_initial_seconds:
        raise ConfigError(f"{where}: liveness.reopen_max_seconds must be >= reopen_initial_seconds")
    if not 0 < lv.clip_level <= 1 or not 0 < lv.clip_fraction <= 1:
        raise ConfigError(f"{where}: liveness.clip_level and clip_fraction must be in (0, 1]")
