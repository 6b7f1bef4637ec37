"""Distances from queries to a bank of reference embeddings, in bounded memory.

Cosine distance is ``(1 - cos) / 2`` on L2-normalised rows (range [0, 1]); Euclidean distance is
computed on centred rows. Distance matrices are built in row chunks, so scoring many queries
against a large bank never materialises the whole query x bank matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

# Distance matrices are built in row chunks of at most this many float64 entries (32 MiB), so
# scoring 100,000 queries against a 10,000-embedding bank never needs a 100k x 10k matrix.
_CHUNK_ENTRIES = 4 * 1024 * 1024


def l2_normalise(X: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1)
    if np.any(norms == 0):
        row = int(np.flatnonzero(norms == 0)[0])
        raise ValueError(f"{name} row {row} is all zeros: cosine distance is undefined for it")
    return X / norms[:, None]


class PreparedBank:
    """Reference embeddings prepared once for one metric, so scoring is one matrix multiply."""

    def __init__(self, X: np.ndarray, metric: str) -> None:
        self.metric = metric
        if metric == "cosine":
            self.Y = np.ascontiguousarray(l2_normalise(X, "bank"))
            self.sq: np.ndarray | None = None  # squared norms: Euclidean only
        else:
            # Centred: |q|^2 + |y|^2 - 2 q.y cancels less when the norms are small.
            self.center = X.mean(axis=0)
            self.Y = np.ascontiguousarray(X - self.center)
            self.sq = np.einsum("ij,ij->i", self.Y, self.Y)

    def __len__(self) -> int:
        return self.Y.shape[0]

    def prepare(self, Q: np.ndarray, name: str = "X") -> np.ndarray:
        """Queries in the bank's space (L2-normalised for cosine)."""
        return l2_normalise(Q, name) if self.metric == "cosine" else Q - self.center

    def distances(self, Qp: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """[q, n_rows] distances from prepared queries to bank rows ``rows``."""
        D = Qp @ self.Y[rows].T  # in-place below: one [q, n] buffer, no temporaries
        if self.metric == "cosine":
            D *= -0.5
            D += 0.5
            return np.clip(D, 0.0, 1.0, out=D)
        assert self.sq is not None  # set for the Euclidean metric
        D *= -2.0
        D += np.einsum("ij,ij->i", Qp, Qp)[:, None]
        D += self.sq[rows][None, :]
        np.maximum(D, 0.0, out=D)
        return np.sqrt(D, out=D)


def row_chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Row slices that keep an [rows, n_cols] float64 block within the memory bound."""
    step = max(1, _CHUNK_ENTRIES // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def nearest_others(bank: PreparedBank, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances [n, m] of each bank row's m nearest OTHER rows, ascending.

    The row itself is excluded by index, not by distance, so exact duplicates still count.
    """
    n = len(bank)
    idx = np.empty((n, m), dtype=np.int64)
    dist = np.empty((n, m), dtype=np.float64)
    for sl in row_chunks(n, n):
        rows = np.arange(sl.start, sl.stop)
        D = bank.distances(bank.Y[sl])
        D[np.arange(len(rows)), rows] = np.inf
        part = np.argpartition(D, m - 1, axis=1)[:, :m] if m < n else np.argsort(D, axis=1)[:, :m]
        pd = np.take_along_axis(D, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        idx[sl] = np.take_along_axis(part, order, axis=1)
        dist[sl] = np.take_along_axis(pd, order, axis=1)
    return idx, dist


# extra(rows, cols) -> [len(rows), len(cols)] added squared distances (RescaledKNNScorer._loo)
ExtraSquared = Callable[[np.ndarray, np.ndarray], np.ndarray]


def corrected(
    D: np.ndarray, extra: ExtraSquared | None, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Euclidean distances D with ``extra(rows, cols)`` added to their squares (in place)."""
    if extra is None:
        return D
    D *= D
    D += extra(rows, cols)
    np.maximum(D, 0.0, out=D)
    return np.sqrt(D, out=D)


def mean_k_smallest(D: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return D.min(axis=1)
    return np.partition(D, k - 1, axis=1)[:, :k].mean(axis=1)
