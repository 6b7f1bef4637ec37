"""Gaussian scorers: squared Mahalanobis distance to one mean, or to the nearest domain mean."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from monitor.errors import PackageError
from monitor.model.scoring.arrays import (
    read_float,
    read_int,
    read_matrix,
    read_square,
    read_str,
    read_vector,
)
from monitor.model.scoring.base import Scorer
from monitor.model.scoring.inputs import DOMAINS, as_matrix, domain_codes
from monitor.model.scoring.mcd import fast_mcd, mcd_reweight, ml_covariance, squared_mahalanobis

# Relative size of the ridge added to a singular maximum-likelihood covariance.
_RIDGE = 1e-6


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
        X = as_matrix(X)
        domain_codes(domains, X.shape[0])
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
        w, V, ridge = eigh_with_ridge(cov)
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
        domain_codes(domains, X.shape[0])
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
        fraction = read_float(arrays, "support_fraction")
        state = read_int(arrays, "random_state")
        scorer = cls(
            covariance=read_str(arrays, "covariance"),
            support_fraction=None if math.isnan(fraction) else fraction,
            random_state=None if state < 0 else state,
        )
        data = read_matrix(arrays, "data")
        n, p = data.shape
        scorer.data_ = data
        scorer.location_ = read_vector(arrays, "location", p)
        scorer.covariance_ = read_square(arrays, "covariance_matrix", p)
        scorer.precision_ = read_square(arrays, "precision", p)
        scorer.ridge_ = read_float(arrays, "ridge")
        scorer.support_ = read_vector(arrays, "support", n, kinds="b")
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
        X = as_matrix(X)
        codes = domain_codes(domains, X.shape[0])
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
        data = read_matrix(arrays, "data")
        n, p = data.shape
        codes = read_vector(arrays, "domains", n, kinds="u").astype(np.uint8)
        if codes.size and codes.max() > 1:
            raise PackageError("scorer array 'domains' holds codes other than 0/1")
        present = np.asarray(arrays["present"]).astype(np.uint8).ravel()
        if sorted(set(codes.tolist())) != present.tolist():
            raise PackageError("scorer array 'present' does not match 'domains'")
        locations = read_matrix(arrays, "locations")
        if locations.shape != (present.size, p):
            raise PackageError(
                f"scorer array 'locations' has shape {locations.shape}, expected "
                f"{(present.size, p)}"
            )
        scorer.data_, scorer.domains_, scorer.present_ = data, codes, present
        scorer.locations_ = locations
        scorer.covariance_ = read_square(arrays, "covariance_matrix", p)
        scorer.precision_ = read_square(arrays, "precision", p)
        scorer.ridge_ = read_float(arrays, "ridge")
        scorer.n_features_in_ = p
        return scorer


def eigh_with_ridge(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigenvalues and vectors of a covariance; a singular one first gets the ridge
    ``_RIDGE`` x mean variance on its diagonal (returned, 0.0 when not singular)."""
    w, V = np.linalg.eigh(cov)
    singular = w.min() <= w.max() * cov.shape[0] * np.finfo(np.float64).eps
    ridge = _RIDGE * float(np.trace(cov)) / cov.shape[0] if singular else 0.0
    w = np.maximum(w, 0.0) + ridge if singular else w
    return w, V, ridge


def within_domain_residuals(X: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each row minus the mean of its domain: the scatter of clips around their condition."""
    E = X.copy()
    for d in np.unique(codes):
        E[codes == d] -= X[codes == d].mean(axis=0)
    return E
