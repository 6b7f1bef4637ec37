"""Scorers against plainly written brute-force references, sklearn, and the toy cases that show
why each method exists (rescaling balances domains; MCD resists outliers)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from monitor.errors import PackageError
from monitor.model.scoring import (
    SCORER_NAMES,
    DomainwiseMahalanobisScorer,
    KNNScorer,
    MahalanobisScorer,
    RescaledKNNScorer,
    coreset_subsample,
    scorer_by_name,
    scorer_from_arrays,
)

# ---------------------------------------------------------------------------------------------
# brute-force references: loops over pairs, no vectorisation, no shared code with the module


def ref_dist(a, b, metric):
    if metric == "cosine":
        cos = sum(x * y for x, y in zip(a, b, strict=True)) / (
            math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        )
        return (1.0 - cos) / 2.0
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def ref_knn(bank, queries, k, metric, skip=None):
    out = []
    for qi, q in enumerate(queries):
        d = sorted(
            ref_dist(q, y, metric) for j, y in enumerate(bank) if skip is None or j != skip[qi]
        )
        out.append(sum(d[:k]) / k)
    return np.array(out)


def ref_scales(bank, k):
    """c_j = mean distance to the k nearest OTHER references."""
    n = len(bank)
    return [sum(sorted(bank[j][i] for i in range(n) if i != j)[:k]) / k for j in range(n)]


def ref_rescaled(bank, queries, k, metric):
    n = len(bank)
    D = [[ref_dist(bank[a], bank[b], metric) for b in range(n)] for a in range(n)]
    c = ref_scales(D, k)
    return np.array([min(ref_dist(q, bank[j], metric) / c[j] for j in range(n)) for q in queries])


def ref_rescaled_loo(bank, k, metric):
    """Literal refit without each point."""
    out = []
    for i in range(len(bank)):
        rest = [y for j, y in enumerate(bank) if j != i]
        out.append(ref_rescaled(rest, [bank[i]], k, metric)[0])
    return np.array(out)


def domainwise_ref(X, domains, queries, k, metric, loo=False):
    """min over per-domain banks, each with K capped at bank size - 1 (size - 2 in LOO refits)."""
    banks = {d: [x for x, dd in zip(X, domains, strict=True) if dd == d] for d in set(domains)}
    if not loo:
        return np.array(
            [
                min(ref_rescaled(b, [q], min(k, len(b) - 1), metric)[0] for b in banks.values())
                for q in queries
            ]
        )
    out = []
    for i, (x, d) in enumerate(zip(X, domains, strict=True)):
        best = math.inf
        for dd, b in banks.items():
            if dd == d:
                rest = [
                    y
                    for j, (y, d2) in enumerate(zip(X, domains, strict=True))
                    if d2 == d and j != i
                ]
                best = min(best, ref_rescaled(rest, [x], min(k, len(rest) - 1), metric)[0])
            else:
                best = min(best, ref_rescaled(b, [x], min(k, len(b) - 1), metric)[0])
        out.append(best)
    return np.array(out)


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 5)) + 0.5
    Q = rng.standard_normal((7, 5)) + 0.5
    return X, Q


# ---------------------------------------------------------------------------------------------
# k-NN


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 3])
def test_knn_matches_brute_force(data, metric, k):
    X, Q = data
    s = KNNScorer(k=k, metric=metric).fit(X)
    np.testing.assert_allclose(s.score_samples(Q), ref_knn(X, Q, k, metric), rtol=1e-9, atol=1e-12)
    loo = s.loo_scores()
    np.testing.assert_allclose(loo, ref_knn(X, X, k, metric, skip=range(len(X))), rtol=1e-9)
    assert np.all(loo > 0)  # never compared with itself (that distance is 0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 4])
def test_rescaled_knn_matches_brute_force(data, metric, k):
    X, Q = data
    s = RescaledKNNScorer(k=k, metric=metric).fit(X)
    np.testing.assert_allclose(s.score_samples(Q), ref_rescaled(X, Q, k, metric), rtol=1e-9)
    loo = s.loo_scores()
    np.testing.assert_allclose(loo, ref_rescaled_loo(X, k, metric), rtol=1e-9)
    assert np.all(loo > 0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [2, 16])
def test_domainwise_matches_brute_force(metric, k):
    rng = np.random.default_rng(2)
    src = rng.standard_normal((25, 4))
    tgt = rng.standard_normal((6, 4)) * 2 + 3  # small bank: K capped at 5 (and 4 in LOO)
    X = np.vstack([src, tgt])
    dom = ["source"] * 25 + ["target"] * 6
    Q = rng.standard_normal((5, 4)) + 1
    s = RescaledKNNScorer(k=k, metric=metric, domainwise=True).fit(X, dom)
    np.testing.assert_allclose(s.score_samples(Q), domainwise_ref(X, dom, Q, k, metric), rtol=1e-9)
    np.testing.assert_allclose(
        s.loo_scores(), domainwise_ref(X, dom, None, k, metric, loo=True), rtol=1e-9
    )
    # the target bank's c_j use K = min(k, 5)
    D_t = [[ref_dist(a, b, metric) for b in tgt] for a in tgt]
    np.testing.assert_allclose(s.scales_[25:], ref_scales(D_t, min(k, 5)), rtol=1e-9)


def test_loo_rescaled_differs_from_keeping_fitted_scales():
    """LOO must also drop the point from its neighbours' c_j: a tight pair shows it."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((20, 2)) * 5
    X[1] = X[0] + 1e-3  # y_1 is y_0's nearest neighbour and makes c_0 tiny
    s = RescaledKNNScorer(k=2, metric="euclidean").fit(X)
    loo = s.loo_scores()
    # |x|^2 + |y|^2 - 2 x.y cancels for the 1e-3 pair: agree to 1e-6, not 1e-9
    np.testing.assert_allclose(loo, ref_rescaled_loo(X, 2, "euclidean"), rtol=1e-6)
    naive = min(np.linalg.norm(X[1] - X[j]) / s.scales_[j] for j in range(20) if j != 1)
    assert loo[1] < naive  # c_0 grows without y_1, so y_1's LOO score is smaller


