"""`mahalanobis_knn`: domain-wise rescaled k-NN in the pooled within-domain Mahalanobis metric."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.model.scoring import MahalanobisKNNScorer, MahalanobisScorer, RescaledKNNScorer


def two_domains(seed: int, n_source: int = 120, n_target: int = 10, p: int = 6):
    """Source and a few target clips of another condition: other mean AND other spread."""
    mix = np.random.default_rng(99).standard_normal((p, p)) / np.sqrt(p) + np.eye(p)
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((n_source, p)) @ mix
    tgt = 2.0 * rng.standard_normal((n_target, p)) @ mix + 8.0
    X = np.vstack([src, tgt])
    return X, ["source"] * n_source + ["target"] * n_target


def brute_force(X, domains, Q, k):
    """The definition, spelt out: whiten with the pooled within-domain covariance, then for each
    domain bank min_j ||q - y_j|| / c_j with c_j = mean distance to its k nearest others."""
    codes = np.array([d == "target" for d in domains])
    E = X.copy()
    for d in (False, True):
        E[codes == d] -= X[codes == d].mean(axis=0)
    P = np.linalg.inv(E.T @ E / len(X))
    L = np.linalg.cholesky(P)  # any W with W W^T = P gives the same distances
    Z, Zq = X @ L, Q @ L
    best = np.full(len(Q), np.inf)
    for d in (False, True):
        B = Z[codes == d]
        DB = np.linalg.norm(B[:, None] - B[None], axis=2)
        np.fill_diagonal(DB, np.inf)
        kk = min(k, len(B) - 1)
        c = np.sort(DB, axis=1)[:, :kk].mean(axis=1)
        DQ = np.linalg.norm(Zq[:, None] - B[None], axis=2)
        best = np.minimum(best, (DQ / c).min(axis=1))
    return best


@pytest.mark.parametrize("k", [3, 16])
def test_scores_match_the_definition(k):
    X, dom = two_domains(0)
    Q = np.random.default_rng(1).standard_normal((25, 6)) * 3 + 2
    s = MahalanobisKNNScorer(k=k).fit(X, dom)
    np.testing.assert_allclose(s.score_samples(Q), brute_force(X, dom, Q, k), rtol=1e-6)


def literal_refit_loo(X, dom, k=16):
    out = np.empty(len(X))
    for i in range(len(X)):
        keep = np.arange(len(X)) != i
        s = MahalanobisKNNScorer(k=k).fit(X[keep], [dom[j] for j in np.flatnonzero(keep)])
        out[i] = s.score_samples(X[i : i + 1])[0]
    return out


def test_loo_is_close_to_a_literal_refit_where_a_fixed_metric_is_biased_low():
    # The left-out clip's own share of the covariance shrinks its distances; the rank-one
    # update removes that. Only the other references' c_j keep the full-data metric.
    X, dom = two_domains(2, n_source=200, p=32)
    s = MahalanobisKNNScorer().fit(X, dom)
    loo, ref = s.loo_scores(), literal_refit_loo(X, dom)
    err = np.abs(loo / ref - 1)
    assert np.median(err) < 0.015 and np.quantile(err, 0.9) < 0.03
    q90 = lambda a: float(np.quantile(a, 0.9))  # noqa: E731  (what a 0.9 threshold sees)
    assert abs(q90(loo) / q90(ref) - 1) < 0.02
    fixed = RescaledKNNScorer(metric="euclidean", domainwise=True)
    fixed = fixed.fit(X @ s.whitening_, dom).loo_scores()
    assert q90(fixed) / q90(ref) < 0.98  # without the correction thresholds come out low


def test_target_normals_score_like_source_normals():
    # A pooled Gaussian puts the few target clips in its tail; this scorer does not, and a
    # clip off both conditions still scores far above either domain's normals.
    X, dom = two_domains(3)
    src_test, _ = two_domains(4, n_source=100, n_target=0)
    tgt_test = two_domains(5, n_source=1, n_target=100)[0][1:]
    s = MahalanobisKNNScorer().fit(X, dom)
    pooled = MahalanobisScorer().fit(X)
    med = lambda sc, Q: float(np.median(sc.score_samples(Q)))  # noqa: E731
    assert med(pooled, tgt_test) > 3 * med(pooled, src_test)
    assert med(s, tgt_test) < 1.5 * med(s, src_test)
    off = np.full((1, 6), 4.0)  # between the two conditions, near neither
    assert s.score_samples(off)[0] > 3 * max(med(s, tgt_test), med(s, src_test))


def test_too_few_target_clips_is_a_clear_error():
    X, dom = two_domains(6, n_target=2)
    with pytest.raises(ValueError, match="at least 3 target embeddings"):
        MahalanobisKNNScorer().fit(X, dom)


def test_two_operating_states_in_one_domain_leave_the_gap_between_them_anomalous():
    # A machine enrolled at two speeds as one domain: the normal sound has two modes. A single
    # Gaussian puts its mean (the most "normal" point) in the gap; k-NN does not.
    rng = np.random.default_rng(7)
    X = np.vstack([rng.standard_normal((80, 4)) - 5.0, rng.standard_normal((80, 4)) + 5.0])
    s = MahalanobisKNNScorer().fit(X)
    modes = np.vstack([rng.standard_normal((40, 4)) - 5.0, rng.standard_normal((40, 4)) + 5.0])
    gap = np.zeros((1, 4))
    assert s.score_samples(gap)[0] > 1.5 * np.quantile(s.score_samples(modes), 0.95)
    gauss = MahalanobisScorer().fit(X)
    assert gauss.score_samples(gap)[0] < np.median(gauss.score_samples(modes))
