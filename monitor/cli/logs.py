"""Log lines for a terminal, or for the systemd journal with their priorities.

Under systemd, stderr is a stream into the journal and systemd names it in ``JOURNAL_STREAM``
(``<device>:<inode>``). There every line is stored at the unit's default priority (info) unless
it starts with a syslog priority ``<N>`` (sd-daemon(3)), so without the prefix
``journalctl -p warning`` would hide every warning and error of the daemon. The journal stamps
each line itself, so no time either. A child whose stderr goes elsewhere may inherit the
variable: the prefix is used only when stderr really is that stream.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


def syslog_priority(levelno: int) -> int:
    """syslog priority of a logging level: 7 debug, 6 info, 4 warning, 3 error, 2 critical."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class JournalFormatter(logging.Formatter):
    """Every line of a record (a traceback too) prefixed with the record's ``<priority>``."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is the journal stream systemd gave this process."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):  # closed, or not a real file
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def configure_logging(verbose: bool = False) -> None:
    """Root logging to stderr: journal priorities under systemd, timestamps on a terminal."""
    journal = stderr_is_journal()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JournalFormatter(JOURNAL_FORMAT) if journal else logging.Formatter(TERMINAL_FORMAT)
    )
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