def test_unknown_domains_join_the_source_bank(data):
    X, Q = data
    known = ["source"] * 26 + ["target"] * 4
    mixed = [None] * 26 + ["target"] * 4
    a = RescaledKNNScorer(k=3, domainwise=True).fit(X, known)
    b = RescaledKNNScorer(k=3, domainwise=True).fit(X, mixed)
    np.testing.assert_array_equal(a.score_samples(Q), b.score_samples(Q))
    c = RescaledKNNScorer(k=3, domainwise=True).fit(X)  # all unknown: one bank
    np.testing.assert_allclose(c.score_samples(Q), RescaledKNNScorer(k=3).fit(X).score_samples(Q))


def test_rescaling_puts_sparse_target_on_the_source_scale():
    """Dense source cluster, ~10 sparse target refs: plain k-NN scores normal target clips far
    higher than normal source clips; rescaling (pooled and domain-wise) brings them together."""
    rng = np.random.default_rng(4)
    src = rng.normal(0.0, 0.1, (300, 2))
    tgt = rng.normal(0.0, 1.0, (10, 2)) + [8.0, 8.0]
    X = np.vstack([src, tgt])
    dom = ["source"] * 300 + ["target"] * 10
    q_src = rng.normal(0.0, 0.1, (200, 2))
    q_tgt = rng.normal(0.0, 1.0, (200, 2)) + [8.0, 8.0]
    ratio = {}
    for name, s in {
        "knn": KNNScorer(k=1, metric="euclidean").fit(X),
        "pooled": RescaledKNNScorer(k=16, metric="euclidean").fit(X),
        "domainwise": RescaledKNNScorer(k=16, metric="euclidean", domainwise=True).fit(X, dom),
    }.items():
        ratio[name] = np.median(s.score_samples(q_tgt)) / np.median(s.score_samples(q_src))
    assert ratio["knn"] > 5
    assert 1 / 3 < ratio["domainwise"] < 3
    assert ratio["pooled"] < 3  # pooled c_j of target refs include far source refs: scores shrink
    # an anomaly far from both clusters stays far above both normal score ranges
    s = RescaledKNNScorer(k=16, metric="euclidean", domainwise=True).fit(X, dom)
    anomaly = s.score_samples(np.array([[4.0, -4.0]]))[0]
    assert anomaly > 3 * max(np.median(s.score_samples(q_src)), np.median(s.score_samples(q_tgt)))


