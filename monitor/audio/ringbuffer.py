"""A preallocated single-producer / single-consumer audio ring buffer.

Why: the PortAudio callback must never block and never allocate audio memory, yet the consumer
(resampling, windowing, inference) runs at its own pace in another thread. So the callback copies
into a preallocated float32 array with numpy slice assignment and publishes a sample counter; the
readers copy out and validate against the counter afterwards (a seqlock-style check), no locks.

Policy when the consumer falls behind: **overwrite the oldest samples**. The newest audio is what
matters for live detection and for pre-roll clips (:meth:`RingBuffer.latest`); the overwritten,
never-read samples are counted in :attr:`RingBuffer.overflow_samples` and the consumer sees the gap
as a jump of its sample clock (:meth:`RingBuffer.read_from` returns the start sample).

The sample clock: :attr:`total_written` counts every sample ever written (overwritten or not). It
only grows, so absolute sample indices timestamp audio for the windowing.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """Preallocated float32 ring of ``capacity_samples`` frames x ``channels``.

    One producer thread calls :meth:`write`. One consumer thread calls :meth:`read` /
    :meth:`read_from`; any thread may call :meth:`latest` / :meth:`peek` (they do not consume).
    """

    def __init__(self, capacity_samples: int, channels: int = 1) -> None:
        if int(capacity_samples) < 1:
            raise ValueError(f"ring buffer capacity must be >= 1 sample, got {capacity_samples}")
        if int(channels) < 1:
            raise ValueError(f"ring buffer channels must be >= 1, got {channels}")
        self.capacity = int(capacity_samples)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        # Absolute sample indices. Only the producer writes _begun/_written; only the consumer
        # writes _read and _overflow. _begun runs ahead of _written while a write is in progress,
        # so readers know which slots may be being overwritten right now.
        self._begun = 0
        self._written = 0
        self._read = 0
        self._overflow = 0

    # ------------------------------------------------------------------ producer
    def write(self, block: np.ndarray, gain: float | np.floating = 1.0) -> None:
        """Append ``block`` (frames, or frames x channels), times ``gain``. Never blocks.

        No temporary arrays: the copy (and the gain) go straight into the preallocated storage
        with ``np.multiply(..., out=view)``, so a strided channel view of PortAudio's input
        (``indata[:, ch]``) can be passed as is.
        """
        n = block.shape[0]
        if n == 0:
            return
        if block.ndim == 1 and self.channels != 1:
            raise ValueError(f"1-D block for a {self.channels}-channel ring buffer")
        src = block
        cap = self.capacity
        if n > cap:  # only the newest `cap` samples can survive
            skip = n - cap
            src = src[skip:]
            w0 = self._written + skip
            n_copy = cap
        else:
            w0 = self._written
            n_copy = n
        end = self._written + n
        self._begun = end
        start = w0 % cap
        first = min(n_copy, cap - start)
        self._copy(src[:first], start, first, gain)
        if first < n_copy:
            self._copy(src[first:n_copy], 0, n_copy - first, gain)
        self._written = end

    def _copy(self, src: np.ndarray, start: int, n: int, gain: float | np.floating) -> None:
        dst = self._buf[start : start + n]
        if src.ndim == 1:
            dst = dst[:, 0]
        if gain == 1.0:
            dst[...] = src
        else:
            np.multiply(src, gain, out=dst, casting="unsafe")

    # ------------------------------------------------------------------ counters
    @property
    def total_written(self) -> int:
        """The sample clock: samples ever written (never decreases)."""
        return self._written

    @property
    def read_position(self) -> int:
        """Absolute index of the next sample :meth:`read` would return (before any overrun)."""
        return self._read

    @property
    def overflow_samples(self) -> int:
        """Samples overwritten before the consumer read them (including a pending overrun)."""
        return self._overflow + max(0, self._written - self.capacity - self._read)

    def read_available(self) -> int:
        """Unread samples still held (at most ``capacity``)."""
        return min(self._written - self._read, self.capacity)

    def free_space(self) -> int:
        """Samples that can be written before unread audio is overwritten (for paced producers)."""
        return self.capacity - self.read_available()

    # ------------------------------------------------------------------ consumer
    def read(self, n: int | None = None) -> np.ndarray:
        """Consume up to ``n`` unread samples (all when None), oldest first, as a copy."""
        return self.read_from(n)[1]

    def read_from(self, n: int | None = None) -> tuple[int, np.ndarray]:
        """Consume up to ``n`` unread samples; return ``(start_sample, samples)``.

        ``start_sample`` is the absolute index of the first returned sample; it is larger than
        the previous read's end exactly when samples were overwritten (an overrun).
        """
        start = max(self._read, self._written - self.capacity)
        stop = self._written if n is None else min(self._written, start + max(0, int(n)))
        start, data = self.peek(start, stop)
        self._overflow += start - self._read
        self._read = start + data.shape[0]
        return start, data

    def peek(self, start: int, stop: int) -> tuple[int, np.ndarray]:
        """Copy absolute samples ``[start, stop)`` without consuming them.

        Samples no longer held (overwritten, or overwritten during the copy) are cut from the
        front, so the returned start may be later than asked; ``stop`` is capped at the clock.
        """
        stop = min(stop, self._written)
        start = max(start, stop - self.capacity, 0)
        if stop <= start:
            return stop, self._empty()
        out = self._gather(start, stop)
        # Anything at or below _begun - capacity may have been overwritten while we copied.
        valid_from = self._begun - self.capacity
        if valid_from > start:
            cut = min(valid_from, stop) - start
            out = out[cut:]
            start += cut
        return start, out

    def latest(self, n: int) -> np.ndarray:
        """A copy of the newest ``min(n, capacity)`` samples (pre-roll for event clips)."""
        return self.latest_from(n)[1]

    def latest_from(self, n: int) -> tuple[int, np.ndarray]:
        """``(start_sample, samples)`` of the newest ``min(n, capacity)`` samples."""
        stop = self._written
        return self.peek(stop - min(int(n), self.capacity), stop)

    def _gather(self, start: int, stop: int) -> np.ndarray:
        cap = self.capacity
        i0, n = start % cap, stop - start
        first = min(n, cap - i0)
        if first == n:
            out = self._buf[i0 : i0 + n].copy()
        else:
            out = np.concatenate([self._buf[i0:], self._buf[: n - first]])
        return out[:, 0] if self.channels == 1 else out

    def _empty(self) -> np.ndarray:
        shape = (0,) if self.channels == 1 else (0, self.channels)
        return np.zeros(shape, dtype=np.float32)
