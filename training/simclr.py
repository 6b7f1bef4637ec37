"""SimCLR training of the ResNet-18 encoder, as the second seed does it (DCASE 2023, KNU).

Each step takes `batch_size` clips; view 1 is the clip's log-mel crop as it is (the seed pairs
ORIGINAL clips with augmented ones, unlike SimCLR's two augmented views), view 2 the same crop
with one of the seed's augmentations (`training.augment`). Loss: NT-Xent over the 2B views
(temperature 0.05). Optimiser: Adam with cosine annealing and warm restarts, 3 restarts over the
run (4 equal cycles, stepped per batch).

CPU budget: log-mels are computed once per clip with an FFT STFT (equal to the encoder's conv
front-end within 1e-4 dB) and cached; each step trains on random time crops (default 2 s), so the
cost per step does not grow with the clip length. Embedding at evaluation time uses the full clip
through `ResNetEncoder.forward(waveform)`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monitor import frontend as fe
from monitor.errors import DataError
from training.augment import AugmentConfig, Augmenter
from training.features import LogMel
from training.models.resnet import ProjectionHead, ResNetEncoder
from training.train_utils import EpochLogger, resolve_device, seed_everything
from training.train_utils import progress as progress_bar

log = logging.getLogger(__name__)

BATCH_SIZE = 48
TEMPERATURE = 0.05
LR = 1e-3
CROP_SECONDS = 2.0
RESTARTS = 3


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's NT-Xent: mean over the 2N anchors of -log softmax of the positive's similarity.

    Rows of `z1` [N, D] and `z2` [N, D] with the same index are the two views of one clip.
    Similarity is the cosine over temperature; each anchor's own similarity is excluded from the
    denominator, the other 2N - 2 views are its negatives.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 1:
        raise ValueError(
            f"nt_xent: need two [N, D] batches, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


def warm_restarts(
    opt: torch.optim.Optimizer, total_steps: int, restarts: int = RESTARTS
) -> tuple[torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, int]:
    """Cosine annealing with `restarts` warm restarts spread evenly over `total_steps` batches."""
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0, got {restarts}")
    cycle = max(1, math.ceil(total_steps / (restarts + 1)))
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cycle, T_mult=1), cycle


class FFTLogMel:
    """The encoder's `LogMel` computed with `torch.stft`: same numbers, ~10x faster for n_fft 2048.

    The conv-DFT front-end exists for ONNX export; in training, the many log-mels of caching and of
    noise views are cheaper through the FFT. `center=False` reads frames from a waveform crop that
    already carries the n_fft // 2 context on both sides.
    """

    def __init__(self, frontend: LogMel, center: bool | None = None) -> None:
        spec = frontend.mel.spectrogram
        self.n_fft, self.hop, self.pad_mode = spec.n_fft, spec.hop, spec.pad_mode
        self.center = spec.center if center is None else center
        left = (spec.n_fft - spec.win_length) // 2
        self.window = F.pad(spec.window.detach(), (left, spec.n_fft - spec.win_length - left))
        self.fb = frontend.mel.mel_scale.fb.detach()
        self.to_db = frontend.to_db

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.stft(
            x,
            self.n_fft,
            self.hop,
            window=self.window,
            center=self.center,
            pad_mode=self.pad_mode,
            return_complex=True,
        )
        power = s.real.square() + s.imag.square()
        return self.to_db(torch.matmul(power.transpose(-1, -2), self.fb).transpose(-1, -2))


class ProjectedEncoder(nn.Module):
    """Waveform -> projection-head output (128-d): the encoder followed by the trained head."""

    def __init__(self, encoder: ResNetEncoder, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(waveform))


class _ClipCache:
    """Log-mels of every clip plus waveform crops aligned with any log-mel crop."""

    def __init__(self, waves: np.ndarray, fast: FFTLogMel, chunk: int = 32) -> None:
        self.waves = waves
        self.pad = fast.n_fft // 2
        self.hop, self.n_fft = fast.hop, fast.n_fft
        parts = [
            fast(torch.from_numpy(np.ascontiguousarray(waves[i : i + chunk])))
            for i in range(0, len(waves), chunk)
        ]
        self.logmel = torch.cat(parts)  # [N, M, T]

    def crops(self, idx: np.ndarray, starts: np.ndarray, frames: int) -> torch.Tensor:
        return torch.stack(
            [self.logmel[i, :, s : s + frames] for i, s in zip(idx, starts, strict=True)]
        )

    def wave_crops(self, idx: np.ndarray, starts: np.ndarray, frames: int) -> torch.Tensor:
        """Samples behind log-mel frames [s, s + frames) incl. n_fft // 2 context (reflect pad)."""
        n = self.waves.shape[1]
        length = (frames - 1) * self.hop + self.n_fft
        pos = starts[:, None] * self.hop - self.pad + np.arange(length)[None, :]
        pos = np.abs(pos)  # reflect at the start, as the centred STFT pads
        pos = np.where(pos > n - 1, 2 * (n - 1) - pos, pos)
        return torch.from_numpy(self.waves[idx[:, None], pos])


