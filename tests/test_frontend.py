"""Front-ends: numpy reference (audio.frontend) against librosa / torch, torch against numpy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from monitor.audio import frontend as fe
from training.features import CEDFrontEnd, LogMel, PowerSpectrogram

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SR = fe.SAMPLE_RATE
EPS64 = float(np.finfo(np.float64).eps)


def _noise(n: int, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _tone(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# -- numpy reference -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_fft,n_mels,f_max", [(512, 64, 8000.0), (2048, 128, None), (1024, 128, None)]
)
@pytest.mark.parametrize("htk,norm", [(True, None), (False, "slaney")])
def test_mel_filterbank_matches_librosa(n_fft, n_mels, f_max, htk, norm):
    ours = fe.mel_filterbank(n_fft, n_mels, sr=SR, f_max=f_max, htk=htk, norm=norm)
    ref = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmax=f_max, htk=htk, norm=norm)
    assert ours.shape == (n_fft // 2 + 1, n_mels)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref.T, rtol=1e-5, atol=1e-7)


def test_ced_filterbank_is_htk_without_norm():
    fb = fe.mel_filterbank(fe.CED_N_FFT, fe.CED_N_MELS, f_max=fe.CED_F_MAX)
    # No norm: triangles peak near 1 (exactly 1 only where a centre falls on a bin).
    assert 0.9 < fb.max() <= 1.0
    # HTK centres: the first triangle's peak sits at mel2hz(m_max / 65) Hz.
    m_max = 2595.0 * np.log10(1.0 + 8000.0 / 700.0)
    centre = 700.0 * (10 ** (m_max / 65 / 2595.0) - 1.0)
    peak_bin = int(np.argmax(fb[:, 0]))
    assert abs(peak_bin * SR / fe.CED_N_FFT - centre) <= SR / fe.CED_N_FFT


def test_mel_filterbank_rejects_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        fe.mel_filterbank(512, 64, norm="area")
    with pytest.raises(ValueError, match="f_max"):
        fe.mel_filterbank(512, 64, f_max=9000.0)


def test_hann_window():
    # torch computes its window in float32; ours in float64 then rounds
    np.testing.assert_allclose(fe.hann_window(512), torch.hann_window(512).numpy(), atol=1e-6)
    np.testing.assert_allclose(fe.hann_window(400, periodic=False), np.hanning(400), atol=1e-7)


@pytest.mark.parametrize("n_fft,hop,win", [(512, 160, None), (1024, 512, 800)])
def test_power_spectrogram_matches_torch_stft(n_fft, hop, win):
    x = _noise(SR)
    ours = fe.power_spectrogram(x, n_fft, hop, win_length=win)
    w = torch.from_numpy(fe.hann_window(win or n_fft))  # the window is tested on its own
    spec = torch.stft(
        torch.from_numpy(x).double(),
        n_fft,
        hop,
        win_length=win,
        window=w.double(),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    ref = (spec.abs() ** 2).numpy()
    assert ours.shape == ref.shape == (n_fft // 2 + 1, 1 + SR // hop)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9 * ref.max())


def test_power_spectrogram_batched_equals_per_clip():
    x = np.stack([_noise(4000, 1), _noise(4000, 2)])
    batched = fe.power_spectrogram(x, 512, 160)
    for i in range(2):
        np.testing.assert_allclose(batched[i], fe.power_spectrogram(x[i], 512, 160))


def test_power_spectrogram_too_short_for_reflect():
    with pytest.raises(ValueError, match="too short"):
        fe.power_spectrogram(np.zeros(200), 512, 160)


def test_log_mel_matches_librosa_melspectrogram():
    """The DCASE baseline's features (librosa, Slaney, 10*log10(max(x, eps))) from our code."""
    x = _noise(2 * SR, 3) + _tone(440.0, 2.0, 0.2)
    ref = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=SR, n_fft=1024, hop_length=512, n_mels=128, power=2.0,
        pad_mode="reflect",
    )  # fmt: skip
    ref_db = 10.0 * np.log10(np.maximum(ref, EPS64))
    ours = fe.log_mel(x, 1024, 512, 128, htk=False, norm="slaney", amin=EPS64, band_edge_hz=None)
    assert ours.shape == ref_db.shape
    assert np.abs(ours - ref_db).max() < 1e-3
    # band-limited (the default): librosa's spectrum through the band-limited filterbank
    spec = np.abs(
        librosa.stft(x.astype(np.float64), n_fft=1024, hop_length=512, pad_mode="reflect")
    )
    fb = fe.band_limited(librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128).T)
    ref_band = 10.0 * np.log10(np.maximum(fb.T.astype(np.float64) @ spec**2, EPS64))
    ours = fe.log_mel(x, 1024, 512, 128, htk=False, norm="slaney", amin=EPS64)
    assert np.abs(ours - ref_band).max() < 1e-3


