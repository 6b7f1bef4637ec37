"""A progress count on one stderr line, for the runtime's long offline loops (enrolment).

The runtime has no tqdm (it comes with the `train` extra), and needs no more than ``label 3/40``
redrawn in place. Drawn only on a terminal: in the journal or a CI log each redraw would become a
line of its own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import TextIO, TypeVar

T = TypeVar("T")


def progress(items: Sequence[T], label: str, stream: TextIO | None = None) -> Iterator[T]:
    """Yield ``items``, showing ``label i/n`` on ``stream`` (stderr) when it is a terminal."""
    out = stream or sys.stderr
    try:
        shown = len(items) > 1 and out.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        shown = False
    if not shown:
        yield from items
        return
    text = ""
    try:
        for i, item in enumerate(items):
            text = f"{label} {i + 1}/{len(items)}"
            out.write("\r" + text)
            out.flush()
            yield item
    finally:  # leave the line empty for what is printed next
        out.write("\r" + " " * len(text) + "\r")
        out.flush()
