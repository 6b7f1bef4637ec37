"""Per-source analysis windows over the 16 kHz stream, and the bounded queue to inference.

Why this shape:
- The front-end (STFT + mel) runs once per hop of *new* audio through a streaming frame
  computer (`runtime.FrameStream`); a window is then a slice of already computed frames.
  With a 10 s window and a 1 s hop that is 10x less front-end work than framing every window.
- Every window carries the source's sample clock (`start_sample`, `end_sample`), so scores,
  events and clips are timestamped by audio position, not by when inference got round to them.
- Inference may fall behind (a slow PC, too many sources). The queue between windowing and
  inference is bounded: when it is full the *oldest* window is dropped and counted per source,
  so memory never grows and the newest audio is always the next to be scored.
- A gap in the sample clock (the capture ring buffer overran) restarts the window grid at the
  new position instead of splicing audio that was never contiguous.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

CLIP_LEVEL = 0.999  # |x| at or above this counts as clipped (full scale after float conversion)
SILENCE_DBFS = -200.0  # level reported for digital silence (log of 0)


class FrameSource(Protocol):
    """What `runtime.FrameStream` provides: push audio, get the newly complete frames."""

    hop: int
    pad: int

    def push(self, samples: np.ndarray) -> np.ndarray: ...


@dataclass
class Window:
    """One analysis window of one source, ready for inference."""

    source: str
    start_sample: int  # sample clock of the source (16 kHz), first sample of the window
    end_sample: int  # one past the last sample
    data: np.ndarray  # mel frames [n_mels, F] ("frames") or waveform [N] ("wave")
    kind: str  # "frames" | "wave"
    ready_monotonic: float  # when its last needed sample was read from capture
    ready_wall: float  # the same instant, Unix time
    level_dbfs: float  # RMS level of the window's audio
    clipped_fraction: float  # fraction of samples at full scale
    finite: bool  # False when the audio held NaN/inf (replaced by 0 before the front-end)
    generation: int = 0  # windower generation (a reload may change the front-end)
    meta: dict = field(default_factory=dict)
    # RMS level (dBFS) in the model's band of the window's last second: a DC offset or a
    # sub-audio drift of a broken input reads loud in level_dbfs and silent here
    band_level_dbfs: float = 0.0


def _band_level(x: np.ndarray) -> float:
    from monitor.audio.inputcheck import band_level_dbfs  # it imports this module

    return band_level_dbfs(x)


def level_dbfs(x: np.ndarray) -> float:
    """RMS level in dBFS (full-scale sine = -3 dBFS); digital silence gives SILENCE_DBFS."""
    if x.size == 0:
        return SILENCE_DBFS
    ms = float(np.mean(np.square(x, dtype=np.float64)))
    return 10.0 * math.log10(ms) if ms > 1e-20 else SILENCE_DBFS


BAND_CHECK_SAMPLES = 16384  # ~1 s: long enough to keep a 1 Hz drift out of the band, cheap


class SourceWindower:
    """Cuts one source's stream into windows of `window_samples` every `hop_samples`.

    `frames_factory` builds a streaming front-end (e.g. ``lambda: FrameStream(embedder)``);
    without it windows carry the waveform (used when a separator must see the waveform first).
    Memory is bounded: the waveform history holds one window plus the front-end's lookahead, and
    the frame history one window of frames.
    """

    def __init__(
        self,
        source: str,
        window_samples: int,
        hop_samples: int,
        frames_factory: Callable[[], FrameSource] | None = None,
        generation: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if window_samples < 1 or hop_samples < 1:
            raise ValueError(f"window ({window_samples}) and hop ({hop_samples}) must be >= 1")
        if hop_samples > window_samples:
            raise ValueError(f"hop ({hop_samples}) must not exceed the window ({window_samples})")
        self.source = source
        self.window = int(window_samples)
        self.hop = int(hop_samples)
        self._factory = frames_factory
        self.generation = generation
        self._clock = clock
        self._wall = wall_clock
        self.kind = "wave" if frames_factory is None else "frames"
        self.gaps = 0  # clock jumps (capture overruns) that restarted the grid
        self.nonfinite_samples = 0
        self._skip_before: int | None = None
        self._reset(None)

    # ------------------------------------------------------------------------------ state
    def _reset(self, origin: int | None) -> None:
        self.origin = origin  # sample clock of the stream start (first window starts here)
        self.next_sample = origin  # next expected sample
        self.next_start = origin  # start of the next window to emit
        self._wave = np.zeros(0, dtype=np.float32)
        self._wave_start = origin or 0
        self._bad: deque[tuple[int, int]] = deque()  # (first, last) non-finite sample spans
        self._frames: np.ndarray | None = None
        self._frames_start = 0  # stream frame index of self._frames[:, 0]
        self._stream: FrameSource | None = None
        if self._factory is not None:
            self._stream = self._factory()
            if self.window % self._stream.hop or self.hop % self._stream.hop:
                raise ValueError(
                    f"window ({self.window}) and hop ({self.hop}) samples must be multiples of "
                    f"the front-end hop ({self._stream.hop} samples)"
                )

    @property
    def lookahead(self) -> int:
        """Samples past a window's end the front-end needs before the window is complete."""
        return 0 if self._stream is None else int(self._stream.pad)

    @property
    def frames_per_window(self) -> int:
        assert self._stream is not None
        return self.window // self._stream.hop + 1

    def history(self) -> tuple[int, np.ndarray]:
        """(start_sample, samples) of the held audio: primes a replacement windower on reload."""
        return self._wave_start, self._wave.copy()

    def resume_from(self, old: SourceWindower) -> list[Window]:
        """Continue where `old` stopped (e.g. after a model reload) without dropping audio:
        replay its held audio, emitting only windows `old` had not emitted yet."""
        if old.next_start is None:
            return []
        self._skip_before = old.next_start
        start, samples = old.history()
        # start the grid so that `old.next_start` is on it
        k = max(0, (old.next_start - start) // self.hop)
        origin = old.next_start - k * self.hop
        if origin < start:
            origin = old.next_start
        self._reset(origin)
        windows = self.push(origin, samples[origin - start :]) if samples.size else []
        return windows

    # ------------------------------------------------------------------------------- push
    def push(self, start_sample: int, samples: np.ndarray) -> list[Window]:
        """Add audio read from capture at `start_sample`; return the windows completed by it."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return []
        if self.next_sample is None:
            self._reset(int(start_sample))
        elif start_sample > self.next_sample:  # capture overran: audio is missing
            self.gaps += 1
            self._reset(int(start_sample))
        elif start_sample < self.next_sample:  # overlapping re-read: keep only the new part
            cut = self.next_sample - start_sample
            if cut >= x.size:
                return []
            x, start_sample = x[cut:], self.next_sample
        assert self.next_sample is not None  # set by the first push
        bad = ~np.isfinite(x)
        if bad.any():
            self.nonfinite_samples += int(bad.sum())
            x = np.where(bad, np.float32(0.0), x)
        now, wall = self._clock(), self._wall()
        out: list[Window] = []
        # One hop at a time: the front-end sees each hop once, and the bounded histories never
        # have to hold more than one window (a fast file source may deliver seconds at once).
        for i in range(0, x.size, self.hop):
            piece = x[i : i + self.hop]
            bad_piece = np.flatnonzero(bad[i : i + self.hop])
            if bad_piece.size:
                base = self.next_sample
                self._bad.append((base + int(bad_piece[0]), base + int(bad_piece[-1])))
            self.next_sample += piece.size
            self._append_wave(piece)
            if self._stream is not None:
                self._append_frames(self._stream.push(piece))
            out.extend(self._emit(now, wall))
        return out

    def _append_wave(self, x: np.ndarray) -> None:
        keep = self.window + self.lookahead + self.hop
        wave = np.concatenate([self._wave, x]) if self._wave.size else x.copy()
        if wave.size > keep:
            drop = wave.size - keep
            wave = wave[drop:]
            self._wave_start += drop
        self._wave = wave
        while self._bad and self._bad[0][1] < self._wave_start:
            self._bad.popleft()

    def _append_frames(self, new: np.ndarray) -> None:
        if new.shape[-1] == 0:
            return
        if self._frames is None:
            self._frames = new.copy()
            self._frames_start = 0
        else:
            self._frames = np.concatenate([self._frames, new], axis=1)
        keep = self.frames_per_window + self.hop // self._stream.hop  # type: ignore[union-attr]
        extra = self._frames.shape[1] - keep
        if extra > 0:
            self._frames = self._frames[:, extra:]
            self._frames_start += extra

    def _emit(self, now: float, wall: float) -> list[Window]:
        out: list[Window] = []
        assert self.next_start is not None and self.next_sample is not None
        while self.next_start + self.window + self.lookahead <= self.next_sample:
            s = self.next_start
            self.next_start += self.hop
            if self._skip_before is not None and s < self._skip_before:
                continue
            win = self._cut(s, now, wall)
            if win is not None:
                out.append(win)
        return out

    def _cut(self, s: int, now: float, wall: float) -> Window | None:
        e = s + self.window
        i0 = s - self._wave_start
        if i0 < 0:  # cannot happen with the history kept; guard against silent corruption
            raise RuntimeError(f"{self.source}: window start {s} older than held audio")
        wave = self._wave[i0 : i0 + self.window]
        peak_frac = float(np.mean(np.abs(wave) >= CLIP_LEVEL)) if wave.size else 0.0
        common: dict[str, Any] = dict(
            source=self.source,
            start_sample=s,
            end_sample=e,
            ready_monotonic=now,
            ready_wall=wall,
            level_dbfs=level_dbfs(wave),
            band_level_dbfs=_band_level(wave[-BAND_CHECK_SAMPLES:]),
            clipped_fraction=peak_frac,
            finite=not any(first < e and last >= s for first, last in self._bad),
            generation=self.generation,
        )
        if self._stream is None:
            return Window(data=wave.copy(), kind="wave", **common)
        assert self._frames is not None
        assert self.origin is not None  # set with the first audio, before any window
        hop = self._stream.hop
        f0 = (s - self.origin) // hop - self._frames_start
        n = self.frames_per_window
        frames = self._frames[:, f0 : f0 + n]
        if f0 < 0 or frames.shape[1] != n:
            raise RuntimeError(
                f"{self.source}: frames {f0}..{f0 + n} of the window at sample {s} are not held"
            )
        return Window(data=np.ascontiguousarray(frames), kind="frames", **common)


class WindowQueue:
    """Bounded, thread-safe FIFO of windows from all sources; full = drop the oldest (counted)."""

    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = int(max_pending)
        self._q: deque[Window] = deque()
        self._cond = threading.Condition()
        self.dropped: dict[str, int] = {}
        self.put_count = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._q)

    def put(self, windows: Iterable[Window]) -> list[Window]:
        """Enqueue; returns the windows dropped to make room (oldest first)."""
        dropped: list[Window] = []
        with self._cond:
            for w in windows:
                self._q.append(w)
                self.put_count += 1
                while len(self._q) > self.max_pending:
                    old = self._q.popleft()
                    self.dropped[old.source] = self.dropped.get(old.source, 0) + 1
                    dropped.append(old)
            self._cond.notify_all()
        return dropped

    def take(self, max_batch: int, timeout: float | None = None) -> list[Window]:
        """Up to `max_batch` oldest windows; waits up to `timeout` s for the first one."""
        with self._cond:
            if not self._q and timeout:
                self._cond.wait(timeout)
            n = min(max_batch, len(self._q))
            return [self._q.popleft() for _ in range(n)]

    def clear(self) -> list[Window]:
        with self._cond:
            out = list(self._q)
            self._q.clear()
            return out

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def batches(windows: list[Window], max_batch: int) -> list[list[Window]]:
    """Group windows of equal shape and kind into encoder batches of at most `max_batch`,
    keeping the queue order within each group (several sources share one encoder call)."""
    groups: dict[tuple, list[Window]] = {}
    for w in windows:
        groups.setdefault((w.kind, w.data.shape, w.generation), []).append(w)
    out: list[list[Window]] = []
    for group in groups.values():
        out.extend(group[i : i + max_batch] for i in range(0, len(group), max_batch))
    return out


def stack(windows: list[Window]) -> np.ndarray:
    """One float32 batch array [B, ...] for the encoder."""
    return np.ascontiguousarray(np.stack([w.data for w in windows]), dtype=np.float32)
