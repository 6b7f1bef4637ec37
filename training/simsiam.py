"""SimSiam fine-tuning of an encoder (Chen & He, CVPR 2021), as stage 2 of Ozeki et al.,
"Anomalous sound detection method using contrastive learning" (DCASE 2025) uses it.

encoder -> projector (Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN without affine) -> predictor
(bottleneck dim -> dim/4 -> dim). Two views of one crop, each through its own random draw of
the waveform augmentations (`training.augment_wave`); loss = -(cos(p1, sg(z2)) + cos(p2, sg(z1)))/2.
SGD (momentum 0.9, weight decay 1e-4) with lr = base_lr * batch / 256 and cosine decay; the
predictor keeps a fixed lr (the paper's finding). Afterwards only the encoder is kept: it is the
feature extractor for rescaled k-NN, exactly as in stage 1.

Collapse guard: SimSiam has no negatives, so a constant output is a minimum of its loss. Every
step logs the per-dimension standard deviation of the L2-normalised projections z/|z| (about
1/sqrt(dim) when healthy, 0 when collapsed); if it stays below `collapse_ratio / sqrt(dim)` for
`collapse_patience` steps, training stops with `RepresentationCollapse`.

CPU budget: each step embeds 2 x batch short random crops (default 1 s), so a step's cost does
not grow with the clip length; the run length is a number of steps (`step_budget`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monitor.errors import DataError, SonitorError
from training.augment_wave import WaveAugmenter
from training.train_utils import EpochLogger, seed_everything
from training.train_utils import progress as progress_bar

log = logging.getLogger(__name__)

SR = 16000


class RepresentationCollapse(SonitorError):
    """SimSiam's outputs collapsed to (nearly) one point: the encoder is no longer usable."""


@dataclass(frozen=True)
class SimSiamConfig:
    """Hyper-parameters of one SimSiam run; `describe()` of the stage-2 recipes prints them."""

    steps: int = 150  # 0: no training (the untrained encoder, the starting point)
    batch_size: int = 32
    crop_seconds: float = 1.0
    base_lr: float = 0.05  # lr = base_lr * batch_size / 256 (the paper's rule) ...
    lr: float | None = None  # ... unless an absolute lr is given (short runs need far more)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    proj_dim: int = 256
    fixed_predictor_lr: bool = True
    collapse_ratio: float = 0.1  # collapse: std(z/|z|) < collapse_ratio / sqrt(proj_dim)
    collapse_patience: int = 20  # consecutive steps below the line before stopping
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 2 or self.crop_seconds <= 0 or self.base_lr <= 0:
            raise ValueError(
                f"SimSiamConfig: need steps >= 0, batch_size >= 2, crop_seconds > 0, base_lr > 0; "
                f"got {self.steps}, {self.batch_size}, {self.crop_seconds}, {self.base_lr}"
            )
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"SimSiamConfig: lr must be > 0, got {self.lr}")
        if self.proj_dim < 4 or self.collapse_patience < 1:
            raise ValueError(
                f"SimSiamConfig: need proj_dim >= 4 and collapse_patience >= 1, got "
                f"{self.proj_dim}, {self.collapse_patience}"
            )

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256


def projector(in_dim: int, dim: int) -> nn.Sequential:
    """Three layers; the last BatchNorm has no affine parameters (the paper's projector)."""
    return nn.Sequential(
        nn.Linear(in_dim, dim, bias=False),
        nn.BatchNorm1d(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False),
        nn.BatchNorm1d(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False),
        nn.BatchNorm1d(dim, affine=False),
    )


def predictor(dim: int) -> nn.Sequential:
    """Bottleneck MLP dim -> dim/4 -> dim."""
    hidden = max(1, dim // 4)
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim),
    )


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient on the projections: in [-1, 1]."""
    return (
        -(
            F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
            + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
        )
        / 2
    )


def normalised_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the batch std of z/|z|: ~1/sqrt(dim) healthy, 0 collapsed."""
    return float(F.normalize(z.detach().float(), dim=1).std(dim=0).mean())


