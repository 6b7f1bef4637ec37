"""Batched, gradient-free embedding of waveforms with a torch encoder."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


@torch.inference_mode()
def embed_waves(
    model: Callable[[torch.Tensor], torch.Tensor],
    waves: np.ndarray,
    *,
    batch_size: int = 16,
    device: str = "cpu",
) -> np.ndarray:
    """Run `model` over `waves` [N, samples] in batches; returns float32 [N, D]."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    out = []
    for start in range(0, len(waves), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(waves[start : start + batch_size]))
        out.append(model(batch.to(device)).float().cpu().numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)
