"""Audio front-end constants and a numpy log-mel reference.

The constants are the single source of truth shared by training (torch), export (ONNX) and the
torch-free runtime, so a model is never fed features computed with other parameters than the ones
it was trained on. The numpy functions are the reference the torch front-ends are tested against,
and they serve the torch-free ``logmel_knn`` recipe and the daemon directly.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

SAMPLE_RATE = 16000

# The band every model sees, whatever rate the audio was captured at. A 22.05/44.1/48 kHz
# microphone resampled to 16 kHz loses the top of the band to the resampler's anti-alias filter
# (soxr HQ, measured for all three rates: flat to 7.35 kHz, -0.1 dB at 7.45, -3 dB at 7.6,
# -25 dB at 7.8 kHz), native 16 kHz audio keeps it up to 8 kHz, and a model that sees the
# difference scores normal sound as anomalous (1.04 -> 19.7 on the demo package). So the
# front-ends (numpy here, torch in training.features and with them the ONNX graphs) use no STFT
# bin above this edge: 350 Hz (11 bins of CED's STFT, 45 of the ResNet's) below the resampler's
# passband edge, far outside the Hann window's leakage. The mel filters that reach above it
# repeat the highest one that does not (`band_limited`): a flat continuation of the spectrum
# instead of empty bands, whose constant -156 dB dominated the embeddings enough for float
# rounding to move Mahalanobis scores past the export's parity tolerance.
BAND_EDGE_HZ = 7000.0

# CED (Dinkel et al., ICASSP 2024): torchaudio MelSpectrogram + AmplitudeToDB(top_db=120).
CED_N_FFT = 512
CED_WIN_LENGTH = 512
CED_HOP = 160
CED_N_MELS = 64
CED_F_MIN = 0.0
CED_F_MAX = 8000.0
CED_TOP_DB = 120.0
CED_AMIN = 1e-10
CED_TARGET_FRAMES = 1012  # longest input CED sees at once (63 time patches); longer is chunked
CED_PATCH = 16

# Log-mel of Shin & Lee's ResNet-18 + SimCLR encoder ("Two-Stage Contrastive Learning for
# Anomalous Sound Detection", DCASE 2023 Task 2 technical report).
LOGMEL_N_FFT = 2048
LOGMEL_HOP = 512
LOGMEL_N_MELS = 128

_PAD_MODES = ("reflect", "constant")


def _hz_to_mel(f: ArrayLike, htk: bool) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney (Auditory Toolbox): linear below 1 kHz, logarithmic above.
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    safe = np.maximum(f, min_log_hz)  # avoid log(0) in the branch that is discarded anyway
    return np.where(f >= min_log_hz, min_log_mel + np.log(safe / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray, htk: bool) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), m * f_sp)


def mel_filterbank(
    n_fft: int,
    n_mels: int,
    sr: int = SAMPLE_RATE,
    f_min: float = 0.0,
    f_max: float | None = None,
    htk: bool = True,
    norm: str | None = None,
) -> np.ndarray:
    """Triangular mel filters as a ``[n_fft // 2 + 1, n_mels]`` float32 matrix (power @ fb).

    ``htk=True, norm=None`` is torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")``, the
    filterbank CED was trained with; ``htk=False, norm="slaney"`` is librosa's default.
    """
    if norm not in (None, "slaney"):
        raise ValueError(f"mel_filterbank: norm must be None or 'slaney', got {norm!r}")
    f_max = sr / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= sr / 2.0:
        raise ValueError(
            f"mel_filterbank: need 0 <= f_min < f_max <= sr/2, got f_min={f_min}, f_max={f_max}, "
            f"sr={sr}"
        )
    if n_fft < 2 or n_mels < 1:
        raise ValueError(f"mel_filterbank: bad n_fft={n_fft} or n_mels={n_mels}")
    freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(f_min, htk), _hz_to_mel(f_max, htk), n_mels + 2)
    f_pts = _mel_to_hz(mel_pts, htk)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    if norm == "slaney":
        fb *= 2.0 / (f_pts[2:] - f_pts[:-2])  # equal area per filter
    return fb.astype(np.float32)


def band_mask(
    n_fft: int, sr: int = SAMPLE_RATE, edge_hz: float | None = BAND_EDGE_HZ
) -> np.ndarray:
    """``[n_fft // 2 + 1]`` float32: 1 for the STFT bins at or below ``edge_hz``, 0 above.

    ``edge_hz=None`` keeps every bin (the full band up to sr/2, as before the band limit).
    """
    n_freqs = n_fft // 2 + 1
    if edge_hz is None:
        return np.ones(n_freqs, dtype=np.float32)
    if not 0.0 < float(edge_hz) <= sr / 2.0:
        raise ValueError(f"band_mask: need 0 < edge_hz <= sr/2 = {sr / 2.0:g}, got {edge_hz}")
    freqs = np.arange(n_freqs) * (sr / n_fft)
    return (freqs <= float(edge_hz)).astype(np.float32)


def band_columns(
    fb: np.ndarray, sr: int = SAMPLE_RATE, edge_hz: float | None = BAND_EDGE_HZ
) -> np.ndarray:
    """``[n_mels]`` int64: the filter each mel band uses once the band is limited to ``edge_hz``.

    A filter with no weight above the edge is its own; every filter above it repeats the highest
    such one. Filters are ordered by frequency (as `mel_filterbank` makes them).
    """
    n_mels = fb.shape[1]
    if edge_hz is None:
        return np.arange(n_mels, dtype=np.int64)
    above = band_mask(2 * (fb.shape[0] - 1), sr, edge_hz) == 0
    whole = np.flatnonzero(~(fb[above] > 0).any(axis=0) & (fb.sum(axis=0) > 0))
    if whole.size == 0:
        raise ValueError(f"band_columns: no mel filter lies below the band edge {edge_hz} Hz")
    return np.minimum(np.arange(n_mels), whole.max()).astype(np.int64)


def band_limited(
    fb: np.ndarray, sr: int = SAMPLE_RATE, edge_hz: float | None = BAND_EDGE_HZ
) -> np.ndarray:
    """The ``[n_freqs, n_mels]`` filterbank the front-ends apply: `band_columns` of ``fb``, and
    no weight on bins above ``edge_hz`` (also for a filterbank of other shapes, e.g. loaded)."""
    n_fft = 2 * (fb.shape[0] - 1)
    limited = fb[:, band_columns(fb, sr, edge_hz)] * band_mask(n_fft, sr, edge_hz)[:, None]
    return limited.astype(np.float32)


def hann_window(n: int, periodic: bool = True) -> np.ndarray:
    """Hann window (float32); ``periodic=True`` is ``torch.hann_window``'s default, used by CED."""
    if n < 1:
        raise ValueError(f"hann_window: n must be >= 1, got {n}")
    if n == 1:
        return np.ones(1, dtype=np.float32)
    denom = n if periodic else n - 1
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / denom)).astype(np.float32)


