"""Event clips: exact pre/post-roll audio, sidecar, non-blocking writer, disk-freeing retention."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.alerting.clips import ClipJob, ClipPolicy, ClipRecorder, ClipWriter, clip_name
from monitor.alerting.machine import AlertEvent, AlertMachine, AlertPolicy
from monitor.audio.ringbuffer import RingBuffer
from monitor.config import parse_config
from monitor.errors import ConfigError

SR = 16000
T0 = 1_700_000_000.0
Q = 1.0 / 32768  # PCM_16 quantisation step


def signal(n: int, offset: int = 0) -> np.ndarray:
    """Audio whose sample values identify their position (a slow ramp, never clipped)."""
    idx = np.arange(offset, offset + n)
    return (((idx % 4000) / 4000.0) - 0.5).astype(np.float32)


class Source:
    """A growing audio stream with a `latest(n)` like the ring buffer's."""

    def __init__(self) -> None:
        self.written = 0

    def latest(self, n: int) -> np.ndarray:
        n = min(n, self.written)
        return signal(n, self.written - n)

    def next_block(self, n: int) -> np.ndarray:
        block = signal(n, self.written)
        self.written += n
        return block


def event(type_: str, t: float, start: float, **kw: object) -> AlertEvent:
    return AlertEvent(
        kind=kw.pop("kind", "anomaly"),  # type: ignore[arg-type]
        type=type_,  # type: ignore[arg-type]
        event_id="pump1-1",
        source="pump1",
        seq=0,
        time=t,
        start_time=start,
        end_time=t if type_ == "end" else None,
        **kw,  # type: ignore[arg-type]
    )


def policy(tmp_path: Path, **kw: object) -> ClipPolicy:
    base = {
        "directory": tmp_path / "clips",
        "pre_roll_s": 0.5,
        "post_roll_s": 0.25,
        "min_free_bytes": 0,
    }
    base.update(kw)
    return ClipPolicy(**base)  # type: ignore[arg-type]


