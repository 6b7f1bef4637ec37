"""Windowing: the window grid on the sample clock, front-end once per hop, bounded queue."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.audio.frontend import log_mel
from monitor.audio.windowing import (
    SILENCE_DBFS,
    SourceWindower,
    Window,
    WindowQueue,
    batches,
    level_dbfs,
    stack,
)
from monitor.model.runtime import FrameStream

SR = 16000
N_FFT, HOP_FRAMES, N_MELS = 512, 160, 16


class NumpyFrontEnd:
    """Stands in for the ONNX front-end: valid-framed log-mel in numpy; counts its work."""

    frontend_graph = object()  # FrameStream only checks that a split front-end exists
    n_fft, hop_length, n_mels, pad = N_FFT, HOP_FRAMES, N_MELS, N_FFT // 2

    def __init__(self) -> None:
        self.samples_framed = 0
        self.frames_computed = 0

    def frames(self, chunk: np.ndarray) -> np.ndarray:
        out = log_mel(chunk, N_FFT, HOP_FRAMES, N_MELS, center=False)
        self.samples_framed += chunk.shape[-1]
        self.frames_computed += out.shape[-1]
        return out


def reference_frames(stream: np.ndarray) -> np.ndarray:
    """Frames of the whole stream, centred (reflect at both ends), as one long clip."""
    return log_mel(stream, N_FFT, HOP_FRAMES, N_MELS, center=True)


def feed(w: SourceWindower, x: np.ndarray, start: int, chunks: list[int]) -> list[Window]:
    out, pos = [], 0
    for n in chunks:
        out += w.push(start + pos, x[pos : pos + n])
        pos += n
    assert pos == x.size
    return out


def random_chunks(total: int, rng: np.random.Generator, hi: int) -> list[int]:
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(1, hi)))
    sizes[-1] -= sum(sizes) - total
    return [s for s in sizes if s > 0]


@pytest.fixture
def stream() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(6 * SR) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )


@pytest.mark.parametrize("max_chunk", [37, 1600, 50000])
def test_wave_windows_on_the_sample_clock(stream: np.ndarray, max_chunk: int) -> None:
    window, hop, origin = 2 * SR, SR // 2, 123_456  # the capture clock need not start at 0
    w = SourceWindower("fan1", window, hop)
    wins = feed(w, stream, origin, random_chunks(stream.size, np.random.default_rng(1), max_chunk))
    starts = [win.start_sample for win in wins]
    expected = list(range(origin, origin + stream.size - window + 1, hop))
    assert starts == expected
    for win in wins:
        assert win.kind == "wave" and win.end_sample == win.start_sample + window
        i = win.start_sample - origin
        np.testing.assert_array_equal(win.data, stream[i : i + window])
        assert win.finite


@pytest.mark.parametrize("max_chunk", [100, 3000, 70000])
def test_frame_windows_equal_the_streams_frames(stream: np.ndarray, max_chunk: int) -> None:
    window, hop = 2 * SR, SR // 2
    fe = NumpyFrontEnd()
    w = SourceWindower("fan1", window, hop, frames_factory=lambda: FrameStream(fe))
    wins = feed(w, stream, 0, random_chunks(stream.size, np.random.default_rng(2), max_chunk))
    ref = reference_frames(stream)
    f_per_win = window // HOP_FRAMES + 1
    # the last window needs n_fft/2 samples of lookahead past its end
    expected = list(range(0, stream.size - window - N_FFT // 2 + 1, hop))
    assert [x.start_sample for x in wins] == expected
    for win in wins:
        assert win.kind == "frames" and win.data.shape == (N_MELS, f_per_win)
        f0 = win.start_sample // HOP_FRAMES
        np.testing.assert_allclose(win.data, ref[:, f0 : f0 + f_per_win], atol=1e-4)
    # the first window is exactly a centred clip of its own (reflect at the stream start)
    own = reference_frames(stream[:window])
    np.testing.assert_allclose(wins[0].data[:, :-2], own[:, :-2], atol=1e-4)


def test_front_end_runs_once_per_hop_not_per_window(stream: np.ndarray) -> None:
    window, hop = 2 * SR, SR // 2
    fe = NumpyFrontEnd()
    w = SourceWindower("fan1", window, hop, frames_factory=lambda: FrameStream(fe))
    wins = feed(w, stream, 0, [hop] * (stream.size // hop))
    stream_frames = reference_frames(stream).shape[1]
    assert len(wins) >= 8
    # every frame of the stream computed once (plus none per window): not len(wins) * 201
    assert fe.frames_computed <= stream_frames
    per_window_cost = len(wins) * (window // HOP_FRAMES + 1)  # framing every window anew
    assert per_window_cost > 2.5 * fe.frames_computed


def test_clock_gap_restarts_the_grid(stream: np.ndarray) -> None:
    window, hop = SR, SR // 4
    w = SourceWindower("a", window, hop)
    first = w.push(0, stream[: 2 * SR])
    gap_start = 2 * SR + 5000  # capture overran: 5000 samples were lost
    after = w.push(gap_start, stream[2 * SR : 4 * SR])
    assert w.gaps == 1
    assert first[-1].end_sample <= 2 * SR
    assert after[0].start_sample == gap_start  # no window spans the gap
    assert all(x.start_sample >= gap_start for x in after)


def test_overlapping_reread_is_ignored(stream: np.ndarray) -> None:
    w = SourceWindower("a", SR, SR // 2)
    a = w.push(0, stream[:SR])
    b = w.push(SR // 2, stream[SR // 2 : 2 * SR])  # first half already seen
    starts = [x.start_sample for x in a + b]
    assert starts == [0, SR // 2, SR]


def test_nonfinite_samples_flag_windows_and_never_raise(stream: np.ndarray) -> None:
    window, hop = SR, SR // 2
    fe = NumpyFrontEnd()
    w = SourceWindower("a", window, hop, frames_factory=lambda: FrameStream(fe))
    x = stream[: 5 * SR].copy()
    x[int(1.2 * SR)] = np.nan
    x[int(1.3 * SR)] = np.inf
    wins = w.push(0, x)
    assert w.nonfinite_samples == 2
    bad = {win.start_sample for win in wins if not win.finite}
    # windows containing samples 1.2 s..1.3 s: starts 0.5 s and 1.0 s
    assert bad == {SR // 2, SR}
    assert all(np.all(np.isfinite(win.data)) for win in wins)


def test_level_and_clipping() -> None:
    t = np.arange(SR) / SR
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    assert level_dbfs(sine) == pytest.approx(-3.01, abs=0.02)
    assert level_dbfs(np.zeros(100, np.float32)) == SILENCE_DBFS
    w = SourceWindower("a", SR, SR)
    (win,) = w.push(0, np.clip(3 * sine, -1, 1))
    assert 0.5 < win.clipped_fraction < 1.0
    (win,) = w.push(SR, np.zeros(SR, np.float32))
    assert win.level_dbfs == SILENCE_DBFS and win.clipped_fraction == 0.0


def test_resume_after_reload_drops_and_repeats_nothing(stream: np.ndarray) -> None:
    window, hop = 2 * SR, SR // 2
    fe = NumpyFrontEnd()
    old = SourceWindower("a", window, hop, frames_factory=lambda: FrameStream(fe))
    wins = old.push(0, stream[: 3 * SR + 1000])
    new = SourceWindower("a", window, hop, frames_factory=lambda: FrameStream(fe), generation=1)
    wins += new.resume_from(old)
    wins += new.push(3 * SR + 1000, stream[3 * SR + 1000 :])
    starts = [x.start_sample for x in wins]
    assert starts == list(range(0, stream.size - window - N_FFT // 2 + 1, hop))
    ref = reference_frames(stream)
    for win in wins:
        f0 = win.start_sample // HOP_FRAMES
        np.testing.assert_allclose(win.data, ref[:, f0 : f0 + window // HOP_FRAMES + 1], atol=1e-4)
    assert {x.generation for x in wins} == {0, 1}


def test_hop_must_align_with_the_front_end() -> None:
    with pytest.raises(ValueError, match="multiples of the front-end hop"):
        SourceWindower("a", SR, 1000, frames_factory=lambda: FrameStream(NumpyFrontEnd()))
    with pytest.raises(ValueError, match="must not exceed"):
        SourceWindower("a", SR, 2 * SR)


def _win(source: str, i: int, n: int = 4) -> Window:
    return Window(source, i, i + n, np.full(n, i, np.float32), "wave", 0.0, 0.0, -20.0, 0.0, True)


def test_queue_drops_oldest_and_counts_per_source() -> None:
    q = WindowQueue(max_pending=3)
    dropped = q.put([_win("a", 0), _win("b", 0), _win("a", 1), _win("b", 1), _win("a", 2)])
    assert [(w.source, w.start_sample) for w in dropped] == [("a", 0), ("b", 0)]
    assert q.dropped == {"a": 1, "b": 1}
    assert len(q) == 3
    got = q.take(2)
    assert [(w.source, w.start_sample) for w in got] == [("a", 1), ("b", 1)]
    assert [(w.source, w.start_sample) for w in q.take(8)] == [("a", 2)]
    assert q.take(8, timeout=0.01) == []


def test_queue_memory_is_bounded_under_a_flood() -> None:
    q = WindowQueue(max_pending=5)
    for i in range(10_000):
        q.put([_win("a", i)])
    assert len(q) == 5 and q.dropped["a"] == 9995
    assert [w.start_sample for w in q.take(5)] == [9995, 9996, 9997, 9998, 9999]


def test_batches_mix_sources_and_respect_shape() -> None:
    wins = [_win("a", 0), _win("b", 0), _win("c", 0), _win("a", 1, n=8), _win("b", 1)]
    groups = batches(wins, max_batch=2)
    assert [[w.source for w in g] for g in groups] == [["a", "b"], ["c", "b"], ["a"]]
    assert stack(groups[0]).shape == (2, 4) and stack(groups[0]).dtype == np.float32
