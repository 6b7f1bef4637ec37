"""Durable MQTT outbox: an event is on disk before it is sent and leaves only when acknowledged.

Why: a broker outage or a daemon crash must not lose an alert (the anchors drop publishes while
disconnected; Sparkplug's store-and-forward is the model). SQLite in WAL mode with
``synchronous=FULL`` makes each committed ``put`` survive SIGKILL and power loss. The table is
bounded (rows and bytes): when full, the oldest messages are dropped, counted and logged, so a
month-long outage cannot fill the disk.

Thread-safe: the daemon thread puts, the MQTT thread acks; one connection behind one lock.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class OutboxMessage:
    """One pending message, in the order it was put (``id`` grows)."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float


class Outbox:
    """A bounded FIFO of MQTT messages in SQLite (``path`` may be ``":memory:"``).

    Defaults: ``max_rows`` 10 000, ``max_bytes`` 50 MB of payload. A file that is not a SQLite
    database (or is corrupt) is renamed aside (``<name>.corrupt-<epoch>``) with an error log and
    a fresh outbox is started: the daemon keeps alerting rather than refusing to start.
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        max_rows: int = 10_000,
        max_bytes: int = 50_000_000,
    ) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError(f"outbox bounds must be positive: {max_rows=}, {max_bytes=}")
        self.path = str(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.put_total = 0
        self.acked_total = 0
        self.dropped_total = 0
        self._closed = False
        self._db = self._open()
        self._rows, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()
        if self._rows:
            log.info("outbox %s: %d messages pending from before", self.path, self._rows)

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if self.path == ":memory:":
                raise
            aside = f"{self.path}.corrupt-{int(time.time())}"
            log.error("outbox %s is unreadable (%s); moved aside to %s", self.path, exc, aside)
            Path(self.path).rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
            db.execute(_SCHEMA)
            db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def put(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        created_at: float | None = None,
    ) -> int:
        """Store a message durably (committed and fsynced on return); return its id."""
        if not isinstance(payload, bytes | bytearray):
            raise TypeError(f"outbox payload for {topic!r} must be bytes, got {type(payload)}")
        created = time.time() if created_at is None else float(created_at)
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, created_at) VALUES (?,?,?,?,?)",
                (topic, bytes(payload), int(qos), int(bool(retain)), created),
            )
            self._rows += 1
            self._bytes += len(payload)
            self.put_total += 1
            row_id = cur.lastrowid
            assert row_id is not None  # set by every INSERT
            self._enforce_bounds()
            return row_id

    def _enforce_bounds(self) -> None:
        dropped = 0
        while self._rows > 1 and (self._rows > self.max_rows or self._bytes > self.max_bytes):
            row = self._db.execute(
                "SELECT id, LENGTH(payload), created_at FROM outbox ORDER BY id LIMIT 1"
            ).fetchone()
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self._rows -= 1
            self._bytes -= row[1]
            dropped += 1
            oldest = row[2]
        if dropped:
            self.dropped_total += dropped
            log.warning(
                "outbox %s full (max_rows=%d, max_bytes=%d): dropped %d oldest message(s), "
                "the last created at %.3f; %d dropped in total",
                self.path,
                self.max_rows,
                self.max_bytes,
                dropped,
                oldest,
                self.dropped_total,
            )

    def pending(self, limit: int | None = None, after_id: int = 0) -> list[OutboxMessage]:
        """Pending messages with ``id > after_id``, oldest first."""
        sql = "SELECT id, topic, payload, qos, retain, created_at FROM outbox WHERE id > ?"
        sql += " ORDER BY id"
        args: tuple[int, ...] = (after_id,)
        if limit is not None:
            sql += " LIMIT ?"
            args += (int(limit),)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            OutboxMessage(int(i), t, bytes(p), int(q), bool(r), float(c))
            for i, t, p, q, r, c in rows
        ]

    def ack(self, message_id: int) -> bool:
        """Remove an acknowledged message; False if it was already gone (dropped or acked)."""
        with self._lock:
            row = self._db.execute(
                "SELECT LENGTH(payload) FROM outbox WHERE id = ?", (int(message_id),)
            ).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM outbox WHERE id = ?", (int(message_id),))
            self._rows -= 1
            self._bytes -= row[0]
            self.acked_total += 1
            return True

    def __len__(self) -> int:
        return self._rows

    def stats(self) -> dict[str, int]:
        """Counters and gauges for metrics: pending rows/bytes, put/acked/dropped totals."""
        return {
            "pending": self._rows,
            "pending_bytes": self._bytes,
            "put_total": self.put_total,
            "acked_total": self.acked_total,
            "dropped_total": self.dropped_total,
        }

    def close(self) -> None:
        """Checkpoint the WAL and close (safe to call twice)."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()  # later use raises sqlite3.ProgrammingError
            self._closed = True
