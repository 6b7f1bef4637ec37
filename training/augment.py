"""The augmentations of Shin & Lee, "Two-stage contrastive learning for anomalous sound detection"
(DCASE 2023): pitch shift, white noise, time masking, made cheap on 2 CPU cores.

Where each one is applied, and why:
- pitch shift: in the log-mel domain. Resampling the mel axis at the bands' centre frequencies
  divided by the shift ratio costs ~5 ms per batch of 48 two-second crops; librosa's waveform
  pitch shift costs 15-50 ms per crop or clip, 0.3-0.7 s per batch (a quarter to half of a
  ResNet step on this CPU), and precomputed copies fix the shift per clip. The level is
  corrected by each filter's area so a broadband spectrum keeps its power density; a shifted
  tone lands in the band of the really shifted tone (+-1) with its summed band power (+-0.5 dB).
- white Gaussian noise: in the waveform domain, then the crop's log-mel is recomputed. Noise adds
  random, frequency-resolved power (and cross terms) that no deterministic log-mel operation
  reproduces, and one extra log-mel of a short crop is cheap.
- time masking: in the log-mel domain (the paper masks the mel-spectrogram), filling the span with
  the view's own minimum: zeroed audio would give the 10*log10(eps) floor (-157 dB), a value
  far outside real recordings that would dominate the network's input statistics.

The paper's "augmented set six times larger than the original" is read as two variants of each
of the three augmentations: pitch up / down, loud / quiet noise, 0.5 s / 1 s mask.
Everything random comes from a caller's `torch.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

KINDS: tuple[str, ...] = (
    "pitch_up",
    "pitch_down",
    "noise_loud",
    "noise_quiet",
    "mask_short",
    "mask_long",
)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of Shin & Lee's augmentations (see module docstring)."""

    min_semitones: float = 1.0  # |shift| drawn uniformly in [min, max]; 12 = one octave
    max_semitones: float = 12.0
    noise_db: tuple[float, float] = (-24.0, -6.0)  # noise power relative to the signal power
    mask_seconds: tuple[float, float] = (0.5, 1.0)  # short, long
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        if not 0 <= self.min_semitones <= self.max_semitones <= 24:
            raise ValueError(
                f"AugmentConfig: need 0 <= min_semitones <= max_semitones <= 24, got "
                f"{self.min_semitones}, {self.max_semitones}"
            )
        lo, hi = self.noise_db
        if not lo <= hi:
            raise ValueError(f"AugmentConfig: noise_db must be (low, high), got {self.noise_db}")
        if min(self.mask_seconds) <= 0:
            raise ValueError(f"AugmentConfig: mask_seconds must be > 0, got {self.mask_seconds}")
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"AugmentConfig: unknown kinds {sorted(unknown)}; choose from {KINDS}")

    def noise_range(self, kind: str) -> tuple[float, float]:
        """Loud noise: upper half of the dB range; quiet noise: lower half."""
        lo, hi = self.noise_db
        mid = (lo + hi) / 2
        return (mid, hi) if kind == "noise_loud" else (lo, mid)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


# --------------------------------------------------------------------------- noise


