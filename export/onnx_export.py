"""PyTorch encoders -> ONNX: the full graph and the streaming split, checked against PyTorch.

Three graphs per encoder (all through `export.onnx_graph`: the TorchScript exporter at opset 17,
which exports the conv-STFT front-end and CED's shape arithmetic with dynamic lengths):

- ``encoder.onnx``: the model's own ``forward``, waveform ``[B, samples]`` -> ``[B, D]``;
- ``frontend.onnx``: waveform chunk -> dB mel frames ``[B, n_mels, F]`` without padding ("valid"
  framing) and without the per-clip floor, so consecutive hops can be framed independently;
- ``backbone.onnx``: the frames of one window -> embedding: per-window floor (max - top_db), then
  everything the model does after its front-end (BatchNorm, chunking of long inputs, network,
  pooling). It is the model itself with its front-end module swapped for "frames in".

Any model whose front-end is one `training.features` log-mel module (`CEDFrontEnd` or `LogMel`)
splits this way; a model without one gets only the full graph and the runtime falls back to it.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.onnx_graph import OPSET, ExportError, export_graph, set_metadata
from export.separator_export import export_separator, separator_info
from training.features import CEDFrontEnd, LogMel, MelSpectrogram, PowerToDB
from training.separator.masking import find_separator, remove_separator

log = logging.getLogger(__name__)

META_FRONTEND = "sonitor.frontend"  # read by monitor.model.runtime.Embedder


@dataclass
class FrontEndSpec:
    """Where a model's log-mel front-end sits and what it computes."""

    path: str  # dotted module path inside the model, e.g. "front_end"
    mel: MelSpectrogram
    to_db: PowerToDB

    @property
    def params(self) -> dict[str, Any]:
        spec = self.mel.spectrogram
        return {
            "n_fft": int(spec.n_fft),
            "hop_length": int(spec.hop),
            "win_length": int(spec.win_length),
            "n_mels": int(self.mel.mel_scale.fb.shape[1]),
            "center": bool(spec.center),
            "pad_mode": spec.pad_mode,
            "top_db": self.to_db.top_db,
            "amin": float(self.to_db.amin),
            # inside the graphs; recorded so a package says which band its model sees
            # (packages exported before the band limit lack the key: full band, up to 8 kHz)
            "band_edge_hz": self.mel.band_edge_hz,
            # each window's mean dB moved to reference_db inside the graphs (absent: absolute)
            "level_norm": bool(self.to_db.level_norm),
            "reference_db": float(self.to_db.reference_db),
        }


def find_frontend(model: nn.Module) -> FrontEndSpec | None:
    """The model's single log-mel front-end module, or None when there is not exactly one."""
    found: list[FrontEndSpec] = []
    for name, mod in model.named_modules():
        if isinstance(mod, CEDFrontEnd):
            found.append(FrontEndSpec(name, mod[0], mod[1]))
        elif isinstance(mod, LogMel):
            found.append(FrontEndSpec(name, mod.mel, mod.to_db))
    if len(found) != 1:
        return None
    fe = found[0]
    if not fe.mel.spectrogram.center or fe.mel.spectrogram.pad_mode != "reflect":
        return None  # the streaming framing below reproduces centred reflect framing only
    return fe


