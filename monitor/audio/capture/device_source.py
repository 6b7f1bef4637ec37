"""Sound-card sources: one PortAudio stream per device, one channel per source, reopen on stall.

Several sources may share one multichannel device: one stream, one ring buffer per channel. A
stream that stalls or vanishes is aborted (``stop()`` hangs on a stalled stream) and reopened
with exponential backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from monitor.audio import devices as devs
from monitor.audio.capture.health import SourceState
from monitor.audio.capture.source import TARGET_RATE, Feed, Source
from monitor.audio.capture.specs import DeviceSourceSpec, LivenessSpec
from monitor.audio.ringbuffer import RingBuffer

log = logging.getLogger(__package__)  # one logger name for the whole capture package


class DeviceChannel(Source):
    """One source: one channel of a device stream that its `DeviceGroup` opens and reopens."""

    kind = "device"

    def __init__(self, spec: DeviceSourceSpec, lv: LivenessSpec, history_s: float) -> None:
        super().__init__(spec, lv, history_s)
        self.channel = spec.channel


class StreamRun:
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


OPEN_RUNS: set[StreamRun] = set()  # every stream this process opened and has not closed


class DeviceGroup:
    """Sources that share one input device (one stream, one channel each)."""

    def __init__(self, sources: list[DeviceChannel], spec: DeviceSourceSpec, buffer_s: float):
        self.sources = sources
        self.spec = spec
        self.buffer_s = buffer_s
        self.lv = sources[0].lv
        self.run: StreamRun | None = None
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
        feeds = [Feed(rate, self.buffer_s) for _ in self.sources]
        run = StreamRun(
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
                OPEN_RUNS.add(run)
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
            s.last_frames_at = None
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
        if run.finished or not stream_active(run):
            why = "the stream stopped by itself (device unplugged or sound server gone)"
        else:
            last = max((s.last_frames_at or 0.0) for s in self.sources)
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
    def _close_run(run: StreamRun) -> None:
        """abort() + close(): stop() can hang forever on a stream that delivers no data."""
        with devs.PA_LOCK:
            try:
                if run.stream is not None:
                    run.stream.abort(ignore_errors=True)
                    run.stream.close(ignore_errors=True)
            except Exception as exc:  # noqa: BLE001 - closing must never take the daemon down
                log.warning("closing a stream failed: %s", exc)
            finally:
                OPEN_RUNS.discard(run)


def stream_active(run: StreamRun) -> bool:
    try:
        return bool(run.stream.active)
    except Exception:  # noqa: BLE001 - a stream whose device vanished may raise here
        return False
