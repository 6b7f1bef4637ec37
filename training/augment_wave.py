"""The waveform augmentations of Ozeki et al., "Anomalous sound detection method using
contrastive learning" (DCASE 2025, section 3.2): gain, polarity inversion, pitch shift, time
stretch, background noise from a noise folder and from the machine's noise-only clips.

Why own torch code instead of audiomentations for pitch shift / time stretch: audiomentations
0.43 runs librosa's phase vocoder one clip at a time in numpy; ours is the same algorithm on
torch's STFT with an FFT (band-limited) resampler. Measured per batch of 32 one-second crops
(`benchmarks/bench_ablation.py --timing`): pitch shift 0.107 s ours vs 0.100 s, time stretch
0.062 s vs 0.078 s: the same cost, but every draw comes from the caller's `torch.Generator`
(reproducible runs) and the level is kept. Gain, polarity and noise mixing are one vectorised
line each on the whole batch (< 1 ms).

Each augmentation has its own probability and range (`WaveAugmentConfig`, loadable from YAML or
JSON); every random draw comes from the caller's `torch.Generator`, so runs are reproducible.
Pitch shift and time stretch are OFF by default (p 0; ranges +-1 semitone and 0.9-1.1 kept for
configs; `WaveAugmentConfig.seed_set()` has all six): invariance to a speed change erases the speed
cues that mark some anomalies (a shifted or missing harmonic is one of the faults). Measured on the
SYNTHETIC benchmark with `stage2_ssl_supplemental`: all six 0.8015, without the two 0.8128
(`benchmarks/results/stage2.md`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monitor.errors import ConfigError, DataError
from training.train_utils import one_torch_thread

SR = 16000
N_FFT = 512
HOP = 128
NAMES: tuple[str, ...] = (
    "gain",
    "polarity",
    "pitch_shift",
    "time_stretch",
    "noise",
    "supplemental_noise",
)
SPEED = ("pitch_shift", "time_stretch")  # the two that imitate a speed change
_UNITS = {
    "gain": "dB",
    "polarity": "-",
    "pitch_shift": "semitones",
    "time_stretch": "rate (>1 = faster, shorter)",
    "noise": "SNR dB",
    "supplemental_noise": "SNR dB",
}


@dataclass(frozen=True)
class AugSpec:
    """Probability of applying one augmentation to a view, and the range its value is drawn from."""

    p: float
    low: float = 0.0
    high: float = 0.0


def _default_specs() -> dict[str, AugSpec]:
    return {
        "gain": AugSpec(0.5, -6.0, 6.0),
        "polarity": AugSpec(0.5),
        # Off by default (measured, module docstring); `seed_set()` switches them on.
        "pitch_shift": AugSpec(0.0, -1.0, 1.0),
        "time_stretch": AugSpec(0.0, 0.9, 1.1),
        "noise": AugSpec(0.5, 5.0, 20.0),
        "supplemental_noise": AugSpec(0.5, 0.0, 15.0),
    }


@dataclass(frozen=True)
class WaveAugmentConfig:
    """Per-augmentation probability and range; see `_UNITS` for each range's unit."""

    specs: dict[str, AugSpec] = field(default_factory=_default_specs)

    def __post_init__(self) -> None:
        unknown = set(self.specs) - set(NAMES)
        if unknown:
            raise ConfigError(f"augmentation config: unknown augmentation(s) {sorted(unknown)}")
        for name, s in self.specs.items():
            if not 0.0 <= s.p <= 1.0:
                raise ConfigError(f"augmentation {name!r}: p must be in [0, 1], got {s.p}")
            if s.low > s.high:
                raise ConfigError(f"augmentation {name!r}: range ({s.low}, {s.high}) is reversed")
            if name == "time_stretch" and s.low <= 0:
                raise ConfigError(f"augmentation 'time_stretch': rates must be > 0, got {s.low}")
            if name == "pitch_shift" and max(abs(s.low), abs(s.high)) > 12:
                raise ConfigError(f"augmentation 'pitch_shift': |semitones| > 12: {s}")

    @classmethod
    def seed_set(cls) -> WaveAugmentConfig:
        """All six augmentations of Ozeki et al. on (pitch shift and time stretch at p 0.3)."""
        specs = _default_specs()
        for name in SPEED:
            specs[name] = replace(specs[name], p=0.3)
        return cls(specs)

    def active(self, name: str) -> bool:
        return name in self.specs and self.specs[name].p > 0

    def without(self, *names: str) -> WaveAugmentConfig:
        """The same config with `names` switched off (the ablation)."""
        bad = set(names) - set(NAMES)
        if bad:
            raise ConfigError(f"unknown augmentation(s) {sorted(bad)}; choose from {NAMES}")
        specs = {k: (replace(v, p=0.0) if k in names else v) for k, v in self.specs.items()}
        return WaveAugmentConfig(specs)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {k: {"p": v.p, "range": [v.low, v.high]} for k, v in self.specs.items()}

    @classmethod
    def from_mapping(cls, data: Any, source: str = "augmentation config") -> WaveAugmentConfig:
        """`{name: {"p": 0.5, "range": [lo, hi]}}`; names left out keep their defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of augmentation names, got {data!r}")
        specs = _default_specs()
        for name, entry in data.items():
            if name not in NAMES:
                raise ConfigError(f"{source}: unknown augmentation {name!r}; choose from {NAMES}")
            if not isinstance(entry, dict) or set(entry) - {"p", "range"}:
                raise ConfigError(
                    f"{source}: {name!r} must be a mapping with keys 'p' and/or 'range', got "
                    f"{entry!r}"
                )
            old = specs[name]
            lo, hi = entry.get("range", (old.low, old.high))
            try:
                specs[name] = AugSpec(float(entry.get("p", old.p)), float(lo), float(hi))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{source}: {name!r} has a non-numeric value: {entry!r}") from exc
        try:
            return cls(specs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> WaveAugmentConfig:
        """Read a YAML (.yaml/.yml) or JSON file."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read the augmentation config ({exc})") from exc
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
            raise ConfigError(f"{p}: not valid {p.suffix or 'JSON'}: {exc}") from exc
        return cls.from_mapping(data, source=str(p))

    def describe(self) -> dict[str, str]:
        return {
            k: f"p={v.p:g}" + (f", {v.low:g}..{v.high:g} {_UNITS[k]}" if k != "polarity" else "")
            for k, v in self.specs.items()
        }


