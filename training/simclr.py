"""SimCLR training of the ResNet-18 encoder, as in Shin & Lee, "Two-stage contrastive learning
for anomalous sound detection" (DCASE 2023).

Each step takes `batch_size` clips; view 1 is the clip's log-mel crop as it is (Shin & Lee pair
ORIGINAL clips with augmented ones, unlike SimCLR's two augmented views; `anchor="augmented"`
gives SimCLR's pairing), view 2 the same crop with one of their augmentations
(`training.augment`). Loss: NT-Xent over the 2B views (temperature 0.05). Optimiser: Adam with
cosine annealing and warm restarts, 3 restarts over the run (4 equal cycles, stepped per batch).

CPU budget: log-mels are computed once per clip with an FFT STFT (equal to the encoder's conv
front-end within 1e-4 dB) and cached; each step trains on random time crops (default 2 s), so the
cost per step does not grow with the clip length, and the run length is a number of steps
(`step_budget`), not of epochs, so it does not grow in proportion to the data either.

What to embed with afterwards: `StageEmbedder` reads the pooled output of an early stage of the
trained network; the `simclr` recipe documents why (measured) it uses stage 1, not stage 4.
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

from monitor.audio import frontend as fe
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
# Step budget (see `step_budget`): about 15 passes over small sets, bounded for CPU time.
BUDGET_EPOCHS = 15
MIN_STEPS = 200
MAX_STEPS = 400
POOLINGS = ("mean", "mean+fmax")


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


def step_budget(
    n_clips: int,
    batch_size: int = BATCH_SIZE,
    epochs: int = BUDGET_EPOCHS,
    min_steps: int = MIN_STEPS,
    max_steps: int = MAX_STEPS,
) -> int:
    """Optimiser steps for `n_clips` training clips: `epochs` passes, clamped to [min, max].

    Why a clamp: a few hundred clips need many passes before the loss settles (200 steps are 66
    passes over 150 clips), while 3000 clips would make 15 passes cost ~15 min per run on two
    CPU cores; the early-stage embedding the recipe uses stopped improving past ~200 steps on
    the study set (benchmarks/simclr_study.py: 195 vs 390 steps).
    """
    if n_clips < 1 or batch_size < 1 or epochs < 1 or not 1 <= min_steps <= max_steps:
        raise ValueError(
            f"step_budget: need n_clips, batch_size, epochs >= 1 and 1 <= min_steps <= max_steps; "
            f"got {n_clips}, {batch_size}, {epochs}, {min_steps}, {max_steps}"
        )
    per_epoch = max(1, n_clips // min(batch_size, n_clips))
    return int(min(max(per_epoch * epochs, min_steps), max_steps))


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
        self.fb = frontend.mel.mel_scale.weights().detach()  # band-limited, as in export
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


class StageEmbedder(nn.Module):
    """Waveform -> pooled feature map of ONE stage of the trained ResNet-18 (1-4).

    The stage's map [B, C, F, T] is averaged over time, then over frequency (`"mean"`, [B, C]:
    global average pooling) or, with `"mean+fmax"`, also maximised over the frequency rows
    ([B, 2C]): the maximum keeps how strongly a filter fires in its strongest band (a tone, a
    resonance), which the average over all bands dilutes. Time is only averaged: a maximum over
    time follows transient background events (clanks, speech) more than the machine.

    Stages after `stage` are not stored or run (stage 1: half the ResNet's compute).
    `stage=4, pooling="mean"` is exactly `ResNetEncoder.forward`. `init_kwargs` lets a run
    directory rebuild it (`export.run_dir`).
    """

    def __init__(
        self, n_mels: int = fe.LOGMEL_N_MELS, stage: int = 1, pooling: str = "mean+fmax"
    ) -> None:
        super().__init__()
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"StageEmbedder: stage must be 1, 2, 3 or 4, got {stage!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"StageEmbedder: pooling must be one of {POOLINGS}, got {pooling!r}")
        self.init_kwargs = {"n_mels": int(n_mels), "stage": int(stage), "pooling": pooling}
        self.stage, self.pooling = int(stage), pooling
        self.encoder = ResNetEncoder(n_mels)
        for i in range(self.stage + 1, 5):
            setattr(self.encoder, f"layer{i}", nn.Identity())
        width = 64 * 2 ** (self.stage - 1)
        self.embed_dim = width * (2 if pooling == "mean+fmax" else 1)

    @classmethod
    def from_encoder(
        cls, encoder: ResNetEncoder, stage: int = 1, pooling: str = "mean+fmax"
    ) -> StageEmbedder:
        """The embedder over a trained encoder's weights (copied; eval mode, CPU)."""
        model = cls(int(encoder.front_end.n_mels), stage, pooling)
        own = model.state_dict()
        weights = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=True)
        return model.eval()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected a waveform batch [B, samples], got {tuple(waveform.shape)}")
        return self.forward_logmel(self.encoder.front_end(waveform).unsqueeze(1))

    def forward_logmel(self, logmel: torch.Tensor) -> torch.Tensor:
        """Embedding from a dB log-mel ``[B, 1, n_mels, T]``."""
        e = self.encoder
        x = e.input_bn(logmel.transpose(1, 2)).transpose(1, 2)
        x = e.maxpool(e.relu(e.bn1(e.conv1(x))))
        for i in range(1, self.stage + 1):
            x = getattr(e, f"layer{i}")(x)
        return self.pool(x, self.pooling)

    @staticmethod
    def pool(feature_map: torch.Tensor, pooling: str) -> torch.Tensor:
        """[B, C, F, T] -> [B, C] ("mean") or [B, 2C] ("mean+fmax"), see the class docstring."""
        per_band = feature_map.mean(dim=3)
        if pooling == "mean":
            return per_band.mean(dim=2)
        return torch.cat([per_band.mean(dim=2), per_band.amax(dim=2)], dim=1)


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
        self.to_db = fast.to_db

    def crops(self, idx: np.ndarray, starts: np.ndarray, frames: int) -> torch.Tensor:
        """Frames of each crop, level-normalised on their own as a window of that length is
        (the front-end's `PowerToDB`: its floor and level steps, per crop)."""
        out = torch.stack(
            [self.logmel[i, :, s : s + frames] for i, s in zip(idx, starts, strict=True)]
        )
        if self.to_db.level_norm:
            out = out - out.mean(dim=(-2, -1), keepdim=True) + self.to_db.reference_db
        return out

    def wave_crops(self, idx: np.ndarray, starts: np.ndarray, frames: int) -> torch.Tensor:
        """Samples behind log-mel frames [s, s + frames) incl. n_fft // 2 context (reflect pad)."""
        n = self.waves.shape[1]
        length = (frames - 1) * self.hop + self.n_fft
        pos = starts[:, None] * self.hop - self.pad + np.arange(length)[None, :]
        pos = np.abs(pos)  # reflect at the start, as the centred STFT pads
        pos = np.where(pos > n - 1, 2 * (n - 1) - pos, pos)
        return torch.from_numpy(self.waves[idx[:, None], pos])


