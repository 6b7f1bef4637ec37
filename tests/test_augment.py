"""The second seed's augmentations: pitch shift, white noise at a given level, time masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monitor.audio import frontend as fe
from training.augment import (
    KINDS,
    AugmentConfig,
    Augmenter,
    MelPitchShift,
    add_white_noise,
    seconds_to_frames,
    time_mask,
)

SR = fe.SAMPLE_RATE
N_FFT, HOP, N_MELS = fe.LOGMEL_N_FFT, fe.LOGMEL_HOP, fe.LOGMEL_N_MELS
FB = fe.mel_filterbank(N_FFT, N_MELS, htk=False, norm="slaney")


def _logmel(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(fe.log_mel(x, N_FFT, HOP, N_MELS, htk=False, norm="slaney"))


def _tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _band_power_db(logmel: torch.Tensor) -> float:
    return 10 * np.log10(torch.pow(10.0, logmel.mean(dim=-1) / 10).sum().item())


def _peak_band(logmel: torch.Tensor) -> int:
    return int(logmel.mean(dim=-1).argmax())


@pytest.mark.parametrize(
    "hz, semitones", [(1000.0, 7.0), (1000.0, 12.0), (2000.0, -12.0), (440.0, 5.0), (3000.0, -7.0)]
)
def test_pitch_shift_moves_a_tone_to_the_expected_band(hz, semitones):
    shift = MelPitchShift(FB, SR, N_FFT)
    x = _logmel(_tone(hz))[None]
    shifted = shift(x, torch.tensor([semitones], dtype=torch.float64))[0]
    truth = _logmel(_tone(hz * 2 ** (semitones / 12)))  # the tone really played shifted
    expected = _peak_band(truth)
    assert _peak_band(x[0]) != expected  # the shift really has to move it
    assert abs(_peak_band(shifted) - expected) <= 1
    # and with the power the shifted tone has in these mel bands (summed over bands)
    assert _band_power_db(shifted) == pytest.approx(_band_power_db(truth), abs=0.5)


def test_pitch_shift_keeps_broadband_power_density():
    """White noise shifted by r has density S/r where it is defined: -10*log10(r) dB."""
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(4 * SR)).astype(np.float32)
    x = _logmel(noise)[None]
    shift = MelPitchShift(FB, SR, N_FFT)
    for semitones in (5.0, -5.0):
        out = shift(x, torch.tensor([semitones], dtype=torch.float64))[0]
        expected = -10 * np.log10(2 ** (semitones / 12))
        inner = slice(20, 100)  # away from the edges the shift empties or clamps
        got = (out[inner].mean() - x[0, inner].mean()).item()
        assert got == pytest.approx(expected, abs=0.5)


def test_pitch_down_empties_the_top_bands_and_zero_shift_is_identity():
    rng = np.random.default_rng(1)
    x = _logmel((0.1 * rng.standard_normal(SR)).astype(np.float32))[None]
    shift = MelPitchShift(FB, SR, N_FFT)
    down = shift(x, torch.tensor([-12.0], dtype=torch.float64))[0]
    floor = x.min()
    # an octave down: nothing is left above ~4 kHz; those bands sit at the view's minimum
    top = shift.centres > 4200
    assert torch.all(down[top] == floor)
    same = shift(x, torch.tensor([0.0], dtype=torch.float64))
    assert torch.allclose(same, x, atol=1e-3)


def test_pitch_shift_rejects_wrong_shapes():
    shift = MelPitchShift(FB, SR, N_FFT)
    with pytest.raises(ValueError, match="128"):
        shift(torch.zeros(1, 64, 10), torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="fb"):
        MelPitchShift(FB[:10], SR, N_FFT)


@pytest.mark.parametrize("level_db", [-6.0, -15.0, -24.0])
def test_white_noise_has_the_asked_level_relative_to_the_signal(level_db):
    x = torch.from_numpy(np.stack([_tone(440.0, 2.0), 0.1 * _tone(3000.0, 2.0)]))
    gen = torch.Generator().manual_seed(0)
    y = add_white_noise(x, torch.full((2,), level_db), gen)
    noise = y - x
    ratio_db = 10 * torch.log10(noise.pow(2).mean(1) / x.pow(2).mean(1))
    assert torch.allclose(ratio_db, torch.full((2,), level_db), atol=0.2)
    # white: flat spectrum (low and high halves carry the same power within 10 %)
    spec = torch.fft.rfft(noise[0]).abs().square()
    half = len(spec) // 2
    assert spec[:half].mean() / spec[half:].mean() == pytest.approx(1.0, rel=0.1)


def test_white_noise_is_seeded_and_leaves_silence_silent():
    x = torch.zeros(1, 1000)
    assert torch.equal(add_white_noise(x, torch.tensor([-6.0])), x)
    s = torch.from_numpy(_tone(440.0))[None]
    a = add_white_noise(s, torch.tensor([-10.0]), torch.Generator().manual_seed(3))
    b = add_white_noise(s, torch.tensor([-10.0]), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="level_db"):
        add_white_noise(s, torch.tensor([-10.0, -6.0]))


def test_mask_widths_follow_the_seed():
    assert seconds_to_frames(0.5, SR, HOP) == 16  # 0.5 s at hop 512
    assert seconds_to_frames(1.0, SR, HOP) == 31


@pytest.mark.parametrize("width", [16, 31])
def test_time_mask_floors_exactly_the_span(width):
    rng = np.random.default_rng(2)
    x = _logmel((0.1 * rng.standard_normal(3 * SR)).astype(np.float32))[None].repeat(4, 1, 1)
    out = time_mask(x, width, torch.Generator().manual_seed(0))
    floor = x.amin(dim=(1, 2))
    for i in range(4):
        changed = (out[i] != x[i]).any(dim=0)
        masked = (out[i] == floor[i]).all(dim=0)
        idx = torch.nonzero(masked).flatten()
        assert len(idx) == width and int(idx[-1] - idx[0]) == width - 1  # one contiguous span
        assert not changed[~masked].any()  # everything else untouched
    starts = {int(torch.nonzero((out[i] == floor[i]).all(0))[0]) for i in range(4)}
    assert len(starts) > 1  # spans are random per item


def test_time_mask_longer_than_the_view_masks_all():
    x = torch.randn(2, N_MELS, 10)
    out = time_mask(x, 31)
    assert torch.all(out == x.amin(dim=(1, 2), keepdim=True))


def test_augment_config_validates():
    with pytest.raises(ValueError, match="semitones"):
        AugmentConfig(min_semitones=5, max_semitones=2)
    with pytest.raises(ValueError, match="unknown kinds"):
        AugmentConfig(kinds=("reverb",))
    cfg = AugmentConfig()
    assert cfg.noise_range("noise_loud") == (-15.0, -6.0)
    assert cfg.noise_range("noise_quiet") == (-24.0, -15.0)


def _aug() -> tuple[Augmenter, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(4)
    waves = torch.from_numpy((0.1 * rng.standard_normal((12, 2 * SR))).astype(np.float32))
    waves += torch.from_numpy(_tone(700.0, 2.0))

    def logmel_fn(w: torch.Tensor) -> torch.Tensor:
        return _logmel(w.numpy())

    aug = Augmenter(FB, sample_rate=SR, n_fft=N_FFT, hop=HOP, logmel_fn=logmel_fn)
    return aug, logmel_fn(waves), waves


def test_augmenter_applies_each_kind_and_is_reproducible():
    aug, logmel, waves = _aug()
    kinds = list(KINDS) * 2
    a = aug(logmel, waves, kinds, torch.Generator().manual_seed(5))
    b = aug(logmel, waves, kinds, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == logmel.shape
    for i, kind in enumerate(kinds):
        assert not torch.allclose(a[i], logmel[i]), kind
    # masks floor whole frames, noise lifts the quiet bands, pitch moves the tone's band
    for i, kind in enumerate(kinds[:6]):
        if kind.startswith("mask"):
            assert (a[i] == logmel[i].min()).all(dim=0).sum() == aug.mask_frames[kind]
        if kind.startswith("pitch"):
            assert _peak_band(a[i]) != _peak_band(logmel[i])


def test_augmenter_sample_kinds_is_seeded_and_covers_all():
    aug, _, _ = _aug()
    k1 = aug.sample_kinds(600, torch.Generator().manual_seed(0))
    assert k1 == aug.sample_kinds(600, torch.Generator().manual_seed(0))
    counts = {k: k1.count(k) for k in KINDS}
    assert all(70 < c < 130 for c in counts.values()), counts


def test_augmenter_noise_needs_waves():
    aug, logmel, _ = _aug()
    with pytest.raises(ValueError, match="waveform"):
        aug(logmel[:1], None, ["noise_loud"])
    with pytest.raises(ValueError, match="kinds"):
        aug(logmel, None, ["mask_short"])


def test_a_config_without_pitch_shift_keeps_the_spectrum_in_place():
    """The simclr recipe's default (noise and masks only): no view moves the tone's band."""
    _, logmel, waves = _aug()

    def logmel_fn(w: torch.Tensor) -> torch.Tensor:
        return _logmel(w.numpy())

    cfg = AugmentConfig(kinds=("noise_loud", "noise_quiet", "mask_short", "mask_long"))
    aug = Augmenter(FB, sample_rate=SR, n_fft=N_FFT, hop=HOP, logmel_fn=logmel_fn, config=cfg)
    gen = torch.Generator().manual_seed(6)
    assert set(aug.sample_kinds(200, gen)) == set(cfg.kinds)
    kinds = aug.sample_kinds(len(logmel), gen)
    out = aug(logmel, waves, kinds, gen)
    for i, kind in enumerate(kinds):
        assert not torch.allclose(out[i], logmel[i]), kind
        assert _peak_band(out[i]) == _peak_band(logmel[i]), kind
