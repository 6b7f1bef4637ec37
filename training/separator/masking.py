"""Applying a mel-domain mask: in front of an encoder (no inverse STFT) and for listening.

The separator lives inside the encoder's own front-end. The front-end computes mel power ``P``;
the U-Net sees ``10 log10(max(P, amin))`` (dB, WITHOUT the per-clip top-dB floor, which is what
the streaming ``frontend.onnx`` emits) and predicts a mask ``m`` in [0, 1] per mel band and frame;
the encoder continues from ``10 log10(P) + 10 log10(max(m, floor))`` = the dB of the masked power,
then the usual per-clip floor. Scoring thus needs no inverse STFT and the daemon's hop-by-hop
front-end stays as it is; only ``separator.onnx`` (frames -> frames) is inserted.

A separator is therefore tied to one front-end (CED's 512/160/64-mel HTK, or the 2048/512/128-mel
Slaney of the `simclr` recipe's ResNet); its checkpoint names it and `check_frontend` refuses a
mismatch.

For listening, `separate_waveform` maps the mel mask back to the linear STFT bins with the
filterbank's column-normalised transpose (each bin gets the weighted mean of the masks of the mel
filters that cover it), applies its square root (a power mask) to the complex STFT and inverts it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from monitor.audio import frontend as fe
from monitor.errors import CheckpointError
from training.features import CEDFrontEnd, LogMel, MelSpectrogram, PowerToDB
from training.separator.unet import UNet, UNetConfig, pad_frames

MASK_MODES = ("soft", "hard")
FRONTENDS = ("ced", "logmel")
FORMAT = "sonitor-separator/1"


def frontend_module(name: str) -> nn.Module:
    """A fresh torch front-end: ``ced`` = `CEDFrontEnd`, ``logmel`` = the ResNet's 2048/512/128
    `LogMel`."""
    if name == "ced":
        return CEDFrontEnd()
    if name == "logmel":
        return LogMel()
    raise ValueError(f"unknown separator front-end {name!r}; choose from {', '.join(FRONTENDS)}")


def mel_and_db(module: nn.Module) -> tuple[MelSpectrogram, PowerToDB]:
    """The (mel power, dB) parts of a `CEDFrontEnd` or `LogMel`."""
    if isinstance(module, CEDFrontEnd):
        return module[0], module[1]
    if isinstance(module, LogMel):
        return module.mel, module.to_db
    raise TypeError(f"not a log-mel front-end: {type(module).__name__}")


def describe_mel(mel: MelSpectrogram) -> str:
    s = mel.spectrogram
    return f"n_fft {s.n_fft}, hop {s.hop}, {mel.mel_scale.fb.shape[1]} mels"


class Separator(nn.Module):
    """dB mel frames ``[B, n_mels, T]`` -> masked dB mel frames, tied to one front-end.

    ``mask_mode`` "soft" multiplies by the predicted probability, "hard" by 1 where it exceeds
    ``threshold``; either is floored at ``mask_floor`` so masked bins keep a trace of their level
    (a zero would put -100 dB holes into the encoder's input).
    """

    def __init__(
        self,
        frontend: str = "ced",
        unet: UNetConfig | None = None,
        mask_mode: str = "soft",
        mask_floor: float = 0.01,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.frontend = frontend
        # the mel domain, kept as a bare MelSpectrogram so that a model holding this separator
        # still has exactly one CEDFrontEnd/LogMel (its encoder's) for export to find
        mel, to_db = mel_and_db(frontend_module(frontend))
        self.mel = mel.requires_grad_(False)
        n_mels = int(mel.mel_scale.fb.shape[1])
        cfg = unet or UNetConfig(n_mels=n_mels)
        if cfg.n_mels != n_mels:
            raise ValueError(f"UNet n_mels={cfg.n_mels} but front-end {frontend!r} has {n_mels}")
        self.unet = UNet(cfg)
        self.context = cfg.context
        self.amin = float(to_db.amin)
        self.set_mask(mask_mode, mask_floor, threshold)

    def set_mask(self, mode: str, floor: float, threshold: float = 0.5) -> None:
        """Choose how the probabilities become a mask (an inference-time choice)."""
        if mode not in MASK_MODES:
            raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
        if not 0.0 < floor <= 1.0 or not 0.0 < threshold < 1.0:
            raise ValueError(
                f"need 0 < mask floor <= 1 and 0 < threshold < 1, got {floor}, {threshold}"
            )
        self.mask_mode, self.mask_floor, self.threshold = mode, float(floor), float(threshold)

    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "frontend": self.frontend,
            "frontend_params": describe_mel(self.mel),
            "unet": self.unet.config.to_dict(),
            "context_frames": self.context,
            "mask_mode": self.mask_mode,
            "mask_floor": self.mask_floor,
            "threshold": self.threshold,
        }

    def mel_db(self, waves: torch.Tensor) -> torch.Tensor:
        """Waveforms ``[B, S]`` -> unfloored dB mel ``[B, n_mels, T]`` (the U-Net's input)."""
        return 10.0 * torch.log10(torch.clamp(self.mel(waves), min=self.amin))

    def probabilities_valid(self, db_ctx: torch.Tensor) -> torch.Tensor:
        """``[B, M, T + 2c]`` -> P(machine dominates) ``[B, M, T]``."""
        return torch.sigmoid(self.unet(db_ctx))

    def mask_valid(self, db_ctx: torch.Tensor) -> torch.Tensor:
        p = self.probabilities_valid(db_ctx)
        if self.mask_mode == "hard":
            p = (p > self.threshold).to(p.dtype)
        return torch.clamp(p, min=self.mask_floor)

    def mask(self, db: torch.Tensor) -> torch.Tensor:
        """Mask for a whole recording ``[B, M, T]`` (edges replicate-padded)."""
        return self.mask_valid(pad_frames(db, self.context))

    def forward_valid(self, db_ctx: torch.Tensor) -> torch.Tensor:
        """Streaming form: ``[B, M, T + 2c]`` -> masked dB of the ``T`` centre frames."""
        c = self.context
        centre = db_ctx[..., c : db_ctx.shape[-1] - c]
        return centre + 10.0 * torch.log10(self.mask_valid(db_ctx))

    def forward(self, db: torch.Tensor) -> torch.Tensor:
        """Whole recording: ``[B, M, T]`` -> masked dB ``[B, M, T]``."""
        return self.forward_valid(pad_frames(db, self.context))


class StreamingSeparator(nn.Module):
    """What ``separator.onnx`` computes: frames with context -> masked centre frames."""

    def __init__(self, separator: Separator) -> None:
        super().__init__()
        self.separator = separator

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.separator.forward_valid(frames)


# --------------------------------------------------------------------------- checkpoints


def save_separator(
    path: str | Path, separator: Separator, meta: dict[str, Any] | None = None
) -> Path:
    """``<path>`` (safetensors, U-Net weights) + ``<path>.json`` (config, training meta)."""
    from training.train_utils import save_checkpoint

    state = {f"unet.{k}": v for k, v in separator.unet.state_dict().items()}
    return save_checkpoint(path, state, {"separator": separator.config(), **(meta or {})})


def load_separator(path: str | Path) -> Separator:
    """Load a `save_separator` checkpoint (no pickle); names the file and key at fault."""
    from training.train_utils import load_checkpoint, load_state_strict, sidecar_path

    state, meta = load_checkpoint(path)
    cfg = meta.get("separator")
    where = sidecar_path(path)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a separator checkpoint (key 'separator.format')")
    if cfg.get("frontend") not in FRONTENDS:
        raise CheckpointError(
            f"{where}: unknown front-end {cfg.get('frontend')!r} (key 'separator.frontend')"
        )
    try:
        unet = UNetConfig(**cfg["unet"])
        sep = Separator(
            cfg["frontend"],
            unet,
            cfg["mask_mode"],
            float(cfg["mask_floor"]),
            float(cfg["threshold"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad separator config {json.dumps(cfg)} ({exc})") from None
    inner = {k.removeprefix("unet."): v for k, v in state.items()}
    load_state_strict(sep.unet, inner, str(path))
    sep.source = str(path)  # type: ignore[attr-defined]
    return sep.eval()


# --------------------------------------------------------------------------- in front of an encoder


def check_frontend(separator: Separator, mel: MelSpectrogram, what: str) -> None:
    """Refuse a separator trained on another mel domain than ``mel`` (CheckpointError)."""
    a, b = separator.mel, mel
    same = (
        a.spectrogram.n_fft == b.spectrogram.n_fft
        and a.spectrogram.hop == b.spectrogram.hop
        and a.spectrogram.win_length == b.spectrogram.win_length
        and a.mel_scale.fb.shape == b.mel_scale.fb.shape
        and torch.allclose(a.mel_scale.fb, b.mel_scale.fb.to(a.mel_scale.fb), atol=1e-6)
    )
    if not same:
        src = getattr(separator, "source", "the separator")
        raise CheckpointError(
            f"{src}: trained for front-end {separator.frontend!r} ({describe_mel(a)}), but "
            f"{what} uses {describe_mel(b)}; train one with --frontend "
            f"{'logmel' if separator.frontend == 'ced' else 'ced'}"
        )


class MaskedFrontEnd(nn.Module):
    """An encoder's log-mel front-end with a separator between mel power and dB.

    Output = the streaming path's: unfloored dB -> separator -> per-clip top-dB floor (and level
    normalisation: `PowerToDB.finish`).
    The wrapped front-end is kept outside the module tree (``original``) so `remove_separator`
    can restore it and export still finds exactly one front-end in the bare model.
    """

    def __init__(self, original: nn.Module, separator: Separator) -> None:
        super().__init__()
        mel, to_db = mel_and_db(original)
        self.mel, self.top_db, self.amin = mel, to_db.top_db, float(to_db.amin)
        self.to_db = to_db
        self.separator = separator
        self.original = [original]  # a list: not a submodule

    def train(self, mode: bool = True) -> MaskedFrontEnd:
        """The separator stays frozen in eval mode while its encoder trains (no BN updates)."""
        super().train(mode)
        self.separator.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        db = 10.0 * torch.log10(torch.clamp(self.mel(x), min=self.amin))
        return self.to_db.finish(self.separator(db))


def _frontend_path(model: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, (CEDFrontEnd, LogMel, MaskedFrontEnd))
    ]
    if len(found) != 1:
        raise CheckpointError(
            f"{type(model).__name__}: a separator needs exactly one log-mel front-end in the "
            f"encoder, found {len(found)}"
        )
    name, mod = found[0]
    *parents, leaf = name.split(".")
    parent = model
    for p in parents:
        parent = getattr(parent, p)
    return parent, leaf, mod


def insert_separator(model: nn.Module, separator: Separator) -> nn.Module:
    """Put ``separator`` between ``model``'s mel power and dB (in place; returns ``model``)."""
    parent, leaf, mod = _frontend_path(model)
    if isinstance(mod, MaskedFrontEnd):
        raise ValueError(f"{type(model).__name__} already has a separator")
    check_frontend(separator, mel_and_db(mod)[0], f"the {type(model).__name__} encoder")
    separator.requires_grad_(False)  # frozen: an encoder trained behind it must not change it
    setattr(parent, leaf, MaskedFrontEnd(mod, separator.eval()))
    return model


def remove_separator(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its front-end restored (what export splits for streaming)."""
    bare = copy.deepcopy(model)
    parent, leaf, mod = _frontend_path(bare)
    if isinstance(mod, MaskedFrontEnd):
        setattr(parent, leaf, mod.original[0])
    return bare


def find_separator(model: nn.Module) -> Separator | None:
    for mod in model.modules():
        if isinstance(mod, MaskedFrontEnd):
            return mod.separator
    return None


# --------------------------------------------------------------------------- listening


def linear_mask_weights(fb: np.ndarray) -> np.ndarray:
    """``[n_freqs, n_mels]`` weights mapping a mel mask to linear bins (rows sum to 1).

    A bin no filter covers (e.g. above CED's 8 kHz or at 0 Hz) takes its nearest covered bin's
    weights, so it is masked like its neighbour instead of passed or muted.
    """
    fb = np.asarray(fb, dtype=np.float64)
    sums = fb.sum(axis=1)
    covered = np.flatnonzero(sums > 1e-12)
    if covered.size == 0:
        raise ValueError("filterbank covers no frequency bin")
    w = np.zeros_like(fb)
    w[covered] = fb[covered] / sums[covered, None]
    for f in np.flatnonzero(sums <= 1e-12):
        w[f] = w[covered[np.argmin(np.abs(covered - f))]]
    return w.astype(np.float32)


@torch.no_grad()
def separate_waveform(separator: Separator, wave: np.ndarray) -> np.ndarray:
    """Mono waveform -> its separated machine sound (same length), for listening."""
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32).reshape(-1))
    s = separator.mel.spectrogram
    if x.numel() <= s.n_fft // 2:
        raise ValueError(f"separate: {x.numel()} samples is too short (need > {s.n_fft // 2})")
    window = torch.from_numpy(fe.hann_window(s.win_length))
    spec = torch.stft(
        x, s.n_fft, s.hop, s.win_length, window, center=True, pad_mode="reflect",
        return_complex=True,
    )  # fmt: skip
    fb = separator.mel.mel_scale.fb
    mel = separator.mel.mel_scale.weights().T @ spec.abs().square()  # the U-Net's band
    db = 10.0 * torch.log10(torch.clamp(mel, min=separator.amin))
    mask = separator.mask(db[None])[0]  # [M, T] power mask
    lin = torch.from_numpy(linear_mask_weights(fb.numpy())) @ mask
    out = torch.istft(
        spec * lin.sqrt(), s.n_fft, s.hop, s.win_length, window, center=True, length=x.numel()
    )
    return out.numpy().astype(np.float32)


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean signals."""
    est = np.asarray(estimate, np.float64) - np.mean(estimate)
    ref = np.asarray(reference, np.float64) - np.mean(reference)
    alpha = float(est @ ref) / max(float(ref @ ref), 1e-20)
    target = alpha * ref
    err = est - target
    return float(10.0 * np.log10(max(float(target @ target), 1e-20) / max(float(err @ err), 1e-20)))
