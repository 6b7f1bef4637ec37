"""Covariance estimation for the Mahalanobis scorer: maximum likelihood and FastMCD.

FastMCD (Rousseeuw & Van Driessen, 1999) in numpy/scipy, following scikit-learn's `MinCovDet`:
random (p+1)-subset starts, C-steps, the best determinants refined on the full data, then the
consistency correction and reweighting. It lives here, not in scikit-learn, because enrolment on
an industrial PC refits scorers without scikit-learn installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import linalg
from scipy.stats import chi2


def ml_covariance(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    location = X.mean(axis=0)
    Xc = X - location
    return location, (Xc.T @ Xc) / X.shape[0]


def squared_mahalanobis(X: np.ndarray, location: np.ndarray, precision: np.ndarray) -> np.ndarray:
    Xc = X - location
    return np.einsum("ij,ij->i", Xc @ precision, Xc)


# (log-determinant, location, covariance, support indices) of one C-step run
_Estimate = tuple[float, np.ndarray, np.ndarray, np.ndarray]


def _cstep_distances(X: np.ndarray, location: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Squared distances for the C-steps through the Cholesky factor (several times cheaper
    than the eigendecomposition behind pinvh); pinvh only when cov is not positive definite.
    inv(L) + matmul rather than a triangular solve with N right-hand sides: OpenBLAS threads
    that solve even for tiny D, and on a busy CPU it then runs ~40x slower."""
    try:
        L_inv = np.linalg.inv(np.linalg.cholesky(cov))
    except np.linalg.LinAlgError:
        return squared_mahalanobis(X, location, linalg.pinvh(cov))
    Z = (X - location) @ L_inv.T
    return np.einsum("ij,ij->i", Z, Z)


def _logdet(cov: np.ndarray) -> float:
    sign, logdet = np.linalg.slogdet(cov)
    return float(logdet) if sign > 0 else -np.inf


def _consistency_factor(n_features: int, alpha: float) -> float:
    """Makes a covariance from the alpha-fraction most central points consistent at the normal
    distribution (Croux & Haesbroeck 1999; the factor scikit-learn's MinCovDet applies)."""
    q_alpha = chi2.ppf(alpha, df=n_features)
    return float(alpha / chi2.cdf(q_alpha, n_features + 2))


def _c_steps(X: np.ndarray, support: np.ndarray, h: int, max_iter: int) -> _Estimate:
    """Concentration steps (Rousseeuw & Van Driessen 1999): the h points closest under the
    current estimate never have a larger covariance determinant, so iterate until it stops
    decreasing. Returns (logdet, location, covariance, support indices)."""
    location = X[support].mean(axis=0)
    cov: np.ndarray = np.cov(X[support], rowvar=False, bias=True).reshape(X.shape[1], X.shape[1])
    det = _logdet(cov)
    for _ in range(max_iter):
        if np.isinf(det):
            break  # exact fit: the support is degenerate; nothing can be smaller
        dist = _cstep_distances(X, location, cov)
        new = np.sort(np.argpartition(dist, h - 1)[:h])
        if np.array_equal(new, support):
            break
        new_loc = X[new].mean(axis=0)
        new_cov = np.cov(X[new], rowvar=False, bias=True).reshape(cov.shape)
        new_det = _logdet(new_cov)
        if new_det >= det:
            break
        support, location, cov, det = new, new_loc, new_cov, new_det
    return det, location, cov, support


def _random_start(X: np.ndarray, h: int, rng: np.random.Generator) -> np.ndarray:
    """FastMCD start: a random (p+1)-subset (grown while singular), then its h closest points."""
    n, p = X.shape
    order = rng.permutation(n)
    size = min(p + 1, n)
    while True:
        sub = X[order[:size]]
        cov = np.cov(sub, rowvar=False, bias=True).reshape(p, p)
        if np.isfinite(_logdet(cov)) or size >= n:
            break
        size += 1
    dist = _cstep_distances(X, sub.mean(axis=0), cov)
    return np.sort(np.argpartition(dist, h - 1)[:h])


