"""`logmel_knn`: the floor. No training: log-mel statistics + rescaled k-NN.

Each clip becomes the mean and standard deviation over time of its 128-band log-mel spectrogram
(the second seed's 2048/512/128 front-end, in numpy). If a learned recipe cannot beat this, it has
learned nothing useful.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from monitor.audio import frontend
from training.recipes.base import EmbeddingRecipe


def logmel_stats(waves: np.ndarray) -> np.ndarray:
    """[N, samples] -> [N, 2 * 128]: per-band mean and std of the log-mel (dB) over time."""
    feats = []
    for x in waves:
        mel = frontend.log_mel(
            x,
            n_fft=frontend.LOGMEL_N_FFT,
            hop=frontend.LOGMEL_HOP,
            n_mels=frontend.LOGMEL_N_MELS,
            htk=False,
            norm="slaney",
        )
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
