"""`sources:` (what to listen to) and `capture:` (buffers and liveness of the audio)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from monitor.config.base import ConfPath, Name, Strict


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
