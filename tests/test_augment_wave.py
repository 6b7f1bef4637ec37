"""The first seed's waveform augmentations: each does what it says, configs and noise folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.errors import ConfigError, DataError
from training.augment_wave import (
    NAMES,
    AugSpec,
    NoiseBank,
    WaveAugmentConfig,
    WaveAugmenter,
    gain,
    invert_polarity,
    load_noise_dir,
    mix_at_snr,
    pitch_shift,
    time_stretch,
)

SR = 16000
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tone(hz: float, seconds: float = 1.0, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amp * torch.sin(2 * math.pi * hz * t)).float()


def peak_hz(x: torch.Tensor) -> float:
    """Frequency of the spectral peak, refined by parabolic interpolation (Hann window)."""
    y = x.double().numpy() * np.hanning(x.shape[0])
    mag = np.abs(np.fft.rfft(y, n=8 * len(y)))
    k = int(np.argmax(mag))
    a, b, c = np.log(mag[k - 1 : k + 2])
    k_ref = k + 0.5 * (a - c) / (a - 2 * b + c)
    return k_ref * SR / (8 * len(y))


def rms_db(x: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(x.square().mean(dim=-1))


@pytest.mark.parametrize("semitones", [-3.0, -1.0, 0.5, 2.0])
@pytest.mark.parametrize("hz", [440.0, 1000.0])
def test_pitch_shift_moves_a_tone_by_the_stated_semitones_and_keeps_duration(hz, semitones):
    x = tone(hz)
    y = pitch_shift(x, semitones)
    assert y.shape == x.shape
    want = hz * 2 ** (semitones / 12)
    got = peak_hz(y[1000:-1000])
    assert abs(12 * math.log2(got / hz) - semitones) < 0.05, (got, want)


@pytest.mark.parametrize("rate", [0.8, 0.9, 1.1, 1.25])
def test_time_stretch_changes_duration_not_pitch(rate):
    x = tone(1000.0)
    y = time_stretch(x, rate)
    assert y.shape[0] == round(x.shape[0] / rate)
    assert abs(peak_hz(y[1000:-1000]) - 1000.0) < 2.0
    # the level is kept (the vocoder's phase drift would otherwise lose up to 3.4 dB)
    assert abs(float(rms_db(y) - rms_db(x))) < 0.1


def test_polarity_inversion_negates():
    x = torch.randn(3, 800)
    assert torch.equal(invert_polarity(x), -x)


def test_gain_changes_rms_by_the_stated_db_per_row():
    x = torch.randn(3, 4000) * 0.1
    db = torch.tensor([-6.0, 0.0, 4.5])
    y = gain(x, db)
    assert torch.allclose(rms_db(y) - rms_db(x), db, atol=1e-3)
    assert abs(float(rms_db(gain(x[0], 3.0)) - rms_db(x[0])) - 3.0) < 1e-3


def test_mix_at_snr_gives_the_stated_snr():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8000, generator=g) * 0.2
    n = torch.randn(4, 8000, generator=g) * 0.01
    snr = torch.tensor([0.0, 5.0, 10.0, 20.0])
    y = mix_at_snr(x, n, snr)
    added = y - x
    measured = rms_db(x) - rms_db(added)
    assert torch.allclose(measured, snr, atol=1e-3)


def _only(name: str, spec: AugSpec) -> WaveAugmentConfig:
    specs = dict(WaveAugmentConfig().without(*NAMES).specs)
    specs[name] = spec
    return WaveAugmentConfig(specs)


def test_augmenter_with_every_p_zero_returns_the_crop():
    x = torch.randn(4, 2000)
    aug = WaveAugmenter(WaveAugmentConfig().without(*NAMES))
    y = aug(x, 1600, torch.Generator().manual_seed(0))
    assert torch.equal(y, x[:, :1600])


def test_augmenter_applies_each_augmentation_with_its_range():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4000) * 0.1
    pol = WaveAugmenter(_only("polarity", AugSpec(1.0)))(x, 4000, g)
    assert torch.equal(pol, -x)
    gained = WaveAugmenter(_only("gain", AugSpec(1.0, 3.0, 3.0)))(x, 4000, g)
    assert torch.allclose(rms_db(gained) - rms_db(x), torch.full((5,), 3.0), atol=1e-3)
    cfg = _only("time_stretch", AugSpec(1.0, 1.2, 1.2))
    aug = WaveAugmenter(cfg)
    long = torch.stack([tone(1000.0, 1.0)] * 2)
    assert aug.input_length(8000) >= 8000 * 1.2
    y = aug(long[:, : aug.input_length(8000)], 8000, g)
    assert y.shape == (2, 8000) and abs(peak_hz(y[0]) - 1000.0) < 3.0
    # a tone starting at 0.3 s of the input starts at 0.25 s after a 1.2x speed-up
    burst = tone(1000.0, 1.0)[: aug.input_length(8000)].clone()
    burst[: int(0.3 * SR)] = 0.0
    ys = aug(torch.stack([burst, burst]), 8000, g)[0].abs()
    env = torch.nn.functional.avg_pool1d(ys[None, None], 64, 16).flatten()
    onset = int(torch.nonzero(env > env.max() / 2)[0]) * 16 + 32
    assert abs(onset - 0.25 * SR) < 200, onset
    assert aug.seconds["time_stretch"] > 0


def test_noise_augmentation_mixes_at_the_range_and_force_noise_overrides_p():
    g = torch.Generator().manual_seed(1)
    bank = NoiseBank([np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32)])
    x = torch.randn(6, 4000, generator=g) * 0.1
    aug = WaveAugmenter(_only("noise", AugSpec(1.0, 10.0, 10.0)), noise=bank)
    y = aug(x, 4000, g)
    assert torch.allclose(rms_db(x) - rms_db(y - x), torch.full((6,), 10.0), atol=1e-3)
    off = WaveAugmenter(_only("noise", AugSpec(0.0, 10.0, 10.0)), noise=bank)
    assert off.enabled() == []  # p = 0
    no_bank = WaveAugmenter(_only("noise", AugSpec(1.0, 10.0, 10.0)))
    assert no_bank.enabled() == []  # nothing to draw from
    cfg = _only("noise", AugSpec(1e-9, 10.0, 10.0))
    force = torch.tensor([True, False, True, False, False, False])
    y = WaveAugmenter(cfg, noise=bank)(x, 4000, g, force_noise=force)
    changed = (y != x).any(dim=1)
    assert torch.equal(changed, force)


def test_supplemental_noise_uses_its_own_bank():
    g = torch.Generator().manual_seed(2)
    bank = NoiseBank([np.full(SR, 0.3, np.float32)], "supp")
    x = torch.zeros(2, 1000)
    x[:, ::2] = 0.1
    y = WaveAugmenter(_only("supplemental_noise", AugSpec(1.0, 0.0, 0.0)), None, bank)(x, 1000, g)
    assert torch.allclose(y - x, torch.full_like(x, float(x.square().mean().sqrt())), atol=1e-5)


def test_config_from_mapping_yaml_and_json(tmp_path):
    cfg = WaveAugmentConfig.from_mapping({"pitch_shift": {"p": 0.2, "range": [-0.5, 0.5]}})
    assert cfg.specs["pitch_shift"] == AugSpec(0.2, -0.5, 0.5)
    assert cfg.specs["gain"] == WaveAugmentConfig().specs["gain"]  # defaults kept
    assert cfg.without("gain").specs["gain"].p == 0.0
    y = tmp_path / "aug.yaml"
    y.write_text("gain:\n  p: 1.0\n  range: [-3, 3]\n")
    assert WaveAugmentConfig.load(y).specs["gain"] == AugSpec(1.0, -3.0, 3.0)
    j = tmp_path / "aug.json"
    j.write_text(json.dumps({"polarity": {"p": 0.0}}))
    assert WaveAugmentConfig.load(j).specs["polarity"].p == 0.0


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"reverb": {"p": 1}}, "reverb"),
        ({"gain": {"p": 2.0}}, "gain"),
        ({"gain": {"range": [3, -3]}}, "reversed"),
        ({"time_stretch": {"range": [0.0, 1.1]}}, "time_stretch"),
        ({"gain": {"prob": 0.5}}, "gain"),
        ({"gain": {"p": "often"}}, "gain"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_config_names_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle):
        WaveAugmentConfig.from_mapping(data)


def test_bad_config_file_names_the_file(tmp_path):
    bad = tmp_path / "aug.yaml"
    bad.write_text("gain: [unclosed\n")
    with pytest.raises(ConfigError, match="aug.yaml"):
        WaveAugmentConfig.load(bad)
    with pytest.raises(ConfigError, match="missing.json"):
        WaveAugmentConfig.load(tmp_path / "missing.json")


def test_load_noise_dir_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_noise_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .wav"):
        load_noise_dir(tmp_path / "empty")


@pytest.mark.parametrize("folder", ["background_noise", "esc50_machine_noise_1s"])
def test_load_noise_dir_on_real_recordings(folder):
    root = SHARED / folder
    if not root.is_dir():
        pytest.skip(f"{root} absent (real recordings live beside the repository)")
    bank = load_noise_dir(root, max_files=40, max_seconds=2.0)
    assert 1 <= len(bank) <= 40
    assert all(b.dtype == np.float32 and b.ndim == 1 and b.size <= 2 * SR for b in bank)
    seg = NoiseBank(bank).sample(3, int(1.5 * SR), torch.Generator().manual_seed(0))
    assert seg.shape == (3, 24000) and bool((seg.abs().amax(dim=1) > 0).all())


def test_default_leaves_the_speed_augmentations_off_and_seed_set_has_all_six():
    default, seed = WaveAugmentConfig(), WaveAugmentConfig.seed_set()
    assert not default.active("pitch_shift") and not default.active("time_stretch")
    assert all(seed.active(n) for n in NAMES)
    assert default.specs["pitch_shift"].high == seed.specs["pitch_shift"].high == 1.0