def _best_candidates(
    X: np.ndarray,
    h: int,
    starts: Sequence[np.ndarray | None],
    rng: np.random.Generator,
    iters: int,
) -> list[_Estimate]:
    """C-steps from each start (a support, or None for a random start), best determinant first."""
    results = []
    for start in starts:
        support = _random_start(X, h, rng) if start is None else start
        results.append(_c_steps(X, support, h, iters))
    results.sort(key=lambda r: r[0])
    return results


def _supports_in(X: np.ndarray, h: int, estimates: Sequence[_Estimate]) -> list[np.ndarray]:
    """The h points of X closest under each (location, covariance) estimate."""
    out = []
    for _, loc, cov, _ in estimates:
        dist = _cstep_distances(X, loc, cov)
        out.append(np.sort(np.argpartition(dist, h - 1)[:h]))
    return out


def fast_mcd(
    X: np.ndarray, h: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw MCD estimate (location, covariance, support mask) by FastMCD.

    Rousseeuw & Van Driessen (1999): many random (p+1)-subset starts, two C-steps each, the ten
    lowest determinants iterated to convergence. For n > 600 the starts run on up to five
    disjoint subsets of ~300 points, are pooled on a merged subset of at most 1500 points, then
    finished on all data (scikit-learn's ``fast_mcd`` uses the same layout and numbers).
    One feature: exact univariate MCD (the contiguous h-window of least variance).
    """
    n, p = X.shape
    if p == 1:
        return _univariate_mcd(X[:, 0], h)
    n_sub = min(5, n // 300)
    if n > 600 and n // n_sub > 2 * (p + 1):
        perm = rng.permutation(n)
        size = n // n_sub
        candidates = []
        for s in range(n_sub):
            sub = X[perm[s * size : (s + 1) * size]]
            h_sub = int(math.ceil(size * h / n))
            found = _best_candidates(sub, h_sub, [None] * (500 // n_sub), rng, 2)
            candidates.extend(found[:10])
        merged = X[rng.permutation(n)[: min(1500, n)]]
        h_merged = int(math.ceil(merged.shape[0] * h / n))
        starts = _supports_in(merged, h_merged, candidates)
        candidates = _best_candidates(merged, h_merged, starts, rng, 2)[:10]
    else:
        candidates = _best_candidates(X, h, [None] * 500, rng, 2)[:10]
    finals = _best_candidates(X, h, _supports_in(X, h, candidates), rng, 100)
    _, location, cov, support = finals[0]
    mask = np.zeros(n, dtype=bool)
    mask[support] = True
    return location, cov, mask


def _univariate_mcd(x: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(x, kind="stable")
    xs = x[order]
    c1 = np.concatenate([[0.0], np.cumsum(xs)])
    c2 = np.concatenate([[0.0], np.cumsum(xs * xs)])
    s1 = c1[h:] - c1[:-h]
    var = (c2[h:] - c2[:-h]) / h - (s1 / h) ** 2
    start = int(np.argmin(var))
    mask = np.zeros(x.shape[0], dtype=bool)
    mask[order[start : start + h]] = True
    return np.array([s1[start] / h]), np.array([[max(var[start], 0.0)]]), mask


def mcd_reweight(
    X: np.ndarray, raw_support: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MinCovDet's steps after FastMCD: scale the raw covariance by the consistency factor for
    alpha = h/N, keep the points whose squared distance is below the chi2(D) 97.5 % quantile,
    and return their mean, their covariance times the factor for alpha = 0.975, and the mask."""
    n, p = X.shape
    raw_loc, raw_cov = ml_covariance(X[raw_support])
    raw_cov = raw_cov * _consistency_factor(p, raw_support.sum() / n)
    raw_dist = squared_mahalanobis(X, raw_loc, linalg.pinvh(raw_cov))
    mask = raw_dist < chi2(p).isf(0.025)
    location, cov = ml_covariance(X[mask])
    return location, cov * _consistency_factor(p, 1 - 0.025), mask
