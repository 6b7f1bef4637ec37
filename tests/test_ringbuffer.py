"""RingBuffer: order, wrap-around, overwrite-oldest overflow counting, clock, pre-roll, threads."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

from monitor.audio.ringbuffer import RingBuffer


def ramp(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)


def test_fifo_order_and_wraparound() -> None:
    rb = RingBuffer(10)
    rb.write(ramp(0, 7))
    assert rb.read(4).tolist() == [0, 1, 2, 3]
    rb.write(ramp(7, 6))  # wraps around the end of the storage
    assert rb.read_available() == 9
    start, x = rb.read_from()
    assert start == 4
    np.testing.assert_array_equal(x, ramp(4, 9))
    assert rb.total_written == 13
    assert rb.overflow_samples == 0
    assert rb.read_available() == 0
    assert rb.read().shape == (0,)


def test_overflow_overwrites_oldest_and_is_counted() -> None:
    rb = RingBuffer(8)
    rb.write(ramp(0, 5))
    rb.write(ramp(5, 6))  # 11 written, capacity 8: samples 0..2 lost
    assert rb.overflow_samples == 3  # visible before the consumer reads
    start, x = rb.read_from()
    assert start == 3  # the clock jumps over the lost samples
    np.testing.assert_array_equal(x, ramp(3, 8))
    assert rb.overflow_samples == 3
    rb.write(ramp(11, 2))
    assert rb.read().tolist() == [11, 12]
    assert rb.overflow_samples == 3


def test_block_longer_than_capacity_keeps_newest() -> None:
    rb = RingBuffer(4)
    rb.write(ramp(0, 10))
    assert rb.total_written == 10
    start, x = rb.read_from()
    assert start == 6
    assert x.tolist() == [6, 7, 8, 9]
    assert rb.overflow_samples == 6


def test_latest_for_preroll_does_not_consume() -> None:
    rb = RingBuffer(6)
    rb.write(ramp(0, 9))
    assert rb.latest(3).tolist() == [6, 7, 8]
    start, x = rb.latest_from(100)  # capped at capacity
    assert start == 3 and x.tolist() == [3, 4, 5, 6, 7, 8]
    assert rb.read_available() == 6  # latest() did not consume
    assert rb.peek(4, 6)[1].tolist() == [4, 5]
    start, x = rb.peek(0, 5)  # samples 0..2 are gone: the start moves up
    assert start == 3 and x.tolist() == [3, 4]


def test_gain_and_strided_channel_view() -> None:
    rb = RingBuffer(16)
    block = np.stack([ramp(0, 5), -ramp(0, 5), ramp(100, 5)], axis=1)  # (5, 3) like PortAudio
    rb.write(block[:, 1], np.float32(2.0))
    np.testing.assert_array_equal(rb.read(), -2 * ramp(0, 5))


def test_multichannel_storage() -> None:
    rb = RingBuffer(4, channels=2)
    block = np.stack([ramp(0, 6), ramp(10, 6)], axis=1)
    rb.write(block)
    x = rb.read()
    assert x.shape == (4, 2)
    np.testing.assert_array_equal(x[:, 1], ramp(12, 4))
    with pytest.raises(ValueError, match="1-D block"):
        rb.write(ramp(0, 2))


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0)
    with pytest.raises(ValueError, match="channels"):
        RingBuffer(4, channels=0)


def test_write_allocates_no_audio_sized_memory() -> None:
    """The producer runs in the PortAudio callback: no temporary arrays per block."""
    rb = RingBuffer(48000)
    indata = np.random.default_rng(0).standard_normal((4096, 2)).astype(np.float32)
    gain = np.float32(0.5)
    for _ in range(20):  # warm up caches
        rb.write(indata[:, 1], gain)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(200):
            rb.write(indata[:, 1], gain)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 4096 * 4 // 4, f"write() allocated {peak - base} bytes at peak"


def test_samples_overwritten_during_a_copy_are_cut() -> None:
    """Deterministic version of the race: the producer overwrites slots the reader is copying."""
    rb = RingBuffer(8)
    rb.write(ramp(0, 8))
    gather = rb._gather

    def producer_runs_first(start: int, stop: int) -> np.ndarray:
        rb.write(ramp(8, 3))  # the callback fires between the reader's snapshot and its copy
        return gather(start, stop)

    rb._gather = producer_runs_first  # type: ignore[method-assign]
    start, x = rb.latest_from(8)
    assert start == 3
    assert x.tolist() == [3, 4, 5, 6, 7]  # never the new 8, 9, 10 in the place of 0, 1, 2
    rb._gather = gather  # type: ignore[method-assign]
    start, x = rb.read_from()  # the consumer never read 0..2: overwritten (11 written, 8 held)
    assert start == 3 and x.tolist() == ramp(3, 8).tolist()
    assert rb.overflow_samples == 3


def test_concurrent_producer_consumer_never_returns_torn_data() -> None:
    """Every chunk read while the producer runs is exactly the ramp at its start index."""
    rb = RingBuffer(1000)
    total = 100_000
    done = threading.Event()

    def produce() -> None:
        for i in range(0, total, 97):
            rb.write(ramp(i, min(97, total - i)))
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    got = lost = 0
    last_end = 0
    while not done.is_set() or rb.read_available():
        start, x = rb.read_from(333)
        if x.size:
            assert start >= last_end
            lost += start - last_end
            np.testing.assert_array_equal(x, ramp(start, x.size))
            got += x.size
            last_end = start + x.size
        s2, y = rb.latest_from(500)  # a second, non-consuming reader
        np.testing.assert_array_equal(y, ramp(s2, y.size))
    t.join()
    assert got + lost == total
    assert rb.overflow_samples == lost
