"""The official DCASE baseline autoencoder: exact feature, exact model, training, clip scores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from monitor.audio import frontend as fe
from monitor.errors import DataError
from training.dcase_ae import ae_clip_scores, clip_vectors, train_autoencoder
from training.models.autoencoder import DcaseAutoencoder


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than two fighting over a shared 2-core CI box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SR = 16000


def _numpy_baseline_vectors(y: np.ndarray) -> np.ndarray:
    """The baseline's feature written out in plain numpy (librosa's melspectrogram defaults)."""
    n_fft, hop, n_mels, frames = 1024, 512, 128, 5
    padded = np.pad(y.astype(np.float64), n_fft // 2)  # center=True, zero padding
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    n_frames = 1 + (len(padded) - n_fft) // hop
    stft = np.stack(
        [np.fft.rfft(padded[i * hop : i * hop + n_fft] * window) for i in range(n_frames)]
    )
    power = np.abs(stft) ** 2  # [T, 513]
    fb = fe.mel_filterbank(n_fft, n_mels, htk=False, norm="slaney").astype(np.float64)
    mel = (power @ fb).T  # [128, T]
    log_mel = 20.0 / 2.0 * np.log10(np.maximum(mel, sys.float_info.epsilon))
    n_vectors = log_mel.shape[1] - frames + 1
    vectors = np.zeros((n_vectors, n_mels * frames))
    for t in range(frames):
        vectors[:, n_mels * t : n_mels * (t + 1)] = log_mel[:, t : t + n_vectors].T
    return vectors


def _hum(n: int, seconds: float, seed: int, hz: float = 120.0) -> np.ndarray:
    """Machine-like clips: a hum with harmonics at a slightly varying pitch plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for _ in range(n):
        f = hz * (1 + 0.01 * rng.standard_normal())
        x = sum(np.sin(2 * np.pi * k * f * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
        out.append(0.1 * x + 0.01 * rng.standard_normal(len(t)))
    return np.stack(out).astype(np.float32)


def test_vectors_match_a_plain_numpy_computation():
    rng = np.random.default_rng(0)
    y = (0.05 * rng.standard_normal(SR) + _hum(1, 1.0, 1)[0]).astype(np.float32)
    ours = clip_vectors(y[None])[0].numpy()
    ref = _numpy_baseline_vectors(y)
    assert ours.shape == ref.shape == (1 + SR // 512 - 4, 640)
    np.testing.assert_allclose(ours, ref, atol=2e-3)  # dB


def test_vectors_match_librosa_as_the_baseline_calls_it():
    librosa = pytest.importorskip("librosa")
    y = _hum(1, 1.0, 2)[0]
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=1024, hop_length=512, n_mels=128, power=2.0, fmax=None, fmin=0.0
    )
    log_mel = 10.0 * np.log10(np.maximum(mel, sys.float_info.epsilon))
    ours = clip_vectors(y[None])[0].numpy()
    np.testing.assert_allclose(ours[:, :128], log_mel[:, :-4].T, atol=2e-3)
    np.testing.assert_allclose(ours[:, 512:], log_mel[:, 4:].T, atol=2e-3)


def test_defaults_are_the_baselines():
    import inspect

    from training import dcase_ae

    params = inspect.signature(train_autoencoder).parameters
    assert dcase_ae.OFFICIAL_EPOCHS == 100 and params["epochs"].default == 20  # CPU budget
    assert params["batch_size"].default == 256
    assert params["lr"].default == 1e-3 and params["validation_split"].default == 0.1


def test_model_has_the_official_layers_and_key_names():
    model = DcaseAutoencoder()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # nttcslab AENet (MSE mode keys), Linear at 0/3/6/9/12 and BatchNorm at 1/4/7/10/13
    enc = [(640, 128), (128, 128), (128, 128), (128, 128), (128, 8)]
    dec = [(8, 128), (128, 128), (128, 128), (128, 128)]
    for part, dims in (("encoder", enc), ("decoder", dec)):
        for i, (n_in, n_out) in enumerate(dims):
            assert shapes[f"{part}.{3 * i}.weight"] == (n_out, n_in)
            assert shapes[f"{part}.{3 * i + 1}.running_var"] == (n_out,)
    assert shapes["decoder.12.weight"] == (640, 128)
    assert "decoder.13.weight" not in shapes  # plain linear output
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 9 and all(b.momentum == 0.01 and b.eps == 1e-3 for b in bns)
    recon, z = model.eval()(torch.randn(3, 640))
    assert recon.shape == (3, 640) and z.shape == (3, 8) and (z >= 0).all()  # ReLU bottleneck


def test_training_lowers_the_loss_and_is_reproducible():
    waves = _hum(6, 1.0, 3)
    kw = dict(epochs=4, batch_size=32, lr=1e-2, seed=1, progress=False)  # lr up: few steps
    model, hist = train_autoencoder(waves, **kw)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    assert hist["hyper"]["n_vectors"] == 6 * 28 and hist["hyper"]["batch_size"] == 32
    calls: list[tuple[int, bool]] = []
    _, again = train_autoencoder(waves, **kw, on_epoch=lambda e, m: calls.append((e, m.training)))
    assert again["loss"] == hist["loss"]
    assert calls == [(1, False), (2, False), (3, False), (4, False)]
    assert not model.training


def test_a_different_sound_scores_higher_than_training_like_clips():
    train = _hum(12, 1.0, 4)
    model, _ = train_autoencoder(train, epochs=10, batch_size=32, lr=1e-2, seed=0, progress=False)
    normal = ae_clip_scores(model, _hum(4, 1.0, 5))
    rng = np.random.default_rng(6)
    t = np.arange(SR) / SR
    other = np.stack(
        [
            _hum(1, 1.0, 7, hz=310.0)[0],  # another machine's hum
            (0.1 * np.sin(2 * np.pi * 2500 * t) + 0.01 * rng.standard_normal(SR)),  # a whine
        ]
    ).astype(np.float32)
    anomalous = ae_clip_scores(model, other)
    assert normal.shape == (4,) and anomalous.shape == (2,)
    assert anomalous.min() > normal.max()
    # training-clip scores (for the gamma threshold) are per clip and finite
    train_scores = ae_clip_scores(model, train)
    assert train_scores.shape == (12,) and np.isfinite(train_scores).all()


@pytest.mark.realdata
def test_real_machine_clips_score_below_a_running_tap():
    train_dir = DATA / "dcase2020_dev_id00" / "train"
    tap = DATA / "background_noise" / "running_tap.wav"
    if not train_dir.is_dir() or not tap.is_file():
        pytest.skip(f"real recordings not found under {DATA} (see shared/data/README.md)")
    files = sorted(train_dir.glob("normal_*.wav"))[:14]
    clips = np.stack([sf.read(f, dtype="float32")[0][: 4 * SR] for f in files])
    model, _ = train_autoencoder(clips[:10], epochs=6, seed=0, progress=False)
    held_out = ae_clip_scores(model, clips[10:])
    other = sf.read(tap, dtype="float32")[0][: 4 * SR][None]
    assert ae_clip_scores(model, other)[0] > held_out.max()


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(4000, np.float32), "clips, samples"),
        (np.zeros((2, 100), np.float32), "too short"),
        (np.full((1, 4000), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_waves_are_clear_errors(bad, match):
    with pytest.raises(DataError, match=match):
        ae_clip_scores(DcaseAutoencoder(), bad)
    with pytest.raises(DataError, match=match):
        train_autoencoder(bad, epochs=1, progress=False)
