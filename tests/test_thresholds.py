"""Gamma-fit (DCASE baseline) and percentile thresholds, and the Calibration record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from monitor.errors import PackageError
from monitor.model.scoring import KNNScorer
from monitor.model.thresholds import (
    Calibration,
    calibrate,
    fit_gamma,
    gamma_threshold,
    percentile_threshold,
)


def test_gamma_threshold_recovers_a_known_gamma_quantile():
    """Three free parameters: a shifted gamma (loc = 1) is fitted, not forced to loc = 0."""
    true = stats.gamma(2.0, loc=1.0, scale=0.5)
    x = true.rvs(size=5000, random_state=np.random.default_rng(0))
    t = gamma_threshold(x, q=0.9)
    assert t == pytest.approx(true.ppf(0.9), rel=0.03)
    a, loc, scale = fit_gamma(x)
    assert loc == pytest.approx(1.0, abs=0.15)  # a loc-fixed fit could not get this
    fresh = true.rvs(size=20000, random_state=np.random.default_rng(1))
    assert np.mean(fresh > t) == pytest.approx(0.1, abs=0.015)


def test_gamma_threshold_is_the_baseline_call():
    x = np.random.default_rng(2).gamma(3.0, 2.0, size=300)
    shape_hat, loc_hat, scale_hat = stats.gamma.fit(x)
    expected = stats.gamma.ppf(q=0.9, a=shape_hat, loc=loc_hat, scale=scale_hat)
    assert gamma_threshold(x) == pytest.approx(expected, rel=1e-12)
    assert gamma_threshold(x, q=0.95) > gamma_threshold(x, q=0.9)


def test_percentile_threshold_by_hand():
    scores = np.arange(1.0, 11.0)  # 1..10: position 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9)
    assert percentile_threshold(scores, 0.9) == pytest.approx(9.1)
    assert percentile_threshold(scores, 1.0) == 10.0
    assert percentile_threshold(scores[::-1], 0.5) == pytest.approx(5.5)


@pytest.mark.parametrize("fn", [gamma_threshold, percentile_threshold])
def test_degenerate_inputs_raise_clear_errors(fn):
    with pytest.raises(ValueError, match="at least 2 scores.*got 1"):
        fn([1.0])
    with pytest.raises(ValueError, match=r"scores\[2\] is nan"):
        fn([1.0, 2.0, np.nan, 3.0])
    with pytest.raises(ValueError, match=r"scores\[0\] is inf"):
        fn([np.inf, 2.0, 3.0])
    with pytest.raises(ValueError, match="1-D"):
        fn(np.ones((3, 2)))
    with pytest.raises(ValueError, match="real numbers"):
        fn(["a", "b"])
    with pytest.raises(ValueError, match="q must be in"):
        fn([1.0, 2.0, 3.0], q=0.0)


def test_gamma_rejects_all_equal_scores_and_q_one():
    with pytest.raises(ValueError, match="all 5 scores equal 0.3"):
        gamma_threshold([0.3] * 5)
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\)"):
        gamma_threshold([1.0, 2.0, 3.0], q=1.0)


def test_calibrate_on_leave_one_out_knn_scores():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 8))
    loo = KNNScorer(k=1, metric="euclidean").fit(X).loo_scores()
    cal = calibrate(loo, "gamma", 0.9)
    assert cal.method == "gamma" and cal.n == 400 and set(cal.params) == {"a", "loc", "scale"}
    assert cal.threshold == pytest.approx(gamma_threshold(loo, 0.9))
    assert 0.05 < np.mean(cal.is_anomalous(loo)) < 0.15  # ~10 % of normal clips flagged
    pct = calibrate(loo, "percentile", 0.9)
    assert pct.threshold == pytest.approx(np.quantile(loo, 0.9)) and pct.params == {}


def test_normalise_and_decide():
    cal = Calibration(method="percentile", q=0.9, threshold=2.0, params={}, n=10)
    np.testing.assert_allclose(cal.normalise([1.0, 2.0, 5.0]), [0.5, 1.0, 2.5])
    assert cal.normalise(3.0) == 1.5
    assert cal.is_anomalous(2.0) is False  # strictly above, as the baseline decides
    assert cal.is_anomalous(2.0000001) is True
    np.testing.assert_array_equal(cal.is_anomalous(np.array([1.0, 3.0])), [False, True])


def test_calibration_json_round_trip():
    cal = calibrate(np.random.default_rng(4).gamma(2.0, 1.0, 200), "gamma", 0.9)
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal


def test_calibration_from_dict_names_the_bad_key():
    good = {"method": "gamma", "q": 0.9, "threshold": 1.5, "params": {"a": 2.0}, "n": 3}
    assert Calibration.from_dict(good).threshold == 1.5
    for key in ("method", "q", "threshold"):
        with pytest.raises(PackageError, match=repr(key)):
            Calibration.from_dict({k: v for k, v in good.items() if k != key})
    cases = [
        ({"method": "median"}, "'method'"),
        ({"q": 1.5}, "'q'"),
        ({"threshold": -1.0}, "'threshold'"),
        ({"threshold": "1.0"}, "'threshold'"),
        ({"params": {"a": "x"}}, "'a'"),
        ({"n": -2}, "'n'"),
        ({"extra": 1}, "unknown keys"),
    ]
    for change, match in cases:
        with pytest.raises(PackageError, match=match):
            Calibration.from_dict({**good, **change})
    with pytest.raises(PackageError, match="JSON object"):
        Calibration.from_dict([1, 2])


def test_calibrate_refuses_non_positive_thresholds_and_unknown_methods():
    with pytest.raises(ValueError, match="positive threshold"):
        calibrate(-np.arange(1.0, 20.0), "percentile")
    with pytest.raises(ValueError, match="method must be one of"):
        calibrate([1.0, 2.0], "median")
    with pytest.raises(ValueError, match="threshold must be finite and positive"):
        Calibration(method="gamma", q=0.9, threshold=0.0)


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dcase2020_dev_id00"


def _log_spectrum_embedding(path: Path) -> np.ndarray:
    """A plain clip embedding: mean log power in 64 linear bands (numpy only, no front end)."""
    import soundfile as sf

    x, _ = sf.read(path, dtype="float32")
    frames = np.lib.stride_tricks.sliding_window_view(x, 1024)[::512] * np.hanning(1024)
    power = np.abs(np.fft.rfft(frames, axis=1))[:, :512] ** 2
    return np.log(power.reshape(len(power), 64, 8).mean(axis=2) + 1e-10).mean(axis=0)


def test_gamma_calibration_on_real_leave_one_out_scores():
    """75 real MIMII normal clips: LOO k-NN scores are skewed, positive data where the gamma
    fit must give a finite threshold flagging about 10 % of them (too few clips for an AUC)."""
    if not (DATA / "train").is_dir():
        pytest.skip(f"real recordings not found at {DATA} (shared data folder absent)")
    train = sorted((DATA / "train").glob("normal_*.wav"))
    X = np.stack([_log_spectrum_embedding(p) for p in train])
    from monitor.model.scoring import scorer_by_name

    for name in ("knn", "rescaled_knn"):  # (Mahalanobis in 64-D needs far more than 75 clips)
        loo = scorer_by_name(name, metric="euclidean").fit(X).loo_scores()
        cal = calibrate(loo, "gamma", 0.9)
        assert np.isfinite(cal.threshold) and cal.threshold > 0
        assert 0.02 <= np.mean(loo > cal.threshold) <= 0.2, name


def test_collapsed_gamma_fit_falls_back_to_the_empirical_quantile(caplog):
    # Heavy-tailed normal scores (as leave-one-out Mahalanobis distances of a small bank can
    # be): the free-location gamma fit collapses (shape -> 0, loc at the minimum) and its 0.9
    # quantile sits below almost every normal score: a daemon with it would alarm all the time.
    scores = np.random.default_rng(5).lognormal(5.0, 2.0, size=80)
    raw = gamma_threshold(scores, 0.9)
    assert np.mean(scores > raw) > 0.5  # the baseline's rule is really off here
    with caplog.at_level("WARNING", logger="monitor.model.thresholds"):
        cal = calibrate(scores, method="gamma", q=0.9)
    assert cal.method == "percentile" and cal.params == {}
    assert cal.threshold == pytest.approx(np.quantile(scores, 0.9))
    assert "gamma fit to 80 scores is off" in caplog.text


def test_well_behaved_gamma_scores_keep_the_gamma_fit():
    scores = stats.gamma.rvs(4.0, loc=1.0, scale=2.0, size=300, random_state=4)
    cal = calibrate(scores, method="gamma", q=0.9)
    assert cal.method == "gamma"
    assert cal.threshold == pytest.approx(gamma_threshold(scores, 0.9))


def test_gamma_threshold_above_nearly_every_normal_score_falls_back():
    # A bulk with a hard floor plus a few far scores (LOO scores of a 10-clip target bank): the
    # free-location fit comes out J-shaped and its 0.9 quantile sits above ~97 % of the normal
    # scores, so about half the anomalies would be missed.
    rng = np.random.default_rng(3)
    scores = np.r_[0.85 + np.abs(rng.normal(0, 0.2, 300)), rng.uniform(1.7, 2.3, 10)]
    raw = gamma_threshold(scores, 0.9)
    assert np.mean(scores > raw) < 0.04 and raw > 1.3 * np.quantile(scores, 0.9)
    cal = calibrate(scores, method="gamma", q=0.9)
    assert cal.method == "percentile"
    assert cal.threshold == pytest.approx(np.quantile(scores, 0.9))
