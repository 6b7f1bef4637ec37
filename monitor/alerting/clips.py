"""Event clips: WAV with pre-roll and post-roll plus a JSON sidecar, and retention that frees disk.

Why this shape: the inference loop must never wait for a disk (an SD card can stall for seconds),
so recording only appends arrays in memory and a single writer thread behind a bounded queue does
the I/O; when the queue is full the clip is dropped and counted rather than blocking. Retention
runs after every write and on a timer: files older than ``max_age_s`` go, then the oldest go until
the clips fit ``max_total_bytes`` and the file system keeps ``min_free_bytes`` free ("disk filled
anyway" is the recurring bug of comparable daemons).

Power loss: a clip is written under hidden temporary names, each file fsynced, then renamed into
place with the folder fsynced after each rename, the sidecar last. So a file under its final name
is always whole (a rename alone can reach the disk before the data does), and a sidecar means its
WAV is there; the temporary leftovers of an interrupted write are deleted by the next scan.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.alerting.machine import AlertEvent
from monitor.errors import ConfigError

log = logging.getLogger(__name__)

SIDECAR_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ClipPolicy:
    """Where and how clips are kept. Defaults:

    - ``directory``: the clips folder (created); one ``<event_id>.wav`` + ``.json`` per event.
    - ``pre_roll_s`` 5: audio kept before the first window above the threshold.
    - ``post_roll_s`` 5: audio kept after the event's end.
    - ``max_clip_s`` 120: a longer event keeps its first 120 s (sidecar ``truncated: true``).
    - ``sample_rate`` 16000.
    - ``max_age_s`` 30 days, ``max_total_bytes`` 1 GB, ``min_free_bytes`` 100 MB on the file
      system: retention limits, oldest deleted first.
    - ``queue_size`` 8 clips waiting for the writer; more are dropped and counted.
    - ``retention_interval_s`` 900: retention also runs on this timer (ages pass without writes).

    Plain values: the rules on the configurable ones live in the config schema (``clips:`` in
    ``monitor/config/detection.py``) and ``monitor.daemon.wiring.clip_policy`` builds this from a
    validated config. Whether the folder can be created is only known at run time: the
    :class:`ClipWriter` checks it.
    """

    directory: Path
    pre_roll_s: float = 5.0
    post_roll_s: float = 5.0
    max_clip_s: float = 120.0
    sample_rate: int = 16000
    max_age_s: float = 30 * 86400.0
    max_total_bytes: int = 1_000_000_000
    min_free_bytes: int = 100_000_000
    queue_size: int = 8
    retention_interval_s: float = 900.0


def clip_name(event_id: str) -> str:
    """File name of an event's WAV (the sidecar has the same stem and ``.json``)."""
    return _SAFE.sub("_", event_id) + ".wav"


@dataclass
class ClipJob:
    """One finished clip waiting for the writer thread."""

    name: str
    audio: np.ndarray
    sidecar: dict[str, Any]


@dataclass
class _ClipFile:
    stem: str
    mtime: float
    size: int
    paths: list[Path] = field(default_factory=list)


