"""Domain-wise rescaled k-NN in the Mahalanobis metric of the pooled within-domain covariance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from monitor.errors import PackageError
from monitor.model.scoring.arrays import read_float, read_int, read_matrix, read_square, read_vector
from monitor.model.scoring.base import Scorer
from monitor.model.scoring.inputs import DOMAINS, as_matrix, check_k, domain_codes
from monitor.model.scoring.knn import RescaledKNNScorer
from monitor.model.scoring.mahalanobis import eigh_with_ridge, within_domain_residuals


class MahalanobisKNNScorer(Scorer):
    """Domain-wise rescaled k-NN (``rescaled_knn_domainwise``) in the Mahalanobis metric of the
    pooled WITHIN-domain covariance.

    Why: a Gaussian fitted to source and target together (``mahalanobis``) puts the handful of
    target clips in its tail, so target-domain normal clips score 3-6x higher than source ones;
    a mean per domain (``mahalanobis_domainwise``) does not fix it, because the target clips
    also spread differently. Local-density rescaling (``RescaledKNNScorer``) puts both domains
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
        self.k = check_k(k)
        self.n_features_in_: int | None = None

    def __repr__(self) -> str:
        return f"MahalanobisKNNScorer(k={self.k})"

    def fit(
        self, X: ArrayLike, domains: Sequence[str | None] | None = None
    ) -> MahalanobisKNNScorer:
        X = as_matrix(X)
        codes = domain_codes(domains, X.shape[0])
        knn = RescaledKNNScorer(self.k, metric="euclidean", domainwise=True)
        knn._validate_sizes(codes)
        if np.ptp(X, axis=0).max() == 0:
            raise ValueError("all embeddings are identical: their covariance is zero")
        E = within_domain_residuals(X, codes)
        cov = E.T @ E / X.shape[0]
        w, V, self.ridge_ = eigh_with_ridge(cov)
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
        F = within_domain_residuals(self.data_, self.domains_) @ self.whitening_
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
        scorer = cls(k=read_int(arrays, "k"))
        data = read_matrix(arrays, "data")
        n, p = data.shape
        codes = read_vector(arrays, "domains", n, kinds="u").astype(np.uint8)
        if np.any(codes >= len(DOMAINS)):
            raise PackageError("scorer array 'domains' holds codes other than 0/1")
        scales = read_vector(arrays, "scales", n)
        if np.any(scales <= 0):
            raise PackageError("scorer array 'scales' must be positive")
        scorer.whitening_ = read_square(arrays, "whitening", p)
        scorer.ridge_ = read_float(arrays, "ridge")
        scorer.data_, scorer.domains_ = data, codes
        scorer.knn_ = RescaledKNNScorer(scorer.k, metric="euclidean", domainwise=True)
        scorer.knn_._set_state(data @ scorer.whitening_, codes, scales)
        scorer.n_features_in_ = p
        return scorer