def test_band_mask():
    m = fe.band_mask(512)  # 31.25 Hz bins: 7000 Hz is bin 224
    assert m.shape == (257,) and m.dtype == np.float32
    assert m[:225].min() == 1.0 and m[225:].max() == 0.0
    assert fe.band_mask(512, edge_hz=None).min() == 1.0
    with pytest.raises(ValueError, match="edge_hz"):
        fe.band_mask(512, edge_hz=9000.0)


@pytest.mark.parametrize("n_fft,n_mels,htk", [(512, 64, True), (2048, 128, False)])
def test_band_limited_filterbank_repeats_the_highest_whole_filter(n_fft, n_mels, htk):
    """Filters reaching above the edge repeat the highest one below it: no empty (constant)
    bands, no weight above the edge."""
    fb = fe.mel_filterbank(n_fft, n_mels, htk=htk, norm=None if htk else "slaney")
    lim = fe.band_limited(fb)
    top = int(fe.band_columns(fb).max())
    hz = np.arange(fb.shape[0]) * SR / n_fft
    assert lim[hz > fe.BAND_EDGE_HZ].max() == 0.0
    np.testing.assert_array_equal(lim[:, : top + 1], fb[:, : top + 1])  # untouched below
    assert np.all(lim[:, top + 1 :] == fb[:, [top]])  # the rest repeat filter `top`
    assert fb[hz > fe.BAND_EDGE_HZ, top + 1].max() > 0  # ... which was the last one below
    assert n_mels - 8 < top + 1 < n_mels  # a few bands only
    np.testing.assert_array_equal(fe.band_limited(fb, edge_hz=None), fb)


def _top_band_changed(x: np.ndarray) -> np.ndarray:
    """``x`` plus loud sound in 7.45-8 kHz: what a native 16 kHz recording has there and a
    resampled 44.1/48 kHz one does not (the resampler's transition band)."""
    t = np.arange(x.size) / SR
    top = sum(np.sin(2 * np.pi * f * t + f) for f in (7450.0, 7600.0, 7800.0, 7950.0))
    return (x + 0.1 * top).astype(np.float32)


def test_frontends_do_not_hear_above_the_band_edge():
    """Every front-end (numpy, torch CED, torch LogMel; ONNX in test_export) gives the same
    features whether the resampler's transition band is there or not."""
    x = _noise(2 * SR, 11, 0.05) + _tone(1000.0, 2.0, 0.3)
    y = _top_band_changed(x)
    pairs = {
        "numpy ced": (fe.ced_log_mel(x), fe.ced_log_mel(y)),
        "numpy logmel": (fe.log_mel(x, 2048, 512, 128, htk=False, norm="slaney"),
                         fe.log_mel(y, 2048, 512, 128, htk=False, norm="slaney")),
    }  # fmt: skip
    for name, front in (("torch ced", CEDFrontEnd()), ("torch logmel", LogMel())):
        with torch.no_grad():
            a, b = front(torch.from_numpy(np.stack([x, y])))
        pairs[name] = (a.numpy(), b.numpy())
    for name, (a, b) in pairs.items():
        # inner frames: the first/last two reflect the clip's edge, which splatters any sound
        # over all bins (a window inside a stream has real neighbours there: runtime.py)
        assert np.abs(a - b)[..., 2:-2].max() < 0.05, name  # dB
    # without the limit the top mel bands differ by tens of dB (the bug)
    full = LogMel(band_edge_hz=None)
    with torch.no_grad():
        a, b = full(torch.from_numpy(np.stack([x, y])))
    assert (b - a)[..., 2:-2].max().item() > 20.0


