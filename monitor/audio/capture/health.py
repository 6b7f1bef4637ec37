"""The state of a capture source, as metrics, MQTT health and alert suppression see it."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any


class SourceState(str, enum.Enum):
    STARTING = "starting"  # opened, no frames yet
    OK = "ok"
    SILENT = "silent"
    CLIPPING = "clipping"
    NONFINITE = "nonfinite"  # NaN/inf samples (a corrupt file or driver): nothing to score
    STALLED = "stalled"  # stream open but no frames, or the stream stopped by itself
    MISSING = "missing"  # the device is not there (retrying)
    REOPENING = "reopening"  # closed after a failure, waiting for the next attempt
    ERROR = "error"  # a file source that cannot be read (no retry)
    ENDED = "ended"  # a non-looping file reached its end and read_new() returned all of it
    STOPPED = "stopped"  # the manager was stopped


# States of a device the supervisor keeps trying to (re)open: the daemon is working, the
# hardware is not, so the systemd watchdog keeps being fed (see Daemon.progressing).
RETRY_STATES = frozenset({SourceState.STALLED, SourceState.MISSING, SourceState.REOPENING})

# States in which the audio cannot be trusted (alerts pause, a capture alarm is due).
ALARM_STATES = frozenset(
    {
        SourceState.SILENT,
        SourceState.CLIPPING,
        SourceState.NONFINITE,
        SourceState.STALLED,
        SourceState.MISSING,
        SourceState.REOPENING,
        SourceState.ERROR,
    }
)


@dataclass(frozen=True)
class SourceHealth:
    """A consistent snapshot of one source, for metrics, MQTT health and alert suppression."""

    name: str
    kind: str  # "device" or "file"
    state: SourceState
    reason: str
    since: float  # wall-clock time (epoch s) of the last state change
    frames_total: int  # native-rate frames captured since start (all reopens)
    samplerate: int | None  # native rate of the current stream/file
    level_dbfs: float | None  # RMS level of the latest checked audio (-inf: exact zeros)
    clipped_fraction: float  # fraction of samples at full scale in the latest check block
    input_overflows: int  # PortAudio "input overflow" callbacks (audio lost in the driver)
    overflow_samples: int  # samples overwritten in the ring before the consumer read them
    nonfinite_samples: int  # NaN/inf samples received (never scored, never rewritten)
    discontinuities: int  # times the 16 kHz stream continued across a hole (overrun, reopen)
    reopen_count: int  # successful reopens after the first open
    last_frame_age_s: float | None  # seconds since frames last arrived (None: never)
    device: str | None  # the resolved device (or file path)

    @property
    def healthy(self) -> bool:
        """True only while audio flows and looks usable (alerts should rely on it)."""
        return self.state is SourceState.OK

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        d["healthy"] = self.healthy
        if d["level_dbfs"] is not None and not math.isfinite(d["level_dbfs"]):
            d["level_dbfs"] = None  # JSON has no -inf
        return d
