"""Guards for paho callbacks: an exception must never end a client's network thread.

Why: paho re-raises an exception from a user callback (``suppress_exceptions`` is off by
default) out of ``loop_forever``, so its network thread ends silently; the connection stays
open, commands are no longer read, acknowledgements pile up, and nothing says so. Every
callback we hand to paho goes through `CallbackGuard.wrap`: the exception is counted, logged
with its traceback the first time per (callback, exception type) and in one DEBUG line after
that (a flood of bad messages must not flood the journal), and swallowed.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any


class CallbackGuard:
    """Wraps callbacks; ``errors`` counts the exceptions it swallowed (all callbacks together)."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.log = logger
        self.what = what  # who owns the callbacks, for the log ("MQTT", "Sparkplug")
        self.errors = 0
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., None]:
        """``fn`` as a paho callback named ``name`` that never raises an ``Exception``."""

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the point: keep the network thread alive
                self._report(name, exc)

        return guarded

    def _report(self, name: str, exc: Exception) -> None:
        kind = (name, type(exc).__name__)
        with self._lock:
            self.errors += 1
            first = kind not in self._seen
            self._seen.add(kind)
        if first:
            self.log.error(
                "%s %s callback failed (%s; ignored, counted; further ones are logged at DEBUG)",
                self.what,
                name,
                kind[1],
                exc_info=exc,
            )
        else:
            self.log.debug("%s %s callback failed again: %r", self.what, name, exc)
