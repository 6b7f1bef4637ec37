"""Power loss: the fsyncs a clip and the outbox need are made, and in the right order.

A kill leaves the page cache to the kernel, so tests/test_crash_random_kill.py cannot see a
missing fsync; a power cut can. These tests record the real calls (the spy calls through to the
real `os.fsync`/`os.replace`) and check the order that makes a rename safe: the file's data on
disk before its new name, the folder's names on disk after the rename.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from monitor.alerting.clips import ClipJob, ClipPolicy, ClipWriter
from monitor.outputs.outbox import Outbox

Trace = list[tuple[str, str, str]]


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch) -> Trace:
    """(call, path, target) of every os.fsync and os.replace, in order."""
    calls: Trace = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        real_fsync(fd)

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        real_replace(src, dst)
        calls.append(("replace", str(Path(src).resolve()), str(Path(dst).resolve())))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def index(
    trace: Trace, call: str, path: Path | str, target: Path | str = "", after: int = -1
) -> int:
    for i, (c, p, t) in enumerate(trace):
        if i > after and c == call and p == str(path) and (not target or t == str(target)):
            return i
    raise AssertionError(f"no {call} of {path} -> {target} after #{after} in {trace}")


def test_clip_files_are_synced_before_their_rename_and_the_folder_after(
    tmp_path: Path, trace: Trace
) -> None:
    folder = (tmp_path / "clips").resolve()
    writer = ClipWriter(ClipPolicy(folder, min_free_bytes=0))
    audio = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    writer.write(ClipJob("pump1-1.wav", audio, {"event_id": "pump1-1"}))
    tmp_wav, tmp_side = folder / ".pump1-1.partial.wav", folder / ".pump1-1.partial.json"
    wav, side = folder / "pump1-1.wav", folder / "pump1-1.json"

    side_synced = index(trace, "fsync", tmp_side)
    wav_synced = index(trace, "fsync", tmp_wav)
    wav_named = index(trace, "replace", tmp_wav, wav)
    folder_synced = index(trace, "fsync", folder, after=wav_named)
    side_named = index(trace, "replace", tmp_side, side)
    folder_synced_last = index(trace, "fsync", folder, after=side_named)
    assert wav_synced < wav_named < folder_synced < side_named < folder_synced_last
    assert side_synced < side_named
    assert wav.stat().st_size > 16000 * 2 and side.exists()


def test_outbox_syncs_its_folder_once_opened(tmp_path: Path, trace: Trace) -> None:
    folder = (tmp_path / "state").resolve()
    box = Outbox(folder / "outbox.sqlite")
    assert ("fsync", str(folder), "") in trace  # the new database file's name is durable
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync per commit
    box.close()
