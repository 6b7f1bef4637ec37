"""Nearest-neighbour scorers: plain k-NN and k-NN with local-density rescaling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from monitor.errors import PackageError
from monitor.model.scoring.arrays import read_bool, read_int, read_matrix, read_str, read_vector
from monitor.model.scoring.base import Scorer
from monitor.model.scoring.distances import (
    ExtraSquared,
    PreparedBank,
    corrected,
    mean_k_smallest,
    nearest_others,
    row_chunks,
)
from monitor.model.scoring.inputs import DOMAINS, as_matrix, check_k, check_metric, domain_codes

# c_j below this (a reference with K exact duplicates) is raised to it: no division by zero.
_MIN_SCALE = 1e-12


class KNNScorer(Scorer):
    """Plain k-NN: score = mean distance to the k nearest bank embeddings.

    ``metric="cosine"``: (1 - cos)/2 on L2-normalised rows; ``"euclidean"``: Euclidean distance.
    """

    name = "knn"

    def __init__(self, k: int = 1, metric: str = "cosine") -> None:
        self.k = check_k(k)
        self.metric = check_metric(metric)
        self.n_features_in_: int | None = None

    def __repr__(self) -> str:
        return f"KNNScorer(k={self.k}, metric={self.metric!r})"

    def fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> KNNScorer:
        X = as_matrix(X)
        domain_codes(domains, X.shape[0])
        if X.shape[0] < self.k + 1:
            raise ValueError(
                f"KNNScorer(k={self.k}) needs at least k+1 = {self.k + 1} embeddings (so that "
                f"leave-one-out scores exist); got {X.shape[0]}"
            )
        self.bank_ = X.copy()
        self._bank = PreparedBank(self.bank_, self.metric)
        self.n_features_in_ = X.shape[1]
        return self

    def partial_fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> KNNScorer:
        """Append embeddings to the bank (exactly equal to fitting on the concatenation)."""
        if not self.is_fitted:
            return self.fit(X, domains)
        X = self._check_query(X)
        domain_codes(domains, X.shape[0])
        return self.fit(np.vstack([self.bank_, X]))

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        Q = self._check_query(X)
        Q = self._bank.prepare(Q)
        out = np.empty(Q.shape[0])
        for sl in row_chunks(Q.shape[0], len(self._bank)):
            out[sl] = mean_k_smallest(self._bank.distances(Q[sl]), self.k)
        return out

    def loo_scores(self) -> np.ndarray:
        """Each bank embedding scored against the bank without itself (excluded by index)."""
        self._check_fitted()
        n = len(self._bank)
        out = np.empty(n)
        for sl in row_chunks(n, n):
            D = self._bank.distances(self._bank.Y[sl])
            D[np.arange(sl.stop - sl.start), np.arange(sl.start, sl.stop)] = np.inf
            out[sl] = mean_k_smallest(D, self.k)
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
        scorer = cls(k=read_int(arrays, "k"), metric=read_str(arrays, "metric"))
        return scorer.fit(read_matrix(arrays, "bank"))


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
        self.k = check_k(k)
        self.metric = check_metric(metric)
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
        X = as_matrix(X)
        codes = domain_codes(domains, X.shape[0])
        self._validate_sizes(codes)
        scales = np.empty(X.shape[0])
        banks = []
        for members in self._bank_members(codes):
            bank = PreparedBank(X[members], self.metric)
            k = self._k_for(len(members))
            _, dist = nearest_others(bank, k)
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
        banks: list[tuple[np.ndarray, PreparedBank]] | None = None,
    ) -> None:
        self.bank_ = X.copy() if banks is not None else X
        self.domains_ = codes
        self.scales_ = scales
        if banks is None:
            banks = [(m, PreparedBank(X[m], self.metric)) for m in self._bank_members(codes)]
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
            for sl in row_chunks(Q.shape[0], len(bank)):
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

    def _loo(self, extra: ExtraSquared | None) -> np.ndarray:
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
                for sl in row_chunks(len(members), len(bank_o)):
                    rows = members[sl]
                    D = corrected(bank_o.distances(Qp[sl]), extra, rows, members_o)
                    out[rows] = np.minimum(out[rows], (D / c).min(axis=1))
        return out

    def _loo_within(
        self,
        bank: PreparedBank,
        scales: np.ndarray,
        members: np.ndarray,
        extra: ExtraSquared | None,
    ) -> np.ndarray:
        n = len(members)
        k = self._k_for(n)
        k_refit = self._k_for(n - 1)
        if k_refit != k:
            return self._loo_by_refit(bank, k_refit, members, extra)
        idx, dist = nearest_others(bank, k + 1)
        # c_j without i, for every i among j's k nearest: drop d(j, i), let the (k+1)-th in.
        alt = (dist.sum(axis=1, keepdims=True) - dist[:, :k]) / k
        pair_j = np.repeat(np.arange(n), k)
        pair_i = idx[:, :k].ravel()
        pair_c = np.maximum(alt.ravel(), _MIN_SCALE)
        out = np.empty(n)
        for sl in row_chunks(n, n):
            D = corrected(bank.distances(bank.Y[sl]), extra, members[sl], members)
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
        bank: PreparedBank, k: int, members: np.ndarray, extra: ExtraSquared | None
    ) -> np.ndarray:
        """Small banks: literally refit without each embedding (O(n^3 D), n <= K + 1)."""
        n = len(bank)
        D = bank.distances(bank.Y)
        Dq = corrected(D.copy(), extra, members, members)
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
            k=read_int(arrays, "k"),
            metric=read_str(arrays, "metric"),
            domainwise=read_bool(arrays, "domainwise"),
        )
        bank = read_matrix(arrays, "bank")
        codes = read_vector(arrays, "domains", bank.shape[0], kinds="u").astype(np.uint8)
        if np.any(codes >= len(DOMAINS)):
            raise PackageError("scorer array 'domains' holds codes other than 0/1")
        scales = read_vector(arrays, "scales", bank.shape[0])
        if np.any(scales <= 0):
            raise PackageError("scorer array 'scales' must be positive")
        # The stored c_j are used as they are: recomputing them is O(N^2 D) at daemon start.
        scorer._set_state(bank, codes, scales)
        return scorer
