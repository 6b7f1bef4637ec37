"""The level rule's reference: how loud a condition's normal sound is, and how much that varies.

Why not the median and spread of the enrolled windows: windows of one recording agree to a
fraction of a dB, while takes of the same machine differ by a dB or more (load, temperature,
a door), and a condition is often enrolled from one long recording plus a few clips. Measured on
the false-alarm benchmark (SYNTHETIC pump, target condition): the enrolled median sat 0.7 dB
above the held-out takes, whose one-minute medians spread over 2.6 dB, so a -3 dB gain change
crossed a 4.5 dB rule seven times an hour. Here every recording (or, for a condition with
fewer than `MIN_CHUNKS` recordings, every contiguous chunk of one) weighs the same, and the rule
fires only when a window's level leaves the prediction bound of normal takes by more than
``shift_db``: a change of ``shift_db`` or less alone never raises a level event.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.stats import t as student_t

MIN_CHUNKS = 5  # a condition with fewer recordings is cut into about this many time chunks
CONFIDENCE = 0.99  # one-sided: a normal take's level stays within the bound this often


class LevelReference(NamedTuple):
    """A condition's enrolled level and the variation of normal sound around it."""

    level: float  # dBFS: median over recordings of each recording's median window level
    spread: float  # dB: sd of a window's level around `level` (between takes and within one)
    takes: int  # recordings (or chunks) behind it

    @property
    def natural_db(self) -> float:
        """How far a normal window's level may sit from `level` (upper prediction bound)."""
        dof = max(self.takes - 1, 1)
        t = float(student_t.ppf(CONFIDENCE, dof))
        return t * self.spread * math.sqrt(1.0 + 1.0 / self.takes)

    def threshold_db(self, shift_db: float) -> float:
        """The level rule's threshold: ``shift_db`` beyond natural variation."""
        return shift_db + self.natural_db


def level_reference(levels: np.ndarray, groups: np.ndarray) -> LevelReference | None:
    """The reference of one condition from its windows' levels (dBFS, NaN = unknown) and the
    recording each window came from (windows of a recording in time order); None with fewer
    than 3 known levels."""
    levels = np.asarray(levels, dtype=np.float64)
    groups = np.asarray(groups)
    keep = np.isfinite(levels)
    levels, groups = levels[keep], groups[keep]
    if levels.size < 3:
        return None
    order = np.argsort(groups, kind="stable")  # each recording's windows together, in order
    cuts = np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1
    takes = np.split(levels[order], cuts)
    if len(takes) < MIN_CHUNKS:  # cut each recording into contiguous chunks
        per = math.ceil(MIN_CHUNKS / len(takes))
        takes = [c for v in takes for c in np.array_split(v, min(per, v.size))]
    medians = np.asarray([np.median(v) for v in takes])
    within = np.concatenate([v - np.median(v) for v in takes])
    within_sd = 1.4826 * float(np.median(np.abs(within)))
    between_sd = float(np.std(medians, ddof=1)) if medians.size > 1 else 0.0
    return LevelReference(
        float(np.median(medians)), math.hypot(between_sd, within_sd), int(medians.size)
    )
