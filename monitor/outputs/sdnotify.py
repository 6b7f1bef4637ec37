"""systemd notification protocol (sd_notify) over `$NOTIFY_SOCKET`, with plain sockets.

Why not a library: the protocol is one datagram of `KEY=VALUE` lines to a Unix socket, and the
daemon must not depend on libsystemd. Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op.

The watchdog is the point: `WATCHDOG=1` is sent only while audio and inference progress, so a
wedged capture or inference makes systemd restart the service instead of letting it run deaf.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; a no-op when the service is not run by systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if addr.startswith("@"):  # abstract namespace: leading NUL byte
            self._addr = b"\0" + addr[1:].encode()
        elif addr.startswith("/"):
            self._addr = addr
        elif addr:
            log.warning("NOTIFY_SOCKET=%r is not a Unix socket path; systemd notify disabled", addr)
        self._watchdog_s = _watchdog_seconds(env)
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    @property
    def watchdog_seconds(self) -> float | None:
        """The unit's WatchdogSec for this process, or None when no watchdog is configured."""
        return self._watchdog_s

    def notify(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields in one datagram; True when sent. Never raises."""
        if self._addr is None or not fields:
            return False
        payload = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._addr)
                sock.sendall(payload)
        except OSError as exc:  # systemd gone or socket unreachable: log, never crash the daemon
            log.debug("sd_notify %r failed: %s", fields, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.notify(*fields)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd's notify-reload match the reload to this message.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog is meant for another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", usec)
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """Pings `WATCHDOG=1` at half the watchdog interval, but only while `progressing()` is True.

    `progressing` is the daemon's liveness rule (audio arriving and windows being scored); when it
    turns False the pings stop and systemd restarts the service after WatchdogSec.
    """

    def __init__(
        self,
        notifier: Notifier,
        progressing: Callable[[], bool],
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._progressing = progressing
        wd = notifier.watchdog_seconds
        self.interval_s = interval_s if interval_s is not None else (wd / 2 if wd else None)
        self._clock = clock
        self._last: float | None = None
        self.pings = 0
        self.withheld = 0

    def tick(self) -> bool:
        """Call often (e.g. every loop); returns True when a ping was sent now."""
        if self.interval_s is None:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        if not self._progressing():
            self.withheld += 1
            return False
        if self._notifier.watchdog():
            self.pings += 1
            return True
        return False
