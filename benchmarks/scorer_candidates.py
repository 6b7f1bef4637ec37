"""Scorers tried for `simclr` and NOT adopted, kept so `scorer_study.py` reproduces their numbers.

Each has the scorer shape (`fit(X, domains)`, `score_samples(Q)`) and nothing else (no LOO, no
persistence): they exist for the comparison in `benchmarks/results/simclr_scorers.md`. The one
adopted, `mahalanobis_knn`, lives in `monitor/model/scoring.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from monitor.model.scoring import RescaledKNNScorer
from monitor.model.scoring.mcd import squared_mahalanobis


def _codes(domains: Sequence[str | None]) -> np.ndarray:
    return np.array([1 if d == "target" else 0 for d in domains])


def _inverse(cov: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh(cov)
    w = np.maximum(w, w.max() * 1e-9)
    return (V / w) @ V.T


class NormalisedDomainGaussians:
    """One Gaussian per domain; each domain's squared distances divided by the median of its own
    clips' leave-one-out distances (by refit), score = min over domains.

    ``prior=None``: every domain uses the pooled within-domain covariance (its own mean).
    ``prior=nu``: source uses its own ML covariance, the target (S_t of n_t clips) uses
    (nu S_source + n_t S_t) / (nu + n_t), the posterior-mean shape of a conjugate prior.
    """

    def __init__(self, prior: float | None = None) -> None:
        self.prior = prior

    def _model(self, X: np.ndarray, codes: np.ndarray) -> tuple[dict, dict]:
        means = {d: X[codes == d].mean(axis=0) for d in np.unique(codes)}
        if self.prior is None:
            E = X - np.stack([means[c] for c in codes])
            P = _inverse(E.T @ E / len(X))
            return means, {d: P for d in means}
        S_src = np.cov(X[codes == 0].T, bias=True)
        precisions = {0: _inverse(S_src)}
        for d in means:
            if d:
                Xd = X[codes == d]
                S_d = np.cov(Xd.T, bias=True)
                shrunk = (self.prior * S_src + len(Xd) * S_d) / (self.prior + len(Xd))
                precisions[d] = _inverse(shrunk)
        return means, precisions

    def fit(self, X: np.ndarray, domains: Sequence[str | None]) -> NormalisedDomainGaussians:
        codes = _codes(domains)
        self.means_, self.precisions_ = self._model(X, codes)
        loo = np.empty(len(X))
        for i in range(len(X)):
            keep = np.arange(len(X)) != i
            means, precisions = self._model(X[keep], codes[keep])
            c = codes[i]
            loo[i] = squared_mahalanobis(X[i : i + 1], means[c], precisions[c])[0]
        self.scales_ = {d: float(np.median(loo[codes == d])) for d in self.means_}
        return self

    def score_samples(self, Q: np.ndarray) -> np.ndarray:
        per = [
            squared_mahalanobis(Q, self.means_[d], self.precisions_[d]) / self.scales_[d]
            for d in self.means_
        ]
        return np.min(np.stack(per), axis=0)


class TotalCovarianceKNN:
    """`mahalanobis_knn` with the covariance of ALL clips (between-domain spread included)
    instead of the pooled within-domain one."""

    def fit(self, X: np.ndarray, domains: Sequence[str | None]) -> TotalCovarianceKNN:
        w, V = np.linalg.eigh(np.cov(X.T, bias=True))
        self.W_ = V / np.sqrt(np.maximum(w, w.max() * 1e-9))
        knn = RescaledKNNScorer(metric="euclidean", domainwise=True)
        self.knn_ = knn.fit(X @ self.W_, list(domains))
        return self

    def score_samples(self, Q: np.ndarray) -> np.ndarray:
        return self.knn_.score_samples(Q @ self.W_)


CANDIDATES = {
    "cand_domain_gaussians_normalised": lambda: NormalisedDomainGaussians(),
    "cand_domain_gaussians_normalised_nu8": lambda: NormalisedDomainGaussians(prior=8),
    "cand_domain_gaussians_normalised_nu128": lambda: NormalisedDomainGaussians(prior=128),
    "cand_total_covariance_knn": lambda: TotalCovarianceKNN(),
}
