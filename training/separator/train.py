"""Train the mask U-Net on synthetic mixtures; evaluate it on held-out ones.

Target: the hard (binary) mask of Ozeki et al., "Anomalous sound detection method using
contrastive learning" (DCASE 2025), computed in the domain the mask is applied in:
1 where the clean part's mel power exceeds the noise part's, per mel band and frame. Loss: binary
cross-entropy on the U-Net's logits. Each step draws fresh mixtures (random crops, SNRs, gains),
so there are no epochs; a run is a fixed number of steps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.separator.masking import Separator, separate_waveform, si_sdr
from training.separator.mixtures import MixtureConfig, MixtureSampler
from training.separator.unet import UNetConfig, pad_frames
from training.train_utils import progress, seed_everything

DEFAULT_STEPS = 300


@dataclass
class TrainConfig:
    steps: int = DEFAULT_STEPS
    batch_size: int = 16
    lr: float = 2e-3
    mixtures: MixtureConfig = MixtureConfig()


def targets(sep: Separator, clean: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(unfloored dB mel of the mixture, hard mask target) for waveform batches."""
    with torch.no_grad():
        pc, pn = sep.mel(clean), sep.mel(noise)
        db = 10.0 * torch.log10(torch.clamp(sep.mel(clean + noise), min=sep.amin))
    return db, (pc > pn).to(db.dtype)


def train_separator(
    clean: Sequence[np.ndarray],
    noise: Sequence[np.ndarray],
    *,
    frontend: str = "ced",
    config: TrainConfig | None = None,
    unet: UNetConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress_bar: bool = True,
) -> tuple[Separator, dict[str, Any]]:
    """Train a separator for ``frontend``; returns it (eval mode, CPU) and its history."""
    cfg = config or TrainConfig()
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch size must be >= 1, got {cfg.steps}, {cfg.batch_size}")
    seed_everything(seed)
    sep = Separator(frontend, unet).to(device).train()
    sampler = MixtureSampler(clean, noise, cfg.mixtures, seed=seed)
    opt = torch.optim.Adam(sep.unet.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = progress(range(cfg.steps), "separator", enabled=progress_bar)
    for _ in bar:
        c, z = (torch.from_numpy(a).to(device) for a in sampler.batch(cfg.batch_size))
        db, target = targets(sep, c, z)
        logits = sep.unet(pad_frames(db, sep.context))
        loss = F.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=float(np.mean(losses[-20:])))
    history = {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "snr_db": list(cfg.mixtures.snr_db),
        "crop_seconds": cfg.mixtures.crop_seconds,
        "seconds": time.perf_counter() - t0,
        "loss_first": float(np.mean(losses[:10])),
        "loss_last": float(np.mean(losses[-10:])),
        "n_clean": len(sampler.clean),
        "n_noise": len(sampler.noise),
    }
    return sep.cpu().eval(), history


@torch.no_grad()
def evaluate_separator(
    sep: Separator,
    clean: Sequence[np.ndarray],
    noise: Sequence[np.ndarray],
    snr_db: float,
    n: int = 20,
    seconds: float = 2.0,
    seed: int = 1,
) -> dict[str, float]:
    """Held-out mixtures at one SNR: SI-SDR of mixture / separated / oracle mel mask, accuracy.

    ``mask_accuracy`` is the fraction of mel bins where (probability > threshold) equals the hard
    target; ``ones_fraction`` is how often the target is 1 (the accuracy of "always 1").
    """
    sampler = MixtureSampler(clean, noise, MixtureConfig(crop_seconds=seconds), seed=seed)
    c, z = sampler.batch(n, snr_db=snr_db)
    db, target = targets(sep, torch.from_numpy(c), torch.from_numpy(z))
    prob = torch.sigmoid(sep.unet(pad_frames(db, sep.context)))
    acc = float(((prob > sep.threshold).to(target.dtype) == target).float().mean())
    mix_sdr, sep_sdr, oracle_sdr = [], [], []
    oracle = _OracleMask(sep)
    for ci, zi in zip(c, z, strict=True):
        mix = ci + zi
        mix_sdr.append(si_sdr(mix, ci))
        sep_sdr.append(si_sdr(separate_waveform(sep, mix), ci))
        oracle.target = targets(sep, torch.from_numpy(ci)[None], torch.from_numpy(zi)[None])[1]
        oracle_sdr.append(si_sdr(separate_waveform(oracle, mix), ci))  # type: ignore[arg-type]
    return {
        "snr_db": float(snr_db),
        "n": n,
        "si_sdr_mixture": float(np.mean(mix_sdr)),
        "si_sdr_separated": float(np.mean(sep_sdr)),
        "si_sdri": float(np.mean(sep_sdr) - np.mean(mix_sdr)),
        "si_sdri_oracle_hard_mask": float(np.mean(oracle_sdr) - np.mean(mix_sdr)),
        "mask_accuracy": acc,
        "ones_fraction": float(target.mean()),
    }


class _OracleMask:
    """Quacks like a Separator for `separate_waveform`, returning the true hard mask."""

    def __init__(self, sep: Separator) -> None:
        self.mel, self.amin, self.target = sep.mel, sep.amin, None
        self.floor = sep.mask_floor

    def mask(self, db: torch.Tensor) -> torch.Tensor:
        assert self.target is not None
        return torch.clamp(self.target, min=self.floor)