def step_budget(
    n_clips: int, batch_size: int = 32, passes: int = 15, lo: int = 100, hi: int = 150
) -> int:
    """Optimiser steps for `n_clips` clips of one machine: `passes` passes, clamped to [lo, hi].

    Why so few: stage 2 trains one encoder PER machine type on 2 CPU cores. With the default
    ResNet stage-1 encoder a step (2 x 32 one-second crops) costs ~0.36 s, so one benchmark run
    (3 machine types, 310 training + 200 test clips each, 10 s) takes ~3.5 min. Longer runs
    learned more invariance and scored WORSE on the synthetic benchmark (pump: 300 steps 0.782
    vs 100 steps 0.797; `benchmarks/results/stage2.md`).
    """
    if n_clips < 1 or batch_size < 1 or passes < 1 or not 1 <= lo <= hi:
        raise ValueError(
            f"step_budget: need n_clips, batch_size, passes >= 1, 1 <= lo <= hi; got "
            f"{n_clips}, {batch_size}, {passes}, {lo}, {hi}"
        )
    return int(min(max(passes * max(1, n_clips // batch_size), lo), hi))


class SimSiamModel(nn.Module):
    """Encoder + projector + predictor; `encoder` maps waveforms [B, samples] -> [B, D]."""

    def __init__(self, encoder: nn.Module, embed_dim: int, proj_dim: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector(embed_dim, proj_dim)
        self.predictor = predictor(proj_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedding h, projection z and prediction p of a waveform batch."""
        h = self.encoder(x)
        z = self.projector(h)
        return h, z, self.predictor(z)


def _crops(
    waves: np.ndarray, idx: np.ndarray, length: int, rng: np.random.Generator
) -> torch.Tensor:
    """Random crops of `length` samples (clips shorter than that are tiled)."""
    n = waves.shape[1]
    if n < length:
        waves = np.tile(waves[idx], (1, length // n + 1))
        idx = np.arange(len(idx))
        n = waves.shape[1]
    starts = rng.integers(0, n - length + 1, size=len(idx))
    pos = starts[:, None] + np.arange(length)[None, :]
    return torch.from_numpy(np.ascontiguousarray(waves[idx[:, None], pos], dtype=np.float32))


def _check_waves(waves: np.ndarray) -> np.ndarray:
    arr = np.asarray(waves)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise DataError(
            f"train_simsiam: need at least 2 clips as [clips, samples], got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise DataError("train_simsiam: waves contain NaN or infinite samples")
    return np.ascontiguousarray(arr, dtype=np.float32)


def train_simsiam(
    encoder: nn.Module,
    embed_dim: int,
    waves: np.ndarray,
    augmenter: WaveAugmenter,
    config: SimSiamConfig | None = None,
    *,
    mix_with_noise: np.ndarray | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    label: str = "simsiam",
) -> dict[str, Any]:
    """Fine-tune `encoder` in place with SimSiam on normal clips [N, samples] (16 kHz).

    `mix_with_noise` [N] bool marks clips (clean supplemental ones) whose views are always mixed
    with a background from the augmenter's noise banks: they are the clean part of a mixture.
    Returns a history: per-log-interval `loss`, `z_std` (std of z/|z| per dimension), `h_std`
    (the same for the encoder output), times, and the hyper-parameters. The encoder is left in
    eval mode on the CPU. Raises `RepresentationCollapse` when the guard trips.
    """
    cfg = config or SimSiamConfig()
    arr = _check_waves(waves)
    force = np.zeros(len(arr), bool) if mix_with_noise is None else np.asarray(mix_with_noise, bool)
    if force.shape != (len(arr),):
        raise ValueError(f"mix_with_noise: need {len(arr)} flags, got {force.shape}")
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    model = SimSiamModel(encoder, embed_dim, cfg.proj_dim).to(dev).train()
    pred_params = list(model.predictor.parameters())
    other = [p for n, p in model.named_parameters() if not n.startswith("predictor.")]
    opt = torch.optim.SGD(
        [
            {"params": other, "fixed": False},
            {"params": pred_params, "fixed": cfg.fixed_predictor_lr},
        ],
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    out_len = int(round(cfg.crop_seconds * SR))
    in_len = augmenter.input_length(out_len)
    bs = min(cfg.batch_size, len(arr))
    line = cfg.collapse_ratio / math.sqrt(cfg.proj_dim)
    logger = EpochLogger()
    below = 0
    t_aug = t_model = 0.0
    steps_done = 0
    bar = progress_bar(range(cfg.steps), label, enabled=progress)
    for step in bar:
        lr_now = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = cfg.learning_rate if group["fixed"] else lr_now
        t0 = time.perf_counter()
        idx = rng.choice(len(arr), size=bs, replace=False)
        crop = _crops(arr, idx, in_len, rng)
        views = [
            augmenter(crop, out_len, gen, force_noise=torch.from_numpy(force[idx])) for _ in "12"
        ]
        t1 = time.perf_counter()
        x = torch.cat(views).to(dev)
        h, z, p = model(x)
        loss = simsiam_loss(p[:bs], p[bs:], z[:bs], z[bs:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t_aug += t1 - t0
        t_model += time.perf_counter() - t1
        steps_done += 1
        z_std, h_std = normalised_std(z), normalised_std(h)
        logger.update(n=1, loss=loss.item(), z_std=z_std, h_std=h_std)
        bar.set_postfix(loss=loss.item(), z_std=z_std)
        below = below + 1 if z_std < line else 0
        if below >= cfg.collapse_patience:
            model.encoder.eval().cpu()
            raise RepresentationCollapse(
                f"{label}: representation collapsed at step {step + 1}/{cfg.steps}: the std of "
                f"the normalised projections stayed below {line:.4f} (healthy ~"
                f"{1 / math.sqrt(cfg.proj_dim):.4f}) for {below} steps (last {z_std:.4g}, loss "
                f"{loss.item():.4f}); lower the learning rate (base_lr {cfg.base_lr}) or use "
                "stronger augmentations"
            )
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = logger.end_epoch(lr=lr_now)
            log.info(
                "%s step %d/%d: loss %.4f, std(z/|z|) %.4f (1/sqrt(dim) %.4f), std(h/|h|) %.4f",
                label,
                step + 1,
                cfg.steps,
                row["loss"],
                row["z_std"],
                1 / math.sqrt(cfg.proj_dim),
                row["h_std"],
            )
    model.encoder.eval().cpu()
    return {
        **logger.history,
        "augment_seconds": t_aug,
        "model_seconds": t_model,
        "augment_seconds_by_kind": dict(augmenter.seconds),
        "hyper": {
            **asdict(cfg),
            "learning_rate": cfg.learning_rate,
            "seed": seed,
            "n_clips": len(arr),
            "steps": steps_done,
        },
    }