def add_white_noise(
    waves: torch.Tensor, level_db: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add white Gaussian noise whose power is `level_db` relative to each clip's mean power.

    `waves` [B, S], `level_db` [B] (e.g. -6 gives an SNR of 6 dB). A silent clip stays silent.
    """
    if waves.dim() != 2 or level_db.shape != (waves.shape[0],):
        raise ValueError(
            f"add_white_noise: need waves [B, S] and level_db [B], got {tuple(waves.shape)} and "
            f"{tuple(level_db.shape)}"
        )
    power = waves.pow(2).mean(dim=1, keepdim=True)
    std = torch.sqrt(power * 10.0 ** (level_db.to(waves.dtype)[:, None] / 10.0))
    noise = torch.randn(waves.shape, generator=generator, dtype=waves.dtype)
    return waves + std * noise.to(waves.device)


# --------------------------------------------------------------------------- pitch shift


class MelPitchShift:
    """Pitch shift of dB log-mels [B, M, T] by resampling the mel axis.

    A pitch shift by ratio r moves energy at frequency f to r*f. Band m of the shifted view is
    read, by linear interpolation of the mel power, at the fractional band whose centre is
    c_m / r; the level is scaled by area_m / (r * area_source) so that a broadband spectrum keeps
    its power density (energy per Hz is spread over r times the bandwidth). Bands whose source
    lies above the top band are set to the view's minimum (a real downward shift leaves them
    empty); sources below the lowest band read the lowest band.
    """

    def __init__(self, fb: np.ndarray, sample_rate: int, n_fft: int) -> None:
        fb = np.asarray(fb, dtype=np.float64)  # [F, M] as in monitor.audio.frontend.mel_filterbank
        if fb.ndim != 2 or fb.shape[0] != n_fft // 2 + 1:
            raise ValueError(f"MelPitchShift: fb must be [n_fft // 2 + 1, M], got {fb.shape}")
        freqs = np.linspace(0.0, sample_rate / 2.0, fb.shape[0])
        area = fb.sum(axis=0)
        if (area <= 0).any():
            raise ValueError("MelPitchShift: a mel filter is empty (too many mels for this n_fft)")
        centres = (fb * freqs[:, None]).sum(axis=0) / area
        if np.any(np.diff(centres) <= 0):
            raise ValueError("MelPitchShift: mel filter centres must increase")
        self.centres = torch.from_numpy(centres)
        self.log_area = torch.from_numpy(np.log10(area))
        self.n_mels = fb.shape[1]

    def positions(self, semitones: torch.Tensor) -> torch.Tensor:
        """Fractional source band of every output band: [B, M] (> M - 1 means 'above the top')."""
        ratio = 2.0 ** (semitones.double()[:, None] / 12.0)
        src_hz = self.centres[None, :] / ratio  # [B, M]
        idx = torch.searchsorted(self.centres, src_hz.contiguous()).clamp(1, self.n_mels - 1)
        lo_c, hi_c = self.centres[idx - 1], self.centres[idx]
        pos = (idx - 1) + (src_hz - lo_c) / (hi_c - lo_c)
        return pos.clamp(min=0.0)  # below the lowest centre: read the lowest band

    def __call__(self, logmel: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
        if logmel.dim() != 3 or logmel.shape[1] != self.n_mels:
            raise ValueError(
                f"MelPitchShift: expected log-mel [B, {self.n_mels}, T], got {tuple(logmel.shape)}"
            )
        pos = self.positions(semitones)  # [B, M] float64
        above = pos > self.n_mels - 1
        pos = pos.clamp(max=self.n_mels - 1)
        i0 = pos.floor().long().clamp(max=self.n_mels - 2)
        frac = (pos - i0).to(logmel.dtype)[:, :, None]
        ref = logmel.amax(dim=(1, 2), keepdim=True)  # work relative to the max: no overflow
        power = torch.pow(10.0, (logmel - ref) / 10.0)
        t = logmel.shape[2]
        p0 = torch.gather(power, 1, i0[:, :, None].expand(-1, -1, t))
        p1 = torch.gather(power, 1, (i0 + 1)[:, :, None].expand(-1, -1, t))
        mixed = (1 - frac) * p0 + frac * p1
        # level: area of the output band over r times the (interpolated) area of the source band
        la = self.log_area
        src_area = (1 - (pos - i0)) * la[i0] + (pos - i0) * la[i0 + 1]
        gain_db = 10.0 * (la[None, :] - src_area - semitones.double()[:, None] / 12.0 * np.log10(2))
        floor = logmel.amin(dim=(1, 2), keepdim=True)
        out = (
            10.0 * torch.log10(mixed.clamp(min=1e-30)) + ref + gain_db.to(logmel.dtype)[:, :, None]
        )
        out = torch.maximum(out, floor)
        return torch.where(above[:, :, None], floor.expand_as(out), out)


# --------------------------------------------------------------------------- time masking


def time_mask(
    logmel: torch.Tensor, width: torch.Tensor | int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Set a random span of `width` frames (per item) of [B, M, T] to each item's minimum.

    Spans longer than the view are cut to the view. Returns a new tensor.
    """
    b, _, t = logmel.shape
    width = torch.as_tensor(width).expand(b).clamp(0, t)
    start = (torch.rand(b, generator=generator) * (t - width + 1)).floor().long()
    frames = torch.arange(t)[None, :]
    masked = (frames >= start[:, None]) & (frames < (start + width)[:, None])  # [B, T]
    floor = logmel.amin(dim=(1, 2), keepdim=True)
    return torch.where(masked[:, None, :].to(logmel.device), floor, logmel)


def seconds_to_frames(seconds: float, sample_rate: int, hop: int) -> int:
    return max(1, int(round(seconds * sample_rate / hop)))


# --------------------------------------------------------------------------- views


class Augmenter:
    """Makes Shin & Lee's augmented view of a batch of log-mel crops, one kind per item.

    `logmel_fn(waves)` must turn the waveform crops given to `__call__` into exactly the log-mel
    crops given with them; it is only called for the noise kinds.
    """

    def __init__(
        self,
        fb: np.ndarray,
        *,
        sample_rate: int,
        n_fft: int,
        hop: int,
        logmel_fn: object,
        config: AugmentConfig | None = None,
    ) -> None:
        self.config = config or AugmentConfig()
        self.pitch = MelPitchShift(fb, sample_rate, n_fft)
        self.logmel_fn = logmel_fn
        short, long = self.config.mask_seconds
        self.mask_frames = {
            "mask_short": seconds_to_frames(short, sample_rate, hop),
            "mask_long": seconds_to_frames(long, sample_rate, hop),
        }

    def sample_kinds(self, n: int, generator: torch.Generator | None = None) -> list[str]:
        """One kind per item, uniformly over the configured kinds."""
        idx = torch.randint(len(self.config.kinds), (n,), generator=generator)
        return [self.config.kinds[i] for i in idx.tolist()]

    @torch.no_grad()
    def __call__(
        self,
        logmel: torch.Tensor,
        waves: torch.Tensor | None,
        kinds: list[str],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if len(kinds) != logmel.shape[0]:
            raise ValueError(f"Augmenter: {len(kinds)} kinds for {logmel.shape[0]} views")
        out = logmel.clone()
        cfg = self.config
        for kind in dict.fromkeys(kinds):  # each kind once, in first-seen order
            sel = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
            n = len(sel)
            if kind in ("pitch_up", "pitch_down"):
                st = _uniform(n, cfg.min_semitones, cfg.max_semitones, generator).double()
                st = st if kind == "pitch_up" else -st
                out[sel] = self.pitch(logmel[sel], st)
            elif kind in ("noise_loud", "noise_quiet"):
                if waves is None:
                    raise ValueError("Augmenter: noise views need the waveform crops")
                level = _uniform(n, *cfg.noise_range(kind), generator)
                noisy = add_white_noise(waves[sel], level, generator)
                out[sel] = self.logmel_fn(noisy).to(out.dtype)  # type: ignore[operator]
            else:
                out[sel] = time_mask(logmel[sel], self.mask_frames[kind], generator)
        return out
