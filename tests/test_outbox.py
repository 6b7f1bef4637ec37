"""The durable SQLite outbox: order, acks, bounds, corrupt files, and survival of SIGKILL."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from monitor.outputs.outbox import Outbox


def test_put_pending_ack_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    ids = [box.put(f"t/{i}", f"p{i}".encode(), 1, False, 1000.0 + i) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    pending = box.pending()
    assert [m.topic for m in pending] == [f"t/{i}" for i in range(5)]
    assert pending[2].payload == b"p2" and pending[2].created_at == 1002.0
    assert pending[2].qos == 1 and pending[2].retain is False
    assert box.ack(ids[1]) is True
    assert box.ack(ids[1]) is False  # already gone
    assert [m.id for m in box.pending()] == [ids[0], ids[2], ids[3], ids[4]]
    assert [m.id for m in box.pending(limit=2, after_id=ids[2])] == ids[3:5]
    assert len(box) == 4
    s = box.stats()
    assert s["pending"] == 4 and s["put_total"] == 5 and s["acked_total"] == 1
    assert s["pending_bytes"] == sum(len(m.payload) for m in box.pending())
    box.close()
    box.close()


def test_wal_and_full_sync(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    box.close()


def test_reopen_keeps_pending_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "o.sqlite"  # parent folder is created
    box = Outbox(path)
    a = box.put("t", b"a", created_at=1.0)
    box.put("t", b"bb", created_at=2.0)
    box.ack(a)
    box.close()
    again = Outbox(path)
    assert [m.payload for m in again.pending()] == [b"bb"]
    assert again.stats()["pending_bytes"] == 2
    c = again.put("t", b"c")
    assert c > a  # ids never reused, so order survives restarts
    again.close()


CHILD = """
import os, signal, sys
from monitor.outputs.outbox import Outbox
box = Outbox(sys.argv[1])
for i in range(50):
    box.put("s/events", b'{"i": %d}' % i, 1, False, 1000.0 + i)
print("stored", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "stored" in proc.stdout
    box = Outbox(path)
    pending = box.pending()
    assert [m.payload for m in pending] == [b'{"i": %d}' % i for i in range(50)]
    assert [m.created_at for m in pending] == [1000.0 + i for i in range(50)]
    assert box._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    box.close()


def test_bounded_by_rows_drops_oldest_with_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_rows=5)
    with caplog.at_level(logging.WARNING, logger="monitor.outputs.outbox"):
        ids = [box.put("t", b"x%d" % i) for i in range(8)]
    assert [m.id for m in box.pending()] == ids[3:]
    assert box.stats()["dropped_total"] == 3 and len(box) == 5
    assert "dropped 1 oldest" in caplog.text and "max_rows=5" in caplog.text
    assert box.ack(ids[0]) is False  # a dropped message acked late: harmless


def test_bounded_by_bytes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1000)
    for _ in range(10):
        box.put("t", b"y" * 300)
    assert len(box) == 3 and box.stats()["pending_bytes"] == 900
    assert box.stats()["dropped_total"] == 7
    # One message larger than the whole budget is still kept (the newest is never dropped).
    box.put("t", b"z" * 5000)
    assert [len(m.payload) for m in box.pending()] == [5000]


def test_corrupt_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a sqlite database at all" * 100)
    with caplog.at_level(logging.ERROR, logger="monitor.outputs.outbox"):
        box = Outbox(path)
    aside = list(tmp_path.glob("o.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert str(path) in caplog.text and "moved aside" in caplog.text
    assert len(box) == 0
    box.put("t", b"ok")
    assert len(box) == 1
    box.close()


def test_payload_must_be_bytes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    with pytest.raises(TypeError, match="t/x"):
        box.put("t/x", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Outbox(tmp_path / "p.sqlite", max_rows=0)


def test_concurrent_put_and_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box._db.execute("PRAGMA synchronous=OFF")  # speed only; durability is tested above
    done = threading.Event()
    acked: list[int] = []

    def acker() -> None:
        while not done.is_set() or len(box):
            for m in box.pending(limit=10):
                if box.ack(m.id):
                    acked.append(m.id)

    th = threading.Thread(target=acker)
    th.start()
    ids = [box.put("t", b"m") for _ in range(300)]
    done.set()
    th.join(10)
    assert sorted(acked) == ids
    assert box.stats()["pending"] == 0 and box.stats()["pending_bytes"] == 0
    assert box._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def test_memory_outbox() -> None:
    box = Outbox(":memory:")
    box.put("t", b"a")
    assert len(box) == 1
    with pytest.raises(sqlite3.ProgrammingError):
        box.close()
        box.pending()
