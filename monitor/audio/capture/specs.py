"""What a capture source is and when it counts as unhealthy: the settings the daemon config maps to.

Plain values: every rule on them (names, channels, gains, rates, liveness limits) lives in the
config schema (``monitor/config/sources.py``), which reports a bad config with file, line and key
before any device is opened; ``monitor.daemon.wiring`` builds these from a validated ``Config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LivenessSpec:
    """When a source counts as unhealthy, and how fast a dead device is retried.

    Field names match ``capture:`` in the config schema (``monitor/config/sources.py``);
    ``monitor.daemon.wiring.liveness_spec`` builds one from a validated config.
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