def test_checkpoint_filterbank_cannot_undo_the_band_limit():
    """CED's .pt (and older checkpoints) carry ``mel_scale.fb``; the band mask is not in them."""
    front = CEDFrontEnd()
    front.load_state_dict(
        {"0.spectrogram.window": torch.from_numpy(fe.hann_window(512)),
         "0.mel_scale.fb": torch.from_numpy(fe.mel_filterbank(512, 64, f_max=8000.0))}
    )  # fmt: skip
    x = _noise(SR, 12, 0.05)
    with torch.no_grad():
        a, b = front(torch.from_numpy(np.stack([x, _top_band_changed(x)])))
    assert (a - b)[..., 2:-2].abs().max().item() < 0.05


def test_log_mel_tone_peaks_in_its_band():
    x = _tone(1000.0, 1.0)
    db = fe.ced_log_mel(x)
    fb = fe.mel_filterbank(fe.CED_N_FFT, fe.CED_N_MELS, f_max=fe.CED_F_MAX)
    band = int(np.argmax(fb[round(1000.0 * fe.CED_N_FFT / SR)]))  # filter with most weight at 1 kHz
    assert int(np.argmax(db.mean(axis=1))) == band
    lo, hi = np.nonzero(fb[:, band])[0][[0, -1]] * SR / fe.CED_N_FFT
    assert lo < 1000.0 < hi


