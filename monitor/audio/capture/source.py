"""What every capture source does, whatever produces its audio.

A producer (a device stream's callback or a file-reader thread) publishes a `Feed`: a ring of
native-rate audio. The supervisor thread scans new audio for liveness (`Source.observe`,
`Source.content_state`) and publishes immutable `SourceHealth` snapshots; the consumer drains
the ring, resamples to 16 kHz and keeps a history for clip pre-roll (`Source.read_new`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import numpy as np
import soxr

from monitor.audio.capture.health import ALARM_STATES, SourceHealth, SourceState
from monitor.audio.capture.specs import LivenessSpec, SourceSpec
from monitor.audio.frontend import SAMPLE_RATE
from monitor.audio.io import RESAMPLE_QUALITY
from monitor.audio.ringbuffer import RingBuffer

log = logging.getLogger(__package__)  # one logger name for the whole capture package

TARGET_RATE = SAMPLE_RATE  # the model rate (ARCHITECTURE.md: float32 mono 16 kHz everywhere)
# A source stays NONFINITE for this much clean audio after its last NaN/inf sample: long enough
# for health outputs (checked every half second) and the capture alarm to see a short burst.
NONFINITE_HOLD_S = 10.0


class Feed:
    """Native-rate audio of one source from one open stream/file (a new one per reopen)."""

    def __init__(self, rate: int, capacity_s: float) -> None:
        self.rate = int(rate)
        self.ring = RingBuffer(max(1, int(round(capacity_s * self.rate))))


class Source:
    """State shared by every source kind: feed, liveness tracking, consumer-side resampling."""

    kind = "?"

    def __init__(self, spec: SourceSpec, liveness: LivenessSpec, history_s: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.lv = liveness
        self.gain = np.float32(10.0 ** (spec.gain_db / 20.0))
        self.feed: Feed | None = None  # published by the producer side
        self.device_label: str | None = None
        # transport state, set by the supervisor/producer; content state derived from audio
        self.transport = SourceState.STARTING
        self.transport_reason = "starting"
        self.reopen_count = 0
        self.input_overflows = 0
        # liveness tracking (supervisor thread only)
        self._mon_feed: Feed | None = None
        self._mon_cursor = 0
        self._frames_before = 0  # frames of earlier feeds
        self.last_frames_at: float | None = None
        self._silent_samples = 0
        self._clipped_samples = 0
        self.nonfinite_samples = 0  # NaN/inf samples seen
        self._clean_samples = 0  # finite samples since the last NaN/inf one
        self.level_dbfs: float | None = None
        self.clipped_fraction = 0.0
        # published snapshot
        self._state = SourceState.STARTING
        self._since = time.time()
        self.snapshot: SourceHealth | None = None
        # consumer side (read_new)
        self.consumer_lock = threading.Lock()
        self._cons_feed: Feed | None = None
        self._resampler: Any = None
        self._clock = 0
        self._discontinuities = 0
        self._bad_out: list[tuple[int, int]] = []  # 16 kHz spans to mark non-finite again
        self._in_pos = self._out_pos = 0  # samples into / out of the resampler of _cons_feed
        self.flushed = False
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
        self.last_frames_at = now
        _, x = feed.ring.peek(self._mon_cursor, written)
        self._mon_cursor = written
        if x.size == 0:
            return
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:  # counted, and left out of level and clipping
            self.nonfinite_samples += int(bad.size)
            self._clean_samples = x.size - 1 - int(bad[-1])
            x = np.delete(x, bad)
            if x.size == 0:
                return
        else:
            self._clean_samples += x.size
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
        if self.nonfinite_samples and self._clean_samples < NONFINITE_HOLD_S * rate:
            return SourceState.NONFINITE, (
                f"{self.device_label}: NaN/inf samples in the audio ({self.nonfinite_samples} "
                "so far); windows holding them are not scored"
            )
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
        self.snapshot = SourceHealth(
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
            nonfinite_samples=self.nonfinite_samples,
            discontinuities=self._discontinuities,
            reopen_count=self.reopen_count,
            last_frame_age_s=None if self.last_frames_at is None else now - self.last_frames_at,
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
        """Drain new native audio, resample to 16 kHz, clip to [-1, 1], remember as history.

        NaN/inf samples stay non-finite (as NaN), so the windower can keep them from being scored.
        """
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
            if ended and self._cons_feed is not None and not self.flushed:
                parts.append(self._resample(np.zeros(0, np.float32), last=True))
                self.flushed = True  # the file's last samples out of the resampler
            y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            bad = ~np.isfinite(y)
            np.clip(y, -1.0, 1.0, out=y)
            y[bad] = np.nan  # clipping would turn inf into a plausible full-scale sample
            self.history.write(y)
            self._clock += y.size
            return start, y

    def _switch_to(self, feed: Feed) -> None:
        self._cons_feed = feed
        self._bad_out.clear()
        self._in_pos = self._out_pos = 0
        if feed.rate == TARGET_RATE:
            self._resampler = None
        else:
            self._resampler = soxr.ResampleStream(
                feed.rate, TARGET_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )

    def _resample(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        # NaN/inf would poison the filter state: resample zeros there, then mark the output
        # span they map to (widened by the filter's reach) as NaN again.
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            x = np.where(np.isfinite(x), x, np.float32(0.0))
            ratio = TARGET_RATE / self._cons_feed.rate if self._cons_feed else 1.0
            reach = int(math.ceil(128 * max(1.0, ratio)))
            cut = np.flatnonzero(np.diff(bad) > 2 * reach / ratio)  # separate bursts
            for first, last_bad in zip(bad[np.r_[0, cut + 1]], bad[np.r_[cut, -1]], strict=True):
                lo, hi = self._in_pos + int(first), self._in_pos + int(last_bad) + 1
                self._bad_out.append((int(lo * ratio) - reach, math.ceil(hi * ratio) + reach))
        self._in_pos += x.size
        y = self._resampler.resample_chunk(np.ascontiguousarray(x), last=last)
        start, end = self._out_pos, self._out_pos + y.size
        for lo, hi in self._bad_out:
            y[max(lo, start) - start : max(min(hi, end), start) - start] = np.nan
        self._bad_out = [(lo, hi) for lo, hi in self._bad_out if hi > end]
        self._out_pos = end
        return y

    def history_from(self, seconds: float) -> tuple[int, np.ndarray]:
        return self.history.latest_from(int(round(seconds * TARGET_RATE)))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop producing (overridden)."""
