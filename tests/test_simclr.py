"""SimCLR trainer of the second seed: NT-Xent, the log-mel cache, the schedule, a tiny training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import silhouette_score

from monitor.errors import DataError
from training.models.resnet import ResNetEncoder
from training.simclr import (
    FFTLogMel,
    ProjectedEncoder,
    _ClipCache,
    nt_xent,
    train_simclr,
    warm_restarts,
)

SR = 16000


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: the CI box has 2 shared cores; oversubscription makes tests crawl."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------- NT-Xent


def _nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Equation (1) of the seed report, one anchor at a time."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n2 = len(z)
    n = n2 // 2
    total = torch.zeros(())
    for i in range(n2):
        j = (i + n) % n2
        num = torch.exp(torch.dot(z[i], z[j]) / tau)
        den = sum(torch.exp(torch.dot(z[i], z[k]) / tau) for k in range(n2) if k != i)
        total = total - torch.log(num / den)
    return total / n2


@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_nt_xent_matches_the_loop_reference(tau):
    g = torch.Generator().manual_seed(0)
    z1, z2 = (
        torch.randn(5, 7, generator=g, dtype=torch.float64),
        torch.randn(5, 7, generator=g).double(),
    )
    assert torch.allclose(nt_xent(z1, z2, tau), _nt_xent_loop(z1, z2, tau), rtol=1e-10)


def test_nt_xent_is_low_for_matching_views_and_symmetric():
    z = torch.eye(4, 8) * 3.0  # four orthogonal clips, views identical up to scale
    assert nt_xent(z, 2 * z, 0.05).item() < 1e-6
    assert nt_xent(z, z.roll(1, 0), 0.05).item() > 10  # positives mismatched: large loss
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    assert torch.allclose(nt_xent(a, b, 0.1), nt_xent(b, a, 0.1))
    perm = torch.randperm(6, generator=g)
    assert torch.allclose(nt_xent(a, b, 0.1), nt_xent(a[perm], b[perm], 0.1), atol=1e-6)


def test_nt_xent_single_pair_and_bad_input():
    # one clip: the only candidate besides itself is its positive -> loss 0
    assert nt_xent(torch.ones(1, 4), torch.ones(1, 4)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.ones(2, 4), torch.ones(2, 4), 0.0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        nt_xent(torch.ones(2, 4), torch.ones(3, 4))


# --------------------------------------------------------------------------- plumbing


def test_fft_logmel_equals_the_encoders_front_end_and_crops_line_up():
    enc = ResNetEncoder()
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.standard_normal((3, 3 * SR))).astype(np.float32)
    fast = FFTLogMel(enc.front_end)
    with torch.no_grad():
        ref = enc.front_end(torch.from_numpy(waves))
    assert torch.allclose(fast(torch.from_numpy(waves)), ref, atol=1e-3)
    # waveform crops (with reflected context at the clip edges) give the cached frames exactly
    cache = _ClipCache(waves, fast)
    crop_fn = FFTLogMel(enc.front_end, center=False)
    t, frames = cache.logmel.shape[2], 20
    for start in (0, 7, t - frames):
        idx, starts = np.array([0, 2]), np.array([start, start])
        cached = cache.crops(idx, starts, frames)
        recomputed = crop_fn(cache.wave_crops(idx, starts, frames))
        assert torch.allclose(cached, recomputed, atol=1e-3), start


def test_schedule_has_three_warm_restarts():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched, cycle = warm_restarts(opt, total_steps=40)
    assert cycle == 10
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    jumps = [i for i in range(1, 40) if lrs[i] > lrs[i - 1]]
    assert jumps == [10, 20, 30]  # 3 restarts, 4 equal cosine cycles
    assert lrs[0] == 0.1 and min(lrs) < 0.01


# --------------------------------------------------------------------------- training


def _classes(n: int, seed: int) -> np.ndarray:
    """Two distinct sound classes: a harmonic hum (pitch jitter) and sparse impacts in hiss."""
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    hums, clicks = [], []
    for _ in range(n):
        f = 150 * (1 + 0.02 * rng.standard_normal())
        phases = rng.uniform(0, 6.3, 5)
        hum = sum(np.sin(2 * np.pi * k * f * t + phases[k - 1]) / k for k in range(1, 6))
        hums.append(0.1 * hum + 0.01 * rng.standard_normal(SR))
        x = 0.005 * rng.standard_normal(SR)
        for p in rng.integers(0, SR - 200, 12):
            x[p : p + 200] += 0.3 * rng.standard_normal(200) * np.exp(-np.arange(200) / 40)
        clicks.append(x)
    return np.stack(hums + clicks).astype(np.float32)


def _separation(model: torch.nn.Module, waves: np.ndarray) -> float:
    """Cosine silhouette of the two classes (first half / second half) in embedding space."""
    with torch.no_grad():
        emb = model.eval()(torch.from_numpy(waves)).numpy()
    labels = np.r_[np.zeros(len(waves) // 2), np.ones(len(waves) // 2)]
    return float(silhouette_score(emb, labels, metric="cosine"))


@pytest.fixture(scope="module")
def trained():
    """20 steps on 16 one-second clips, 0.25 s crops; lr raised so a few steps show learning."""
    waves = _classes(8, seed=0)
    model, hist = train_simclr(
        waves, epochs=10, batch_size=8, lr=3e-3, crop_seconds=0.25, seed=0, progress=False
    )
    return model, hist


def test_loss_goes_down(trained):
    _, hist = trained
    loss = hist["loss"]
    assert len(loss) == 10 and all(math.isfinite(v) for v in loss)
    assert np.mean(loss[-3:]) < np.mean(loss[:2]) - 0.2


def test_trained_embeddings_separate_classes_better_than_at_init(trained):
    model, _ = trained
    test = _classes(6, seed=1)  # held-out clips
    torch.manual_seed(0)
    init = _separation(ResNetEncoder(), test)
    after = _separation(model, test)
    assert after > init + 0.05, (init, after)


def test_returns_an_eval_encoder_that_embeds_full_clips(trained):
    model, hist = trained
    assert isinstance(model, ResNetEncoder) and not model.training
    # trained channels-last for speed, handed back in the default layout (export, safetensors)
    assert all(p.is_contiguous() for p in model.parameters())
    with torch.no_grad():
        emb = model(torch.zeros(2, 3 * SR) + 0.01 * torch.randn(2, 3 * SR))
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
    hyper = hist["hyper"]
    assert hyper["temperature"] == 0.05 and hyper["batch_size"] == 8
    assert hyper["crop_frames"] == 9 and hyper["restarts"] == 3 and hyper["steps"] == 20
    assert len(hist["lr"]) == 10 and hist["cache_seconds"] >= 0


def test_short_clips_projection_output_and_reproducibility():
    """Clips shorter than the crop train on the whole clip; same seed, same run."""
    waves = _classes(2, seed=3)[:, : SR // 2]
    kw = dict(epochs=1, batch_size=4, seed=5, progress=False, embedding="projection")
    model, hist = train_simclr(waves, **kw)
    _, again = train_simclr(waves, **kw)
    assert hist["loss"] == again["loss"]
    assert hist["hyper"]["crop_frames"] == 1 + (SR // 2) // 512  # the whole clip
    assert isinstance(model, ProjectedEncoder)
    with torch.no_grad():
        assert model(torch.from_numpy(waves)).shape == (4, 128)


def test_bf16_autocast_trains_with_a_float32_loss():
    waves = _classes(2, seed=4)[:, : SR // 2]
    model, hist = train_simclr(waves, epochs=2, batch_size=4, seed=0, progress=False, bf16=True)
    assert hist["hyper"]["bf16"] is True and all(math.isfinite(v) for v in hist["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(
    "waves, match",
    [
        (np.zeros((1, SR), np.float32), "at least 2 clips"),
        (np.zeros((4, 100), np.float32), "shorter than one frame"),
        (np.full((2, SR), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_waves_are_clear_errors(waves, match):
    with pytest.raises(DataError, match=match):
        train_simclr(waves, epochs=1, progress=False)


def test_bad_hyper_parameters_are_clear_errors():
    waves = np.zeros((4, SR), np.float32)
    with pytest.raises(ValueError, match="batch_size"):
        train_simclr(waves, epochs=1, batch_size=1, progress=False)
    with pytest.raises(ValueError, match="crop_seconds"):
        train_simclr(waves, epochs=1, crop_seconds=-1.0, progress=False)
    with pytest.raises(ValueError, match="embedding"):
        train_simclr(waves, epochs=1, embedding="head", progress=False)  # type: ignore[arg-type]
