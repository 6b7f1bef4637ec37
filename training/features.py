"""Torch front-ends: waveform -> log-mel, ONNX-exportable.

The STFT is a ``conv1d`` with a fixed windowed cos/sin kernel: it exports with both ONNX
exporters (the complex ``torch.stft`` does not with TorchScript) and runs faster in onnxruntime
than the ONNX ``STFT`` op (a 10 s clip through a small ViT encoder on one thread: 6.7 ms vs
10.5 ms).
Parameters come from :mod:`monitor.audio.frontend`, whose numpy functions are the reference.

Module layout mirrors torchaudio's so that CED's original ``.pt`` buffers load by name:
``<mel>.spectrogram.window`` (the analysis window) and ``<mel>.mel_scale.fb`` ([n_freqs, n_mels]).
The band limit (`monitor.audio.frontend.BAND_EDGE_HZ`) is held in separate, non-persistent
buffers of `MelScale`, so a checkpoint's ``fb`` (CED's, or one saved before the limit) cannot
undo it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monitor.audio import frontend as fe


class PowerSpectrogram(nn.Module):
    """|STFT|^2 as a strided conv1d: ``[B, samples]`` -> ``[B, n_fft // 2 + 1, frames]``.

    ``window`` is a persistent buffer (a checkpoint may carry it); the cos/sin basis is not, and
    the kernel is their product, rebuilt each call so a loaded window is really used.
    """

    def __init__(
        self,
        n_fft: int,
        hop: int,
        win_length: int | None = None,
        center: bool = True,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        if not 0 < win_length <= n_fft:
            raise ValueError(f"PowerSpectrogram: need 0 < win_length <= n_fft, got {win_length}")
        if pad_mode not in ("reflect", "constant"):
            raise ValueError(f"PowerSpectrogram: pad_mode must be reflect|constant, got {pad_mode}")
        self.n_fft, self.hop, self.win_length = n_fft, hop, win_length
        self.center, self.pad_mode = center, pad_mode
        self.n_freqs = n_fft // 2 + 1
        self.register_buffer("window", torch.from_numpy(fe.hann_window(win_length)))
        k = np.arange(self.n_freqs)[:, None]
        n = np.arange(n_fft)[None, :]
        angle = 2.0 * np.pi * k * n / n_fft
        basis = np.concatenate([np.cos(angle), -np.sin(angle)], axis=0)  # [2F, n_fft]
        self.register_buffer("basis", torch.from_numpy(basis.astype(np.float32)), persistent=False)

    def kernel(self) -> torch.Tensor:
        """Windowed DFT kernel ``[2F, 1, n_fft]`` (window zero-padded to n_fft, centred)."""
        left = (self.n_fft - self.win_length) // 2
        right = self.n_fft - self.win_length - left
        window = F.pad(self.window, (left, right)) if left or right else self.window
        return (self.basis * window).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected a waveform batch [B, samples], got shape {tuple(x.shape)}")
        x = x.unsqueeze(1)
        if self.center:
            pad = self.n_fft // 2
            x = F.pad(x, (pad, pad), mode=self.pad_mode)
        spec = F.conv1d(x, self.kernel(), stride=self.hop)  # [B, 2F, frames]
        re, im = spec[:, : self.n_freqs], spec[:, self.n_freqs :]
        return re * re + im * im


class MelScale(nn.Module):
    """Power spectrogram ``[B, F, T]`` -> mel power ``[B, n_mels, T]``: the filters ``fb``, limited
    to the band (`monitor.audio.frontend.band_limited`) by ``columns`` and ``band`` (`weights`)."""

    def __init__(
        self, fb: np.ndarray, sr: int = fe.SAMPLE_RATE, band_edge_hz: float | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("fb", torch.from_numpy(np.ascontiguousarray(fb, dtype=np.float32)))
        n_fft = 2 * (fb.shape[0] - 1)
        band = fe.band_mask(n_fft, sr, band_edge_hz)
        columns = fe.band_columns(fb, sr, band_edge_hz)
        # not persistent: the band limit comes from the code, never from a checkpoint
        self.register_buffer("band", torch.from_numpy(band), persistent=False)
        self.register_buffer("columns", torch.from_numpy(columns), persistent=False)

    def weights(self) -> torch.Tensor:
        """The filterbank actually applied, ``[n_freqs, n_mels]`` (a constant in ONNX)."""
        return self.fb.index_select(1, self.columns) * self.band.unsqueeze(1)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.matmul(spec.transpose(-1, -2), self.weights()).transpose(-1, -2)


class MelSpectrogram(nn.Module):
    """Waveform ``[B, samples]`` -> mel power ``[B, n_mels, frames]`` (torchaudio's layout).

    Bins above ``band_edge_hz`` (default `BAND_EDGE_HZ`) never reach the mel filters; the filters
    that reach above it repeat the highest one that does not.
    """

    def __init__(
        self,
        n_fft: int,
        hop: int,
        n_mels: int,
        win_length: int | None = None,
        sr: int = fe.SAMPLE_RATE,
        f_min: float = 0.0,
        f_max: float | None = None,
        htk: bool = True,
        norm: str | None = None,
        center: bool = True,
        pad_mode: str = "reflect",
        band_edge_hz: float | None = fe.BAND_EDGE_HZ,
    ) -> None:
        super().__init__()
        self.spectrogram = PowerSpectrogram(n_fft, hop, win_length, center, pad_mode)
        fb = fe.mel_filterbank(n_fft, n_mels, sr=sr, f_min=f_min, f_max=f_max, htk=htk, norm=norm)
        self.mel_scale = MelScale(fb, sr, band_edge_hz)
        self.band_edge_hz = None if band_edge_hz is None else float(band_edge_hz)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mel_scale(self.spectrogram(x))


class PowerToDB(nn.Module):
    """10*log10(max(x, amin)), optionally floored at each clip's own max - top_db, optionally
    level-normalised.

    torchaudio's ``AmplitudeToDB`` takes one maximum over a whole 3-D batch, so a clip's features
    would depend on its batch mates; here the maximum is over (mel, time) of each clip, which is
    what CED does for a single clip.

    ``level_norm``: each clip's mean dB (over mel and time) is moved to ``reference_db``, so a
    gain change of the input (a machine a few dB louder with load, a microphone's gain touched)
    leaves the features, and so the anomaly score, exactly as they were (where the power is above
    ``amin``, and the floor is relative); how loud the machine is becomes the daemon's level rule,
    measured on the waveform, instead of an anomaly. Why here: one definition that the training
    path, the full ONNX graph and the streaming backbone (`export.onnx_export._FramesIn`) share.
    """

    def __init__(
        self,
        top_db: float | None = None,
        amin: float = 1e-10,
        *,
        level_norm: bool = False,
        reference_db: float = 0.0,
    ) -> None:
        super().__init__()
        if top_db is not None and top_db < 0:
            raise ValueError(f"top_db must be >= 0, got {top_db}")
        self.top_db, self.amin = top_db, amin
        self.level_norm, self.reference_db = level_norm, float(reference_db)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(10.0 * torch.log10(torch.clamp(x, min=self.amin)))

    def finish(self, db: torch.Tensor) -> torch.Tensor:
        """The per-clip steps on dB mel ``[..., n_mels, frames]``: the floor, the level."""
        if self.top_db is not None:
            floor = db.amax(dim=(-2, -1), keepdim=True) - self.top_db
            db = torch.maximum(db, floor)
        if self.level_norm:
            db = db - db.mean(dim=(-2, -1), keepdim=True) + self.reference_db
        return db


def reference_level_db(mel: nn.Module, to_db: PowerToDB, sr: int = fe.SAMPLE_RATE) -> float:
    """Mean dB of pink noise at -25 dBFS RMS through ``mel`` and ``to_db``'s floor: the level
    every clip is moved to by level normalisation (a typical machine recording's level, so
    pretrained statistics such as CED's first BatchNorm see the values they were trained on)."""
    rng = np.random.default_rng(0)
    spec = np.fft.rfft(rng.standard_normal(sr))
    spec[1:] /= np.sqrt(np.arange(1, spec.size))
    spec[0] = 0.0
    x = np.fft.irfft(spec, sr)
    x *= 10 ** (-25 / 20) / np.sqrt(np.mean(x**2))
    with torch.no_grad():
        p = mel(torch.as_tensor(x, dtype=torch.float32)[None])
        db = PowerToDB(to_db.top_db, to_db.amin)(p)
    return round(float(db.mean()), 3)


class CEDFrontEnd(nn.Sequential):
    """CED's front-end: waveform ``[B, samples]`` -> log-mel ``[B, 64, frames]`` in dB.

    STFT 512 / periodic Hann 512 / hop 160, centred with reflect padding; power; 64 HTK mel bands
    0-8000 Hz without filter norm, limited to `BAND_EDGE_HZ` (the bands above it repeat the
    highest one below); 10*log10(max(x, 1e-10)) floored at max - 120 dB per clip; each clip's
    mean dB moved to that of pink noise at -25 dBFS (level normalisation, see `PowerToDB`).
    Index 0 holds ``spectrogram.window`` and ``mel_scale.fb`` so the original ``.pt`` loads.
    """

    def __init__(self) -> None:
        super().__init__(
            MelSpectrogram(
                fe.CED_N_FFT,
                fe.CED_HOP,
                fe.CED_N_MELS,
                win_length=fe.CED_WIN_LENGTH,
                f_min=fe.CED_F_MIN,
                f_max=fe.CED_F_MAX,
                htk=True,
                norm=None,
            ),
            PowerToDB(top_db=fe.CED_TOP_DB, amin=fe.CED_AMIN, level_norm=True),
        )
        self[1].reference_db = reference_level_db(self[0], self[1])


class LogMel(nn.Module):
    """Generic log-mel in dB: ``[B, samples]`` -> ``[B, n_mels, frames]``.

    Defaults are librosa's (Slaney mel scale and norm), as used by the DCASE baseline
    (n_fft 1024, hop 512, 128 mels) and Shin & Lee's two-stage contrastive learning (2048 / 512 /
    128); ``amin`` defaults to the baseline's float64 epsilon floor. No ``top_db`` unless asked
    for. Band-limited to `BAND_EDGE_HZ` like every front-end (``band_edge_hz=None``: full band).
    Level-normalised like every exported front-end (``level_norm=False``: absolute levels, the
    published DCASE baseline's autoencoder).
    """

    def __init__(
        self,
        n_fft: int = fe.LOGMEL_N_FFT,
        hop: int = fe.LOGMEL_HOP,
        n_mels: int = fe.LOGMEL_N_MELS,
        win_length: int | None = None,
        sr: int = fe.SAMPLE_RATE,
        f_min: float = 0.0,
        f_max: float | None = None,
        htk: bool = False,
        norm: str | None = "slaney",
        top_db: float | None = None,
        amin: float = float(np.finfo(np.float64).eps),
        center: bool = True,
        pad_mode: str = "reflect",
        band_edge_hz: float | None = fe.BAND_EDGE_HZ,
        level_norm: bool = True,
    ) -> None:
        super().__init__()
        self.mel = MelSpectrogram(
            n_fft, hop, n_mels, win_length, sr, f_min, f_max, htk, norm, center, pad_mode,
            band_edge_hz,
        )  # fmt: skip
        self.to_db = PowerToDB(top_db=top_db, amin=amin, level_norm=level_norm)
        if level_norm:
            self.to_db.reference_db = reference_level_db(self.mel, self.to_db, sr)
        self.n_mels, self.hop, self.n_fft = n_mels, hop, n_fft

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_db(self.mel(x))

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` (centred STFT)."""
        return fe.n_frames(n_samples, self.hop, self.n_fft, self.mel.spectrogram.center)