def _check(
    waves: np.ndarray, batch_size: int, epochs: int, temperature: float, lr: float
) -> np.ndarray:
    arr = np.asarray(waves)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise DataError(f"train_simclr: need at least 2 clips as [clips, samples], got {arr.shape}")
    if arr.shape[1] < fe.LOGMEL_N_FFT:
        raise DataError(f"train_simclr: clips of {arr.shape[1]} samples are shorter than one frame")
    if not np.isfinite(arr).all():
        raise DataError("train_simclr: waves contain NaN or infinite samples")
    if batch_size < 2 or epochs < 1 or temperature <= 0 or lr <= 0:
        raise ValueError(
            f"train_simclr: need batch_size >= 2, epochs >= 1, temperature > 0, lr > 0; got "
            f"{batch_size}, {epochs}, {temperature}, {lr}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def train_simclr(
    waves: np.ndarray,
    *,
    epochs: int,
    batch_size: int = BATCH_SIZE,
    temperature: float = TEMPERATURE,
    lr: float = LR,
    device: str = "cpu",
    seed: int = 0,
    crop_seconds: float | None = CROP_SECONDS,
    progress: bool = True,
    augment: AugmentConfig | None = None,
    restarts: int = RESTARTS,
    embedding: Literal["encoder", "projection"] = "encoder",
    bf16: bool = False,
    positives: Literal["same_crop", "other_crop"] = "same_crop",
    augment_both: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ResNet-18 + projection head with NT-Xent on normal clips [N, samples] (16 kHz).

    Returns the trained `ResNetEncoder` (512-d, the representation SimCLR recommends for
    downstream use) in eval mode on the CPU, or with `embedding="projection"` a
    `ProjectedEncoder` giving the 128-d head output; and a history with per-epoch `loss`, `lr`,
    `seconds` and the hyper-parameters. `crop_seconds=None` trains on whole clips.

    Speed: the encoder trains in channels-last memory format (~1.5x faster convolutions on CPU,
    same numbers up to summation order); `bf16=True` adds bfloat16 autocast, another ~1.6x on
    CPUs with native bf16 (AVX512-BF16/AMX) but slower where it is emulated. The loss is always
    computed in float32.
    """
    arr = _check(waves, batch_size, epochs, temperature, lr)
    if crop_seconds is not None and not crop_seconds > 0:
        raise ValueError(f"train_simclr: crop_seconds must be > 0 or None, got {crop_seconds}")
    if embedding not in ("encoder", "projection"):
        raise ValueError(
            f"train_simclr: embedding must be 'encoder' or 'projection', got {embedding!r}"
        )
    seed_everything(seed)
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = augment or AugmentConfig()

    encoder, head = ResNetEncoder(), ProjectionHead()
    fast_full = FFTLogMel(encoder.front_end)
    fast_crop = FFTLogMel(encoder.front_end, center=False)
    t0 = time.perf_counter()
    cache = _ClipCache(arr, fast_full)
    cache_s = time.perf_counter() - t0
    total_frames = cache.logmel.shape[2]
    frames = total_frames
    if crop_seconds is not None:
        frames = min(total_frames, int(round(crop_seconds * fe.SAMPLE_RATE / fast_full.hop)) + 1)
    augmenter = Augmenter(
        fe.mel_filterbank(fe.LOGMEL_N_FFT, fe.LOGMEL_N_MELS, htk=False, norm="slaney"),
        sample_rate=fe.SAMPLE_RATE,
        n_fft=fast_full.n_fft,
        hop=fast_full.hop,
        logmel_fn=fast_crop,
        config=cfg,
    )

    n = len(arr)
    bs = min(batch_size, n)
    steps_per_epoch = n // bs  # drop the ragged last batch: it would have few negatives
    total_steps = steps_per_epoch * epochs
    encoder.to(dev, memory_format=torch.channels_last).train()
    head.to(dev).train()
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched, cycle = warm_restarts(opt, total_steps, restarts)
    logger = EpochLogger()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).numpy()
        batches = [order[i * bs : (i + 1) * bs] for i in range(steps_per_epoch)]
        bar = progress_bar(batches, f"simclr epoch {epoch + 1}/{epochs}", enabled=progress)
        lr_now = opt.param_groups[0]["lr"]
        for idx in bar:
            starts = rng.integers(0, total_frames - frames + 1, size=len(idx))
            view1 = cache.crops(idx, starts, frames)
            if augment_both:
                k1 = augmenter.sample_kinds(len(idx), gen)
                w1 = cache.wave_crops(idx, starts, frames)
                view1 = augmenter(view1, w1, k1, gen)
            if positives == "other_crop":
                starts = rng.integers(0, total_frames - frames + 1, size=len(idx))
            kinds = augmenter.sample_kinds(len(idx), gen)
            needs_wave = any(k.startswith("noise") for k in kinds)
            wave = cache.wave_crops(idx, starts, frames) if needs_wave else None
            view2 = augmenter(cache.crops(idx, starts, frames), wave, kinds, gen)
            x = torch.cat([view1, view2]).unsqueeze(1).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                z = head(encoder.forward_logmel(x)).float()
            loss = nt_xent(z[: len(idx)], z[len(idx) :], temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            logger.update(n=len(idx), loss=loss.item())
            bar.set_postfix(loss=loss.item())
        logger.end_epoch(lr=lr_now)
    encoder.eval().to("cpu", memory_format=torch.contiguous_format)
    head.eval().cpu()
    history: dict[str, Any] = {
        **logger.history,
        "cache_seconds": cache_s,
        "hyper": {
            "recipe": "simclr",
            "epochs": epochs,
            "batch_size": bs,
            "temperature": temperature,
            "lr": lr,
            "seed": seed,
            "crop_seconds": crop_seconds,
            "crop_frames": frames,
            "restarts": restarts,
            "cycle_steps": cycle,
            "steps": total_steps,
            "n_clips": n,
            "embedding": embedding,
            "bf16": bf16,
            "augment": {
                "kinds": list(cfg.kinds),
                "semitones": [cfg.min_semitones, cfg.max_semitones],
                "noise_db": list(cfg.noise_db),
                "mask_seconds": list(cfg.mask_seconds),
            },
        },
    }
    model: nn.Module = encoder if embedding == "encoder" else ProjectedEncoder(encoder, head)
    return model, history
