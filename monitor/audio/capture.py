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
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from monitor.audio import devices as devs
from monitor.audio.frontend import SAMPLE_RATE
from monitor.audio.io import RESAMPLE_QUALITY, audio_info
from monitor.audio.ringbuffer import RingBuffer
from monitor.errors import AudioError, ConfigError

log = logging.getLogger(__name__)

TARGET_RATE = SAMPLE_RATE  # the model rate (ARCHITECTURE.md: float32 mono 16 kHz everywhere)


# ====================================================================== configuration
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


class SourceState(str, enum.Enum):
    STARTING = "starting"  # opened, no frames yet
    OK = "ok"
    SILENT = "silent"
    CLIPPING = "clipping"
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
        _validate_liveness(spec.liveness, where)


def _validate_liveness(lv: LivenessSpec | None, where: str) -> None:
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


# ====================================================================== sources
class _Feed:
    """Native-rate audio of one source from one open stream/file (a new one per reopen)."""

    def __init__(self, rate: int, capacity_s: float) -> None:
        self.rate = int(rate)
        self.ring = RingBuffer(max(1, int(round(capacity_s * self.rate))))


class _Source:
    """State shared by every source kind: feed, liveness tracking, consumer-side resampling."""

    kind = "?"

    def __init__(self, spec: SourceSpec, liveness: LivenessSpec, history_s: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.lv = liveness
        self.gain = np.float32(10.0 ** (spec.gain_db / 20.0))
        self.feed: _Feed | None = None  # published by the producer side
        self.device_label: str | None = None
        # transport state, set by the supervisor/producer; content state derived from audio
        self.transport = SourceState.STARTING
        self.transport_reason = "starting"
        self.reopen_count = 0
        self.input_overflows = 0
        # liveness tracking (supervisor thread only)
        self._mon_feed: _Feed | None = None
        self._mon_cursor = 0
        self._frames_before = 0  # frames of earlier feeds
        self._last_frames_at: float | None = None
        self._silent_samples = 0
        self._clipped_samples = 0
        self.level_dbfs: float | None = None
        self.clipped_fraction = 0.0
        # published snapshot
        self._state = SourceState.STARTING
        self._since = time.time()
        self._health: SourceHealth | None = None
        # consumer side (read_new)
        self.consumer_lock = threading.Lock()
        self._cons_feed: _Feed | None = None
        self._resampler: Any = None
        self._clock = 0
        self._discontinuities = 0
        self._flushed = False
        self._overflow_done = 0  # overflow samples of finished feeds
        self.history = RingBuffer(max(1, int(round(history_s * TARGET_RATE))))

    # ------------------------------------------------------------------ liveness
    def observe(self, now: float) -> None:
        """Scan the audio that arrived since the last check as one block (supervisor thread).

        Silence and clipping are measured in audio time (samples), so they mean the same for a
        live device and for a file replayed faster than real time.
        """
        feed = self.feed
        if feed is None:
            return
        if feed is not self._mon_feed:
            if self._mon_feed is not None:
                self._frames_before += self._mon_feed.ring.total_written
            self._mon_feed, self._mon_cursor = feed, 0
        written = feed.ring.total_written
        if written == self._mon_cursor:
            return
        self._last_frames_at = now
        _, x = feed.ring.peek(self._mon_cursor, written)
        self._mon_cursor = written
        if x.size == 0:
            return
        energy = float(np.dot(x, x)) / x.size
        self.level_dbfs = 10.0 * math.log10(energy) if energy > 0 else -math.inf
        self._silent_samples = self._silent_samples + x.size if self._is_silent() else 0
        limit = self.lv.clip_level * min(1.0, float(self.gain))
        self.clipped_fraction = int(np.count_nonzero(np.abs(x) >= limit)) / x.size
        clipped = self.clipped_fraction > self.lv.clip_fraction
        self._clipped_samples = self._clipped_samples + x.size if clipped else 0

    def _is_silent(self) -> bool:
        return self.level_dbfs is not None and self.level_dbfs <= self.lv.silence_dbfs

    def frames_total(self) -> int:
        feed = self._mon_feed
        return self._frames_before + (feed.ring.total_written if feed is not None else 0)

    def content_state(self) -> tuple[SourceState, str] | None:
        """Silent/clipping verdict on the audio itself (None when it looks fine)."""
        rate = self._mon_feed.rate if self._mon_feed is not None else TARGET_RATE
        if self._clipped_samples >= self.lv.clipping_seconds * rate:
            return SourceState.CLIPPING, (
                f"clipping for {self._clipped_samples / rate:.1f} s: "
                f"{100 * self.clipped_fraction:.1f}% of samples at full scale "
                f"(limit {100 * self.lv.clip_fraction:g}%)"
            )
        if self._silent_samples >= self.lv.silence_seconds * rate:
            level = "exact zeros" if self.level_dbfs == -math.inf else f"{self.level_dbfs:.1f} dBFS"
            return SourceState.SILENT, (
                f"digital silence ({level}) for {self._silent_samples / rate:.1f} s "
                f"(threshold {self.lv.silence_dbfs:g} dBFS)"
            )
        return None

    def publish(self, state: SourceState, reason: str, now: float) -> None:
        """Store a new immutable snapshot (readers get it with one attribute read)."""
        if state is not self._state:
            unhealthy = state in ALARM_STATES
            level = logging.WARNING if unhealthy else logging.INFO
            log.log(level, "source %s: %s -> %s (%s)", self.name, self._state.value,
                    state.value, reason)  # fmt: skip
            self._state, self._since = state, time.time()
        feed = self._mon_feed
        self._health = SourceHealth(
            name=self.name,
            kind=self.kind,
            state=state,
            reason=reason,
            since=self._since,
            frames_total=self.frames_total(),
            samplerate=feed.rate if feed is not None else None,
            level_dbfs=self.level_dbfs,
            clipped_fraction=self.clipped_fraction,
            input_overflows=self.input_overflows,
            overflow_samples=self.overflow_samples(),
            discontinuities=self._discontinuities,
            reopen_count=self.reopen_count,
            last_frame_age_s=None if self._last_frames_at is None else now - self._last_frames_at,
            device=self.device_label,
        )

    def overflow_samples(self) -> int:
        """Overwritten, never-read samples: finished feeds, the one being read, the newest."""
        cons, newest = self._cons_feed, self.feed
        total = self._overflow_done + (cons.ring.overflow_samples if cons is not None else 0)
        if newest is not None and newest is not cons:
            total += newest.ring.overflow_samples
        return total

    # ------------------------------------------------------------------ consumer
    def read_new(self) -> tuple[int, np.ndarray]:
        """Drain new native audio, resample to 16 kHz, clip to [-1, 1], remember as history."""
        with self.consumer_lock:
            start = self._clock
            ended = self.transport is SourceState.ENDED  # before reading: the last write is in
            parts: list[np.ndarray] = []
            while True:
                current = self.feed
                if self._cons_feed is None:
                    if current is None:
                        break
                    self._switch_to(current)
                cf = self._cons_feed
                assert cf is not None
                before = cf.ring.read_position
                pos, x = cf.ring.read_from()
                if pos != before:
                    self._discontinuities += 1
                if x.size:
                    parts.append(self._resample(x, last=False))
                if current is not cf and cf.ring.read_available() == 0:
                    # The old stream is closed: flush its resampler, continue on the new feed.
                    parts.append(self._resample(np.zeros(0, np.float32), last=True))
                    self._overflow_done += cf.ring.overflow_samples
                    self._discontinuities += 1
                    self._cons_feed = None
                    if current is None:
                        break
                    continue
                break
            if ended and self._cons_feed is not None and not self._flushed:
                parts.append(self._resample(np.zeros(0, np.float32), last=True))
                self._flushed = True  # the file's last samples out of the resampler
            y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            np.clip(y, -1.0, 1.0, out=y)
            self.history.write(y)
            self._clock += y.size
            return start, y

    def _switch_to(self, feed: _Feed) -> None:
        self._cons_feed = feed
        if feed.rate == TARGET_RATE:
            self._resampler = None
        else:
            self._resampler = soxr.ResampleStream(
                feed.rate, TARGET_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )

    def _resample(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        return self._resampler.resample_chunk(np.ascontiguousarray(x), last=last)

    def history_from(self, seconds: float) -> tuple[int, np.ndarray]:
        return self.history.latest_from(int(round(seconds * TARGET_RATE)))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop producing (overridden)."""


class _DeviceSource(_Source):
    kind = "device"

    def __init__(self, spec: DeviceSourceSpec, lv: LivenessSpec, history_s: float) -> None:
        super().__init__(spec, lv, history_s)
        self.channel = spec.channel


class _FileSource(_Source):
    """Reads blocks with soundfile in its own thread: paced, or as fast as the consumer drains."""

    kind = "file"

    def __init__(
        self, spec: FileSourceSpec, lv: LivenessSpec, history_s: float, buffer_s: float
    ) -> None:
        super().__init__(spec, lv, history_s)
        self.fspec = spec
        self.buffer_s = buffer_s
        self.device_label = str(spec.path)
        self.nonfinite_samples = 0  # NaN/inf samples in the file, replaced by 0 / +-1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"file-{self.name}", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 0.5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _fail(self, reason: str) -> None:
        self.transport, self.transport_reason = SourceState.ERROR, reason
        log.error("source %s: %s", self.name, reason)

    def _run(self) -> None:
        path = Path(self.fspec.path)
        try:
            info = audio_info(path)  # AudioError naming the file: missing, corrupt, empty
            ch = self.fspec.channel
            if ch is not None and ch >= info.channels:
                raise AudioError(
                    f"{path}: has {info.channels} channel(s); source {self.name!r} wants "
                    f"channel {ch}"
                )
            with sf.SoundFile(str(path)) as f:
                self._play(f)
        except AudioError as exc:
            self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - any reader failure makes the source unhealthy
            self._fail(f"{path}: cannot read audio (corrupt or truncated?): {exc}")

    def _play(self, f: sf.SoundFile) -> None:
        rate = int(f.samplerate)
        feed = _Feed(rate, max(self.buffer_s, 2 * self.fspec.block_s))
        block = min(max(1, int(round(self.fspec.block_s * rate))), feed.ring.capacity)
        self.feed = feed
        self.transport, self.transport_reason = SourceState.OK, "playing"
        t0 = time.monotonic()
        emitted = pass_frames = 0
        while not self._stop.is_set():
            data = f.read(block, dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                if self.fspec.loop and pass_frames > 0:
                    f.seek(0)
                    pass_frames = 0
                    continue
                self.transport, self.transport_reason = SourceState.ENDED, "end of file"
                return
            col = data[:, self.fspec.channel] if self.fspec.channel is not None else None
            if col is None:
                col = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
            if not np.isfinite(col).all():
                self.nonfinite_samples += int(np.count_nonzero(~np.isfinite(col)))
                col = np.nan_to_num(col, nan=0.0, posinf=1.0, neginf=-1.0)
            if self.fspec.realtime:
                due = t0 + (emitted + col.size) / rate
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
            else:  # back-pressure: never overwrite unread audio of a replay
                while feed.ring.free_space() < col.size:
                    if self._stop.wait(0.005):
                        return
            feed.ring.write(col, self.gain)
            emitted += col.size
            pass_frames += col.size


# ====================================================================== device streams
class _StreamRun:
    """One open PortAudio stream and the rings its callback fills (one per tap)."""

    def __init__(self, taps: Sequence[tuple[RingBuffer, int, np.float32]]) -> None:
        self.taps = tuple(taps)
        self.finished = False
        self.input_overflows = 0
        self.stream: Any = None

    def callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio thread: copy only. No locks, no logging, no audio-sized allocation."""
        if status.input_overflow:
            self.input_overflows += 1
        for ring, channel, gain in self.taps:
            ring.write(indata[:, channel], gain)

    def on_finished(self) -> None:
        self.finished = True


_OPEN_RUNS: set[_StreamRun] = set()  # every stream this process opened and has not closed


class _DeviceGroup:
    """Sources that share one input device (one stream, one channel each)."""

    def __init__(self, sources: list[_DeviceSource], spec: DeviceSourceSpec, buffer_s: float):
        self.sources = sources
        self.spec = spec
        self.buffer_s = buffer_s
        self.lv = sources[0].lv
        self.run: _StreamRun | None = None
        self.attempts = 0
        self.next_attempt = 0.0
        self.ever_opened = False
        self.opened_at = 0.0
        self.problem: str | None = (
            None  # why the last stream died (kept in reasons until audio flows)
        )
        self._overflows_before = 0

    @property
    def label(self) -> str:
        return ", ".join(s.name for s in self.sources)

    def set_transport(self, state: SourceState, reason: str) -> None:
        for s in self.sources:
            s.transport, s.transport_reason = state, reason

    def backoff(self) -> float:
        lv = self.lv
        delay = lv.reopen_initial_seconds * 2.0 ** max(0, self.attempts - 1)
        return min(lv.reopen_max_seconds, delay)

    def try_open(self, devices: list[devs.InputDevice], cards: Any, now: float) -> None:
        """Resolve and open the device; on failure schedule the next attempt (backoff)."""
        self.attempts += 1
        try:
            dev = devs.resolve_device(self.spec.device, devices, cards)
            need = max(s.channel for s in self.sources) + 1
            if dev.channels < need:
                raise devs.DeviceNotFoundError(
                    f"device {dev.label} has {dev.channels} input channel(s); sources "
                    f"{self.label} need channel {need - 1}"
                )
        except devs.DeviceNotFoundError as exc:
            self._retry_later(SourceState.MISSING, str(exc), now)
            return
        rate = int(self.spec.samplerate or round(dev.default_samplerate) or TARGET_RATE)
        feeds = [_Feed(rate, self.buffer_s) for _ in self.sources]
        run = _StreamRun(
            [(f.ring, s.channel, s.gain) for f, s in zip(feeds, self.sources, strict=True)]
        )
        sd = devs.portaudio()
        try:
            with devs.PA_LOCK:
                run.stream = sd.InputStream(
                    device=dev.index,
                    samplerate=rate,
                    channels=need,
                    dtype="float32",
                    blocksize=self.spec.blocksize,
                    latency=self.spec.latency,
                    callback=run.callback,
                    finished_callback=run.on_finished,
                )
                _OPEN_RUNS.add(run)
                run.stream.start()
        except Exception as exc:  # noqa: BLE001 - PortAudioError, ValueError from sounddevice
            self._close_run(run)
            self._retry_later(SourceState.REOPENING, f"cannot open {dev.label}: {exc}", now)
            return
        self.run = run
        self.opened_at = now
        if self.ever_opened:
            for s in self.sources:
                s.reopen_count += 1
        self.ever_opened = True
        for s, feed in zip(self.sources, feeds, strict=True):
            s.device_label = f"{dev.label}, channel {s.channel}, {rate} Hz"
            s._last_frames_at = None
            s.feed = feed
        after = f" (after: {self.problem})" if self.problem else ""
        self.set_transport(SourceState.STARTING, f"opened {dev.label} at {rate} Hz{after}")
        log.info("sources %s: opened %s at %d Hz", self.label, dev.label, rate)

    def _retry_later(self, state: SourceState, reason: str, now: float) -> None:
        delay = self.backoff()
        self.next_attempt = now + delay
        self.problem = reason
        self.set_transport(state, f"{reason}; retry {self.attempts + 1} in {delay:.1f} s")

    def check(self, now: float) -> None:
        """Stall detection for an open stream; a stalled stream is aborted and reopened."""
        run = self.run
        if run is None:
            return
        for s in self.sources:
            s.input_overflows = self._overflows_before + run.input_overflows
        if run.finished or not _stream_active(run):
            why = "the stream stopped by itself (device unplugged or sound server gone)"
        else:
            last = max((s._last_frames_at or 0.0) for s in self.sources)
            if last and now - last < self.lv.stall_seconds:
                if all(s.transport is SourceState.STARTING for s in self.sources):
                    self.attempts, self.problem = 0, None  # frames flow: reset the backoff
                    self.set_transport(SourceState.OK, "audio flowing")
                return
            silent_for = now - (last or self.opened_at)
            if silent_for < self.lv.stall_seconds:
                return
            why = f"no audio frames for {silent_for:.1f} s"
        self.close()
        delay = self.backoff() if self.attempts > 0 else 0.0  # a first stall retries at once
        self.next_attempt = now + delay
        self.problem = f"stalled: {why}"
        log.warning("sources %s: %s; reopening in %.1f s", self.label, self.problem, delay)
        self.set_transport(SourceState.STALLED, f"{self.problem}; reopening in {delay:.1f} s")

    def close(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            self._overflows_before += run.input_overflows
            self._close_run(run)

    @staticmethod
    def _close_run(run: _StreamRun) -> None:
        """abort() + close(): stop() can hang forever on a stream that delivers no data."""
        with devs.PA_LOCK:
            try:
                if run.stream is not None:
                    run.stream.abort(ignore_errors=True)
                    run.stream.close(ignore_errors=True)
            except Exception as exc:  # noqa: BLE001 - closing must never take the daemon down
                log.warning("closing a stream failed: %s", exc)
            finally:
                _OPEN_RUNS.discard(run)


def _stream_active(run: _StreamRun) -> bool:
    try:
        return bool(run.stream.active)
    except Exception:  # noqa: BLE001 - a stream whose device vanished may raise here
        return False


# ====================================================================== manager
class CaptureManager:
    """Owns every source, runs the supervisor, and serves 16 kHz audio to the consumer.

    Start once, stop once. Device sources with the same ``device``/``samplerate``/``blocksize``/
    ``latency`` share one stream. PortAudio is re-initialised (to see hot-plugged devices) only
    while no stream of this process is open, or when ``/proc/asound/cards`` changes while a
    device is missing; so keep all device sources in one manager.

    Thread use: :meth:`read_new` / :meth:`history` from the consumer (one thread per source),
    :meth:`health` from any thread, :meth:`start` / :meth:`stop` from the owner.
    """

    def __init__(
        self,
        specs: Iterable[SourceSpec],
        liveness: LivenessSpec | None = None,
        buffer_s: float = 10.0,
        history_s: float = 30.0,
        proc_asound: Path = devs.PROC_ASOUND,
        sys_sound: Path = devs.SYS_SOUND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        specs = list(specs)
        validate_specs(specs)
        self.liveness = liveness or LivenessSpec()
        _validate_liveness(self.liveness, "capture")
        self.buffer_s = buffer_s
        self._proc_asound, self._sys_sound = proc_asound, sys_sound
        self._clock = clock
        self._sources: dict[str, _Source] = {}
        self._files: list[_FileSource] = []
        by_device: dict[tuple[Any, ...], list[_DeviceSource]] = {}
        for spec in specs:
            lv = spec.liveness or self.liveness
            if isinstance(spec, FileSourceSpec):
                src: _Source = _FileSource(spec, lv, history_s, buffer_s)
                self._files.append(src)  # type: ignore[arg-type]
            else:
                src = _DeviceSource(spec, lv, history_s)
                key = (spec.device, spec.samplerate, spec.blocksize, spec.latency)
                by_device.setdefault(key, []).append(src)  # type: ignore[arg-type]
            self._sources[spec.name] = src
        self._groups = [
            _DeviceGroup(srcs, srcs[0].spec, buffer_s)  # type: ignore[arg-type]
            for srcs in by_device.values()
        ]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._card_sig: str | None = devs.card_signature(proc_asound)
        self.rescans = 0
        self._started = False

    # ------------------------------------------------------------------ public API
    @property
    def source_names(self) -> list[str]:
        return list(self._sources)

    @property
    def samplerate(self) -> int:
        return TARGET_RATE

    @property
    def supervising(self) -> bool:
        """True while the supervisor thread (liveness checks, reopen attempts) is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Open what can be opened now (missing devices are not fatal) and start supervising."""
        if self._started:
            return
        self._started = True
        for f in self._files:
            f.start()
        now = self._clock()
        if self._groups:
            self._open_due(self._groups, now)
        self._publish_all(now)
        self._thread = threading.Thread(target=self._supervise, name="capture-supervisor",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop everything within about ``timeout`` seconds, even with a stalled stream."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) * 0.5)
        for f in self._files:
            f.close(max(0.0, min(0.2, deadline - time.monotonic())))
        if devs.PA_LOCK.acquire(timeout=max(0.05, deadline - time.monotonic())):
            try:
                for g in self._groups:
                    g.close()
            finally:
                devs.PA_LOCK.release()
        else:
            log.warning("capture stop: PortAudio busy; leaving streams to process exit")
        now = self._clock()
        for s in self._sources.values():
            s.publish(SourceState.STOPPED, "capture stopped", now)

    def __enter__(self) -> CaptureManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def read_new(self, source: str) -> tuple[int, np.ndarray]:
        """New audio of ``source`` since the last call: ``(start_sample, float32 16 kHz mono)``."""
        return self._get(source).read_new()

    def history(self, source: str, seconds: float) -> tuple[int, np.ndarray]:
        """The last ``seconds`` of 16 kHz audio already returned by :meth:`read_new` (pre-roll)."""
        return self._get(source).history_from(seconds)

    def health(self) -> dict[str, SourceHealth]:
        """Snapshot of every source (each value is immutable)."""
        return {name: self.source_health(name) for name in self._sources}

    def source_health(self, source: str) -> SourceHealth:
        src = self._get(source)
        h = src._health
        if h is None:
            src.publish(src.transport, src.transport_reason, self._clock())
            h = src._health
        assert h is not None
        return h

    def _get(self, source: str) -> _Source:
        try:
            return self._sources[source]
        except KeyError:
            raise ConfigError(
                f"unknown capture source {source!r}; sources: {', '.join(self._sources) or 'none'}"
            ) from None

    # ------------------------------------------------------------------ supervisor
    def _supervise(self) -> None:
        while not self._stop.wait(self.liveness.check_interval_seconds):
            try:
                self._tick(self._clock())
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one bug
                log.exception("capture supervisor check failed")

    def _tick(self, now: float) -> None:
        for s in self._sources.values():
            s.observe(now)
        for g in self._groups:
            g.check(now)
        self._publish_all(now)  # a stall is visible before the reopen attempt
        if any(g.run is None for g in self._groups) and self._cards_changed():
            self._rescan_all(now)
        else:
            due = [g for g in self._groups if g.run is None and now >= g.next_attempt]
            if due:
                self._open_due(due, now)
        self._publish_all(now)

    def _open_due(self, due: list[_DeviceGroup], now: float) -> None:
        """Re-scan devices (when safe) and try to open each due group."""
        with devs.PA_LOCK:
            if self._stop.is_set():
                return
            if not _OPEN_RUNS:
                self._refresh(now)
            try:
                devices = devs.list_input_devices(self._proc_asound, self._sys_sound)
            except Exception as exc:  # noqa: BLE001 - e.g. PortAudio missing: retry later
                for g in due:
                    g.attempts += 1
                    g._retry_later(SourceState.MISSING, f"cannot list devices: {exc}", now)
                return
            cards = devs.read_cards(self._proc_asound, self._sys_sound)
            for g in due:
                if self._stop.is_set():  # stop() gave up waiting for us: open nothing more
                    return
                g.try_open(devices, cards, now)

    def _refresh(self, now: float) -> None:
        self._card_sig = devs.card_signature(self._proc_asound)
        try:
            devs.refresh_portaudio()
            self.rescans += 1
        except Exception as exc:  # noqa: BLE001
            log.warning("re-initialising PortAudio failed: %s", exc)

    def _cards_changed(self) -> bool:
        return devs.card_signature(self._proc_asound) != self._card_sig

    def _rescan_all(self, now: float) -> None:
        """A card appeared or vanished while a source waits for its device: re-scan now.

        Re-initialising PortAudio closes every stream, so healthy sources of this manager are
        closed and reopened at once (a gap of a few tens of milliseconds, counted as a
        discontinuity); without it a re-plugged microphone would never be found again.
        """
        with devs.PA_LOCK:
            open_here = [g for g in self._groups if g.run is not None]
            if _OPEN_RUNS - {g.run for g in open_here}:
                self._card_sig = devs.card_signature(self._proc_asound)
                log.info("sound cards changed, but another capture owns open streams: no re-scan")
                return
            log.info("sound cards changed: re-scanning devices (reopening %d stream(s))",
                     len(open_here))  # fmt: skip
            for g in open_here:
                g.close()
                g.set_transport(SourceState.REOPENING, "re-scanning devices: sound cards changed")
            for g in self._groups:
                g.next_attempt = now
            self._open_due(list(self._groups), now)

    def _publish_all(self, now: float) -> None:
        for s in self._sources.values():
            state, reason = s.transport, s.transport_reason
            if state is SourceState.ENDED and not s._flushed:
                state, reason = SourceState.OK, "end of file reached; audio left to read"
            if state is SourceState.OK:
                verdict = s.content_state()
                if verdict is not None:
                    state, reason = verdict
            s.publish(state, reason, now)


__all__ = [
    "ALARM_STATES",
    "TARGET_RATE",
    "CaptureManager",
    "DeviceSourceSpec",
    "FileSourceSpec",
    "LivenessSpec",
    "SourceHealth",
    "SourceSpec",
    "SourceState",
    "validate_specs",
]