def test_duplicates_do_not_divide_by_zero():
    X = np.vstack([np.ones((5, 3)), np.random.default_rng(5).standard_normal((10, 3))])
    s = RescaledKNNScorer(k=3, metric="euclidean").fit(X)
    assert np.all(s.scales_ > 0)
    assert np.all(np.isfinite(s.score_samples(X)))
    assert s.score_samples(np.ones((1, 3)))[0] == 0.0


def test_chunking_gives_the_same_scores(monkeypatch, data):
    from monitor.model.scoring import distances

    X, Q = data
    dom = domains_for(30, 8)
    scorers = [
        scorer_by_name(name, k=3) for name in ("knn", "rescaled_knn", "rescaled_knn_domainwise")
    ]
    unchunked = [(s.fit(X, dom).score_samples(Q), s.loo_scores()) for s in scorers]
    monkeypatch.setattr(distances, "_CHUNK_ENTRIES", 40)  # one row per chunk
    for s, (scores, loo) in zip(scorers, unchunked, strict=True):
        s.fit(X, dom)
        np.testing.assert_allclose(s.score_samples(Q), scores, rtol=1e-12)
        np.testing.assert_allclose(s.loo_scores(), loo, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Mahalanobis


def test_mahalanobis_ml_matches_sklearn():
    from sklearn.covariance import EmpiricalCovariance

    rng = np.random.default_rng(6)
    X = rng.standard_normal((60, 4)) @ rng.standard_normal((4, 4))
    Q = rng.standard_normal((10, 4)) * 2
    s = MahalanobisScorer().fit(X)
    sk = EmpiricalCovariance().fit(X)
    np.testing.assert_allclose(s.score_samples(Q), sk.mahalanobis(Q), rtol=1e-9)
    assert s.ridge_ == 0.0


def test_mahalanobis_ml_loo_equals_refits():
    from sklearn.covariance import EmpiricalCovariance

    rng = np.random.default_rng(7)
    X = rng.standard_normal((25, 3)) @ rng.standard_normal((3, 3))
    loo = MahalanobisScorer().fit(X).loo_scores()
    for i in range(len(X)):
        rest = np.delete(X, i, axis=0)
        ref = EmpiricalCovariance().fit(rest).mahalanobis(X[i : i + 1])[0]
        assert loo[i] == pytest.approx(ref, rel=1e-9)
    assert np.all(loo > MahalanobisScorer().fit(X).score_samples(X))  # out-of-sample is farther


def test_mahalanobis_singular_uses_documented_ridge_and_exact_loo():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((6, 10))  # N <= D: singular covariance
    s = MahalanobisScorer().fit(X)
    cov = np.cov(X, rowvar=False, bias=True)
    ridge = 1e-6 * np.trace(cov) / 10
    assert s.ridge_ == pytest.approx(ridge)
    q = rng.standard_normal((3, 10))
    P = np.linalg.inv(cov + ridge * np.eye(10))
    ref = [(x - X.mean(0)) @ P @ (x - X.mean(0)) for x in q]
    np.testing.assert_allclose(s.score_samples(q), ref, rtol=1e-6)
    loo = s.loo_scores()
    for i in range(6):
        rest = np.delete(X, i, axis=0)
        c = np.cov(rest, rowvar=False, bias=True) + ridge * np.eye(10)
        e = X[i] - rest.mean(0)
        assert loo[i] == pytest.approx(e @ np.linalg.solve(c, e), rel=1e-6)


def _domainwise_reference(X, dom, q):
    """Straight from the definition: pooled within-domain ML covariance, min over domain means."""
    dom = np.asarray(dom)
    means = {d: X[dom == d].mean(0) for d in set(dom)}
    E = np.vstack([X[dom == d] - means[d] for d in means])
    P = np.linalg.inv(E.T @ E / len(X))
    return np.array([min((x - m) @ P @ (x - m) for m in means.values()) for x in q])


def test_domainwise_mahalanobis_matches_definition_and_loo_equals_refits():
    rng = np.random.default_rng(11)
    X = np.vstack([rng.standard_normal((30, 4)), rng.standard_normal((5, 4)) + 4.0])
    dom = ["source"] * 30 + ["target"] * 5
    s = DomainwiseMahalanobisScorer().fit(X, dom)
    q = rng.standard_normal((7, 4)) * 2
    np.testing.assert_allclose(s.score_samples(q), _domainwise_reference(X, dom, q), rtol=1e-9)
    loo = s.loo_scores()
    for i in range(len(X)):
        keep = np.arange(len(X)) != i
        ref = _domainwise_reference(X[keep], np.asarray(dom)[keep], X[i : i + 1])[0]
        assert loo[i] == pytest.approx(ref, rel=1e-9)


def test_domainwise_mahalanobis_scores_target_normals_like_source_normals():
    # The target domain sits far from the source one (another speed): a pooled Gaussian puts
    # the few target normals in its tail; measuring from the nearest domain mean does not.
    rng = np.random.default_rng(12)
    X = np.vstack([rng.standard_normal((200, 3)), rng.standard_normal((10, 3)) + [6, 0, 0]])
    dom = ["source"] * 200 + ["target"] * 10
    src, tgt = rng.standard_normal((50, 3)), rng.standard_normal((50, 3)) + [6, 0, 0]
    dw = DomainwiseMahalanobisScorer().fit(X, dom)
    pooled = MahalanobisScorer().fit(X)
    assert np.median(dw.score_samples(tgt)) < 2 * np.median(dw.score_samples(src))
    assert np.median(pooled.score_samples(tgt)) > 5 * np.median(pooled.score_samples(src))


def test_domainwise_mahalanobis_merges_a_single_target_clip_into_source():
    rng = np.random.default_rng(13)
    X = rng.standard_normal((20, 3))
    s = DomainwiseMahalanobisScorer().fit(X, ["source"] * 19 + ["target"])
    assert s.locations_.shape == (1, 3) and not s.domains_.any()


def contaminated(n, p, seed, frac=0.2, shift=6.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) @ np.diag(np.linspace(1.0, 2.0, p))
    n_out = int(frac * n)
    X[:n_out] += shift
    return X, n_out


@pytest.mark.parametrize(("n", "p", "seed"), [(300, 3, 0), (800, 4, 1), (150, 6, 2)])
def test_robust_matches_sklearn_mincovdet(n, p, seed):
    from sklearn.covariance import MinCovDet

    X, _ = contaminated(n, p, seed)
    s = MahalanobisScorer(covariance="robust", random_state=seed).fit(X)
    sk = MinCovDet(random_state=seed).fit(X)
    # two FastMCD searches may end in neighbouring optima that differ by a point or two
    assert np.mean(s.support_ == sk.support_) >= 0.97
    ours, theirs = s.score_samples(X), sk.mahalanobis(X)
    rel = np.abs(ours - theirs) / theirs
    assert np.median(rel) < 0.03 and rel.max() < 0.2
    assert spearmanr(ours, theirs)[0] > 0.995
    np.testing.assert_allclose(s.location_, sk.location_, atol=0.1)

    def raw_logdet(support):
        return np.linalg.slogdet(np.cov(X[support], rowvar=False, bias=True))[1]

    # FastMCD is a search: ours must find a determinant at least as small (within a hair)
    assert raw_logdet(s.raw_support_) <= raw_logdet(sk.raw_support_) + 0.01


@pytest.mark.parametrize(("n", "p", "seed"), [(300, 3, 0), (150, 6, 2)])
def test_robust_reweighting_equals_sklearn_from_the_same_raw_support(n, p, seed):
    """Given sklearn's raw MCD support, the consistency correction and reweighting reproduce
    MinCovDet's final location, covariance and support to rounding."""
    from sklearn.covariance import MinCovDet

    from monitor.model.scoring.mcd import mcd_reweight

    X, _ = contaminated(n, p, seed)
    sk = MinCovDet(random_state=seed).fit(X)
    location, covariance, support = mcd_reweight(X, sk.raw_support_)
    assert np.array_equal(support, sk.support_)
    np.testing.assert_allclose(location, sk.location_, rtol=1e-10)
    np.testing.assert_allclose(covariance, sk.covariance_, rtol=1e-10)


def test_robust_resists_twenty_percent_outliers_where_ml_does_not():
    X, n_out = contaminated(400, 3, 9)
    robust = MahalanobisScorer(covariance="robust").fit(X)
    ml = MahalanobisScorer().fit(X)
    assert np.linalg.norm(robust.location_) < 0.3
    assert np.linalg.norm(ml.location_) > 1.5
    assert not robust.support_[:n_out].any()  # every outlier excluded
    r, m = robust.score_samples(X), ml.score_samples(X)
    # robust: every outlier scores above every inlier; ML: the outliers hide (masking)
    assert r[:n_out].min() > r[n_out:].max()
    assert m[:n_out].min() < m[n_out:].max()


def test_robust_univariate_is_exact_mcd():
    x = np.concatenate([np.linspace(-1, 1, 80), [10, 11, 12, 13, 14] * 4])[:, None]
    s = MahalanobisScorer(covariance="robust").fit(x)
    h = math.ceil((len(x) + 2) / 2)
    xs = np.sort(x[:, 0])
    best = min(range(len(xs) - h + 1), key=lambda i: np.var(xs[i : i + h]))
    assert set(np.flatnonzero(s.raw_support_)) == set(
        np.flatnonzero((x[:, 0] >= xs[best]) & (x[:, 0] <= xs[best + h - 1]))
    )


# ---------------------------------------------------------------------------------------------
# every scorer


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_higher_score_means_more_anomalous(name):
    rng = np.random.default_rng(12)
    X, Q = 3 + 0.3 * rng.standard_normal((30, 5)), 3 + 0.3 * rng.standard_normal((10, 5))
    far = np.array([[3.0, -3.0, 3.0, -3.0, 3.0]])  # far in both direction and distance
    s = scorer_by_name(name).fit(X, domains_for(30))
    assert s.score_samples(far)[0] > s.score_samples(Q).max()


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_loo_is_positive_and_never_self(name, data):
    X, _ = data
    s = scorer_by_name(name).fit(X, domains_for(30))
    loo = s.loo_scores()
    assert loo.shape == (30,) and np.all(loo > 0)
    if "knn" in name:  # in-sample every bank point finds itself at distance 0
        # (whitened coordinates: sqrt of a rounding-level |q|^2 + |y|^2 - 2 q.y, ~1e-8)
        atol = 1e-6 if name == "mahalanobis_knn" else 1e-12
        np.testing.assert_allclose(s.score_samples(X), 0.0, atol=atol)


# ---------------------------------------------------------------------------------------------
# partial_fit, persistence, registry


def domains_for(n, n_target=5):
    return ["source"] * (n - n_target) + ["target"] * n_target


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_partial_fit_equals_fit_on_concatenation(name, data):
    X, Q = data
    params = {} if name.startswith("mahal") else {"k": 3}
    whole = scorer_by_name(name, **params).fit(X, domains_for(20, 4) + domains_for(10, 4))
    part = scorer_by_name(name, **params).fit(X[:20], domains_for(20, 4))
    part.partial_fit(X[20:], domains_for(10, 4))
    np.testing.assert_allclose(part.score_samples(Q), whole.score_samples(Q), rtol=1e-9)


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_round_trip_through_npz(name, data, tmp_path):
    X, Q = data
    s = scorer_by_name(name).fit(X, domains_for(30))
    arrays = s.to_arrays()
    assert all(a.dtype.kind != "O" for a in arrays.values())
    np.savez(tmp_path / "s.npz", **arrays)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        loaded = scorer_from_arrays(z)
    assert type(loaded) is type(s) and loaded.name == name
    np.testing.assert_array_equal(loaded.score_samples(Q), s.score_samples(Q))
    np.testing.assert_array_equal(loaded.loo_scores(), s.loo_scores())


def test_kind_may_be_json_bytes(data):
    X, Q = data
    arrays = KNNScorer(k=2).fit(X).to_arrays()
    arrays["kind"] = np.frombuffer(b'"knn"', dtype=np.uint8)
    expected = KNNScorer(k=2).fit(X).score_samples(Q)
    np.testing.assert_array_equal(scorer_from_arrays(arrays).score_samples(Q), expected)


def test_bad_arrays_name_the_key(data):
    X, _ = data
    arrays = RescaledKNNScorer(k=3).fit(X).to_arrays()
    for key in ("kind", "bank", "scales", "k"):
        broken = dict(arrays)
        del broken[key]
        with pytest.raises(PackageError, match=repr(key)):
            scorer_from_arrays(broken)
    with pytest.raises(PackageError, match="unknown"):
        scorer_from_arrays({**arrays, "kind": np.array("nope")})
    with pytest.raises(PackageError, match="'scales'"):
        scorer_from_arrays({**arrays, "scales": arrays["scales"][:-1]})
    with pytest.raises(PackageError, match="object"):
        scorer_from_arrays({**arrays, "bank": np.array([None, 1], dtype=object)})
    with pytest.raises(PackageError, match="does not match"):
        scorer_from_arrays({**arrays, "domainwise": np.array(True)})


def test_scorer_by_name_registry():
    assert isinstance(scorer_by_name("knn", k=5), KNNScorer)
    assert scorer_by_name("rescaled_knn_domainwise").domainwise is True
    assert scorer_by_name("mahalanobis_robust").covariance == "robust"
    with pytest.raises(ValueError, match="unknown scorer 'foo'.*knn"):
        scorer_by_name("foo")
    with pytest.raises(ValueError, match="fixes"):
        scorer_by_name("rescaled_knn", domainwise=True)
    with pytest.raises(ValueError, match="bad parameters"):
        scorer_by_name("knn", kk=3)


# ---------------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_bad_inputs(name, data):
    X, _ = data
    s = scorer_by_name(name)
    with pytest.raises(ValueError, match="not fitted"):
        s.score_samples(X)
    with pytest.raises(ValueError, match="2-D.*x\\[None, :\\]"):
        s.fit(X[0])
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite.*row 3, col 2"):
        s.fit(bad)
    with pytest.raises(ValueError, match="real numbers"):
        s.fit(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="domains has 2 entries"):
        s.fit(X, ["source", "target"])
    with pytest.raises(ValueError, match=r"domains\[1\] is 'tgt'; expected 'source', 'target'"):
        s.fit(X, ["source", "tgt"] + ["source"] * 28)
    s.fit(X)
    with pytest.raises(ValueError, match="3 features but the scorer was fitted on 5"):
        s.score_samples(X[:, :3])
    with pytest.raises(ValueError, match="2-D"):
        s.score_samples(X[0])


def test_too_few_samples_for_k():
    X = np.random.default_rng(0).standard_normal((5, 3))
    with pytest.raises(ValueError, match="k\\+1 = 6 embeddings.*got 5"):
        KNNScorer(k=5).fit(X)
    with pytest.raises(ValueError, match="k\\+2 = 18 embeddings.*got 5"):
        RescaledKNNScorer().fit(X)
    with pytest.raises(ValueError, match="at least 3 target embeddings"):
        RescaledKNNScorer(domainwise=True).fit(X, ["source"] * 3 + ["target"] * 2)
    with pytest.raises(ValueError, match="h = 2 <= D = 3"):
        MahalanobisScorer(covariance="robust", support_fraction=0.5).fit(X)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        KNNScorer(k=0)
    with pytest.raises(ValueError, match="metric must be one of"):
        KNNScorer(metric="manhattan")


def test_zero_vector_with_cosine_is_rejected(data):
    X, _ = data
    s = KNNScorer().fit(X)
    with pytest.raises(ValueError, match="row 0 is all zeros"):
        s.score_samples(np.zeros((1, 5)))


# ---------------------------------------------------------------------------------------------
# coreset


def test_coreset_is_greedy_k_center():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((200, 3))
    idx = coreset_subsample(X, 20, seed=3, projection_dim=None)
    assert len(set(idx.tolist())) == 20
    # each pick is the point farthest from the ones before it (brute force)
    for t in range(1, 20):
        d = [min(np.linalg.norm(X[i] - X[j]) for j in idx[:t]) for i in range(200)]
        assert d[idx[t]] == pytest.approx(max(d))


def test_coreset_keeps_rare_modes_and_handles_edges():
    rng = np.random.default_rng(11)
    X = np.vstack([rng.normal(0, 0.1, (500, 300)), rng.normal(0, 0.1, (3, 300)) + 5])
    idx = coreset_subsample(X, 10)  # random projection to 128 dims
    assert np.any(idx >= 500)  # the 3-point mode survives
    assert np.array_equal(coreset_subsample(X[:5], 10), np.arange(5))
    dup = np.ones((10, 2))
    assert len(set(coreset_subsample(dup, 4).tolist())) == 4
    with pytest.raises(ValueError, match="positive integer"):
        coreset_subsample(X, 0)


# ---------------------------------------------------------------------------------------------
# runtime boundary


def test_module_imports_only_numpy_and_scipy():
    package = Path(__file__).resolve().parents[1] / "monitor" / "model" / "scoring"
    roots = set()
    for src in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots.add(node.module.split(".")[0])
    third_party = roots - {"__future__", "json", "math", "abc", "collections", "typing"}
    assert third_party <= {"numpy", "scipy", "monitor"}
