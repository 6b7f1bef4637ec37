"""Audio capture for the daemon: device and file sources, liveness, and their supervisor.

Data path. A producer (the PortAudio callback of a device stream, or a file-reader thread) only
copies native-rate audio (channel select + gain) into a per-source :class:`RingBuffer`: no locks,
no logging, no audio-sized allocation. The consumer (:meth:`CaptureManager.read_new`) drains the
ring, resamples to 16 kHz with a streaming soxr resampler, keeps a 16 kHz history for pre-roll
clips, and returns ``(start_sample, samples)`` on a per-source 16 kHz sample clock.

Sample clock. ``start_sample`` indexes the source's 16 kHz output stream: each call continues
exactly where the previous one ended, so windows never straddle a hole in the clock. Audio lost to
an overrun or to a reopen is counted in :class:`SourceHealth` (``overflow_samples``,
``discontinuities``) rather than encoded as a jump.

Liveness. A supervisor thread checks every source: no frames (``stalled``), digital silence
(``silent``), clipping (``clipping``); device streams that stall or vanish are aborted (``abort()``:
``stop()`` hangs on a stalled source) and reopened with exponential backoff, re-scanning devices
first (PortAudio does not see hot-plug). A device missing at start-up is not fatal: the source
stays ``missing`` and keeps retrying. Several sources may share one multichannel device: one
stream, one ring buffer per channel.

Modules: `specs` (source settings: plain values), `health` (states and snapshots), `source`
(what every source does: liveness tracking, resampling, history), `file_source` and
`device_source` (the two producers), `manager` (`CaptureManager`, the supervisor). Only the
names in ``__all__`` are meant for use outside this package.
"""

from monitor.audio.capture.health import ALARM_STATES, RETRY_STATES, SourceHealth, SourceState
from monitor.audio.capture.manager import CaptureManager
from monitor.audio.capture.source import TARGET_RATE
from monitor.audio.capture.specs import (
    DeviceSourceSpec,
    FileSourceSpec,
    LivenessSpec,
    SourceSpec,
)

__all__ = [
    "ALARM_STATES",
    "RETRY_STATES",
    "TARGET_RATE",
    "CaptureManager",
    "DeviceSourceSpec",
    "FileSourceSpec",
    "LivenessSpec",
    "SourceHealth",
    "SourceSpec",
    "SourceState",
]
