"""A WAV/FLAC file played as a capture source (tests, demos, replays)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import soundfile as sf

from monitor.audio.capture.health import SourceState
from monitor.audio.capture.source import Feed, Source
from monitor.audio.capture.specs import FileSourceSpec, LivenessSpec
from monitor.audio.io import audio_info
from monitor.errors import AudioError

log = logging.getLogger(__package__)  # one logger name for the whole capture package


class FileReader(Source):
    """Reads blocks with soundfile in its own thread: paced, or as fast as the consumer drains."""

    kind = "file"

    def __init__(
        self, spec: FileSourceSpec, lv: LivenessSpec, history_s: float, buffer_s: float
    ) -> None:
        super().__init__(spec, lv, history_s)
        self.fspec = spec
        self.buffer_s = buffer_s
        self.device_label = str(spec.path)
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
        feed = Feed(rate, max(self.buffer_s, 2 * self.fspec.block_s))
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
            # NaN/inf go through as they are: liveness counts them and marks the source
            # unhealthy, the windower keeps the windows holding them from being scored
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