# --------------------------------------------------------------------------- single operations


def gain(x: torch.Tensor, db: torch.Tensor | float) -> torch.Tensor:
    """Scale each row of [B, L] (or a 1-D clip) by `db` decibels: the RMS changes by `db` dB."""
    db_t = torch.as_tensor(db, dtype=x.dtype)
    factor = torch.pow(10.0, db_t / 20.0)
    return x * (factor.unsqueeze(-1) if factor.dim() and x.dim() > 1 else factor)


def invert_polarity(x: torch.Tensor) -> torch.Tensor:
    """Negate the waveform. Kept because Ozeki et al. list it, but a power-spectrogram front end
    (CED's, the ResNet's) gives the same input for -x as for x: for them it is a no-op."""
    return -x


def _hann(n_fft: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(n_fft, periodic=True, device=device)


def time_stretch(x: torch.Tensor, rate: float, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """Phase-vocoder time stretch of a 1-D clip: duration / `rate`, pitch kept.

    The STFT is read at fractional frames t = 0, rate, 2 rate, ...; magnitudes are interpolated
    between neighbouring frames, and each bin's phase advances by its measured instantaneous
    frequency (expected advance + wrapped deviation), which keeps sinusoids at their pitch.
    """
    if x.dim() != 1:
        raise ValueError(f"time_stretch: expected a 1-D clip, got {tuple(x.shape)}")
    if rate <= 0:
        raise ValueError(f"time_stretch: rate must be > 0, got {rate}")
    if abs(rate - 1.0) < 1e-6:
        return x.clone()
    length = x.shape[0]
    win = _hann(n_fft, x.device)
    spec = torch.stft(x, n_fft, hop, window=win, center=True, return_complex=True)  # [F, T]
    n_bins, n_frames = spec.shape
    steps = torch.arange(0, n_frames, rate, device=x.device, dtype=torch.float64)
    spec = torch.cat([spec, torch.zeros_like(spec[:, :1])], dim=1)  # one frame past the end
    i0 = steps.floor().long()
    frac = (steps - i0).to(x.dtype)
    mag = (1 - frac) * spec[:, i0].abs() + frac * spec[:, i0 + 1].abs()
    expected = torch.linspace(0, math.pi * hop, n_bins, device=x.device, dtype=x.dtype)[:, None]
    dphi = spec[:, i0 + 1].angle() - spec[:, i0].angle() - expected
    dphi = dphi - 2 * math.pi * torch.round(dphi / (2 * math.pi))
    phase = torch.cumsum(expected + dphi, dim=1)
    phase = torch.cat([spec[:, :1].angle(), phase[:, :-1] + spec[:, :1].angle()], dim=1)
    out_len = max(1, int(round(length / rate)))
    y = torch.istft(torch.polar(mag, phase), n_fft, hop, window=win, length=out_len)
    return _match_rms(y, x)


def _match_rms(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Give `y` the RMS of `ref`. Why: a phase vocoder loses level where neighbouring bins of one
    partial drift out of phase (up to -3.4 dB on a pure tone when slowing down); the level is
    the gain augmentation's job, not a side effect of stretching."""
    return y * (ref.square().mean().sqrt() / y.square().mean().sqrt().clamp_min(1e-12))


def resample_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Band-limited (FFT) resampling of a 1-D clip to `length` samples."""
    n = x.shape[0]
    if n == length:
        return x.clone()
    spec = torch.fft.rfft(x)
    keep = min(spec.shape[0], length // 2 + 1)
    out = torch.zeros(length // 2 + 1, dtype=spec.dtype, device=x.device)
    out[:keep] = spec[:keep]
    return torch.fft.irfft(out, n=length) * (length / n)


def pitch_shift(
    x: torch.Tensor, semitones: float, n_fft: int = N_FFT, hop: int = HOP
) -> torch.Tensor:
    """Shift the pitch of a 1-D clip by `semitones`, keeping its duration.

    Stretch the clip to `factor` times its duration (pitch kept), then resample it back to the
    original length: playing it `factor` times faster raises every frequency by `factor`.
    """
    if abs(semitones) < 1e-6:
        return x.clone()
    factor = 2.0 ** (semitones / 12.0)
    return resample_to(time_stretch(x, 1.0 / factor, n_fft, hop), x.shape[0])


def mix_at_snr(x: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Add `noise` [B, L] to `x` [B, L] scaled so that power(x) / power(noise) = `snr_db` [B]."""
    px = x.square().mean(dim=1).clamp_min(1e-12)
    pn = noise.square().mean(dim=1).clamp_min(1e-12)
    scale = torch.sqrt(px / pn * torch.pow(10.0, -snr_db / 10.0))
    return x + noise * scale[:, None]


# --------------------------------------------------------------------------- noise banks


def load_noise_dir(
    folder: str | os.PathLike, max_files: int = 500, max_seconds: float = 30.0
) -> list[np.ndarray]:
    """Every .wav/.flac under `folder` (recursively, sorted), mono 16 kHz, at most `max_seconds`
    each and `max_files` files (spread evenly over the sorted list), for background mixing."""
    from monitor.audio.io import load_audio

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: noise folder not found (or not a folder)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    if not files:
        raise DataError(f"{root}: no .wav or .flac files in this noise folder")
    if len(files) > max_files:
        pick = np.linspace(0, len(files) - 1, max_files).round().astype(int)
        files = [files[i] for i in pick]
    limit = int(max_seconds * SR)
    bank = [load_audio(p, sr=SR)[:limit] for p in files]
    bank = [b for b in bank if b.size >= N_FFT and np.abs(b).max() > 0]
    if not bank:
        raise DataError(f"{root}: every noise file is silent or shorter than {N_FFT} samples")
    return bank


class NoiseBank:
    """Noise clips to draw random segments of any length from (short clips are tiled)."""

    def __init__(self, clips: list[np.ndarray] | np.ndarray, name: str = "noise") -> None:
        self.clips = [np.asarray(c, np.float32).ravel() for c in clips]
        self.clips = [c for c in self.clips if c.size > 0 and np.abs(c).max() > 0]
        if not self.clips:
            raise DataError(f"{name}: the noise bank is empty (no non-silent clip)")
        self.name = name

    def __len__(self) -> int:
        return len(self.clips)

    def sample(self, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
        """`n` random segments of `length` samples, [n, length]."""
        picks = torch.randint(len(self.clips), (n,), generator=gen).tolist()
        offsets = torch.rand(n, generator=gen).tolist()
        out = np.empty((n, length), np.float32)
        for row, (i, u) in enumerate(zip(picks, offsets, strict=True)):
            c = self.clips[i]
            if c.size < length:
                c = np.tile(c, length // c.size + 1)
            start = int(u * (c.size - length + 1))
            out[row] = c[start : start + length]
        return torch.from_numpy(out)


# --------------------------------------------------------------------------- the chain


def _uniform(n: int, spec: AugSpec, gen: torch.Generator) -> torch.Tensor:
    return spec.low + (spec.high - spec.low) * torch.rand(n, generator=gen)


class WaveAugmenter:
    """Applies the configured chain to a batch of waveform crops.

    Order: time stretch, pitch shift (per clip), background noise (noise folder, then the
    machine's noise-only clips), gain, polarity. The input crop is longer than the output
    (`input_length(out)`) so that a sped-up clip still fills the output; the output is the
    stretched crop's first `out_len` samples.
    """

    def __init__(
        self,
        config: WaveAugmentConfig | None = None,
        noise: NoiseBank | None = None,
        supplemental_noise: NoiseBank | None = None,
    ) -> None:
        self.config = config or WaveAugmentConfig()
        self.noise, self.supplemental_noise = noise, supplemental_noise
        self.seconds: dict[str, float] = dict.fromkeys(NAMES, 0.0)  # time spent, per augmentation

    def enabled(self) -> list[str]:
        """Augmentations that can fire (configured p > 0 and, for noise, a bank to draw from)."""
        banks = {"noise": self.noise, "supplemental_noise": self.supplemental_noise}
        return [
            n for n in NAMES if self.config.active(n) and (n not in banks or banks[n] is not None)
        ]

    def input_length(self, out_len: int) -> int:
        """Samples to feed in so that the fastest time stretch still gives `out_len`."""
        if not self.config.active("time_stretch"):
            return out_len
        return int(math.ceil(out_len * max(1.0, self.config.specs["time_stretch"].high))) + 1

    def __call__(
        self,
        x: torch.Tensor,
        out_len: int,
        gen: torch.Generator,
        force_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Augment crops [B, >= input_length(out_len)] -> [B, out_len].

        `force_noise` [B] bool: rows that always get a background (clean clips as the clean part
        of a mixture), from the noise folder bank, else from the machine's noise-only clips.
        """
        import time

        if x.dim() != 2 or x.shape[1] < out_len:
            raise ValueError(f"WaveAugmenter: need [B, >= {out_len}], got {tuple(x.shape)}")
        on = set(self.enabled())
        cfg = self.config.specs
        b = x.shape[0]
        rows = list(x)
        for name, op in (("time_stretch", time_stretch), ("pitch_shift", pitch_shift)):
            if name not in on:
                continue
            t0 = time.perf_counter()
            fire = (torch.rand(b, generator=gen) < cfg[name].p).tolist()
            values = _uniform(b, cfg[name], gen).tolist()
            with one_torch_thread():  # small per-clip FFTs
                for i in range(b):
                    if fire[i]:
                        y = op(rows[i], values[i])
                        if y.shape[0] < out_len:  # a slowed-down crop never is; guard anyway
                            y = torch.cat([y, y.new_zeros(out_len - y.shape[0])])
                        rows[i] = y
            self.seconds[name] += time.perf_counter() - t0
        out = torch.stack([r[:out_len] for r in rows])
        forced_bank = "noise" if "noise" in on else "supplemental_noise"
        for name, bank in (("noise", self.noise), ("supplemental_noise", self.supplemental_noise)):
            if name not in on or bank is None:
                continue
            t0 = time.perf_counter()
            fire = torch.rand(b, generator=gen) < cfg[name].p
            if force_noise is not None and name == forced_bank:
                fire = fire | force_noise.bool()
            snr = _uniform(b, cfg[name], gen)
            noisy = mix_at_snr(out, bank.sample(b, out_len, gen), snr)
            out = torch.where(fire[:, None], noisy, out)
            self.seconds[name] += time.perf_counter() - t0
        if "gain" in on:
            fire = torch.rand(b, generator=gen) < cfg["gain"].p
            out = gain(out, _uniform(b, cfg["gain"], gen) * fire)
        if "polarity" in on:
            fire = torch.rand(b, generator=gen) < cfg["polarity"].p
            out = torch.where(fire[:, None], invert_polarity(out), out)
        return out
