"""Checks on what callers pass to a scorer: embedding matrices, domain labels, k and metric.

Every check raises ValueError saying what is wrong and where (row, column, entry), because the
same scorers run at enrolment time on a plant engineer's recordings, not only in tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

DOMAINS = ("source", "target")
METRICS = ("cosine", "euclidean")


def as_matrix(X: ArrayLike, name: str = "X") -> np.ndarray:
    """A finite float64 [N, D] copy-or-view of ``X``, or a ValueError saying what is wrong."""
    arr = np.asarray(X)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold real numbers; got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2:
        hint = " (wrap one embedding as x[None, :])" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D [n_samples, n_features]; got shape {arr.shape}{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    finite = np.isfinite(arr)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ValueError(f"{name} has a non-finite value ({arr[row, col]}) at row {row}, col {col}")
    return arr


def domain_codes(domains: Sequence[str | None] | None, n: int) -> np.ndarray:
    """Domains as uint8 codes (0 = source, 1 = target).

    ``domains=None`` or a None entry means unknown; unknown clips count as source (the bank a
    plant's own recordings belong to), which only matters for domain-wise rescaling.
    """
    codes = np.zeros(n, dtype=np.uint8)
    if domains is None:
        return codes
    if isinstance(domains, str):
        raise ValueError(
            f"domains must be a sequence of 'source'/'target', not the string {domains!r}"
        )
    values = list(domains)
    if len(values) != n:
        raise ValueError(f"domains has {len(values)} entries but X has {n} rows")
    for i, value in enumerate(values):
        if value is None:
            continue
        if value not in DOMAINS:
            raise ValueError(f"domains[{i}] is {value!r}; expected 'source', 'target' or None")
        codes[i] = DOMAINS.index(value)
    return codes


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    return metric


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    return int(k)