def _fsync_file(path: Path) -> None:
    """Flush a file's data, or a folder's names, to the disk (``os.fsync`` of an fd of it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    from monitor.audio.io import write_wav  # the one place that knows our audio conventions

    write_wav(path, audio, sample_rate)


class ClipWriter:
    """The single writer thread shared by all sources: bounded queue, atomic writes, retention."""

    def __init__(self, policy: ClipPolicy) -> None:
        self.policy = policy
        self.directory = Path(policy.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"clips directory {self.directory} cannot be created: {exc}") from exc
        self._queue: queue.Queue[ClipJob | None] = queue.Queue(maxsize=policy.queue_size)
        self.written_total = 0
        self.dropped_total = 0
        self.write_errors_total = 0
        self.skipped_no_space_total = 0
        self.deleted_total = 0
        self.deleted_bytes_total = 0
        self.disk_bytes = 0
        self._thread: threading.Thread | None = None
        self._last_retention = 0.0

    def start(self) -> ClipWriter:
        """Start the writer thread (idempotent); runs retention once at start-up."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sonitor-clips", daemon=True)
            self._thread.start()
        return self

    def submit(self, job: ClipJob) -> bool:
        """Queue a clip without blocking; False (and counted) if the queue is full."""
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self.dropped_total += 1
            log.warning("clip %s dropped: writer queue full (%d)", job.name, self.policy.queue_size)
            return False

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("clip writer did not drain within %.1f s", timeout)
        self._thread.join(timeout)
        self._thread = None

    def stats(self) -> dict[str, int]:
        """Counters and gauges for metrics."""
        return {
            "queued": self._queue.qsize(),
            "written_total": self.written_total,
            "dropped_total": self.dropped_total,
            "write_errors_total": self.write_errors_total,
            "skipped_no_space_total": self.skipped_no_space_total,
            "deleted_total": self.deleted_total,
            "deleted_bytes_total": self.deleted_bytes_total,
            "disk_bytes": self.disk_bytes,
        }

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        self._retention_safe()
        while True:
            wait = max(0.1, self.policy.retention_interval_s - (time.time() - self._last_retention))
            try:
                job = self._queue.get(timeout=wait)
            except queue.Empty:
                self._retention_safe()
                continue
            if job is None:
                return
            try:
                self.write(job)
            except Exception:  # noqa: BLE001 - a bad disk must not kill the writer thread
                self.write_errors_total += 1
                log.exception("writing clip %s failed", job.name)

    def _retention_safe(self) -> None:
        try:
            self.enforce_retention()
        except OSError:
            log.exception("clip retention in %s failed", self.directory)

    def write(self, job: ClipJob) -> Path | None:
        """Write one clip atomically (temporary names, then rename); None if skipped for space."""
        audio = np.nan_to_num(np.asarray(job.audio, dtype=np.float32).reshape(-1))
        side_text = json.dumps(job.sidecar, indent=2, allow_nan=False) + "\n"
        estimate = 44 + 2 * audio.size + 256 + len(side_text)  # PCM_16 WAV + header slack
        self.enforce_retention(extra_bytes=estimate)
        if not self._fits(estimate):
            self.skipped_no_space_total += 1
            log.error(
                "clip %s not written: no room in %s (budget %d bytes, min free %d bytes)",
                job.name,
                self.directory,
                self.policy.max_total_bytes,
                self.policy.min_free_bytes,
            )
            return None
        wav = self.directory / job.name
        side = wav.with_suffix(".json")
        tmp_wav = self.directory / f".{wav.stem}.partial.wav"
        tmp_side = self.directory / f".{wav.stem}.partial.json"
        with open(tmp_side, "w", encoding="utf-8") as f:
            f.write(side_text)
            f.flush()
            os.fsync(f.fileno())
        if audio.size:
            _write_wav(tmp_wav, audio, self.policy.sample_rate)
            _fsync_file(tmp_wav)
            os.replace(tmp_wav, wav)
            _fsync_file(self.directory)  # the WAV's name is on disk before the sidecar's
        os.replace(tmp_side, side)  # the sidecar last: its presence means the clip is complete
        _fsync_file(self.directory)
        self.written_total += 1
        self.disk_bytes += (wav.stat().st_size if audio.size else 0) + side.stat().st_size
        log.info("clip written: %s (%.1f s)", wav, audio.size / self.policy.sample_rate)
        return wav

    def _fits(self, extra: int) -> bool:
        if self.disk_bytes + extra > self.policy.max_total_bytes:
            return False
        free = shutil.disk_usage(self.directory).free
        return free - extra >= self.policy.min_free_bytes

    def _scan(self) -> list[_ClipFile]:
        clips: dict[str, _ClipFile] = {}
        for path in self.directory.iterdir():
            if path.name.startswith(".") and ".partial." in path.name and path.is_file():
                # a write interrupted by a crash (write_wav's own temporary file included)
                log.info("deleting %s, left by an interrupted clip write", path.name)
                path.unlink(missing_ok=True)
                continue
            if path.suffix not in (".wav", ".json") or not path.is_file():
                continue
            st = path.stat()
            clip = clips.setdefault(path.stem, _ClipFile(path.stem, st.st_mtime, 0))
            clip.mtime = min(clip.mtime, st.st_mtime)
            clip.size += st.st_size
            clip.paths.append(path)
        return sorted(clips.values(), key=lambda c: (c.mtime, c.stem))

    def enforce_retention(self, extra_bytes: int = 0, now: float | None = None) -> int:
        """Delete clips by age, then oldest first until the budget holds; return clips deleted.

        ``extra_bytes`` reserves room for a clip about to be written.
        """
        now = time.time() if now is None else now
        self._last_retention = time.time()
        clips = self._scan()
        total = sum(c.size for c in clips)
        free = shutil.disk_usage(self.directory).free
        deleted = 0
        for clip in list(clips):
            too_old = now - clip.mtime > self.policy.max_age_s
            over = total + extra_bytes > self.policy.max_total_bytes
            low = free - extra_bytes < self.policy.min_free_bytes
            if not (too_old or over or low):
                break  # oldest first: every later clip is newer, and the budget holds
            for path in clip.paths:
                path.unlink(missing_ok=True)
            total -= clip.size
            free += clip.size
            deleted += 1
            self.deleted_total += 1
            self.deleted_bytes_total += clip.size
            log.info("clip %s deleted (%s)", clip.stem, "age" if too_old else "disk budget")
        self.disk_bytes = total
        return deleted