def _frame_count(n_samples: int, n_fft: int, hop: int, center: bool) -> int:
    padded = n_samples + (2 * (n_fft // 2) if center else 0)
    return 1 + (padded - n_fft) // hop


def power_spectrogram(
    x: np.ndarray,
    n_fft: int,
    hop: int,
    win_length: int | None = None,
    center: bool = True,
    pad_mode: str = "reflect",
) -> np.ndarray:
    """|STFT|^2 with a periodic Hann window: ``[..., n_fft // 2 + 1, frames]`` float64.

    Matches ``torch.stft(center=center, pad_mode="reflect", onesided=True)``: a window shorter
    than ``n_fft`` is zero-padded on both sides to ``n_fft``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1:
        raise ValueError("power_spectrogram: x must have a time axis")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"power_spectrogram: pad_mode must be one of {_PAD_MODES}, got {pad_mode}")
    win_length = n_fft if win_length is None else win_length
    if not 0 < win_length <= n_fft:
        raise ValueError(f"power_spectrogram: need 0 < win_length <= n_fft, got {win_length}")
    n = x.shape[-1]
    if center:
        pad = n_fft // 2
        if pad_mode == "reflect" and n <= pad:
            raise ValueError(
                f"power_spectrogram: {n} samples is too short for reflect padding of {pad}"
            )
        widths = [(0, 0)] * (x.ndim - 1) + [(pad, pad)]
        mode: Literal["reflect", "constant"] = "reflect" if pad_mode == "reflect" else "constant"
        x = np.pad(x, widths, mode=mode)
    if x.shape[-1] < n_fft:
        raise ValueError(f"power_spectrogram: {n} samples is shorter than n_fft={n_fft}")
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left : left + win_length] = hann_window(win_length, periodic=True)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
    spec = np.fft.rfft(frames * window, axis=-1)  # [..., frames, n_freqs]
    power = spec.real**2 + spec.imag**2
    return np.swapaxes(power, -1, -2)


def log_mel(
    x: np.ndarray,
    n_fft: int,
    hop: int,
    n_mels: int,
    htk: bool = True,
    norm: str | None = None,
    top_db: float | None = None,
    amin: float = 1e-10,
    sr: int = SAMPLE_RATE,
    f_min: float = 0.0,
    f_max: float | None = None,
    win_length: int | None = None,
    center: bool = True,
    pad_mode: str = "reflect",
    band_edge_hz: float | None = BAND_EDGE_HZ,
    reference_db: float | None = None,
) -> np.ndarray:
    """Log-mel in dB, ``[..., n_mels, frames]`` float32: 10*log10(max(mel power, amin)).

    Bins above ``band_edge_hz`` are dropped before the mel filters (`BAND_EDGE_HZ`; None: the
    full band, e.g. to compare with librosa). With ``top_db`` every clip (each leading index) is
    floored at its own max - top_db, so a clip's features never depend on the other clips it is
    batched with. With ``reference_db`` each clip's mean dB is moved to it (level normalisation,
    as `training.features.PowerToDB` does: a gain change leaves the result unchanged).
    """
    power = power_spectrogram(
        x, n_fft, hop, win_length=win_length, center=center, pad_mode=pad_mode
    )
    fb = mel_filterbank(n_fft, n_mels, sr=sr, f_min=f_min, f_max=f_max, htk=htk, norm=norm)
    fb = band_limited(fb, sr, band_edge_hz)
    mel = np.swapaxes(np.swapaxes(power, -1, -2) @ fb.astype(np.float64), -1, -2)
    db = 10.0 * np.log10(np.maximum(mel, amin))
    if top_db is not None:
        if top_db < 0:
            raise ValueError(f"log_mel: top_db must be >= 0, got {top_db}")
        floor = db.max(axis=(-2, -1), keepdims=True) - top_db
        db = np.maximum(db, floor)
    if reference_db is not None:
        db = db - db.mean(axis=(-2, -1), keepdims=True) + reference_db
    return db.astype(np.float32)


def pink_noise(seconds: float = 1.0, dbfs: float = -25.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Deterministic pink noise at ``dbfs`` RMS: the reference signal of level normalisation."""
    n = int(round(seconds * sr))
    spec = np.fft.rfft(np.random.default_rng(0).standard_normal(n))
    spec[1:] /= np.sqrt(np.arange(1, spec.size))
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return x * (10 ** (dbfs / 20) / np.sqrt(np.mean(x**2)))


def level_reference_db(**log_mel_kwargs: object) -> float:
    """Mean dB of `pink_noise` through `log_mel` with these parameters (no level normalisation):
    where level normalisation puts every clip."""
    return round(float(log_mel(pink_noise(), **log_mel_kwargs).mean()), 3)  # type: ignore[arg-type]


def ced_log_mel(x: np.ndarray, level_norm: bool = True) -> np.ndarray:
    """CED's front-end in numpy: ``[..., samples]`` -> ``[..., 64, frames]`` dB, per-clip floor,
    band-limited to `BAND_EDGE_HZ` and level-normalised like every sonitor front-end."""
    params: dict = dict(
        n_fft=CED_N_FFT,
        hop=CED_HOP,
        n_mels=CED_N_MELS,
        htk=True,
        norm=None,
        top_db=CED_TOP_DB,
        amin=CED_AMIN,
        f_min=CED_F_MIN,
        f_max=CED_F_MAX,
        win_length=CED_WIN_LENGTH,
    )
    ref = level_reference_db(**params) if level_norm else None
    return log_mel(x, **params, reference_db=ref)


def n_frames(n_samples: int, hop: int, n_fft: int, center: bool = True) -> int:
    """Number of STFT frames for ``n_samples`` (centred: ``1 + n_samples // hop``)."""
    return _frame_count(n_samples, n_fft, hop, center)
