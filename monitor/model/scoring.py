"""Anomaly scorers on clip embeddings, shared by offline evaluation and the live daemon.

Every scorer has scikit-learn's shape (``fit(X, domains=None)``, ``score_samples(X)``) but returns
ANOMALY scores: higher = more anomalous, the DCASE convention. This is the NEGATIVE of what
scikit-learn's outlier detectors return from ``score_samples`` (there higher = more normal).

Only numpy and scipy are used: scorers are fitted at training time and again at enrolment time on
an industrial PC without torch or scikit-learn, and offline numbers and live scores must come from
the same code. Scorers persist without pickle through ``to_arrays()`` / ``scorer_from_arrays()``
(plain numeric and unicode arrays, safe for ``np.load(..., allow_pickle=False)``).

Names used below: a *bank* is the set of reference (normal training) embeddings; *K* the number
of nearest neighbours; cosine distance is ``(1 - cos) / 2`` on L2-normalised rows (range [0, 1]).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from monitor.errors import PackageError
from monitor.model.mcd import fast_mcd, mcd_reweight, ml_covariance, squared_mahalanobis

__all__ = [
    "DOMAINS",
    "DomainwiseMahalanobisScorer",
    "METRICS",
    "SCORER_NAMES",
    "KNNScorer",
    "MahalanobisKNNScorer",
    "MahalanobisScorer",
    "RescaledKNNScorer",
    "Scorer",
    "coreset_subsample",
    "make_scorer",
    "scorer_from_arrays",
]

DOMAINS = ("source", "target")
METRICS = ("cosine", "euclidean")
FORMAT_VERSION = 1

# Distance matrices are built in row chunks of at most this many float64 entries (32 MiB), so
# scoring 100,000 queries against a 10,000-embedding bank never needs a 100k x 10k matrix.
_CHUNK_ENTRIES = 4 * 1024 * 1024
# c_j below this (a reference with K exact duplicates) is raised to it: no division by zero.
_MIN_SCALE = 1e-12
# Relative size of the ridge added to a singular maximum-likelihood covariance.
_RIDGE = 1e-6


# --------------------------------------------------------------------------------------------
# input validation


def _as_matrix(X: ArrayLike, name: str = "X") -> np.ndarray:
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


def _domain_codes(domains: Sequence[str | None] | None, n: int) -> np.ndarray:
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


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    return metric


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    return int(k)


# --------------------------------------------------------------------------------------------
# distances


def _l2_normalise(X: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1)
    if np.any(norms == 0):
        row = int(np.flatnonzero(norms == 0)[0])
        raise ValueError(f"{name} row {row} is all zeros: cosine distance is undefined for it")
    return X / norms[:, None]


class _Bank:
    """Reference embeddings prepared once for one metric, so scoring is one matrix multiply."""

    def __init__(self, X: np.ndarray, metric: str) -> None:
        self.metric = metric
        if metric == "cosine":
            self.Y = np.ascontiguousarray(_l2_normalise(X, "bank"))
            self.sq = None
        else:
            # Centred: |q|^2 + |y|^2 - 2 q.y cancels less when the norms are small.
            self.center = X.mean(axis=0)
            self.Y = np.ascontiguousarray(X - self.center)
            self.sq = np.einsum("ij,ij->i", self.Y, self.Y)

    def __len__(self) -> int:
        return self.Y.shape[0]

    def prepare(self, Q: np.ndarray, name: str = "X") -> np.ndarray:
        """Queries in the bank's space (L2-normalised for cosine)."""
        return _l2_normalise(Q, name) if self.metric == "cosine" else Q - self.center

    def distances(self, Qp: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """[q, n_rows] distances from prepared queries to bank rows ``rows``."""
        D = Qp @ self.Y[rows].T  # in-place below: one [q, n] buffer, no temporaries
        if self.metric == "cosine":
            D *= -0.5
            D += 0.5
            return np.clip(D, 0.0, 1.0, out=D)
        D *= -2.0
        D += np.einsum("ij,ij->i", Qp, Qp)[:, None]
        D += self.sq[rows][None, :]
        np.maximum(D, 0.0, out=D)
        return np.sqrt(D, out=D)


def _chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Row slices that keep an [rows, n_cols] float64 block within the memory bound."""
    step = max(1, _CHUNK_ENTRIES // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _nearest_others(bank: _Bank, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances [n, m] of each bank row's m nearest OTHER rows, ascending.

    The row itself is excluded by index, not by distance, so exact duplicates still count.
    """
    n = len(bank)
    idx = np.empty((n, m), dtype=np.int64)
    dist = np.empty((n, m), dtype=np.float64)
    for sl in _chunks(n, n):
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
_ExtraSq = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _corrected(
    D: np.ndarray, extra: _ExtraSq | None, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Euclidean distances D with ``extra(rows, cols)`` added to their squares (in place)."""
    if extra is None:
        return D
    D *= D
    D += extra(rows, cols)
    np.maximum(D, 0.0, out=D)
    return np.sqrt(D, out=D)


def _mean_k_smallest(D: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return D.min(axis=1)
    return np.partition(D, k - 1, axis=1)[:, :k].mean(axis=1)


# --------------------------------------------------------------------------------------------
# base class


class Scorer(ABC):
    """Common interface: fit on normal embeddings, score new ones (higher = more anomalous)."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> Scorer:
        """Fit on normal embeddings ``X`` [N, D]; ``domains``: 'source'/'target'/None per row."""

    @abstractmethod
    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """Anomaly scores [N] (higher = more anomalous; the negative of sklearn's convention)."""

    @abstractmethod
    def loo_scores(self) -> np.ndarray:
        """Leave-one-out scores [N_train] of the training embeddings (feed the gamma threshold)."""

    @abstractmethod
    def partial_fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> Scorer:
        """Add embeddings (enrolment); the result equals fitting on the concatenated data."""

    @abstractmethod
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Fitted state and hyper-parameters as pickle-free arrays."""

    @classmethod
    @abstractmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Scorer: ...

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "n_features_in_", None) is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(f"{type(self).__name__} is not fitted; call fit() first")

    def _refit_with(
        self,
        stored: np.ndarray,
        stored_codes: np.ndarray,
        X: ArrayLike,
        domains: Sequence[str | None] | None,
    ) -> Any:
        """``partial_fit`` for scorers that keep their embeddings: fit on stored + new."""
        if not self.is_fitted:
            return self.fit(X, domains)
        X = self._check_query(X)
        codes = _domain_codes(domains, X.shape[0])
        both = [DOMAINS[c] for c in np.concatenate([stored_codes, codes])]
        return self.fit(np.vstack([stored, X]), both)

    def _check_query(self, X: ArrayLike) -> np.ndarray:
        self._check_fitted()
        Q = _as_matrix(X)
        if Q.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {Q.shape[1]} features but the scorer was fitted on {self.n_features_in_}"
            )
        return Q

    def _header(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        return {"kind": np.array(self.name), "format_version": np.array(FORMAT_VERSION)}


# --------------------------------------------------------------------------------------------
# plain k-NN


class KNNScorer(Scorer):
    """Plain k-NN: score = mean distance to the k nearest bank embeddings.

    ``metric="cosine"``: (1 - cos)/2 on L2-normalised rows; ``"euclidean"``: Euclidean distance.
    """

    name = "knn"

    def __init__(self, k: int = 1, metric: str = "cosine") -> None:
        self.k = _check_k(k)
        self.metric = _check_metric(metric)
        self.n_features_in_: int | None = None

    def __repr__(self) -> str:
        return f"KNNScorer(k={self.k}, metric={self.metric!r})"

    def fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> KNNScorer:
        X = _as_matrix(X)
        _domain_codes(domains, X.shape[0])
        if X.shape[0] < self.k + 1:
            raise ValueError(
                f"KNNScorer(k={self.k}) needs at least k+1 = {self.k + 1} embeddings (so that "
                f"leave-one-out scores exist); got {X.shape[0]}"
            )
        self.bank_ = X.copy()
        self._bank = _Bank(self.bank_, self.metric)
        self.n_features_in_ = X.shape[1]
        return self

    def partial_fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> KNNScorer:
        """Append embeddings to the bank (exactly equal to fitting on the concatenation)."""
        if not self.is_fitted:
            return self.fit(X, domains)
        X = self._check_query(X)
        _domain_codes(domains, X.shape[0])
        return self.fit(np.vstack([self.bank_, X]))

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        Q = self._check_query(X)
        Q = self._bank.prepare(Q)
        out = np.empty(Q.shape[0])
        for sl in _chunks(Q.shape[0], len(self._bank)):
            out[sl] = _mean_k_smallest(self._bank.distances(Q[sl]), self.k)
        return out

    def loo_scores(self) -> np.ndarray:
        """Each bank embedding scored against the bank without itself (excluded by index)."""
        self._check_fitted()
        n = len(self._bank)
        out = np.empty(n)
        for sl in _chunks(n, n):
            D = self._bank.distances(self._bank.Y[sl])
            D[np.arange(sl.stop - sl.start), np.arange(sl.start, sl.stop)] = np.inf
            out[sl] = _mean_k_smallest(D, self.k)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            **self._header(),
            "k": np.array(self.k),
            "metric": np.array(self.metric),
            "bank": self.bank_,
        }

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> KNNScorer:
        scorer = cls(k=_read_int(arrays, "k"), metric=_read_str(arrays, "metric"))
        return scorer.fit(_read_matrix(arrays, "bank"))


# --------------------------------------------------------------------------------------------
# "Keeping the Balance" rescaled k-NN


class RescaledKNNScorer(Scorer):
    """k-NN with local-density rescaling (Wilkinghoff et al., "Keeping the Balance", ICASSP 2025).

    For each reference y_j, c_j = mean distance to its K nearest OTHER references (self excluded
    by index, as merlresearch/anomaly-score-normalization's ``utils.py`` drops the zero self
    distance; c_j floored at 1e-12). Score of x = min_j d(x, y_j) / c_j. References in sparse
    regions (the ~10 target-domain clips) have large c_j, so source and target scores land on
    one scale and one threshold serves both domains.

    ``domainwise=False``: one pooled bank (source and target together, the paper's setting).
    ``domainwise=True`` (DCASE 2025 "GenRep"): a bank per domain, each rescaled within itself
    with K capped at bank size - 1 (a 10-clip target bank uses K = 9), score = min over banks.
    Embeddings of unknown domain (``domains=None`` or None entries) go to the source bank.

    Cosine: d = (1 - cos)/2 on L2-normalised embeddings; Euclidean: plain distance (utils.py uses
    0.25 * Euclidean; constant factors cancel in d/c).
    """

    def __init__(self, k: int = 16, metric: str = "cosine", domainwise: bool = False) -> None:
        self.k = _check_k(k)
        self.metric = _check_metric(metric)
        self.domainwise = bool(domainwise)
        self.n_features_in_: int | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return "rescaled_knn_domainwise" if self.domainwise else "rescaled_knn"

    def __repr__(self) -> str:
        return (
            f"RescaledKNNScorer(k={self.k}, metric={self.metric!r}, domainwise={self.domainwise})"
        )

    # -- fitting -------------------------------------------------------------------------------
    def _bank_members(self, codes: np.ndarray) -> list[np.ndarray]:
        if not self.domainwise:
            return [np.arange(codes.shape[0])]
        return [np.flatnonzero(codes == c) for c in range(len(DOMAINS)) if np.any(codes == c)]

    def _k_for(self, n_bank: int) -> int:
        return min(self.k, n_bank - 1) if self.domainwise else self.k

    def fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> RescaledKNNScorer:
        X = _as_matrix(X)
        codes = _domain_codes(domains, X.shape[0])
        self._validate_sizes(codes)
        scales = np.empty(X.shape[0])
        banks = []
        for members in self._bank_members(codes):
            bank = _Bank(X[members], self.metric)
            k = self._k_for(len(members))
            _, dist = _nearest_others(bank, k)
            scales[members] = np.maximum(dist.mean(axis=1), _MIN_SCALE)
            banks.append((members, bank))
        self._set_state(X, codes, scales, banks)
        return self

    def _validate_sizes(self, codes: np.ndarray) -> None:
        if not self.domainwise:
            n = codes.shape[0]
            if n < self.k + 2:
                raise ValueError(
                    f"RescaledKNNScorer(k={self.k}) needs at least k+2 = {self.k + 2} embeddings "
                    f"(each reference needs k others, also when one is left out); got {n}"
                )
            return
        for c, domain in enumerate(DOMAINS):
            n = int(np.sum(codes == c))
            if 0 < n < 3:
                raise ValueError(
                    f"domain-wise rescaling needs at least 3 {domain} embeddings (K is capped at "
                    f"bank size - 1, and leave-one-out needs one more); got {n}"
                )

    def _set_state(
        self,
        X: np.ndarray,
        codes: np.ndarray,
        scales: np.ndarray,
        banks: list[tuple[np.ndarray, _Bank]] | None = None,
    ) -> None:
        self.bank_ = X.copy() if banks is not None else X
        self.domains_ = codes
        self.scales_ = scales
        if banks is None:
            banks = [(m, _Bank(X[m], self.metric)) for m in self._bank_members(codes)]
        self._banks = banks
        self.n_features_in_ = X.shape[1]

    def partial_fit(
        self, X: ArrayLike, domains: Sequence[str | None] | None = None
    ) -> RescaledKNNScorer:
        """Append embeddings and recompute every c_j (new neighbours change old scales)."""
        return self._refit_with(self.bank_, self.domains_, X, domains)

    # -- scoring -------------------------------------------------------------------------------
    def score_samples(self, X: ArrayLike) -> np.ndarray:
        Q = self._check_query(X)
        out = np.full(Q.shape[0], np.inf)
        for members, bank in self._banks:
            Qp = bank.prepare(Q)
            c = self.scales_[members]
            for sl in _chunks(Q.shape[0], len(bank)):
                out[sl] = np.minimum(out[sl], (bank.distances(Qp[sl]) / c).min(axis=1))
        return out

    def loo_scores(self) -> np.ndarray:
        """Exact leave-one-out: the score each embedding gets from the scorer refitted without it.

        Leaving y_i out removes it as a candidate for the min AND from the neighbourhoods that
        define the other c_j: a reference j that had y_i among its K nearest gets
        c_j^(-i) = mean of its K nearest references other than y_i (its (K+1)-th moves in).
        Keeping c_j as fitted instead would let y_i's own presence shrink its LOO score. In a
        domain-wise bank smaller than K+2, the refit's K cap (bank size - 2) is applied too.
        Other banks do not contain y_i and use their fitted scales.
        """
        self._check_fitted()
        return self._loo(None)

    def _loo(self, extra: _ExtraSq | None) -> np.ndarray:
        """``loo_scores`` with an optional additive correction to the LEFT-OUT row's squared
        distances (``extra(rows, cols)``, global bank indices; Euclidean only), used by
        ``MahalanobisKNNScorer`` for the metric that row would not have shaped."""
        n = self.bank_.shape[0]
        out = np.full(n, np.inf)
        for b, (members, bank) in enumerate(self._banks):
            own = self._loo_within(bank, self.scales_[members], members, extra)
            out[members] = np.minimum(out[members], own)
            for other, (members_o, bank_o) in enumerate(self._banks):
                if other == b:
                    continue
                Qp = bank_o.prepare(self.bank_[members])
                c = self.scales_[members_o]
                for sl in _chunks(len(members), len(bank_o)):
                    rows = members[sl]
                    D = _corrected(bank_o.distances(Qp[sl]), extra, rows, members_o)
                    out[rows] = np.minimum(out[rows], (D / c).min(axis=1))
        return out

    def _loo_within(
        self, bank: _Bank, scales: np.ndarray, members: np.ndarray, extra: _ExtraSq | None
    ) -> np.ndarray:
        n = len(members)
        k = self._k_for(n)
        k_refit = self._k_for(n - 1)
        if k_refit != k:
            return self._loo_by_refit(bank, k_refit, members, extra)
        idx, dist = _nearest_others(bank, k + 1)
        # c_j without i, for every i among j's k nearest: drop d(j, i), let the (k+1)-th in.
        alt = (dist.sum(axis=1, keepdims=True) - dist[:, :k]) / k
        pair_j = np.repeat(np.arange(n), k)
        pair_i = idx[:, :k].ravel()
        pair_c = np.maximum(alt.ravel(), _MIN_SCALE)
        out = np.empty(n)
        for sl in _chunks(n, n):
            D = _corrected(bank.distances(bank.Y[sl]), extra, members[sl], members)
            local = np.arange(sl.stop - sl.start)
            R = D / scales
            R[local, local + sl.start] = np.inf
            hit = (pair_i >= sl.start) & (pair_i < sl.stop)
            ri, rj = pair_i[hit] - sl.start, pair_j[hit]
            R[ri, rj] = D[ri, rj] / pair_c[hit]
            out[sl] = R.min(axis=1)
        return out

    @staticmethod
    def _loo_by_refit(
        bank: _Bank, k: int, members: np.ndarray, extra: _ExtraSq | None
    ) -> np.ndarray:
        """Small banks: literally refit without each embedding (O(n^3 D), n <= K + 1)."""
        n = len(bank)
        D = bank.distances(bank.Y)
        Dq = _corrected(D.copy(), extra, members, members)
        out = np.empty(n)
        for i in range(n):
            keep = np.delete(np.arange(n), i)
            sub = D[np.ix_(keep, keep)].copy()
            np.fill_diagonal(sub, np.inf)
            c = np.maximum(np.sort(sub, axis=1)[:, :k].mean(axis=1), _MIN_SCALE)
            out[i] = np.min(Dq[i, keep] / c)
        return out

    # -- persistence ---------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            **self._header(),
            "k": np.array(self.k),
            "metric": np.array(self.metric),
            "domainwise": np.array(self.domainwise),
            "bank": self.bank_,
            "domains": self.domains_,
            "scales": self.scales_,
        }

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> RescaledKNNScorer:
        scorer = cls(
            k=_read_int(arrays, "k"),
            metric=_read_str(arrays, "metric"),
            domainwise=_read_bool(arrays, "domainwise"),
        )
        bank = _read_matrix(arrays, "bank")
        codes = _read_vector(arrays, "domains", bank.shape[0], kinds="u").astype(np.uint8)
        if np.any(codes >= len(DOMAINS)):
            raise PackageError("scorer array 'domains' holds codes other than 0/1")
        scales = _read_vector(arrays, "scales", bank.shape[0])
        if np.any(scales <= 0):
            raise PackageError("scorer array 'scales' must be positive")
        # The stored c_j are used as they are: recomputing them is O(N^2 D) at daemon start.
        scorer._set_state(bank, codes, scales)
        return scorer


# --------------------------------------------------------------------------------------------
# Mahalanobis


class MahalanobisScorer(Scorer):
    """SQUARED Mahalanobis distance to the training embeddings (as sklearn's ``mahalanobis``).

    ``covariance="ml"``: maximum-likelihood mean and covariance (divide by N), the same numbers
    as sklearn's ``EmpiricalCovariance``. When that covariance is singular (N <= D, collinear
    features) a ridge of 1e-6 x mean variance is added to its diagonal (``ridge_``) instead of
    sklearn's pseudo-inverse: directions without training variance then count heavily rather
    than being ignored, and leave-one-out stays exact.

    ``covariance="robust"``: minimum covariance determinant by FastMCD, with scikit-learn
    ``MinCovDet``'s consistency correction and reweighting (points beyond the chi2 97.5 %
    quantile dropped), so it scores like ``EllipticEnvelope`` (sign flipped). ``support_fraction``
    = h/N of the raw estimate (default (N + D + 1) / 2N); ``random_state`` seeds the starts.

    The same ridge rule applies to a singular robust covariance (sklearn: pseudo-inverse).
    Both keep the training embeddings: ``partial_fit`` refits on stored + new data (the robust
    estimate has no sufficient statistics, and LOO needs the points anyway).
    """

    def __init__(
        self,
        covariance: str = "ml",
        support_fraction: float | None = None,
        random_state: int | None = 0,
    ) -> None:
        if covariance not in ("ml", "robust"):
            raise ValueError(f"covariance must be 'ml' or 'robust'; got {covariance!r}")
        if support_fraction is not None and not 0 < support_fraction <= 1:
            raise ValueError(f"support_fraction must be in (0, 1]; got {support_fraction!r}")
        if random_state is not None and (
            not isinstance(random_state, (int, np.integer)) or random_state < 0
        ):
            raise ValueError(
                f"random_state must be a non-negative int or None; got {random_state!r}"
            )
        self.covariance = covariance
        self.support_fraction = None if support_fraction is None else float(support_fraction)
        self.random_state = None if random_state is None else int(random_state)
        self.n_features_in_: int | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return "mahalanobis_robust" if self.covariance == "robust" else "mahalanobis"

    def __repr__(self) -> str:
        return (
            f"MahalanobisScorer(covariance={self.covariance!r}, "
            f"support_fraction={self.support_fraction}, random_state={self.random_state})"
        )

    def fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> MahalanobisScorer:
        X = _as_matrix(X)
        _domain_codes(domains, X.shape[0])
        n, p = X.shape
        if n < 2:
            raise ValueError(f"MahalanobisScorer needs at least 2 embeddings; got {n}")
        if np.ptp(X, axis=0).max() == 0:
            raise ValueError("all embeddings are identical: their covariance is zero")
        self.data_ = X.copy()
        if self.covariance == "ml":
            self.location_, self.covariance_ = ml_covariance(X)
            self.support_ = np.ones(n, dtype=bool)
            self.precision_, self.ridge_ = self._precision(self.covariance_)
        else:
            self._fit_robust(X)
        self.n_features_in_ = p
        return self

    @staticmethod
    def _precision(cov: np.ndarray) -> tuple[np.ndarray, float]:
        """Inverse covariance; a singular one gets the documented ridge first."""
        w, V, ridge = _eigh_with_ridge(cov)
        return (V / w) @ V.T, ridge

    def _fit_robust(self, X: np.ndarray) -> None:
        n, p = X.shape
        if self.support_fraction is None:
            h = min(int(math.ceil(0.5 * (n + p + 1))), n)
        else:
            h = int(self.support_fraction * n)
        if h <= p:
            raise ValueError(
                f"robust covariance needs more support points than features: h = {h} <= D = {p} "
                f"(N = {n}); use more embeddings, a larger support_fraction or covariance='ml'"
            )
        rng = np.random.default_rng(self.random_state)
        _, raw_cov, raw_support = fast_mcd(X, h, rng)
        if h < n and np.allclose(raw_cov, 0):
            raise ValueError(
                "the MCD support has zero covariance (more than half the embeddings are "
                "identical); increase support_fraction or deduplicate"
            )
        self.location_, self.covariance_, self.support_ = mcd_reweight(X, raw_support)
        self.raw_support_ = raw_support
        self.precision_, self.ridge_ = self._precision(self.covariance_)

    def partial_fit(
        self, X: ArrayLike, domains: Sequence[str | None] | None = None
    ) -> MahalanobisScorer:
        """Refit on the stored embeddings plus ``X`` (exactly equal to fitting on both)."""
        if not self.is_fitted:
            return self.fit(X, domains)
        X = self._check_query(X)
        _domain_codes(domains, X.shape[0])
        return self.fit(np.vstack([self.data_, X]))

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        Q = self._check_query(X)
        return squared_mahalanobis(Q, self.location_, self.precision_)

    def loo_scores(self) -> np.ndarray:
        """Leave-one-out training scores.

        ``"ml"``: exact, in closed form. Removing e_i = x_i - mean changes the scatter
        M = sum e e^T to M - c e_i e_i^T (c = N/(N-1)) and x_i - mean_(-i) = c e_i, so by
        Sherman-Morrison d_i = (N-1) c^2 a_i / (1 - c a_i) with a_i = e_i^T B^-1 e_i and
        B = M + (N-1) ridge I (the fitted ridge is kept). A point that alone spans a direction
        (1 - c a_i ~ 0) gets a huge score, as an exact refit would.
        ``"robust"``: in-sample distances; the reweighted MCD barely moves when one point goes
        (outliers are already excluded) and an exact LOO would be N FastMCD runs.
        """
        self._check_fitted()
        if self.covariance == "robust":
            return self.score_samples(self.data_)
        X = self.data_
        n, p = X.shape
        E = X - self.location_
        w, V = np.linalg.eigh(E.T @ E)
        w = np.maximum(w, 0.0) + (n - 1) * self.ridge_
        proj = E @ V
        c = n / (n - 1)
        with np.errstate(divide="ignore"):
            a = np.einsum("ij,ij->i", proj / np.where(w > 0, w, np.inf), proj)
        denom = np.maximum(1.0 - c * a, 1e-12)
        return (n - 1) * c * c * a / denom

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            **self._header(),
            "covariance": np.array(self.covariance),
            "support_fraction": np.array(
                np.nan if self.support_fraction is None else self.support_fraction
            ),
            "random_state": np.array(-1 if self.random_state is None else self.random_state),
            "data": self.data_,
            "location": self.location_,
            "covariance_matrix": self.covariance_,
            "precision": self.precision_,
            "ridge": np.array(self.ridge_),
            "support": self.support_,
        }
        return arrays

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> MahalanobisScorer:
        fraction = _read_float(arrays, "support_fraction")
        state = _read_int(arrays, "random_state")
        scorer = cls(
            covariance=_read_str(arrays, "covariance"),
            support_fraction=None if math.isnan(fraction) else fraction,
            random_state=None if state < 0 else state,
        )
        data = _read_matrix(arrays, "data")
        n, p = data.shape
        scorer.data_ = data
        scorer.location_ = _read_vector(arrays, "location", p)
        scorer.covariance_ = _read_square(arrays, "covariance_matrix", p)
        scorer.precision_ = _read_square(arrays, "precision", p)
        scorer.ridge_ = _read_float(arrays, "ridge")
        scorer.support_ = _read_vector(arrays, "support", n, kinds="b")
        scorer.n_features_in_ = p
        return scorer


class DomainwiseMahalanobisScorer(Scorer):
    """SQUARED Mahalanobis distance to the NEAREST domain mean, with one pooled covariance.

    Why: a target domain (another speed, place or background) usually has a handful of training
    clips: far too few for its own covariance, but enough for its own mean. Pooling the
    within-domain scatter of all domains gives one well-posed covariance of how normal clips vary
    *around their condition*, and each test clip is measured from the mean of the condition it
    is closest to (``min`` over domains). The plain ``mahalanobis`` scorer instead fits one
    Gaussian to source and target together, so the few target clips sit in its tail and the
    target domain's normal clips score high. This is the Mahalanobis analogue of the domain-wise
    k-NN banks (``rescaled_knn_domainwise``).

    A domain with fewer than 2 clips has no usable mean-only model and is merged into source.
    Singular scatter gets the same ridge rule as ``MahalanobisScorer``. Leave-one-out is exact
    (Sherman-Morrison on the pooled scatter, the left-out clip's domain mean moved).
    """

    name: ClassVar[str] = "mahalanobis_domainwise"

    def __init__(self) -> None:
        self.n_features_in_: int | None = None

    def __repr__(self) -> str:
        return "DomainwiseMahalanobisScorer()"

    def fit(
        self, X: ArrayLike, domains: Sequence[str | None] | None = None
    ) -> DomainwiseMahalanobisScorer:
        X = _as_matrix(X)
        codes = _domain_codes(domains, X.shape[0])
        for d in range(len(DOMAINS)):
            if 0 < int(np.sum(codes == d)) < 2:
                codes[codes == d] = 0
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"DomainwiseMahalanobisScorer needs at least 2 embeddings; got {n}")
        if np.ptp(X, axis=0).max() == 0:
            raise ValueError("all embeddings are identical: their covariance is zero")
        present = [d for d in range(len(DOMAINS)) if np.any(codes == d)]
        means = np.stack([X[codes == d].mean(axis=0) for d in present])
        E = X - means[np.searchsorted(present, codes)]
        self.data_ = X.copy()
        self.domains_ = codes
        self.present_ = np.array(present, dtype=np.uint8)
        self.locations_ = means
        self.covariance_ = E.T @ E / n
        self.precision_, self.ridge_ = MahalanobisScorer._precision(self.covariance_)
        self.n_features_in_ = X.shape[1]
        return self

    def partial_fit(
        self, X: ArrayLike, domains: Sequence[str | None] | None = None
    ) -> DomainwiseMahalanobisScorer:
        """Refit on the stored embeddings plus ``X`` (exactly equal to fitting on both)."""
        return self._refit_with(self.data_, self.domains_, X, domains)

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        Q = self._check_query(X)
        per_domain = [squared_mahalanobis(Q, mu, self.precision_) for mu in self.locations_]
        return np.min(np.stack(per_domain), axis=0)

    def loo_scores(self) -> np.ndarray:
        """Exact leave-one-out scores.

        With the pooled scatter M = sum e e^T (e = x - its domain mean), removing x_i of a domain
        with n_d clips gives M_i = M - c e_i e_i^T (c = n_d / (n_d - 1)) and moves that mean so
        that x_i - mean_(-i) = c e_i. Sherman-Morrison gives M_i^-1 from M^-1; the covariance
        of the N - 1 others is M_i / (N - 1), the fitted ridge is kept.
        """
        self._check_fitted()
        X, codes = self.data_, self.domains_
        n = X.shape[0]
        slot = np.searchsorted(self.present_, codes)
        E = X - self.locations_[slot]
        B = E.T @ E + (n - 1) * self.ridge_ * np.eye(X.shape[1])
        w, V = np.linalg.eigh(B)
        w = np.where(w > 0, w, np.inf)
        W = V / np.sqrt(w)  # B^-1 = W W^T
        counts = np.bincount(slot, minlength=len(self.present_)).astype(np.float64)
        c = counts[slot] / (counts[slot] - 1.0)
        Ew = E @ W
        a = np.einsum("ij,ij->i", Ew, Ew)
        denom = np.maximum(1.0 - c * a, 1e-12)
        own = (n - 1) * c * c * a / denom
        scores = own
        for j, mu in enumerate(self.locations_):
            other = slot != j
            if not np.any(other):
                continue
            Fw = (X[other] - mu) @ W
            f_a = np.einsum("ij,ij->i", Fw, Fw)
            f_e = np.einsum("ij,ij->i", Fw, Ew[other])
            d = (n - 1) * (f_a + c[other] * f_e**2 / denom[other])
            scores[other] = np.minimum(scores[other], d)
        return scores

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            **self._header(),
            "data": self.data_,
            "domains": self.domains_,
            "present": self.present_,
            "locations": self.locations_,
            "covariance_matrix": self.covariance_,
            "precision": self.precision_,
            "ridge": np.array(self.ridge_),
        }

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> DomainwiseMahalanobisScorer:
        scorer = cls()
        data = _read_matrix(arrays, "data")
        n, p = data.shape
        codes = _read_vector(arrays, "domains", n, kinds="u").astype(np.uint8)
        if codes.size and codes.max() > 1:
            raise PackageError("scorer array 'domains' holds codes other than 0/1")
        present = np.asarray(arrays["present"]).astype(np.uint8).ravel()
        if sorted(set(codes.tolist())) != present.tolist():
            raise PackageError("scorer array 'present' does not match 'domains'")
        locations = _read_matrix(arrays, "locations")
        if locations.shape != (present.size, p):
            raise PackageError(
                f"scorer array 'locations' has shape {locations.shape}, expected "
                f"{(present.size, p)}"
            )
        scorer.data_, scorer.domains_, scorer.present_ = data, codes, present
        scorer.locations_ = locations
        scorer.covariance_ = _read_square(arrays, "covariance_matrix", p)
        scorer.precision_ = _read_square(arrays, "precision", p)
        scorer.ridge_ = _read_float(arrays, "ridge")
        scorer.n_features_in_ = p
        return scorer


class MahalanobisKNNScorer(Scorer):
    """Domain-wise rescaled k-NN (``rescaled_knn_domainwise``) in the Mahalanobis metric of the
    pooled WITHIN-domain covariance.

    Why: a Gaussian fitted to source and target together (``mahalanobis``) puts the handful of
    target clips in its tail, so target-domain normal clips score 3-6x higher than source ones;
    a mean per domain (``mahalanobis_domainwise``) does not fix it, because the target clips
    also spread differently. Local-density rescaling (Wilkinghoff et al. 2025) puts both domains
    on one scale, and the Mahalanobis metric keeps what the Gaussian does well: directions in
    which normal clips vary around their operating condition count little, new directions a
    lot. Embeddings are whitened with that covariance (x -> W^T x, W W^T = its inverse, the
    ``mahalanobis`` ridge rule when singular), then scored with Euclidean rescaled k-NN, K = 16,
    one bank per domain. Selected for the ``simclr`` recipe on a validation set of its own
    (``benchmarks/results/simclr_scorers.md``).

    Leave-one-out: the left-out clip's distances use the metric re-estimated without it (exact,
    a rank-one Sherman-Morrison update of the pooled scatter, its domain mean moved); the other
    references' c_j drop it from their neighbourhoods as in ``RescaledKNNScorer`` but keep the
    full-data metric (one clip of N moves them little; the test against a literal refit bounds
    the difference). Without the first part a clip's own share of the covariance shrinks its
    distances and the threshold comes out low.
    """

    name: ClassVar[str] = "mahalanobis_knn"

    def __init__(self, k: int = 16) -> None:
        self.k = _check_k(k)
        self.n_features_in_: int | None = None

    def __repr__(self) -> str:
        return f"MahalanobisKNNScorer(k={self.k})"

    def fit(
        self, X: ArrayLike, domains: Sequence[str | None] | None = None
    ) -> MahalanobisKNNScorer:
        X = _as_matrix(X)
        codes = _domain_codes(domains, X.shape[0])
        knn = RescaledKNNScorer(self.k, metric="euclidean", domainwise=True)
        knn._validate_sizes(codes)
        if np.ptp(X, axis=0).max() == 0:
            raise ValueError("all embeddings are identical: their covariance is zero")
        E = _within_domain_residuals(X, codes)
        cov = E.T @ E / X.shape[0]
        w, V, self.ridge_ = _eigh_with_ridge(cov)
        self.whitening_ = V / np.sqrt(w)
        self.data_ = X.copy()
        self.domains_ = codes
        self.knn_ = knn.fit(X @ self.whitening_, [DOMAINS[c] for c in codes])
        self.n_features_in_ = X.shape[1]
        return self

    def partial_fit(
        self, X: ArrayLike, domains: Sequence[str | None] | None = None
    ) -> MahalanobisKNNScorer:
        """Refit on the stored embeddings plus ``X`` (the metric and every c_j move)."""
        return self._refit_with(self.data_, self.domains_, X, domains)

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        Q = self._check_query(X)
        return self.knn_.score_samples(Q @ self.whitening_)

    def loo_scores(self) -> np.ndarray:
        self._check_fitted()
        n = self.data_.shape[0]
        Z = self.knn_.bank_
        F = _within_domain_residuals(self.data_, self.domains_) @ self.whitening_
        counts = np.bincount(self.domains_, minlength=len(DOMAINS)).astype(np.float64)
        c = counts[self.domains_] / (counts[self.domains_] - 1.0) / n
        # metric without row i: (S - c_i e_i e_i^T)^-1 = P + P e e^T P c_i / (1 - c_i e^T P e)
        g = c / np.maximum(1.0 - c * np.einsum("ij,ij->i", F, F), 1e-12)
        own = np.einsum("ij,ij->i", F, Z)

        def extra(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            A = F[rows] @ Z[cols].T
            A -= own[rows, None]
            A *= A
            A *= g[rows, None]
            return A

        return self.knn_._loo(extra)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            **self._header(),
            "k": np.array(self.k),
            "data": self.data_,
            "domains": self.domains_,
            "whitening": self.whitening_,
            "ridge": np.array(self.ridge_),
            "scales": self.knn_.scales_,
        }

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> MahalanobisKNNScorer:
        scorer = cls(k=_read_int(arrays, "k"))
        data = _read_matrix(arrays, "data")
        n, p = data.shape
        codes = _read_vector(arrays, "domains", n, kinds="u").astype(np.uint8)
        if np.any(codes >= len(DOMAINS)):
            raise PackageError("scorer array 'domains' holds codes other than 0/1")
        scales = _read_vector(arrays, "scales", n)
        if np.any(scales <= 0):
            raise PackageError("scorer array 'scales' must be positive")
        scorer.whitening_ = _read_square(arrays, "whitening", p)
        scorer.ridge_ = _read_float(arrays, "ridge")
        scorer.data_, scorer.domains_ = data, codes
        scorer.knn_ = RescaledKNNScorer(scorer.k, metric="euclidean", domainwise=True)
        scorer.knn_._set_state(data @ scorer.whitening_, codes, scales)
        scorer.n_features_in_ = p
        return scorer


def _eigh_with_ridge(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigenvalues and vectors of a covariance; a singular one first gets the ridge
    ``_RIDGE`` x mean variance on its diagonal (returned, 0.0 when not singular)."""
    w, V = np.linalg.eigh(cov)
    singular = w.min() <= w.max() * cov.shape[0] * np.finfo(np.float64).eps
    ridge = _RIDGE * float(np.trace(cov)) / cov.shape[0] if singular else 0.0
    w = np.maximum(w, 0.0) + ridge if singular else w
    return w, V, ridge


def _within_domain_residuals(X: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each row minus the mean of its domain: the scatter of clips around their condition."""
    E = X.copy()
    for d in np.unique(codes):
        E[codes == d] -= X[codes == d].mean(axis=0)
    return E


# --------------------------------------------------------------------------------------------
# registry and persistence

_REGISTRY: dict[str, tuple[type[Scorer], dict[str, Any]]] = {
    "knn": (KNNScorer, {}),
    "rescaled_knn": (RescaledKNNScorer, {"domainwise": False}),
    "rescaled_knn_domainwise": (RescaledKNNScorer, {"domainwise": True}),
    "mahalanobis": (MahalanobisScorer, {"covariance": "ml"}),
    "mahalanobis_robust": (MahalanobisScorer, {"covariance": "robust"}),
    "mahalanobis_domainwise": (DomainwiseMahalanobisScorer, {}),
    "mahalanobis_knn": (MahalanobisKNNScorer, {}),
}
SCORER_NAMES = tuple(_REGISTRY)


def make_scorer(name: str, **params: Any) -> Scorer:
    """A fresh scorer by registry name; ``params`` go to its constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORER_NAMES)}")
    cls, fixed = _REGISTRY[name]
    clash = set(fixed) & set(params)
    if clash:
        raise ValueError(f"scorer {name!r} fixes {sorted(clash)}; do not pass them")
    try:
        return cls(**fixed, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for scorer {name!r}: {exc}") from None


def scorer_from_arrays(arrays: Mapping[str, np.ndarray]) -> Scorer:
    """Rebuild a fitted scorer from ``to_arrays()`` output (e.g. an ``np.load`` of a ``.npz``).

    Raises PackageError naming the missing or malformed key.
    """
    kind = _read_str(arrays, "kind")
    version = _read_int(arrays, "format_version")
    if version != FORMAT_VERSION:
        raise PackageError(f"scorer format_version {version} is not supported (expected 1)")
    if kind not in _REGISTRY:
        raise PackageError(f"scorer kind {kind!r} is unknown; known: {', '.join(SCORER_NAMES)}")
    cls, fixed = _REGISTRY[kind]
    try:
        scorer = cls._from_arrays(arrays)
    except ValueError as exc:
        raise PackageError(f"scorer arrays of kind {kind!r} are invalid: {exc}") from None
    if scorer.name != kind:
        raise PackageError(f"scorer kind {kind!r} does not match its parameters ({scorer!r})")
    return scorer


def _get(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in arrays:
        raise PackageError(f"scorer arrays lack the key {key!r}")
    value = np.asarray(arrays[key])
    if value.dtype.kind == "O":
        raise PackageError(f"scorer array {key!r} is an object array; refusing it")
    return value


def _read_str(arrays: Mapping[str, np.ndarray], key: str) -> str:
    value = _get(arrays, key)
    if value.ndim == 0 and value.dtype.kind == "U":
        return str(value[()])
    if value.ndim == 1 and value.dtype == np.uint8:  # JSON string stored as bytes
        try:
            text = json.loads(value.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            text = None
        if isinstance(text, str):
            return text
    raise PackageError(f"scorer array {key!r} must be a 0-d unicode string; got {value.dtype}")


def _read_scalar(arrays: Mapping[str, np.ndarray], key: str, kinds: str) -> Any:
    value = _get(arrays, key)
    if value.ndim != 0 or value.dtype.kind not in kinds:
        raise PackageError(
            f"scorer array {key!r} must be a 0-d array of kind {kinds!r}; "
            f"got shape {value.shape} dtype {value.dtype}"
        )
    return value[()]


def _read_int(arrays: Mapping[str, np.ndarray], key: str) -> int:
    return int(_read_scalar(arrays, key, "iu"))


def _read_float(arrays: Mapping[str, np.ndarray], key: str) -> float:
    return float(_read_scalar(arrays, key, "iuf"))


def _read_bool(arrays: Mapping[str, np.ndarray], key: str) -> bool:
    return bool(_read_scalar(arrays, key, "biu"))


def _read_matrix(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    value = _get(arrays, key)
    try:
        return _as_matrix(value, name=f"scorer array {key!r}")
    except ValueError as exc:
        raise PackageError(str(exc)) from None


def _read_vector(
    arrays: Mapping[str, np.ndarray], key: str, length: int, kinds: str = "iuf"
) -> np.ndarray:
    value = _get(arrays, key)
    if value.shape != (length,) or value.dtype.kind not in kinds:
        raise PackageError(
            f"scorer array {key!r} must have shape ({length},) and kind {kinds!r}; "
            f"got shape {value.shape} dtype {value.dtype}"
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise PackageError(f"scorer array {key!r} has non-finite values")
    return value.astype(np.float64) if kinds == "iuf" else value


def _read_square(arrays: Mapping[str, np.ndarray], key: str, size: int) -> np.ndarray:
    value = _read_matrix(arrays, key)
    if value.shape != (size, size):
        raise PackageError(f"scorer array {key!r} must be {size}x{size}; got {value.shape}")
    return value


# --------------------------------------------------------------------------------------------
# bank size control


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
    Z = _as_matrix(X)
    _check_metric(metric)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    N, dim = Z.shape
    if n >= N:
        return np.arange(N)
    if metric == "cosine":
        Z = _l2_normalise(Z, "X")
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
