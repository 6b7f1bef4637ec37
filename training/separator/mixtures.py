"""Training mixtures for the separator: clean machine sound + noise at a random SNR.

Where the parts come from (as in Ozeki et al., "Anomalous sound detection method using contrastive
learning", DCASE 2025, section 3.4): clean = the machine's supplemental clean clips, or its
normal training clips when it has none (then they are "clean" only relative to the added noise);
noise = supplemental noise-only clips plus any noise folders (e.g. ``../shared/data/
background_noise``, ``esc50_machine_noise_1s``). Each example is a random crop of one clean clip
and one noise clip (short noise is looped), mixed at an SNR drawn uniformly from ``snr_db``, with
a random overall gain so the network does not learn one absolute level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.audio.io import load_audio
from monitor.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac")


@dataclass(frozen=True)
class MixtureConfig:
    snr_db: tuple[float, float] = (-10.0, 10.0)
    crop_seconds: float = 1.0  # the U-Net sees +-7 frames: longer crops only cost time
    gain_db: tuple[float, float] = (-20.0, 0.0)  # applied to the mixture (and both parts)
    sample_rate: int = 16000

    @property
    def crop(self) -> int:
        return int(round(self.crop_seconds * self.sample_rate))


def load_noise_dirs(dirs: Sequence[str | Path], max_files: int | None = None) -> list[np.ndarray]:
    """Every WAV/FLAC under each folder (recursively), as 16 kHz mono float32."""
    out: list[np.ndarray] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise DataError(f"{d}: noise folder not found")
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise DataError(f"{d}: no .wav/.flac files in this noise folder")
        out.extend(load_audio(p) for p in files[:max_files])
    return out


def material(
    waves: np.ndarray,
    supplemental: np.ndarray | None,
    supplemental_kind: str | None,
    noise: Sequence[np.ndarray] = (),
) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(clean clips, noise clips, where the clean part came from) for one machine type."""
    clean: list[np.ndarray]
    if supplemental is not None and len(supplemental) and supplemental_kind == "clean":
        clean, why = list(supplemental), "supplemental clean clips"
    else:
        clean, why = list(waves), "normal training clips (no supplemental clean clips)"
    noises = list(noise)
    if supplemental is not None and len(supplemental) and supplemental_kind == "noise":
        noises.extend(supplemental)
    if not clean:
        raise DataError("separator training: no clean clips")
    if not noises:
        raise DataError(
            "separator training: no noise clips (no supplemental noise-only clips and no "
            "--noise-dir given)"
        )
    return clean, noises, why


def _crop(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if x.size < n:  # loop short clips (1 s ESC-50 pieces)
        x = np.tile(x, -(-n // x.size))
    start = int(rng.integers(0, x.size - n + 1))
    return x[start : start + n]


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Noise scaled so that 10 log10(P_clean / P_noise) = snr_db (returns the scaled noise)."""
    pc, pn = _power(clean), _power(noise)
    if pn <= 1e-20:
        return np.zeros_like(noise)
    return (noise * np.sqrt(max(pc, 1e-20) / (pn * 10.0 ** (snr_db / 10.0)))).astype(np.float32)


class MixtureSampler:
    """Draws (clean part, noise part) crops; the mixture is their sum."""

    def __init__(
        self,
        clean: Sequence[np.ndarray],
        noise: Sequence[np.ndarray],
        config: MixtureConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or MixtureConfig()
        usable = [np.asarray(c, np.float32) for c in clean if _power(c) > 1e-20]
        self.noise = [np.asarray(n, np.float32) for n in noise if _power(n) > 1e-20]
        if not usable or not self.noise:
            raise DataError("separator training: the clean or noise clips are all silent")
        self.clean = usable
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int, snr_db: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(clean [n, crop], noise [n, crop])``; SNR uniform in the config range unless given."""
        cfg, rng = self.config, self.rng
        cs, ns = [], []
        for _ in range(n):
            c = _crop(self.clean[int(rng.integers(len(self.clean)))], cfg.crop, rng)
            z = _crop(self.noise[int(rng.integers(len(self.noise)))], cfg.crop, rng)
            snr = float(rng.uniform(*cfg.snr_db)) if snr_db is None else snr_db
            z = mix_at_snr(c, z, snr)
            peak = max(float(np.abs(c + z).max()), 1e-9)
            g = 10.0 ** (float(rng.uniform(*cfg.gain_db)) / 20.0) / peak  # peak at the gain
            cs.append(c * g)
            ns.append(z * g)
        return np.stack(cs).astype(np.float32), np.stack(ns).astype(np.float32)