def _check(
    waves: np.ndarray,
    batch_size: int,
    epochs: int | None,
    steps: int | None,
    temperature: float,
    lr: float,
) -> np.ndarray:
    arr = np.asarray(waves)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise DataError(f"train_simclr: need at least 2 clips as [clips, samples], got {arr.shape}")
    if arr.shape[1] < fe.LOGMEL_N_FFT:
        raise DataError(f"train_simclr: clips of {arr.shape[1]} samples are shorter than one frame")
    if not np.isfinite(arr).all():
        raise DataError("train_simclr: waves contain NaN or infinite samples")
    if (epochs is None) == (steps is None):
        raise ValueError(
            f"train_simclr: give exactly one of epochs and steps, got {epochs}, {steps}"
        )
    length = epochs if epochs is not None else steps
    if batch_size < 2 or length < 1 or temperature <= 0 or lr <= 0:
        raise ValueError(
            f"train_simclr: need batch_size >= 2, epochs or steps >= 1, temperature > 0, lr > 0; "
            f"got {batch_size}, {length}, {temperature}, {lr}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


class _Views:
    """Builds the two views of a batch: crops from the cache, Shin & Lee's augmentations."""

    def __init__(
        self,
        cache: _ClipCache,
        augmenter: Augmenter,
        frames: int,
        anchor: str,
        positives: str,
        rng: np.random.Generator,
        gen: torch.Generator,
    ) -> None:
        self.cache, self.augmenter, self.frames = cache, augmenter, frames
        self.anchor, self.positives, self.rng, self.gen = anchor, positives, rng, gen
        self.total = cache.logmel.shape[2]

    def _augmented(self, idx: np.ndarray, starts: np.ndarray) -> torch.Tensor:
        kinds = self.augmenter.sample_kinds(len(idx), self.gen)
        needs_wave = any(k.startswith("noise") for k in kinds)
        wave = self.cache.wave_crops(idx, starts, self.frames) if needs_wave else None
        return self.augmenter(self.cache.crops(idx, starts, self.frames), wave, kinds, self.gen)

    def __call__(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, self.total - self.frames + 1, size=len(idx))
        if self.anchor == "original":
            view1 = self.cache.crops(idx, starts, self.frames)
        else:
            view1 = self._augmented(idx, starts)
        if self.positives == "other_crop":
            starts = self.rng.integers(0, self.total - self.frames + 1, size=len(idx))
        return view1, self._augmented(idx, starts)


def train_simclr(
    waves: np.ndarray,
    *,
    epochs: int | None = None,
    steps: int | None = None,
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
    anchor: Literal["original", "augmented"] = "original",
    positives: Literal["same_crop", "other_crop"] = "same_crop",
    bf16: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ResNet-18 + projection head with NT-Xent on normal clips [N, samples] (16 kHz).

    Run length: exactly one of `epochs` (passes over the clips) or `steps` (optimiser steps; the
    last pass is cut short). Returns the trained `ResNetEncoder` (512-d) in eval mode on the CPU,
    or with `embedding="projection"` a `ProjectedEncoder` giving the 128-d head output; and a
    history with per-pass `loss`, `lr`, `seconds` and the hyper-parameters.
    `crop_seconds=None` trains on whole clips. `anchor="augmented"` augments view 1 too
    (SimCLR's pairing); `positives="other_crop"` takes view 2 from another random crop of the same
    clip (positives then share the clip, not the segment).

    Speed: the encoder trains in channels-last memory format (~1.5x faster convolutions on CPU,
    same numbers up to summation order); `bf16=True` adds bfloat16 autocast, another ~1.6x on
    CPUs with native bf16 (AVX512-BF16/AMX) but slower where it is emulated. The loss is always
    computed in float32.
    """
    arr = _check(waves, batch_size, epochs, steps, temperature, lr)
    if crop_seconds is not None and not crop_seconds > 0:
        raise ValueError(f"train_simclr: crop_seconds must be > 0 or None, got {crop_seconds}")
    if embedding not in ("encoder", "projection"):
        raise ValueError(
            f"train_simclr: embedding must be 'encoder' or 'projection', got {embedding!r}"
        )
    if anchor not in ("original", "augmented"):
        raise ValueError(f"train_simclr: anchor must be 'original' or 'augmented', got {anchor!r}")
    if positives not in ("same_crop", "other_crop"):
        raise ValueError(
            f"train_simclr: positives must be 'same_crop' or 'other_crop', got {positives!r}"
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
    views = _Views(cache, augmenter, frames, anchor, positives, rng, gen)

    n = len(arr)
    bs = min(batch_size, n)
    steps_per_epoch = n // bs  # drop the ragged last batch: it would have few negatives
    total_steps = steps_per_epoch * epochs if epochs is not None else int(steps or 0)
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    encoder.to(dev, memory_format=torch.channels_last).train()
    head.to(dev).train()
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched, cycle = warm_restarts(opt, total_steps, restarts)
    logger = EpochLogger()
    done = 0
    for epoch in range(n_epochs):
        order = torch.randperm(n, generator=gen).numpy()
        count = min(steps_per_epoch, total_steps - done)
        batches = [order[i * bs : (i + 1) * bs] for i in range(count)]
        bar = progress_bar(batches, f"simclr pass {epoch + 1}/{n_epochs}", enabled=progress)
        lr_now = opt.param_groups[0]["lr"]
        for idx in bar:
            view1, view2 = views(idx)
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
        done += count
        logger.end_epoch(lr=lr_now)
    encoder.eval().to("cpu", memory_format=torch.contiguous_format)
    head.eval().cpu()
    history: dict[str, Any] = {
        **logger.history,
        "cache_seconds": cache_s,
        "hyper": {
            "recipe": "simclr",
            "epochs": epochs,
            "passes": n_epochs,
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
            "anchor": anchor,
            "positives": positives,
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
