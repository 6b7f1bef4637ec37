"""Bank size control: the greedy k-center coreset that keeps a large bank small."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from monitor.model.scoring.distances import l2_normalise
from monitor.model.scoring.inputs import as_matrix, check_metric


def coreset_subsample(
    X: ArrayLike,
    n: int,
    seed: int = 0,
    projection_dim: int | None = 128,
    metric: str = "euclidean",
) -> np.ndarray:
    """Indices of an ``n``-point greedy k-center coreset of ``X`` (PatchCore's bank reduction).

    Start from a random point, then repeatedly add the point farthest from everything chosen,
    so the kept bank covers the data with the smallest radius the greedy rule finds (rare
    normal modes survive, unlike random subsampling). Distances are measured after a Gaussian
    random projection to ``projection_dim`` dimensions when D is larger (Johnson-Lindenstrauss:
    distances kept within a small factor, O(N n projection_dim) instead of O(N n D));
    ``projection_dim=None`` uses the full space. ``metric="cosine"`` L2-normalises first.
    Returns indices in selection order; all of ``range(N)`` when n >= N.
    """
    Z = as_matrix(X)
    check_metric(metric)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    N, dim = Z.shape
    if n >= N:
        return np.arange(N)
    if metric == "cosine":
        Z = l2_normalise(Z, "X")
    rng = np.random.default_rng(seed)
    if projection_dim is not None:
        if projection_dim < 1:
            raise ValueError(f"projection_dim must be positive or None; got {projection_dim!r}")
        if dim > projection_dim:
            R = rng.standard_normal((dim, projection_dim)) / math.sqrt(projection_dim)
            Z = Z @ R
    sq = np.einsum("ij,ij->i", Z, Z)
    chosen = np.empty(n, dtype=np.int64)
    chosen[0] = rng.integers(N)
    min_d2 = np.full(N, np.inf)
    for t in range(n):
        if t > 0:
            chosen[t] = int(np.argmax(min_d2))
        z = Z[chosen[t]]
        min_d2 = np.minimum(min_d2, sq - 2.0 * (Z @ z) + sq[chosen[t]])
        min_d2[chosen[t]] = -np.inf  # never pick it twice, even with duplicates
    return chosen