def test_clip_has_pre_roll_event_and_post_roll(tmp_path: Path) -> None:
    writer = ClipWriter(policy(tmp_path))
    src = Source()
    rec = ClipRecorder("pump1", writer.policy, writer, src.latest)
    src.next_block(SR * 3)  # 3 s of history in the "ring buffer"
    # Start raised at t0+1 for an onset at t0 (1 s of evidence): pre-roll = 0.5 + 1.0 s.
    name = rec.on_event(event("start", T0 + 1, T0), threshold=0.3, model_version="m-7")
    assert name == clip_name("pump1-1") == "pump1-1.wav"
    start_sample = src.written - int(1.5 * SR)
    for _ in range(4):  # 4 hops of 0.25 s during the event
        rec.feed(src.next_block(SR // 4))
    end = event("end", T0 + 2, T0, reason="cleared", peak_score=2.5, scores=((T0, 2.5),))
    rec.on_event(end)
    assert rec.recording  # waiting for the post-roll
    rec.feed(src.next_block(SR // 8))
    rec.feed(src.next_block(SR // 4))  # more than needed: only 0.125 s more is kept
    assert not rec.recording
    job = writer._queue.get_nowait()
    path = writer.write(job)
    assert path == tmp_path / "clips" / "pump1-1.wav"
    audio, sr = sf.read(path, dtype="float32")
    assert sr == SR
    expected = signal(int(1.5 * SR) + SR + SR // 4, start_sample)
    assert audio.shape == expected.shape
    assert np.max(np.abs(audio - expected)) <= Q
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["event_id"] == "pump1-1" and side["source"] == "pump1"
    assert side["wav"] == "pump1-1.wav"
    assert side["pre_roll_s"] == 1.5 and side["post_roll_s"] == 0.25
    assert side["duration_s"] == pytest.approx(2.75)
    assert side["start_time"] == T0 and side["end_time"] == T0 + 2 and side["raised_time"] == T0 + 1
    assert side["clip_start_time"] == T0 - 0.5
    assert side["end_reason"] == "cleared" and side["peak_score"] == 2.5
    assert side["threshold"] == 0.3 and side["model_version"] == "m-7"
    assert side["scores"] == [[T0, 2.5]]
    assert side["truncated"] is False


def test_with_the_ring_buffer_and_the_alert_machine(tmp_path: Path) -> None:
    """Integration: real RingBuffer.latest, AlertMachine events, 1 s hops, writer thread."""
    writer = ClipWriter(policy(tmp_path, pre_roll_s=1.0, post_roll_s=1.0)).start()
    ring = RingBuffer(SR * 10)
    rec = ClipRecorder("pump1", writer.policy, writer, ring.latest)
    alerts = AlertMachine("pump1", AlertPolicy(n_above=2, m_windows=2, k_below=2, min_hold_s=0))
    scores = [0.1, 0.2, 3.0, 3.0, 3.0, 0.1, 0.1, 0.2, 0.3]
    rng = np.random.default_rng(0)
    names = []
    for i, s in enumerate(scores):
        block = rng.uniform(-0.5, 0.5, SR).astype(np.float32)
        ring.write(block)
        rec.feed(block)
        for ev in alerts.step(T0 + i, s):
            name = rec.on_event(ev, threshold=0.4, model_version="v1")
            names.append(name)
    writer.close()
    assert len(names) == 2 and names[0] == names[1] is not None  # start and end: one clip
    wav = tmp_path / "clips" / names[0]
    side = json.loads(wav.with_suffix(".json").read_text())
    # start raised at t0+3 (onset t0+2): pre-roll 1 + 1 s; event t0+3..t0+6 fed; post-roll 1 s.
    assert side["pre_roll_s"] == 2.0 and side["post_roll_s"] == 1.0
    assert sf.info(wav).frames == SR * (2 + 3 + 1)
    assert side["end_reason"] == "cleared"
    assert [s for _, s in side["scores"]] == [3.0, 3.0, 3.0, 0.1, 0.1]
    assert writer.stats()["written_total"] == 1


def test_capture_alarms_get_no_clip(tmp_path: Path) -> None:
    writer = ClipWriter(policy(tmp_path))
    rec = ClipRecorder("pump1", writer.policy, writer, Source().latest)
    assert rec.on_event(event("start", T0, T0, kind="capture")) is None
    assert not rec.recording


def test_long_event_is_truncated(tmp_path: Path) -> None:
    writer = ClipWriter(policy(tmp_path, max_clip_s=1.0, pre_roll_s=0.0, post_roll_s=0.0))
    src = Source()
    rec = ClipRecorder("pump1", writer.policy, writer, src.latest)
    rec.on_event(event("start", T0, T0))
    for _ in range(10):
        rec.feed(src.next_block(SR // 2))  # 5 s of event audio; memory stays at 1 s
    assert sum(c.size for c in rec._chunks) == SR
    rec.on_event(event("end", T0 + 5, T0))
    job = writer._queue.get_nowait()
    assert job.audio.size == SR and job.sidecar["truncated"] is True


def test_writer_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    writer = ClipWriter(policy(tmp_path, queue_size=1))  # thread not started: nothing drains
    audio = np.zeros(100, np.float32)
    t = time.perf_counter()
    results = [writer.submit(ClipJob(f"c{i}.wav", audio, {})) for i in range(5)]
    assert time.perf_counter() - t < 1.0
    assert results == [True, False, False, False, False]
    assert writer.stats()["dropped_total"] == 4 and writer.stats()["queued"] == 1


def test_close_drains_the_queue(tmp_path: Path) -> None:
    writer = ClipWriter(policy(tmp_path, queue_size=4)).start()
    for i in range(3):
        writer.submit(ClipJob(f"c{i}.wav", np.zeros(1600, np.float32), {"i": i}))
    writer.close()
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == [
        "c0.json",
        "c0.wav",
        "c1.json",
        "c1.wav",
        "c2.json",
        "c2.wav",
    ]
    assert writer.stats()["written_total"] == 3


def write_clips(writer: ClipWriter, n: int, seconds: float = 0.5) -> list[Path]:
    """n clips, each with an mtime one hour apart (oldest first)."""
    paths = []
    for i in range(n):
        path = writer.write(ClipJob(f"c{i}.wav", np.zeros(int(SR * seconds), np.float32), {}))
        assert path is not None
        stamp = time.time() - 3600 * (n - i)
        for p in (path, path.with_suffix(".json")):
            os.utime(p, (stamp, stamp))
        paths.append(path)
    return paths


def test_retention_by_total_size_deletes_oldest_first(tmp_path: Path) -> None:
    one = 44 + 2 * SR // 2 + 3  # bytes of a 0.5 s clip (WAV + a small sidecar)
    writer = ClipWriter(policy(tmp_path, max_total_bytes=4 * one + 1000))
    write_clips(writer, 4)
    assert writer.stats()["deleted_total"] == 0
    # The 5th clip needs room (plus the writer's reserve): the oldest go first.
    writer.write(ClipJob("c9.wav", np.zeros(SR // 2, np.float32), {}))
    left = sorted(p.stem for p in (tmp_path / "clips").glob("*.wav"))
    assert left[-1] == "c9" and "c0" not in left
    total = sum(p.stat().st_size for p in (tmp_path / "clips").iterdir())
    assert total <= writer.policy.max_total_bytes
    assert writer.stats()["disk_bytes"] == total
    assert writer.stats()["deleted_total"] == 5 - len(left)


def test_tiny_budget_keeps_disk_bounded_over_many_clips(tmp_path: Path) -> None:
    budget = 60_000
    writer = ClipWriter(policy(tmp_path, max_total_bytes=budget, queue_size=64)).start()
    for i in range(30):
        assert writer.submit(ClipJob(f"c{i:02d}.wav", np.zeros(SR // 2, np.float32), {"i": i}))
    writer.close()
    total = sum(p.stat().st_size for p in (tmp_path / "clips").iterdir())
    assert 0 < total <= budget
    remaining = sorted(p.stem for p in (tmp_path / "clips").glob("*.wav"))
    assert remaining == ["c27", "c28", "c29"]  # 3 clips of ~16 kB fit 60 kB with the reserve
    s = writer.stats()
    assert s["written_total"] == 30 and s["deleted_total"] == 27


def test_retention_by_age(tmp_path: Path) -> None:
    write_clips(ClipWriter(policy(tmp_path)), 4)  # ages 4 h, 3 h, 2 h, 1 h
    writer = ClipWriter(policy(tmp_path, max_age_s=2.5 * 3600))
    assert writer.enforce_retention() == 2
    assert sorted(p.name for p in (tmp_path / "clips").glob("*.wav")) == ["c2.wav", "c3.wav"]
    assert writer.stats()["deleted_bytes_total"] > 0


def test_no_room_on_the_file_system_skips_the_clip(tmp_path: Path) -> None:
    writer = ClipWriter(policy(tmp_path))
    write_clips(writer, 2)
    full = ClipWriter(policy(tmp_path, min_free_bytes=1 << 62))  # "the disk is full"
    assert full.write(ClipJob("new.wav", np.zeros(SR, np.float32), {})) is None
    assert full.stats()["skipped_no_space_total"] == 1
    assert not (tmp_path / "clips" / "new.wav").exists()
    assert list((tmp_path / "clips").iterdir()) == []  # old clips were freed first


def test_partial_files_from_a_crash_are_removed(tmp_path: Path) -> None:
    writer = ClipWriter(policy(tmp_path))
    junk = tmp_path / "clips" / ".c1.partial.wav"
    junk.write_bytes(b"x" * 100)
    other = tmp_path / "clips" / "notes.txt"
    other.write_text("keep me")
    writer.enforce_retention()
    assert not junk.exists() and other.exists()


def test_sidecar_is_strict_json(tmp_path: Path) -> None:
    writer = ClipWriter(policy(tmp_path))
    src = Source()
    rec = ClipRecorder("pump1", writer.policy, writer, src.latest)
    src.next_block(SR)
    rec.on_event(event("start", T0, T0), threshold=math.nan)
    rec.on_event(event("end", T0 + 1, T0, peak_score=math.inf))
    rec.feed(src.next_block(SR))
    path = writer.write(writer._queue.get_nowait())
    assert path is not None
    side = json.loads(path.with_suffix(".json").read_text())  # parses: no NaN tokens
    assert side["threshold"] is None and side["peak_score"] is None


def test_flush_writes_an_unfinished_clip(tmp_path: Path) -> None:
    writer = ClipWriter(policy(tmp_path))
    src = Source()
    src.next_block(SR)
    rec = ClipRecorder("pump1", writer.policy, writer, src.latest)
    rec.on_event(event("start", T0, T0))
    rec.feed(src.next_block(SR // 4))
    rec.flush()
    job = writer._queue.get_nowait()
    assert job.audio.size == SR // 2 + SR // 4 and job.sidecar["end_time"] is None


CONFIG = "model:\n  package: pkg\nsources:\n  - {name: a, type: file, machine: fan, path: a.wav}\n"


@pytest.mark.parametrize(
    ("clips", "key", "why"),
    [
        ("{pre_roll_seconds: -1}", "clips.pre_roll_seconds", "greater than or equal to 0"),
        ("{post_roll_seconds: -1}", "clips.post_roll_seconds", "greater than or equal to 0"),
        ("{max_event_seconds: 0}", "clips.max_event_seconds", "greater than 0"),
        ("{max_age_days: 0}", "clips.max_age_days", "greater than 0"),
        ("{min_free_bytes: -1}", "clips.min_free_bytes", "greater than or equal to 0"),
        ("{retention_interval_seconds: 0}", "clips.retention_interval_seconds", "greater than 0"),
    ],
)
def test_schema_refuses_bad_clip_policy_naming_the_key(clips: str, key: str, why: str) -> None:
    """The rules on ClipPolicy live in the schema (`clips:`); the policy is built from it."""
    with pytest.raises(ConfigError) as info:
        parse_config(f"{CONFIG}clips: {clips}\n", "sonitor.yaml")
    assert f"{key}: " in str(info.value) and why in str(info.value)


def test_clip_policy_from_config_has_a_bounded_queue(tmp_path: Path) -> None:
    """queue_size is no config key: the policy built from any config keeps the writer bounded."""
    from monitor.daemon.wiring import clip_policy

    cfg = parse_config(f"{CONFIG}clips: {{dir: clips, max_age_days: 2}}\n", tmp_path / "s.yaml")
    pol = clip_policy(cfg)
    assert pol.directory == tmp_path / "clips" and pol.max_age_s == 2 * 86400.0
    writer = ClipWriter(pol)
    assert 1 <= writer._queue.maxsize == pol.queue_size


def test_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=str(blocker)):
        ClipWriter(ClipPolicy(directory=blocker / "clips"))


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_real_recording_round_trips_bit_exact(tmp_path: Path) -> None:
    """A real 16-bit pump recording through ring buffer, recorder and writer: the clip is exactly
    the expected stretch of the recording (int16 in, int16 out)."""
    wav = DATA / "dcase2020_pump_pair" / "anomaly_id_06_00000100.wav"
    if not wav.exists():
        pytest.skip(f"real recordings not available ({wav} missing; see ../shared/data/README)")
    source, sr = sf.read(wav, dtype="int16")
    assert sr == SR
    audio = source.astype(np.float32) / 32768.0
    writer = ClipWriter(policy(tmp_path, pre_roll_s=1.0, post_roll_s=1.0)).start()
    ring = RingBuffer(SR * 5)
    rec = ClipRecorder("pump6", writer.policy, writer, ring.latest)
    alerts = AlertMachine("pump6", AlertPolicy(n_above=2, m_windows=3, k_below=2, min_hold_s=0))
    scores = [0.2, 0.3, 1.4, 1.6, 1.2, 0.4, 0.3, 0.2, 0.1, 0.1]
    raised_at = None
    for i, s in enumerate(scores):
        block = audio[i * SR : (i + 1) * SR]
        ring.write(block)
        rec.feed(block)
        for ev in alerts.step(T0 + i, s):
            rec.on_event(ev, threshold=1.0, model_version="real")
            raised_at = i if ev.type == "start" else raised_at
    writer.close()
    assert raised_at == 3
    clip = next((tmp_path / "clips").glob("*.wav"))
    written, _ = sf.read(clip, dtype="int16")
    side = json.loads(clip.with_suffix(".json").read_text())
    first = (raised_at + 1) * SR - int(side["pre_roll_s"] * SR)  # latest() ended after block 3
    assert side["pre_roll_s"] == 2.0  # 1 s pre-roll + 1 s from onset (t+2) to raise (t+3)
    assert np.array_equal(written, source[first : first + written.size])
    assert written.size == SR * (2 + 3 + 1)  # pre-roll, blocks 4..6 until the end, post-roll
