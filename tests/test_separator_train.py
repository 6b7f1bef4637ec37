"""Separator training: mixtures at the asked SNR, the material rules, and that training helps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.audio.io import write_wav
from monitor.errors import DataError
from training.separator.mixtures import (
    MixtureConfig,
    MixtureSampler,
    load_noise_dirs,
    material,
    mix_at_snr,
)
from training.separator.train import TrainConfig, evaluate_separator, train_separator
from training.separator.unet import UNetConfig

SR = 16000
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _tones(rng: np.random.Generator, n: int, seconds: float = 2.0) -> list[np.ndarray]:
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for f in rng.uniform(200, 1500, n):
        x = sum(np.sin(2 * np.pi * f * k * t + rng.uniform(0, 6)) / k for k in (1, 2, 3))
        out.append(x.astype(np.float32))
    return out


def test_mix_at_snr_gives_the_snr() -> None:
    rng = np.random.default_rng(0)
    c, z = rng.standard_normal(8000), 3 * rng.standard_normal(8000)
    for snr in (-10.0, 0.0, 6.0):
        zs = mix_at_snr(c, z, snr)
        got = 10 * np.log10(np.mean(c**2) / np.mean(zs**2))
        assert got == pytest.approx(snr, abs=1e-3)


def test_sampler_crops_loops_short_noise_and_keeps_the_snr() -> None:
    rng = np.random.default_rng(0)
    clean = _tones(rng, 3)
    noise = [rng.standard_normal(SR // 4).astype(np.float32)]  # shorter than a crop: looped
    s = MixtureSampler(clean, noise, MixtureConfig(crop_seconds=1.0), seed=0)
    c, z = s.batch(4, snr_db=-6.0)
    assert c.shape == z.shape == (4, SR)
    snr = 10 * np.log10((c**2).mean(1) / (z**2).mean(1))
    np.testing.assert_allclose(snr, -6.0, atol=1e-3)
    assert np.abs(c + z).max() <= 1.0 + 1e-6  # gain keeps the mixture in range


def test_material_rules() -> None:
    waves = np.ones((3, 100), np.float32)
    supp = np.full((2, 100), 0.5, np.float32)
    extra = [np.zeros(10, np.float32)]
    clean, noise, why = material(waves, supp, "clean", extra)
    assert len(clean) == 2 and "supplemental clean" in why and len(noise) == 1
    clean, noise, why = material(waves, supp, "noise", extra)
    assert len(clean) == 3 and "training clips" in why and len(noise) == 3
    with pytest.raises(DataError, match="no noise clips"):
        material(waves, None, None, [])


def test_load_noise_dirs(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    write_wav(tmp_path / "a" / "b" / "n.wav", np.zeros(1600, np.float32) + 0.1)
    assert len(load_noise_dirs([tmp_path / "a"])) == 1
    with pytest.raises(DataError, match="no .wav"):
        load_noise_dirs([_empty(tmp_path)])
    with pytest.raises(DataError, match="not found"):
        load_noise_dirs([tmp_path / "nope"])


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_brief_training_on_tones_in_noise_improves_si_sdr() -> None:
    """60 steps on harmonic tones + white noise; held-out tones and noise at -6/0/+6 dB."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    clean = _tones(rng, 12)
    noise = [rng.standard_normal(2 * SR).astype(np.float32) for _ in range(6)]
    cfg = TrainConfig(steps=60, batch_size=8, mixtures=MixtureConfig(crop_seconds=1.0))
    sep, hist = train_separator(
        clean[:8], noise[:4], config=cfg, unet=UNetConfig(channels=8), progress_bar=False
    )
    assert hist["loss_last"] < hist["loss_first"]
    for snr in (-6.0, 0.0, 6.0):
        r = evaluate_separator(sep, clean[8:], noise[4:], snr, n=4, seconds=1.0)
        assert r["si_sdri"] > 1.0, r  # measured about +3 dB after 60 steps
        # clearly better than the trivial all-zero mask (the target is mostly 0 at these SNRs):
        # its errors are 0.71-0.72 / 0.46 / 0.38 of the trivial mask's at -6 / 0 / +6 dB on
        # AVX2 and AMX kernels, 1 or 2 threads; an absolute accuracy margin sat on one CPU's
        # rounding at -6 dB
        assert 1.0 - r["mask_accuracy"] < 0.85 * r["ones_fraction"], r
        assert r["si_sdri_oracle_hard_mask"] > r["si_sdri"]


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared recordings not found at {SHARED}")
def test_real_noise_folder_loads() -> None:
    noise = load_noise_dirs([SHARED / "background_noise"])
    assert len(noise) == 6 and all(n.dtype == np.float32 and n.size > SR for n in noise)
