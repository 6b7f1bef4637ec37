"""Is a window of audio fit to be scored? The daemon's window rules, for offline scoring too.

The daemon does not score a window of digital silence or heavy clipping
(`InferenceWorker.skip_reason`) and, when it lasts, calls the source unhealthy (capture
liveness): a dead or overloaded microphone must raise a capture alarm, not an anomaly. Offline
(`sonitor score`) the same audio used to get a huge score and no word about it; `check_window`
applies the same limits (`LivenessSpec`'s defaults, which are the config's) so it can say so.

One rule goes further than the daemon's RMS level: sound only outside the model's band, i.e. a DC
offset or a sub-audio drift (a 1 Hz "tone") of a broken input, measures loud but is silence to
the model. `band_level_dbfs` measures the level between `LOW_EDGE_HZ` and `BAND_EDGE_HZ`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from monitor.audio.frontend import BAND_EDGE_HZ, SAMPLE_RATE
from monitor.audio.windowing import CLIP_LEVEL, SILENCE_DBFS, level_dbfs

LOW_EDGE_HZ = 20.0  # below: DC, drift and rumble that no machine sound is made of

SILENT, CLIPPED, NO_BAND_SIGNAL = "silent", "clipped", "no_band_signal"


@dataclass(frozen=True)
class WindowCheck:
    """What one window's audio looks like, and why it would not be scored (None: it would)."""

    problem: str | None  # SILENT | CLIPPED | NO_BAND_SIGNAL (the daemon's order) | None
    level_dbfs: float  # RMS level, as the daemon's windows report it
    band_level_dbfs: float  # RMS level between LOW_EDGE_HZ and BAND_EDGE_HZ
    clipped_fraction: float  # samples at full scale

    def describe(self, silence_dbfs: float, clip_fraction: float) -> str:
        """A plain-words reason for the problem (empty when there is none)."""
        if self.problem == SILENT:
            level = (
                "exact zeros" if self.level_dbfs <= SILENCE_DBFS else f"{self.level_dbfs:.1f} dBFS"
            )
            return f"digital silence ({level}; limit {silence_dbfs:g} dBFS)"
        if self.problem == CLIPPED:
            return (
                f"clipping ({100 * self.clipped_fraction:.1f}% of samples at full scale; limit "
                f"{100 * clip_fraction:g}%)"
            )
        if self.problem == NO_BAND_SIGNAL:
            return (
                f"no sound in {LOW_EDGE_HZ:g}-{BAND_EDGE_HZ:g} Hz ({self.band_level_dbfs:.1f} dBFS "
                f"there, {self.level_dbfs:.1f} dBFS overall: a DC offset or sub-audio drift only)"
            )
        return ""

    def consequence(self) -> str:
        """What the problem means for a score of this audio."""
        if self.problem in (SILENT, CLIPPED):
            return (
                "the daemon does not score such windows (and, when it lasts, reports the "
                "microphone), so this score says nothing about the machine"
            )
        return "a dead input, not machine sound: this score says nothing about the machine"


def band_level_dbfs(
    x: np.ndarray, sr: int = SAMPLE_RATE, lo: float = LOW_EDGE_HZ, hi: float = BAND_EDGE_HZ
) -> float:
    """RMS level in dBFS of the sound between ``lo`` and ``hi`` Hz (full-scale sine: -3 dBFS).

    Hann-windowed spectrum, scaled so that stationary sound reads as its RMS: the window's
    leakage keeps a 1 Hz tone out of the band in windows of about a second or longer.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size < 2:
        return SILENCE_DBFS
    w = np.hanning(x.size)
    spec = np.fft.rfft((x - x.mean()) * w)
    freqs = np.fft.rfftfreq(x.size, 1.0 / sr)
    sel = (freqs >= lo) & (freqs <= hi)
    ms = 2.0 * float(np.sum(np.abs(spec[sel]) ** 2)) / (x.size * float(np.sum(w * w)))
    return 10.0 * math.log10(ms) if ms > 1e-20 else SILENCE_DBFS


def check_window(
    x: np.ndarray,
    *,
    silence_dbfs: float,
    clip_fraction: float,
    sr: int = SAMPLE_RATE,
) -> WindowCheck:
    """The daemon's verdict on one window (16 kHz audio): silent, clipped, or no band signal."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    level = level_dbfs(x)
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL)) if x.size else 0.0
    band = band_level_dbfs(x, sr)
    problem: str | None = None
    if level <= silence_dbfs:
        problem = SILENT
    elif clipped > clip_fraction:
        problem = CLIPPED
    elif band <= silence_dbfs:
        problem = NO_BAND_SIGNAL
    return WindowCheck(problem, level, band, clipped)
