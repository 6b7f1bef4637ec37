"""Decision thresholds on anomaly scores, fitted on normal (training, leave-one-out) scores.

``gamma_threshold`` is the DCASE 2023-2025 baseline's rule (nttcslab/dcase2023_task2_baseline_ae,
``fit_anomaly_score_distribution`` / ``calc_decision_threshold``): fit a gamma distribution with
shape, location and scale all free by ``scipy.stats.gamma.fit`` and take its ``q`` quantile
(q = 0.9 there). A clip is anomalous when its score is ABOVE the threshold (``score > t``).

``Calibration`` is what the model package stores and the daemon uses: it turns a raw score into a
normalised one (score / threshold), so 1.0 is the decision boundary for every machine.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from monitor.errors import PackageError

__all__ = [
    "METHODS",
    "Calibration",
    "calibrate",
    "fit_gamma",
    "gamma_threshold",
    "percentile_threshold",
]

METHODS = ("gamma", "percentile")

log = logging.getLogger(__name__)


def _scores(scores: ArrayLike, min_count: int = 2) -> np.ndarray:
    """Scores as a finite 1-D float64 array, or a ValueError saying what is wrong."""
    arr = np.asarray(scores)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"scores must be real numbers; got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise ValueError(f"scores must be 1-D; got shape {arr.shape}")
    if arr.size < min_count:
        raise ValueError(f"need at least {min_count} scores to fit a threshold; got {arr.size}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"scores[{i}] is {arr[i]}; every score must be finite")
    return arr


def _check_q(q: float, upper_inclusive: bool) -> float:
    ok = 0.0 < q <= 1.0 if upper_inclusive else 0.0 < q < 1.0
    if not ok:
        interval = "(0, 1]" if upper_inclusive else "(0, 1)"
        raise ValueError(f"q must be in {interval}; got {q!r}")
    return float(q)


def fit_gamma(scores: ArrayLike) -> tuple[float, float, float]:
    """(shape a, loc, scale) from ``scipy.stats.gamma.fit(scores)``, the baseline's exact call.

    Raises ValueError for fewer than 2 scores, non-finite scores, all-equal scores (no spread to
    fit: the optimiser fails or returns a degenerate distribution) or a failed fit.
    """
    arr = _scores(scores)
    if np.ptp(arr) == 0:
        raise ValueError(
            f"all {arr.size} scores equal {arr[0]}: a gamma distribution cannot be fitted "
            "(duplicated or silent training clips?)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # optimiser chatter on odd data
            a, loc, scale = stats.gamma.fit(arr)
    except (stats.FitError, ValueError, FloatingPointError) as exc:
        raise ValueError(f"gamma fit to {arr.size} scores failed: {exc}") from None
    params = (float(a), float(loc), float(scale))
    if not all(math.isfinite(v) for v in params) or a <= 0 or scale <= 0:
        raise ValueError(f"gamma fit to {arr.size} scores gave invalid parameters {params}")
    return params


def gamma_threshold(scores: ArrayLike, q: float = 0.9) -> float:
    """``scipy.stats.gamma.ppf(q, *scipy.stats.gamma.fit(scores))``: the DCASE baseline rule."""
    q = _check_q(q, upper_inclusive=False)
    a, loc, scale = fit_gamma(scores)
    threshold = float(stats.gamma.ppf(q, a, loc=loc, scale=scale))
    if not math.isfinite(threshold):
        raise ValueError(f"gamma quantile {q} is not finite for parameters {(a, loc, scale)}")
    return threshold


def percentile_threshold(scores: ArrayLike, q: float = 0.9) -> float:
    """The empirical ``q`` quantile (numpy's default linear interpolation); q = 1 is the max."""
    q = _check_q(q, upper_inclusive=True)
    return float(np.quantile(_scores(scores), q))


@dataclass(frozen=True)
class Calibration:
    """A fitted decision threshold and how it was obtained (JSON-serialisable).

    ``params``: gamma -> {"a", "loc", "scale"}; percentile -> {}. ``n``: number of scores fitted.
    """

    method: str
    q: float
    threshold: float
    params: dict[str, float] = field(default_factory=dict)
    n: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be finite and positive; got {self.threshold}")

    def normalise(self, scores: ArrayLike) -> np.ndarray | float:
        """score / threshold: 1.0 is the decision boundary, whatever the machine or scorer."""
        arr = np.asarray(scores, dtype=np.float64)
        out = arr / self.threshold
        return float(out) if out.ndim == 0 else out

    def is_anomalous(self, scores: ArrayLike) -> np.ndarray | bool:
        """score > threshold (the baseline's strict inequality)."""
        out = np.asarray(scores, dtype=np.float64) > self.threshold
        return bool(out) if out.ndim == 0 else out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of ``to_dict``; raises PackageError naming the missing or bad key."""
        if not isinstance(data, dict):
            raise PackageError(f"calibration must be a JSON object; got {type(data).__name__}")
        unknown = set(data) - {"method", "q", "threshold", "params", "n"}
        if unknown:
            raise PackageError(f"calibration has unknown keys {sorted(unknown)}")
        for key in ("method", "q", "threshold"):
            if key not in data:
                raise PackageError(f"calibration lacks the key {key!r}")
        method = data["method"]
        if method not in METHODS:
            raise PackageError(f"calibration 'method' is {method!r}; expected one of {METHODS}")
        q, threshold = _number(data, "q"), _number(data, "threshold")
        if not 0.0 < q <= 1.0:
            raise PackageError(f"calibration 'q' is {q}; expected a value in (0, 1]")
        if not threshold > 0:
            raise PackageError(f"calibration 'threshold' is {threshold}; it must be positive")
        params = data.get("params", {})
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise PackageError("calibration 'params' must be an object of numbers")
        n = data.get("n", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise PackageError(f"calibration 'n' is {n!r}; expected a non-negative integer")
        return cls(
            method=method,
            q=q,
            threshold=threshold,
            params={k: _number(params, k) for k in params},
            n=n,
        )


def _number(data: dict[str, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PackageError(f"calibration {key!r} is {value!r}; expected a finite number")
    return float(value)


def _gamma_tolerance(n: int, q: float) -> float:
    """How far the share of normal scores above a gamma threshold may be from 1 - q.

    Three binomial standard deviations of that share (sqrt(q (1 - q) / n)), and at least half of
    1 - q. Why this tight: a free-location fit to a bulk with a hard floor plus a few far scores
    (leave-one-out scores of a 10-clip target bank) comes out J-shaped, and its 0.9 quantile can
    sit above 97-100 % of the normal scores (measured on `mahalanobis_knn` LOO scores of the
    synthetic validation sets: 2.33 against an empirical 0.9 quantile of 1.29, half the
    anomalies missed). The old rule (0.15 absolute) let that through.
    """
    return max(3.0 * math.sqrt(q * (1.0 - q) / n), 0.5 * (1.0 - q))


def calibrate(scores: ArrayLike, method: str = "gamma", q: float = 0.9) -> Calibration:
    """Fit a threshold on normal scores (use leave-one-out scores for k-NN / Mahalanobis).

    ``gamma`` falls back to ``percentile`` (and logs a warning; the returned ``method`` says
    which was used) when the fitted quantile contradicts the scores it was fitted on: more or
    fewer than about 1 - q of them above it (``_gamma_tolerance``).

    The threshold must come out positive, because scores are normalised by dividing by it;
    every scorer in ``monitor.model.scoring`` yields non-negative scores.
    """
    arr = _scores(scores)
    if method == "gamma":
        q = _check_q(q, upper_inclusive=False)
        a, loc, scale = fit_gamma(arr)
        threshold = float(stats.gamma.ppf(q, a, loc=loc, scale=scale))
        params = {"a": a, "loc": loc, "scale": scale}
        exceed = float(np.mean(arr > threshold))
        if not math.isfinite(threshold) or abs(exceed - (1.0 - q)) > _gamma_tolerance(arr.size, q):
            # The free-location fit can collapse (shape -> 0, loc at the minimum) on small or
            # multi-modal banks; its quantile then flags most normal clips, or none. Say so and
            # use the empirical quantile, which is what the gamma fit is meant to smooth.
            log.warning(
                "gamma fit to %d scores is off (a=%.3g, loc=%.4g, scale=%.4g: %.0f%% of the "
                "normal scores exceed its %.2f quantile, expected %.0f%%); using the empirical "
                "quantile instead",
                arr.size, a, loc, scale, 100 * exceed, q, 100 * (1 - q),
            )  # fmt: skip
            method, threshold, params = "percentile", percentile_threshold(arr, q), {}
    elif method == "percentile":
        threshold = percentile_threshold(arr, q)
        params = {}
    else:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(
            f"{method} threshold is {threshold}; normalised scores (score / threshold) need a "
            "positive threshold"
        )
    return Calibration(method=method, q=float(q), threshold=threshold, params=params, n=arr.size)
