"""SimSiam: heads, loss with stop-gradient, collapse measure and guard, a short run that learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from monitor.errors import DataError
from training.augment_wave import WaveAugmentConfig, WaveAugmenter
from training.simclr import StageEmbedder
from training.simsiam import (
    RepresentationCollapse,
    SimSiamConfig,
    normalised_std,
    predictor,
    projector,
    simsiam_loss,
    step_budget,
    train_simsiam,
)
from training.synth import plan
from training.synth_sound import render_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loss_is_minus_one_for_aligned_and_zero_for_orthogonal():
    z = torch.randn(5, 8)
    assert simsiam_loss(z, z, z, z).item() == pytest.approx(-1.0, abs=1e-6)
    e = torch.eye(8)
    assert simsiam_loss(e[:4], e[:4], e[4:], e[4:]).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_stops_the_gradient_at_the_projections():
    p1, p2, z1, z2 = (torch.randn(4, 6, requires_grad=True) for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0


def test_heads_follow_the_paper():
    proj = projector(128, 64)
    assert [type(m).__name__ for m in proj] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
    ]
    assert proj[-1].affine is False
    pred = predictor(64)
    assert pred[0].out_features == 16 and pred[-1].out_features == 64  # bottleneck dim/4


def test_normalised_std_healthy_and_collapsed():
    d = 256
    z = torch.randn(512, d)
    assert normalised_std(z) == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert normalised_std(torch.ones(64, d) + 1e-3 * torch.randn(64, d)) < 0.01 / math.sqrt(d)


def test_step_budget_clamps():
    assert step_budget(10) == 100
    assert step_budget(310) == 135  # 15 passes of 9 batches
    assert step_budget(100_000) == 150
    with pytest.raises(ValueError):
        step_budget(0)


def _machine_clips(n: int = 16, seconds: float = 1.0) -> np.ndarray:
    specs = [s for s in plan(("fan",), n, 0, 0, 0, seconds, 0, 1.0) if s.split == "train"]
    return np.stack([render_clip(s) for s in specs])


def test_short_run_lowers_the_loss_and_keeps_a_healthy_spread():
    waves = _machine_clips()
    enc = StageEmbedder(stage=1)
    cfg = SimSiamConfig(steps=24, batch_size=8, crop_seconds=0.5, lr=0.5, log_every=6)
    hist = train_simsiam(enc, enc.embed_dim, waves, WaveAugmenter(), cfg, progress=False)
    loss = hist["loss"]
    assert len(loss) == 4
    assert loss[-1] < loss[0] - 0.1, loss
    assert min(hist["z_std"]) > 0.5 / math.sqrt(cfg.proj_dim)  # no collapse
    assert hist["hyper"]["steps"] == 24 and hist["hyper"]["learning_rate"] == 0.5
    assert not enc.training  # left in eval mode for embedding
    assert hist["augment_seconds"] > 0 and hist["model_seconds"] > 0


class _Constant(nn.Module):
    """An encoder that has collapsed already: the same output for every input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1) + 0 * x[:, :1]


def test_collapse_guard_stops_with_a_clear_message():
    waves = np.random.default_rng(0).standard_normal((6, 8000)).astype(np.float32) * 0.1
    cfg = SimSiamConfig(steps=40, batch_size=4, crop_seconds=0.25, collapse_patience=5)
    aug = WaveAugmenter(WaveAugmentConfig().without("pitch_shift", "time_stretch"))
    with pytest.raises(RepresentationCollapse, match=r"collapsed at step 5/40.*learning rate"):
        train_simsiam(_Constant(), 16, waves, aug, cfg, progress=False)


def test_bad_input():
    enc = StageEmbedder(stage=1)
    with pytest.raises(DataError, match="at least 2 clips"):
        train_simsiam(enc, 128, np.zeros((1, 8000), np.float32), WaveAugmenter(), progress=False)
    bad = np.zeros((3, 8000), np.float32)
    bad[1, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        train_simsiam(enc, 128, bad, WaveAugmenter(), progress=False)
    with pytest.raises(ValueError, match="lr must be > 0"):
        SimSiamConfig(lr=0.0)