def test_numpy_per_clip_floor():
    loud = _tone(1000.0, 2.0, 1.0)
    loud[SR // 2 : SR] = 0.0  # digital silence
    quiet = _noise(2 * SR, scale=1e-3)
    quiet[SR:] = 0.0  # -100 dB: above its own floor, below the loud clip's
    db = fe.ced_log_mel(np.stack([loud, quiet]))
    assert db[0].min() == pytest.approx(db[0].max() - 120.0, abs=1e-4)
    np.testing.assert_array_equal(db[1], fe.ced_log_mel(quiet))  # the loud clip does not leak


def test_monitor_frontend_does_not_import_torch():
    code = "import sys, monitor.audio.frontend; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- torch front-ends ------------------------------------------------------------------------


def test_ced_frontend_buffer_names():
    names = {k: tuple(v.shape) for k, v in CEDFrontEnd().state_dict().items()}
    assert names == {"0.spectrogram.window": (512,), "0.mel_scale.fb": (257, 64)}


def test_ced_frontend_shape_10s():
    y = CEDFrontEnd()(torch.from_numpy(_noise(10 * SR))[None])
    assert y.shape == (1, 64, 1001)
    assert fe.n_frames(10 * SR, fe.CED_HOP, fe.CED_N_FFT) == 1001


def test_ced_frontend_matches_numpy():
    x = np.stack([_noise(3 * SR, 4) + _tone(2500.0, 3.0, 0.3), _noise(3 * SR, 5, 0.01)])
    ours = CEDFrontEnd()(torch.from_numpy(x)).numpy()
    ref = fe.ced_log_mel(x)
    assert ours.shape == ref.shape == (2, 64, 301)
    assert np.abs(ours - ref).max() < 2e-3  # dB


def test_conv_stft_matches_torch_stft():
    x = torch.from_numpy(_noise(2 * SR, 6))[None]
    ours = PowerSpectrogram(512, 160)(x)
    ref = torch.stft(
        x, 512, 160, window=torch.hann_window(512), center=True, pad_mode="reflect",
        return_complex=True,
    ).abs() ** 2  # fmt: skip
    assert ours.shape == ref.shape
    assert ((ours - ref).abs().max() / ref.max()).item() < 1e-5


def test_ced_frontend_per_clip_floor():
    loud = _tone(1000.0, 2.0, 1.0)
    loud[SR // 2 : SR] = 0.0
    quiet = _noise(2 * SR, 7, 1e-3)
    quiet[SR:] = 0.0  # -100 dB: above its own floor, below the loud clip's
    front = CEDFrontEnd()
    db = front(torch.from_numpy(np.stack([loud, quiet])))
    assert db[0].min().item() == pytest.approx(db[0].max().item() - 120.0, abs=1e-3)
    silent = db[0, :, 60:90]  # frames inside the silent half second
    assert torch.all(silent == db[0].max() - 120.0)
    alone = front(torch.from_numpy(quiet)[None])[0]
    torch.testing.assert_close(db[1], alone)  # independent of its batch mate


def test_ced_frontend_tone_peak():
    db = CEDFrontEnd()(torch.from_numpy(_tone(1000.0, 1.0))[None])[0]
    fb = fe.mel_filterbank(512, 64, f_max=8000.0)
    assert int(db.mean(1).argmax()) == int(np.argmax(fb[32]))  # bin 32 = 1000 Hz


def test_loaded_window_is_used():
    """A checkpoint's window must change the result (CED's .pt carries it)."""
    front = CEDFrontEnd()
    x = torch.from_numpy(_noise(SR, 8))[None]
    before = front(x)
    state = front.state_dict()
    state["0.spectrogram.window"] = torch.ones(512)
    front.load_state_dict(state)
    assert not torch.allclose(before, front(x))


@pytest.mark.parametrize("n_fft,hop,n_mels,frames", [(2048, 512, 128, 313), (1024, 512, 128, 313)])
def test_logmel_matches_numpy(n_fft, hop, n_mels, frames):
    x = _noise(10 * SR, 9) + _tone(700.0, 10.0, 0.2)
    lm = LogMel(n_fft, hop, n_mels)
    ours = lm(torch.from_numpy(x)[None])[0].numpy()
    kw = dict(htk=False, norm="slaney", amin=EPS64)
    ref = fe.log_mel(x, n_fft, hop, n_mels, **kw, reference_db=lm.to_db.reference_db)
    assert ours.shape == ref.shape == (n_mels, frames) and lm.n_frames(10 * SR) == frames
    assert np.abs(ours - ref).max() < 2e-3


def test_logmel_top_db_and_htk_options():
    x = _tone(1000.0, 1.0, 1.0)
    x[: SR // 2] = 0.0
    lm = LogMel(
        512, 160, 64, htk=True, norm=None, top_db=80.0, amin=1e-10, f_max=8000.0, level_norm=False
    )
    ours = lm(torch.from_numpy(x)[None])[0].numpy()
    ref = fe.log_mel(x, 512, 160, 64, htk=True, norm=None, top_db=80.0, f_max=8000.0)
    assert np.abs(ours - ref).max() < 2e-3
    assert ours.min() == pytest.approx(ours.max() - 80.0, abs=1e-3)


def test_frontends_on_real_recordings():
    folder = DATA / "dcase2023_dev_sample"
    if not folder.is_dir():
        pytest.skip(f"real recordings not available: {folder} is absent")
    import soundfile as sf

    wavs = sorted(folder.glob("*/train/*.wav"))[::4]
    assert wavs, f"no wav files under {folder}"
    front, lm = CEDFrontEnd(), LogMel(level_norm=False)
    for path in wavs:
        x, sr = sf.read(path, dtype="float32")
        assert sr == SR
        t = torch.from_numpy(x)[None]
        assert np.abs(front(t)[0].numpy() - fe.ced_log_mel(x)).max() < 2e-3, path.name
        ref = fe.log_mel(x, 2048, 512, 128, htk=False, norm="slaney", amin=EPS64)
        assert np.abs(lm(t)[0].numpy() - ref).max() < 2e-3, path.name


@pytest.mark.parametrize("make", [CEDFrontEnd, LogMel])
def test_level_normalisation_makes_every_front_end_gain_invariant(make):
    """A machine a few dB louder or quieter gives the same features (the level is the daemon's
    level rule); the numpy reference agrees with the torch module."""
    x = _noise(3 * SR, 11, 0.05) + _tone(440.0, 3.0, 0.1)
    front = make()
    base = front(torch.from_numpy(x)[None])
    for gain_db in (-6.0, -3.0, 2.0, 6.0):
        y = (x * 10 ** (gain_db / 20)).astype(np.float32)
        torch.testing.assert_close(front(torch.from_numpy(y)[None]), base, rtol=0, atol=2e-3)
    to_db = front[1] if isinstance(front, CEDFrontEnd) else front.to_db
    assert to_db.level_norm and abs(float(base.mean()) - to_db.reference_db) < 1e-3
