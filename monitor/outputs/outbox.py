"""Durable MQTT outbox: an event is on disk before it is sent and leaves only when acknowledged.

Why: a broker outage or a daemon crash must not lose an alert (the anchors drop publishes while
disconnected; Sparkplug's store-and-forward is the model). SQLite in WAL mode with
``synchronous=FULL`` makes each committed ``put`` survive SIGKILL and power loss (see
``_connect`` for why this pair). The table is bounded (rows and bytes): when full, the oldest
messages are dropped, counted and logged, so a month-long outage cannot fill the disk.

The same database keeps the latest message of every *open* alert (``open_alerts``), written in
the transaction that stores the message: after a SIGKILL or a power cut the next start knows
exactly which alerts never got their ``end`` (``monitor/outputs/open_alerts.py`` ends them).

Thread-safe: the daemon thread puts, the MQTT thread acks; one connection behind one lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
# One row per alert whose last message was not an ``end``: its latest payload, and the outbox id
# of that message (the order of the rows).
_OPEN_SCHEMA = """
CREATE TABLE IF NOT EXISTS open_alerts (
    event_id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    message_id INTEGER NOT NULL
)
"""

# ``(event id, latest payload)`` records an open alert, ``(event id, None)`` forgets it.
OpenAlertChange = tuple[str, bytes | None]


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
        if self.path == ":memory:":
            return self._connect()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect()
        except sqlite3.DatabaseError as exc:
            aside = f"{self.path}.corrupt-{int(time.time())}"
            log.error("outbox %s is unreadable (%s); moved aside to %s", self.path, exc, aside)
            Path(self.path).rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            db = self._connect()
        # SQLite syncs the folder when it creates the WAL, not when it creates the database
        # file: without this a power cut soon after the first start could lose the file's name
        _fsync_dir(Path(self.path).parent)
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            # Durability, chosen for power loss (an industrial PC's normal failure):
            # - WAL: a commit appends to one file and syncs it once; readers never block the
            #   writer; a torn last append is detected by its checksum and rolled back on open.
            # - synchronous=FULL: the WAL is fsynced at every commit, so a `put` that returned
            #   survives a power cut. NORMAL would sync only at checkpoints: still consistent,
            #   but the last events before the cut could vanish after we said they were stored.
            #   EXTRA adds nothing in WAL mode. The cost is one fsync per event or ack (events
            #   are rare; measured in docs/deploy.md).
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            db.execute(_OPEN_SCHEMA)
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
        *,
        open_alert: OpenAlertChange | None = None,
    ) -> int:
        """Store a message durably (committed and fsynced on return); return its id.

        ``open_alert`` records (or forgets) an open alert in the same transaction, so the message
        and what the next start will end are never out of step, whenever the process dies.
        """
        if not isinstance(payload, bytes | bytearray):
            raise TypeError(f"outbox payload for {topic!r} must be bytes, got {type(payload)}")
        created = time.time() if created_at is None else float(created_at)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, created_at) "
                    "VALUES (?,?,?,?,?)",
                    (topic, bytes(payload), int(qos), int(bool(retain)), created),
                )
                row_id = cur.lastrowid
                assert row_id is not None  # set by every INSERT
                if open_alert is not None:
                    self._track(open_alert, row_id)
                self._rows += 1
                self._bytes += len(payload)
                dropped = self._enforce_bounds()
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                self._recount()
                raise
            self.put_total += 1
            self._log_dropped(dropped)
            return row_id

    def _track(self, change: OpenAlertChange, row_id: int) -> None:
        event_id, latest = change
        if latest is None:
            self._db.execute("DELETE FROM open_alerts WHERE event_id = ?", (event_id,))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO open_alerts (event_id, payload, message_id) VALUES (?,?,?)",
                (event_id, bytes(latest), row_id),
            )

    def _recount(self) -> None:
        """Counts from the table (after a rolled-back put)."""
        with contextlib.suppress(sqlite3.Error):
            self._rows, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()

    def open_alerts(self) -> list[tuple[str, bytes]]:
        """``(event id, latest payload)`` of every alert with no ``end`` stored, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, payload FROM open_alerts ORDER BY message_id"
            ).fetchall()
        return [(str(e), bytes(p)) for e, p in rows]

    def forget_open_alert(self, event_id: str) -> None:
        """Drop an open alert without a message (one whose payload cannot be read back)."""
        with self._lock:
            self._db.execute("DELETE FROM open_alerts WHERE event_id = ?", (event_id,))

    def _enforce_bounds(self) -> tuple[int, float]:
        """Delete the oldest rows beyond the bounds (inside the caller's transaction); return
        how many and the creation time of the last one."""
        dropped, oldest = 0, 0.0
        while self._rows > 1 and (self._rows > self.max_rows or self._bytes > self.max_bytes):
            row = self._db.execute(
                "SELECT id, LENGTH(payload), created_at FROM outbox ORDER BY id LIMIT 1"
            ).fetchone()
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self._rows -= 1
            self._bytes -= row[1]
            dropped += 1
            oldest = row[2]
        return dropped, oldest

    def _log_dropped(self, result: tuple[int, float]) -> None:
        dropped, oldest = result
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


def _fsync_dir(folder: Path) -> None:
    """Make the names in ``folder`` durable (file systems without directory fsync: skipped)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.warning("cannot open %s to sync it: %s", folder, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # e.g. EINVAL on some network file systems
        log.warning("cannot sync folder %s: %s", folder, exc)
    finally:
        os.close(fd)
