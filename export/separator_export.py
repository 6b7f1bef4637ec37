"""The spectral separator to ONNX: ``separator.onnx`` maps mel frames to masked mel frames.

Input ``frames`` ``[B, n_mels, F + 2 * context]`` (unfloored dB, what ``frontend.onnx`` emits),
output ``frames`` ``[B, n_mels, F]``: the masked dB of the F centre frames. Both axes B and F are
dynamic, so the daemon separates each hop's new frames with ``context`` frames of history on
each side (`monitor.model.runtime.FrameStream`) and never re-separates a whole window.
The full graph ``encoder.onnx`` of a model with a separator already contains it (replicate
padding at the window edges); only the streaming split needs this graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.onnx_graph import ExportError, export_graph, set_metadata
from training.separator.masking import Separator, StreamingSeparator

META_SEPARATOR = "sonitor.separator"  # read by monitor.model.runtime.Embedder


def separator_info(sep: Separator) -> dict[str, Any]:
    """What the package manifest and the graph metadata say about the separator."""
    s = sep.mel.spectrogram
    return {
        "input": "frames",
        "output": "frames",
        "context_frames": int(sep.context),
        "frontend": sep.frontend,
        "n_fft": int(s.n_fft),
        "hop_length": int(s.hop),
        "n_mels": int(sep.mel.mel_scale.fb.shape[1]),
        "mask_mode": sep.mask_mode,
        "mask_floor": sep.mask_floor,
    }


def export_separator(sep: Separator, path: str | Path, example_frames: int = 64) -> Path:
    """Write ``separator.onnx`` (frames -> frames, dynamic batch and time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sep = sep.float().cpu().eval()
    n_mels = int(sep.mel.mel_scale.fb.shape[1])
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, n_mels, example_frames + 2 * sep.context, generator=gen) * 10 - 40
    export_graph(
        StreamingSeparator(sep),
        example,
        path,
        ("frames", "separated"),
        {"frames": {0: "batch", 2: "frames"}, "separated": {0: "batch", 2: "out_frames"}},
    )
    set_metadata(
        path, {META_SEPARATOR: json.dumps(separator_info(sep)), "sonitor.role": "separator"}
    )
    return path


def separator_parity(
    sep: Separator, path: str | Path, frames: np.ndarray, tol_db: float = 1e-3
) -> dict[str, float]:
    """onnxruntime vs PyTorch on ``frames`` ``[B, n_mels, T]`` (T > 2 * context); in dB."""
    from monitor.model.runtime import open_session

    x = np.ascontiguousarray(frames, dtype=np.float32)
    with torch.no_grad():
        ref = StreamingSeparator(sep.eval())(torch.from_numpy(x)).numpy()
    sess = open_session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    if got.shape != ref.shape:
        raise ExportError(f"{path}: output shape {got.shape}, PyTorch {ref.shape}")
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    if diff > tol_db:
        raise ExportError(
            f"{path}: separator.onnx differs from PyTorch by {diff:.3g} dB (tolerance {tol_db})"
        )
    return {"max_abs_diff_db": diff, "frames": int(ref.shape[-1])}
