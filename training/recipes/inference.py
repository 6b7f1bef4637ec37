"""Batched, gradient-free embedding of waveforms with a torch encoder."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch

from training.train_utils import progress as progress_bar


@torch.inference_mode()
def embed_waves(
    model: Callable[[torch.Tensor], torch.Tensor],
    waves: np.ndarray,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Run `model` over `waves` [N, samples] in batches; returns float32 [N, D].

    `progress`: a bar of the batches, on a terminal only (embedding thousands of test clips
    takes minutes; a CI log or the journal would get a line per redraw).
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    out = []
    starts = range(0, len(waves), batch_size)
    shown = progress and len(starts) > 1 and sys.stderr.isatty()
    for start in progress_bar(starts, "embedding", enabled=shown):
        batch = torch.from_numpy(np.ascontiguousarray(waves[start : start + batch_size]))
        out.append(model(batch.to(device)).float().cpu().numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)