class ClipRecorder:
    """Collects one source's audio for its current event and hands finished clips to the writer.

    Contract with the daemon: call :meth:`on_event` for every alert event of this source; at a
    ``start`` the pre-roll is read once with ``latest(n)`` (the ring buffer's last n samples).
    From then on call :meth:`feed` with each block of this source's audio that is NEWER than what
    ``latest`` returned (e.g. every hop the inference loop takes after handling the events).
    Only in-memory appends happen here; the writing is the writer thread's.
    """

    def __init__(
        self,
        source: str,
        policy: ClipPolicy,
        writer: ClipWriter,
        latest: Callable[[int], np.ndarray],
    ) -> None:
        self.source = source
        self.policy = policy
        self.writer = writer
        self.latest = latest
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._event: AlertEvent | None = None
        self._end: AlertEvent | None = None
        self._meta: dict[str, Any] = {}
        self._pre_samples = 0
        self._post_left = 0
        self._post_samples = 0
        self._truncated = False

    @property
    def recording(self) -> bool:
        return self._event is not None

    def on_event(
        self,
        event: AlertEvent,
        *,
        threshold: float | None = None,
        model_version: str | None = None,
    ) -> str | None:
        """React to a lifecycle event; return the clip's file name (for the event payload).

        Every message of a recorded event (start, update, end) gets the same name; capture
        alarms get no clip (None: there is no audio worth keeping).
        """
        if event.kind == "capture" or event.source != self.source:
            return None
        if event.type == "start":
            if self._event is not None:
                self._finish()  # a new event during the previous one's post-roll
            return self._begin(event, threshold, model_version)
        if self._event is None or event.event_id != self._event.event_id:
            return None
        name = clip_name(event.event_id)
        if event.type == "end":
            self._end = event
            self._post_left = int(round(self.policy.post_roll_s * self.policy.sample_rate))
            if self._post_left == 0:
                self._finish()
        return name

    def _begin(self, event: AlertEvent, threshold: float | None, version: str | None) -> str:
        sr = self.policy.sample_rate
        lead = max(0.0, event.time - event.start_time)
        n = int(round((self.policy.pre_roll_s + lead) * sr))
        pre = np.asarray(self.latest(n) if n > 0 else np.zeros(0), dtype=np.float32).reshape(-1)
        pre = pre[-n:] if n > 0 else pre[:0]
        self._event = event
        self._end = None
        self._meta = {"threshold": threshold, "model_version": version}
        self._chunks = []
        self._samples = 0
        self._truncated = False
        self._post_samples = 0
        self._append(pre)
        self._pre_samples = self._samples
        return clip_name(event.event_id)

    def _append(self, samples: np.ndarray) -> None:
        cap = int(self.policy.max_clip_s * self.policy.sample_rate)
        room = cap - self._samples
        if samples.size > room:
            samples = samples[: max(room, 0)]
            self._truncated = True
        if samples.size:
            self._chunks.append(np.array(samples, dtype=np.float32, copy=True))
            self._samples += samples.size

    def feed(self, samples: np.ndarray) -> None:
        """Append new audio of this source (cheap when no event is being recorded)."""
        if self._event is None:
            return
        block = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._end is not None:
            block = block[: self._post_left]
            self._post_left -= block.size
            before = self._samples
            self._append(block)
            self._post_samples += self._samples - before
            if self._post_left <= 0:
                self._finish()
        else:
            self._append(block)

    def flush(self) -> None:
        """Finish the clip now with what it has (daemon shutdown)."""
        if self._event is not None:
            self._finish()

    def _finish(self) -> None:
        event, end = self._event, self._end
        assert event is not None
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        sr = self.policy.sample_rate
        last = end or event
        clip_start = event.time - self._pre_samples / sr  # latest() ended at the raise time
        sidecar = {
            "v": SIDECAR_VERSION,
            "event_id": event.event_id,
            "source": self.source,
            "kind": event.kind,
            "wav": clip_name(event.event_id),
            "sample_rate": sr,
            "duration_s": audio.size / sr,
            "pre_roll_s": self._pre_samples / sr,
            "post_roll_s": self._post_samples / sr,
            "truncated": self._truncated,
            "start_time": event.start_time,
            "raised_time": event.time,
            "end_time": end.end_time if end else None,
            "clip_start_time": clip_start,
            "end_reason": end.reason if end else None,
            "severity": last.severity,
            "peak_score": last.peak_score,
            "threshold": self._meta.get("threshold"),
            "model_version": self._meta.get("model_version"),
            "scores": [[t, s] for t, s in (end.scores if end else event.scores)],
        }
        self.writer.submit(ClipJob(clip_name(event.event_id), audio, _finite(sidecar)))
        self._event = None
        self._end = None
        self._chunks = []
        self._samples = 0


def _finite(obj: Any) -> Any:
    """Replace NaN/inf by None so that the sidecar is strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
