"""`CaptureManager`: owns every source, supervises liveness and serves 16 kHz audio."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from monitor.audio import devices as devs
from monitor.audio.capture.device_source import OPEN_RUNS, DeviceChannel, DeviceGroup
from monitor.audio.capture.file_source import FileReader
from monitor.audio.capture.health import SourceHealth, SourceState
from monitor.audio.capture.source import TARGET_RATE, Source
from monitor.audio.capture.specs import (
    DeviceSourceSpec,
    FileSourceSpec,
    LivenessSpec,
    SourceSpec,
)
from monitor.errors import ConfigError

log = logging.getLogger(__package__)  # one logger name for the whole capture package


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
        self.liveness = liveness or LivenessSpec()
        self.buffer_s = buffer_s
        self._proc_asound, self._sys_sound = proc_asound, sys_sound
        self._clock = clock
        self._sources: dict[str, Source] = {}
        self._files: list[FileReader] = []
        by_device: dict[tuple[Any, ...], list[DeviceChannel]] = {}
        by_spec: dict[tuple[Any, ...], DeviceSourceSpec] = {}
        for spec in specs:
            lv = spec.liveness or self.liveness
            if isinstance(spec, FileSourceSpec):
                reader = FileReader(spec, lv, history_s, buffer_s)
                self._files.append(reader)
                self._sources[spec.name] = reader
            else:
                channel = DeviceChannel(spec, lv, history_s)
                key = (spec.device, spec.samplerate, spec.blocksize, spec.latency)
                by_device.setdefault(key, []).append(channel)
                by_spec.setdefault(key, spec)
                self._sources[spec.name] = channel
        self._groups = [
            DeviceGroup(srcs, by_spec[key], buffer_s) for key, srcs in by_device.items()
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
        h = src.snapshot
        if h is None:
            src.publish(src.transport, src.transport_reason, self._clock())
            h = src.snapshot
        assert h is not None
        return h

    def _get(self, source: str) -> Source:
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

    def _open_due(self, due: list[DeviceGroup], now: float) -> None:
        """Re-scan devices (when safe) and try to open each due group."""
        with devs.PA_LOCK:
            if self._stop.is_set():
                return
            if not OPEN_RUNS:
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
            if OPEN_RUNS - {g.run for g in open_here}:
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
            if state is SourceState.ENDED and not s.flushed:
                state, reason = SourceState.OK, "end of file reached; audio left to read"
            if state is SourceState.OK:
                verdict = s.content_state()
                if verdict is not None:
                    state, reason = verdict
            s.publish(state, reason, now)
