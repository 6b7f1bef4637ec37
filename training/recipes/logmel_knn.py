"""`logmel_knn`: the floor. No training: log-mel statistics + rescaled k-NN.

Each clip becomes the mean and standard deviation over time of its 128-band log-mel spectrogram
(n_fft 2048, hop 512, 128 Slaney mels: the `simclr` ResNet's front-end, in numpy). If a learned
recipe cannot beat this, it has learned nothing useful.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from monitor.audio import frontend
from training.recipes.base import EmbeddingRecipe


def logmel_stats(waves: np.ndarray) -> np.ndarray:
    """[N, samples] -> [N, 2 * 128]: per-band mean and std of the log-mel (dB) over time."""
    params: dict = dict(
        n_fft=frontend.LOGMEL_N_FFT,
        hop=frontend.LOGMEL_HOP,
        n_mels=frontend.LOGMEL_N_MELS,
        htk=False,
        norm="slaney",
    )
    ref = frontend.level_reference_db(**params)  # level-normalised, as every front-end is
    feats = []
    for x in waves:
        mel = frontend.log_mel(x, **params, reference_db=ref)
        feats.append(np.concatenate([mel.mean(axis=1), mel.std(axis=1)]))
    return np.asarray(feats, dtype=np.float32)


class LogmelKNN(EmbeddingRecipe):
    name: ClassVar[str] = "logmel_knn"
    summary: ClassVar[str] = "no training: log-mel mean/std + rescaled k-NN (the floor)"
    # Domain-wise banks (GenRep, DCASE 2025): the pooled bank with K = 16 > 10 target clips
    # over-shrinks target distances; on the synthetic benchmark pooled 0.70 vs domain-wise 0.83
    # (README, benchmarks/bench_recipes.py). `--scorer rescaled_knn` gives the pooled variant.
    default_scorer: ClassVar[str] = "rescaled_knn_domainwise"
    default_metric: ClassVar[str] = "euclidean"

    def embed(self, waves: np.ndarray) -> np.ndarray:
        return logmel_stats(waves)

    def attach_separator(self, separator: Any) -> None:
        """`--separator` without a torch encoder: the numpy log-mel above is the 2048/512/128
        front-end, so a ``logmel`` separator fits. The statistics are then taken from the torch
        `LogMel` with the separator inside (the same numbers as the numpy ones up to float32
        rounding when nothing is masked)."""
        import torch

        from training.features import LogMel
        from training.separator.masking import MaskedFrontEnd, check_frontend

        front = LogMel()
        check_frontend(separator, front.mel, "logmel_knn's log-mel")
        masked = MaskedFrontEnd(front, separator.eval())

        @torch.no_grad()
        def embed(waves: np.ndarray) -> np.ndarray:
            out = []
            for i in range(0, len(waves), 16):
                mel = masked(torch.from_numpy(np.ascontiguousarray(waves[i : i + 16])))
                out.append(torch.cat([mel.mean(dim=2), mel.std(dim=2, correction=0)], dim=1))
            return torch.cat(out).numpy().astype(np.float32)

        self.embed = embed  # type: ignore[method-assign]
        self.separator = separator