class ValidFrontEnd(nn.Module):
    """Waveform chunk ``[B, L]`` -> dB mel ``[B, n_mels, 1 + (L - n_fft) // hop]``, no padding."""

    def __init__(self, spec: FrontEndSpec) -> None:
        super().__init__()
        self.mel = copy.deepcopy(spec.mel)
        self.amin = float(spec.to_db.amin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stft = self.mel.spectrogram
        spec = torch.nn.functional.conv1d(x.unsqueeze(1), stft.kernel(), stride=stft.hop)
        re, im = spec[:, : stft.n_freqs], spec[:, stft.n_freqs :]
        mel = self.mel.mel_scale(re * re + im * im)
        return 10.0 * torch.log10(torch.clamp(mel, min=self.amin))


class _FramesIn(nn.Module):
    """Stands in for the front-end inside the backbone: flat frames in, floored (and
    level-normalised) dB mel out: `PowerToDB.finish`, the per-window steps."""

    def __init__(self, n_mels: int, to_db: PowerToDB) -> None:
        super().__init__()
        self.n_mels, self.to_db = n_mels, copy.deepcopy(to_db)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.to_db.finish(flat.reshape(flat.shape[0], self.n_mels, -1))


class Backbone(nn.Module):
    """Mel frames ``[B, n_mels, F]`` -> embedding: the model after its front-end.

    The frames travel flattened as ``[B, n_mels * F]`` through the model's own ``forward`` (which
    expects a 2-D waveform batch) and are unflattened where the front-end used to be, so the
    model's code after the front-end (chunking, pooling) is reused, not re-implemented.
    """

    def __init__(self, model: nn.Module, spec: FrontEndSpec) -> None:
        super().__init__()
        inner = copy.deepcopy(model)
        parent = inner
        *parents, leaf = spec.path.split(".")
        for p in parents:
            parent = getattr(parent, p)
        setattr(parent, leaf, _FramesIn(spec.params["n_mels"], spec.to_db))
        self.inner = inner

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.inner(frames.reshape(frames.shape[0], -1))


@dataclass
class ExportedEncoder:
    """The ONNX files of one encoder and what the runtime needs to know about them."""

    full: Path
    frontend: Path | None
    backbone: Path | None
    embedding_dim: int
    frontend_params: dict[str, Any]
    opset: int = OPSET
    arch: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    separator: Path | None = None  # frames -> frames, for the split path (export/separator_export)
    separator_info: dict[str, Any] | None = None


def arch_name(model: nn.Module) -> str:
    size = getattr(model, "size", None)
    return f"{type(model).__name__.lower()}" + (f"-{size}" if size else "")


def export_encoder(
    model: nn.Module,
    out_dir: str | Path,
    *,
    sample_rate: int = 16000,
    example_seconds: float = 3.0,
    split: bool = True,
) -> ExportedEncoder:
    """Export ``model`` (waveform -> embedding) to ``out_dir``; see the module docstring."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    # batch 2 so that the tracer does not specialise the batch axis on 1
    gen = torch.Generator().manual_seed(0)
    example = 0.1 * torch.randn(2, int(example_seconds * sample_rate), generator=gen)
    with torch.no_grad():
        dim = int(model(example).shape[-1])
    # A model with a spectral separator (training.separator) in its front-end: the full graph
    # keeps it inside; the split is made from the bare model and the separator becomes its own
    # frames -> frames graph between frontend.onnx and backbone.onnx.
    sep = find_separator(model)
    split_model = model if sep is None else remove_separator(model)
    spec = find_frontend(split_model) if split else None
    params = spec.params if spec else {}
    params["sample_rate"] = sample_rate
    meta = {META_FRONTEND: json.dumps(params, sort_keys=True), "sonitor.embedding_dim": str(dim)}

    full = out / "encoder.onnx"
    export_graph(
        model,
        example,
        full,
        ("waveform", "embedding"),
        {"waveform": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}},
    )
    set_metadata(full, {**meta, "sonitor.role": "encoder"}, out_dim=dim)
    frontend = backbone = None
    if spec is not None:
        frontend = out / "frontend.onnx"
        export_graph(
            ValidFrontEnd(spec),
            example,
            frontend,
            ("waveform", "frames"),
            {"waveform": {0: "batch", 1: "samples"}, "frames": {0: "batch", 2: "frames"}},
        )
        set_metadata(frontend, {**meta, "sonitor.role": "frontend"})
        with torch.no_grad():
            frames = ValidFrontEnd(spec)(example)
        backbone = out / "backbone.onnx"
        export_graph(
            Backbone(split_model, spec),
            frames,
            backbone,
            ("frames", "embedding"),
            {"frames": {0: "batch", 2: "frames"}, "embedding": {0: "batch"}},
        )
        set_metadata(backbone, {**meta, "sonitor.role": "backbone"}, out_dim=dim)
        if sep is not None:
            sep_path = export_separator(sep, out / "separator.onnx")
            return ExportedEncoder(
                full, frontend, backbone, dim, params, arch=arch_name(model),
                separator=sep_path, separator_info=separator_info(sep),
            )  # fmt: skip
    else:
        log.warning(
            "%s: no single log-mel front-end found: exporting the full graph only "
            "(the daemon then recomputes the STFT for every window)",
            type(model).__name__,
        )
    return ExportedEncoder(full, frontend, backbone, dim, params, arch=arch_name(model))


# --------------------------------------------------------------------------- parity


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a64 * b64).sum(1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-30)


@dataclass
class Tolerance:
    """How far ONNX may be from PyTorch before export refuses (fp32: float rounding only)."""

    rel_max_abs: float = 1e-4  # max |diff| / max |embedding|
    min_cosine: float = 0.99999
    rel_score: float = 1e-3  # max |score diff| / threshold


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape:
        raise ExportError(f"embedding shapes differ: PyTorch {ref.shape} vs ONNX {cand.shape}")
    diff = np.abs(ref - cand)
    cos = cosine_rows(ref, cand)
    scale = float(np.abs(ref).max()) or 1.0
    return {
        "max_abs_diff": float(diff.max()),
        "rel_max_abs_diff": float(diff.max() / scale),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "n": int(ref.shape[0]),
    }


def torch_embed(model: nn.Module, waves: np.ndarray, batch_size: int = 8) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(waves), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(waves[i : i + batch_size]))))
    return torch.cat(out).numpy()


def check_parity(
    model: nn.Module,
    exported: ExportedEncoder,
    clips: np.ndarray,
    *,
    tolerance: Tolerance | None = None,
    window_samples: int | None = None,
) -> dict[str, Any]:
    """onnxruntime vs PyTorch on the same clips, for the full graph and the streaming split.

    ``clips`` ``[N, T]``. Raises `ExportError` past the tolerance; returns the measured numbers.
    """
    from monitor.model.runtime import Embedder, embed_recording

    tol = tolerance or Tolerance()
    ref = torch_embed(model, clips)
    emb = Embedder(
        {
            "encoder": exported.full,
            "frontend": exported.frontend,
            "backbone": exported.backbone,
            "separator": exported.separator,
        }
    )
    report: dict[str, Any] = {"clip_samples": int(clips.shape[1])}
    report["full"] = compare_embeddings(ref, emb.embed(clips))
    if emb.streaming:
        win = window_samples or clips.shape[1]
        split = np.concatenate(
            [embed_recording(emb, c, win, win, min_samples=1)[1][:1] for c in clips]
        )
        report["split"] = compare_embeddings(ref, split)
    for key in ("full", "split"):
        r = report.get(key)
        if r and (r["rel_max_abs_diff"] > tol.rel_max_abs or r["min_cosine"] < tol.min_cosine):
            raise ExportError(
                f"ONNX ({key} graph) does not match PyTorch: max abs diff {r['max_abs_diff']:.3g} "
                f"({r['rel_max_abs_diff']:.3g} of the largest value; tolerance "
                f"{tol.rel_max_abs:g}), min cosine {r['min_cosine']:.7f} (tolerance "
                f"{tol.min_cosine})"
            )
    return report
