"""Operating conditions of a machine, and alarm thresholds fitted to a false-alarm budget.

A machine runs in several regimes (speeds, loads, products); DCASE's ``source`` and ``target``
domains are two of them. Each bank embedding carries the name of the condition it was enrolled
in, and each condition gets its own threshold, so that 1.0 (score / threshold of the condition a
window is closest to) is the boundary in every condition. Why per condition: one threshold
fitted on 300 clips of the main condition and 10 of a second flagged 20-80 % of the second
condition's normal clips (README), because its normal scores sit higher.

Why a budget and not the DCASE quantile: the DCASE threshold (gamma fit, 0.9 quantile) flags
about 10 % of normal clips by design. A daemon scores 3,600 windows an hour; a plant budgets
false alarms per week. `AlarmRule` turns a budget (``false_alarms_per_week``) and the alert rule
(N of the last M windows above the threshold, windows of ``window_seconds`` every
``hop_seconds``) into the per-window exceedance probability p the threshold must have:

- overlapping windows share audio, so consecutive window scores are strongly correlated. The
  rule counts windows less than one window length apart as one observation (fully dependent:
  the conservative end, it gives fewer chances to need) and windows a full window apart as
  independent, so N windows spanning (N - 1) hops hold k = 1 + floor((N - 1) hop / window)
  independent observations, and a false alarm needs k of them above the threshold in a row;
- windows of one recording are NOT independent even a window length apart: the state of the
  machine (and of its surroundings) that a take was recorded in moves all its scores together.
  Measured on log scores, between windows of one recording that share no audio (4 s windows
  4 hops apart): REAL MIMII ID 00, 30 held-out clips: rho = 0.80 (49 pairs); the SYNTHETIC
  pump streams of the false-alarm benchmark: 0.36. With rho, the k observations are an
  equicorrelated Gaussian (one shared take effect), and a false alarm needs all k above the
  threshold: P = E_z[Phi_bar((t - sqrt(rho) z) / sqrt(1 - rho))^k];
- a week holds 604800 / window such observations, so expected false alarms per week
  = (604800 / window) P, and t (p = Phi_bar(t)) solves P = budget window / 604800: for rho = 0
  p = (budget window / 604800)^(1/k); for rho -> 1, p -> budget window / 604800 (the rule's
  persistence buys nothing against a whole take that sounds unusual).

rho comes from the calibration scores themselves where recordings with several windows are
there (`within_recording_correlation`: windows one window length apart, `sonitor enroll`),
else `CORRELATION_PRIOR` (near the REAL measurement above; clips of one window each cannot
tell).

`ConditionCalibration.fit` then finds each condition's threshold for that p from the
normal scores of the bank, each from a scorer that did not see its recording
(`monitor.model.enroll.cross_validated_scores`: whole recordings held out in turn), grouped by
the condition each embedding's nearest OTHER
reference belongs to, exactly as a live window is matched):

- each condition's log scores are modelled as normal (a log-normal tail): its mean from its own
  scores; its spread sigma_c shrunk towards the pooled spread of all conditions with the weight
  of ``PRIOR_DOF`` scores (sigma_c^2 = (nu0 sigma_pool^2 + (n_c - 1) s_c^2) / (nu0 + n_c - 1)),
  so a 10-clip condition borrows its shape from the large one and its level from itself (the
  small-sample rule). Small conditions spread MORE than the pooled estimate on every synthetic
  set measured (s_c 0.37-0.59 against 0.25-0.37 in log units), hence not the pooled one alone;
- threshold_c = exp(mean_c + t_(nu)(1 - p) sigma_c sqrt(1 + 1/n_c)): the upper prediction
  bound of one new score (Student t with nu = nu0 + n_c - 1 degrees of freedom). What a small
  condition pays for being small: for p = 1.2e-4 (10 s windows every 1 s, rho = 0.75),
  t = 4.5 and sqrt(1 + 1/n) = 1.05 at n = 10 against 3.7 and 1.00 at n = 300 (a threshold
  about 1.5x higher at sigma 0.4). Where the small condition truly spreads 1.5x more than the
  large one, the shrunk spread lets it exceed about 4.5x as often as p (tests/test_conditions.py);
- the tail's shape from the scores themselves: log scores have heavier tails than a normal
  law. Measured on the three SYNTHETIC sets (900 held-out normal test clips, thresholds from
  the training clips' held-out scores; `benchmarks/alarm_calibration.py`), the log-normal
  quantiles at p = 0.01 / 0.003 / 0.001 had 1.7 / 3.0 / 6.7x p of the normal clips above them.
  So the pooled residuals (each condition's log scores standardised by its own mean and spread)
  get a Student t fitted by maximum likelihood (`tail_dof`; 6.4-18 degrees of freedom on those
  sets), and the threshold's distance from the mean, in spreads, is the larger of the normal
  one and that t's unit-variance quantile, times the small-sample factor above: 1.6 / 2.2 / 0x
  p on the same clips. It only ever raises a threshold (the DCASE 0.9 quantile stays as it
  was), and a calibration of fewer than `TAIL_MIN_SCORES` residuals keeps the normal shape. Below
  p = `TAIL_SHAPE_MIN_P` (0.001, the smallest p the clips could check) the ratio stays that of
  0.001: a t of 5 degrees of freedom extrapolated to p = 1.7e-5 (the demo's 4 s windows at a
  measured correlation 0.93) put the threshold 5x above the normal one, and the demo's fault,
  at 3x the normal threshold, under it. What the fit costs where the tail IS normal (200
  simulated calibrations each): the factor stays 1 in two of three, its 90th percentile is
  1.09 for 300 scores and 1.26 for 30 (a threshold up to about exp(0.26 z sigma) higher);
- never below the empirical (1 - p) quantile of the condition's own scores where there are
  enough of them (n p >= 5) to know it: a tail heavier than modelled raises the threshold.

Pure numpy: the daemon, enrolment, `sonitor score` and `sonitor evaluate` run this same code.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq
from scipy.stats import norm
from scipy.stats import t as student_t

from monitor.errors import PackageError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BURST_SECONDS",
    "DEFAULT_CONDITION",
    "DEFAULT_FALSE_ALARMS_PER_WEEK",
    "AlarmRule",
    "ConditionCalibration",
    "ConditionMatcher",
    "persistence_rule",
    "validate_condition_name",
]

WEEK_SECONDS = 7 * 24 * 3600.0
DEFAULT_FALSE_ALARMS_PER_WEEK = 1.0
DEFAULT_BURST_SECONDS = 2.0  # a foreign sound up to this long never raises an anomaly alarm
DEFAULT_CONDITION = "source"  # the condition of embeddings enrolled without a name
DCASE_Q = 0.9  # the DCASE baseline's decision quantile (offline decision files)
PRIOR_DOF = 10.0  # weight, in scores, of the pooled spread in each condition's spread
# window-to-window correlation of log scores within one recording where the calibration cannot
# measure it (REAL MIMII ID 00: 0.80, see above)
CORRELATION_PRIOR = 0.75
_MAX_CORRELATION = 0.99
CORRELATION_PRIOR_PAIRS = 10.0  # weight of the prior, in window pairs, against the measured one
_MIN_TAIL_COUNT = 5  # the empirical quantile is trusted with n p >= this many scores above it
# tail shape (`tail_dof`): residuals needed to fit it, and the range its degrees of freedom keep
# (4: the heaviest tail kept, variance finite; at 100 a t is a normal law to about 1 %)
TAIL_MIN_SCORES = 30
TAIL_MIN_DOF, TAIL_MAX_DOF = 4.0, 100.0
# the fitted shape is trusted down to this p (where held-out clips checked it); below it the
# threshold grows as a normal tail's from there: a t of few degrees of freedom extrapolated to
# p ~ 1e-5 (windows of highly correlated takes) put the quick demo's threshold 5x higher
TAIL_SHAPE_MIN_P = 1e-3
_CONDITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def validate_condition_name(name: str) -> str:
    """Condition names become metric label values and JSON keys: keep them short and plain."""
    if not isinstance(name, str) or not _CONDITION_RE.match(name):
        raise ValueError(
            f"invalid condition name {name!r}: use 1-32 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def persistence_rule(
    window_seconds: float, hop_seconds: float, burst_seconds: float = DEFAULT_BURST_SECONDS
) -> tuple[int, int]:
    """(N, M) such that a sound of at most ``burst_seconds`` can never raise an alarm.

    A burst of length b overlaps at most ceil((window + b) / hop) windows, so N is one more than
    that; M = N + 2 lets two windows dip below the threshold during a sustained fault. The price
    is delay: N hops of audio after the first window that crosses (about 13 s for 10 s windows
    every 1 s); a sustained change is still alarmed well within 20 s of its onset.
    """
    if window_seconds <= 0 or hop_seconds <= 0 or burst_seconds < 0:
        raise ValueError("window and hop must be positive and the burst length non-negative")
    n = math.ceil((window_seconds + burst_seconds) / hop_seconds - 1e-9) + 1
    return n, n + 2


@dataclass(frozen=True)
class AlarmRule:
    """The false-alarm budget and the alert rule it is spent on (see the module docstring)."""

    false_alarms_per_week: float = DEFAULT_FALSE_ALARMS_PER_WEEK
    window_seconds: float = 10.0
    hop_seconds: float = 1.0
    n_above: int = 1
    m_windows: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.false_alarms_per_week) and self.false_alarms_per_week > 0):
            raise ValueError(
                f"false_alarms_per_week must be positive; got {self.false_alarms_per_week!r}"
            )
        if not (self.window_seconds > 0 and self.hop_seconds > 0):
            raise ValueError("window_seconds and hop_seconds must be positive")
        if not 1 <= self.n_above <= self.m_windows:
            raise ValueError(f"need 1 <= N <= M; got N={self.n_above}, M={self.m_windows}")

    @property
    def independent_windows(self) -> int:
        """k: independent window observations that the N-of-M rule needs above the threshold."""
        span = (self.n_above - 1) * self.hop_seconds
        return 1 + int(math.floor(span / self.window_seconds + 1e-9))

    def window_exceedance(self, correlation: float = 0.0) -> float:
        """p: the probability of one normal window above the threshold that meets the budget,
        for a window-to-window ``correlation`` of log scores within one recording."""
        per_observation = self.false_alarms_per_week * self.window_seconds / WEEK_SECONDS
        k, rho = self.independent_windows, _check_correlation(correlation)
        if k == 1 or rho == 0.0:
            return min(per_observation ** (1.0 / k), 0.5)
        if _all_exceed(0.0, rho, k) <= per_observation:
            return 0.5
        t = brentq(lambda t: _all_exceed(t, rho, k) - per_observation, 0.0, 40.0, xtol=1e-10)
        return float(norm.sf(t))

    def false_alarms_per_week_at(self, p: float, correlation: float = 0.0) -> float:
        """The inverse: expected false alarm starts per week if a window exceeds with ``p``."""
        k, rho = self.independent_windows, _check_correlation(correlation)
        per_observation = p**k if rho == 0.0 else _all_exceed(float(norm.isf(p)), rho, k)
        return WEEK_SECONDS / self.window_seconds * per_observation

    def to_dict(self) -> dict[str, Any]:
        return {
            "false_alarms_per_week": self.false_alarms_per_week,
            "window_seconds": self.window_seconds,
            "hop_seconds": self.hop_seconds,
            "n_of_m": [self.n_above, self.m_windows],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> AlarmRule:
        if not isinstance(d, Mapping):
            raise PackageError(f"{where}: 'rule' must be an object")
        try:
            n, m = d["n_of_m"]
            return cls(
                float(d["false_alarms_per_week"]),
                float(d["window_seconds"]),
                float(d["hop_seconds"]),
                int(n),
                int(m),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"{where}: bad 'rule' {dict(d)!r} ({exc})") from None


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(96)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def _all_exceed(t: float, rho: float, k: int) -> float:
    """P(all k standard normals > t) when they share a common factor: correlation ``rho``."""
    if k == 1 or rho == 0.0:
        return float(norm.sf(t)) ** k
    cond = norm.sf((t - math.sqrt(rho) * _GH_NODES) / math.sqrt(1.0 - rho))
    return float(np.sum(_GH_WEIGHTS * cond**k))


def _check_correlation(rho: float) -> float:
    if not (math.isfinite(rho) and 0.0 <= rho <= _MAX_CORRELATION):
        raise ValueError(f"correlation must be in [0, {_MAX_CORRELATION}]; got {rho!r}")
    return float(rho)


def within_recording_correlation(
    logs: ArrayLike, recordings: ArrayLike, conditions: Sequence[str], lag: int = 1
) -> tuple[float, int]:
    """Correlation of the log scores of two windows of one recording ``lag`` rows apart,
    relative to the spread of their condition: the take effect the alert rule cannot average
    out. Each recording's rows must be in time order; enrolment cuts windows that share no
    audio (`embed_waveform`'s default stride is the window; acknowledged events keep windows
    one window length apart, `monitor.daemon.acks`), so one row apart is one window length
    apart, the distance the rule's k windows have (a smaller ``--stride-seconds`` overlaps
    windows and overstates it: the safe side). Returns (correlation, number of pairs); (0.0, 0)
    when there is no pair (clips of one window each).

    Why not a one-way analysis of variance over recordings: an enrolment recording of several
    minutes holds the machine's slow drift, so its windows differ as much as separate clips
    do, while the windows the alert rule needs together are seconds apart (on the benchmark's
    package: 0.0 that way; at one window length 0.36 on its held-out streams).
    """
    x = np.array(logs, dtype=np.float64)  # a copy: centred in place below
    rec = np.asarray(recordings)
    conds = np.asarray(list(conditions), dtype=str)
    if x.shape != rec.shape or x.shape != conds.shape or lag < 1:
        raise ValueError(f"{x.shape} scores, {rec.shape} recordings, {conds.shape} conditions")
    for c in np.unique(conds):
        x[conds == c] -= x[conds == c].mean()
    var = float(np.mean(x**2))
    order = np.argsort(rec, kind="stable")  # each recording's rows together, in time order
    rec, x = rec[order], x[order]
    same = rec[lag:] == rec[:-lag]  # row i and row i + lag belong to one recording
    n_pairs = int(np.sum(same))
    if n_pairs == 0 or not var > 0:
        return 0.0, 0
    cov = float(np.sum(x[:-lag][same] * x[lag:][same])) / n_pairs
    return float(min(max(cov / var, 0.0), _MAX_CORRELATION)), n_pairs


def shrunk_correlation(measured: float, pairs: int) -> float:
    """The measured correlation shrunk towards `CORRELATION_PRIOR` with the weight of
    `CORRELATION_PRIOR_PAIRS` pairs: a 5-minute enrolment of 10 s windows (29 pairs) counts
    about three times the prior; clips of one window each give the prior."""
    w = pairs / (pairs + CORRELATION_PRIOR_PAIRS)
    return float(w * measured + (1.0 - w) * CORRELATION_PRIOR)


def tail_dof(groups: Iterable[Sequence[float]]) -> float | None:
    """Degrees of freedom of a Student t fitted (maximum likelihood) to the pooled residuals of
    log scores, each group (a condition) standardised by its own mean and spread; groups of
    fewer than 5 scores are left out. None (a normal law) when fewer than `TAIL_MIN_SCORES`
    residuals remain or the fit finds no heavier tail than `TAIL_MAX_DOF` degrees of freedom."""
    parts = []
    for g in groups:
        x = np.asarray(g, dtype=np.float64)
        if x.size >= 5 and np.std(x) > 0:
            parts.append((x - x.mean()) / np.std(x, ddof=1))
    if not parts or sum(p.size for p in parts) < TAIL_MIN_SCORES:
        return None
    resid = np.concatenate(parts)
    dof, _, _ = student_t.fit(resid, floc=0.0)
    if not math.isfinite(dof) or dof >= TAIL_MAX_DOF:
        return None
    return float(max(dof, TAIL_MIN_DOF))


def tail_factor(p: float, dof: float | None) -> float:
    """How much farther than a normal law's (in spreads) the (1 - p) quantile of a unit-variance
    t with ``dof`` degrees of freedom lies; never below 1 (the tail shape only raises). Below
    `TAIL_SHAPE_MIN_P` the factor stays that of `TAIL_SHAPE_MIN_P`."""
    if dof is None or p >= 0.5:
        return 1.0
    p = max(p, TAIL_SHAPE_MIN_P)
    heavy = float(student_t.ppf(1.0 - p, dof)) * math.sqrt((dof - 2.0) / dof)
    return max(heavy / float(norm.isf(p)), 1.0)


class ConditionMatcher:
    """Which condition a window is closest to: that of its nearest bank embedding (cosine).

    Cheap next to the scorer (one [B, N] product per batch) and independent of the scorer, so
    every scorer gets the same matching offline and live.
    """

    def __init__(self, embeddings: ArrayLike, conditions: Sequence[str]) -> None:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or len(x) != len(conditions) or len(x) == 0:
            raise ValueError(f"{len(conditions)} conditions for embeddings of shape {x.shape}")
        self.names: tuple[str, ...] = tuple(sorted(set(conditions)))
        index = {c: i for i, c in enumerate(self.names)}
        self.codes = np.array([index[c] for c in conditions], dtype=np.int64)
        self._y = _unit_rows(x)

    def match(self, X: ArrayLike) -> np.ndarray:
        """Condition index (into ``names``) of each row of ``X`` [B, D]."""
        if len(self.names) == 1:
            return np.zeros(np.asarray(X).shape[0], dtype=np.int64)
        sims = _unit_rows(np.asarray(X, dtype=np.float32)) @ self._y.T
        return self.codes[np.argmax(sims, axis=1)]

    def match_names(self, X: ArrayLike) -> list[str]:
        return [self.names[i] for i in self.match(X)]

    def loo_match(self, chunk: int = 1024) -> np.ndarray:
        """Each bank embedding's condition as a live window would get it: by its nearest OTHER
        reference (a second recording of it is not in the bank)."""
        n = len(self._y)
        if len(self.names) == 1:
            return np.zeros(n, dtype=np.int64)
        out = np.empty(n, dtype=np.int64)
        for s in range(0, n, chunk):
            sims = self._y[s : s + chunk] @ self._y.T
            rows = np.arange(sims.shape[0])
            sims[rows, rows + s] = -np.inf
            out[s : s + chunk] = self.codes[np.argmax(sims, axis=1)]
        return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class ConditionStats:
    """One condition's part of a calibration: how many scores, their scale, its thresholds."""

    n: int
    scale: float  # geometric mean of its held-out scores
    sigma: float  # spread of their logs, shrunk towards the pooled spread
    threshold: float  # alarm threshold (raw score) for the calibration's rule
    dcase_threshold: float  # the 0.9-quantile threshold of offline DCASE decisions


@dataclass(frozen=True)
class ConditionCalibration:
    """Per-condition thresholds from held-out normal scores (``calibration.json``, format 2)."""

    conditions: Mapping[str, ConditionStats]
    sigma: float  # pooled std of log(score / condition scale)
    rule: AlarmRule
    tails: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # sorted log scores
    legacy_threshold: float | None = None  # a format-1 package: one threshold, no conditions
    extra: Mapping[str, Any] = field(default_factory=dict)
    # window-to-window correlation of log scores within a recording (`shrunk_correlation`) and
    # the window pairs that measured it (0: the prior alone)
    correlation: float = CORRELATION_PRIOR
    correlation_pairs: int = 0
    # Student t degrees of freedom of the log scores' tail (`tail_dof`); None: a normal law
    tail_dof: float | None = None

    # ----------------------------------------------------------------- fitting

    @classmethod
    def fit(
        cls,
        scores: ArrayLike,
        conditions: Sequence[str],
        rule: AlarmRule,
        names: Sequence[str] = (),
        recordings: ArrayLike | None = None,
    ) -> ConditionCalibration:
        """Fit from held-out normal scores and the condition each was matched to (live rule).

        ``names``: every condition of the bank; one that fewer than 2 scores were matched to
        takes the largest scale of the others (it cannot be estimated; too high is safe).
        ``recordings``: the recording each score's window came from (default: every score its
        own), for the within-recording correlation.
        """
        s = np.asarray(scores, dtype=np.float64)
        conds = list(conditions)
        if s.ndim != 1 or len(s) != len(conds):
            raise ValueError(f"{len(conds)} conditions for {s.shape} scores")
        if len(s) < 3:
            raise ValueError(f"need at least 3 normal scores to calibrate; got {len(s)}")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            i = int(np.flatnonzero(~(np.isfinite(s) & (s >= 0)))[0])
            raise ValueError(f"scores[{i}] is {s[i]}; every score must be finite and >= 0")
        # an exact duplicate in the bank scores 0; its log must not blow the spread up
        logs = np.log(np.maximum(s, 1e-3 * max(float(np.median(s)), 1e-12)))
        bank_names = [validate_condition_name(c) for c in names]
        seen = sorted(set(conds))  # the conditions that scores were matched to
        code = np.array([seen.index(c) for c in conds])
        groups = [logs[code == i] for i in range(len(seen))]
        resid = np.concatenate([g - g.mean() for g in groups])
        dof = max(len(s) - len(seen), 1)
        pooled = float(np.sqrt(np.sum(resid**2) / dof))
        if not pooled > 0:
            raise ValueError(
                f"all {len(s)} normal scores are equal within their conditions: no spread to "
                "calibrate on (duplicated or silent recordings?)"
            )
        stats: dict[str, ConditionStats] = {}
        for c, g in zip(seen, groups, strict=True):
            own = float(np.sum((g - g.mean()) ** 2))
            var = (PRIOR_DOF * pooled**2 + own) / (PRIOR_DOF + len(g) - 1)
            stats[c] = ConditionStats(len(g), float(np.exp(g.mean())), math.sqrt(var), 0.0, 0.0)
        known = [st for st in stats.values() if st.n >= 2] or list(stats.values())
        top = max(known, key=lambda st: st.scale)
        for c in sorted(set(bank_names) | set(seen)):
            if c not in stats or stats[c].n < 2:  # cannot be estimated: the highest is safe
                n = stats[c].n if c in stats else 0
                stats[c] = ConditionStats(n, top.scale, max(top.sigma, pooled), 0.0, 0.0)
        tails = {c: tuple(float(v) for v in np.sort(g)) for c, g in zip(seen, groups, strict=True)}
        rec = np.arange(len(s)) if recordings is None else np.asarray(recordings)
        measured, pairs = within_recording_correlation(logs, rec, conds)
        cal = cls(
            dict(sorted(stats.items())),
            pooled,
            rule,
            tails,
            correlation=shrunk_correlation(measured, pairs),
            correlation_pairs=pairs,
            tail_dof=tail_dof(tails.values()),
        )
        return cal.with_rule(rule)

    def threshold_at(self, c: str, p: float) -> float:
        """Raw threshold of condition ``c`` at per-window exceedance ``p``."""
        st = self.conditions[c]
        nu = PRIOR_DOF + max(st.n, 1) - 1
        t = float(student_t.ppf(1.0 - p, nu)) * tail_factor(p, self.tail_dof)
        log_thr = math.log(st.scale) + t * st.sigma * math.sqrt(1.0 + 1.0 / max(st.n, 1))
        own = np.asarray(self.tails.get(c, ()))
        if own.size and own.size * p >= _MIN_TAIL_COUNT:
            log_thr = max(log_thr, float(np.quantile(own, 1.0 - p)))
        return math.exp(log_thr)

    def with_rule(self, rule: AlarmRule) -> ConditionCalibration:
        """The same fit, thresholds recomputed for another budget or alert rule."""
        if self.legacy_threshold is not None:
            return replace(self, rule=rule)
        p = rule.window_exceedance(self.correlation)
        stats = {
            c: replace(
                st,
                threshold=self.threshold_at(c, p),
                dcase_threshold=self.threshold_at(c, 1.0 - DCASE_Q),
            )
            for c, st in self.conditions.items()
        }
        return replace(self, conditions=stats, rule=rule)

    # ----------------------------------------------------------------- using

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.conditions)

    def thresholds(self, dcase: bool = False) -> dict[str, float]:
        if self.legacy_threshold is not None:
            return {c: self.legacy_threshold for c in self.conditions}
        return {
            c: (st.dcase_threshold if dcase else st.threshold) for c, st in self.conditions.items()
        }

    def threshold_of(self, condition: str, dcase: bool = False) -> float:
        thr = self.thresholds(dcase)
        return thr.get(condition, min(thr.values()))

    @property
    def threshold(self) -> float:
        """The lowest condition threshold: the one number a summary or an old caller shows."""
        return min(self.thresholds().values())

    def normalise(
        self, scores: ArrayLike, conditions: Sequence[str], dcase: bool = False
    ) -> np.ndarray:
        """score / threshold of each score's matched condition: 1.0 is the boundary."""
        s = np.asarray(scores, dtype=np.float64)
        thr = self.thresholds(dcase)
        low = min(thr.values())
        return s / np.array([thr.get(c, low) for c in conditions], dtype=np.float64)

    def false_alarms_per_week_at(self, p: float) -> float:
        """Expected false alarm starts per week if a normal window exceeds with ``p``."""
        return self.rule.false_alarms_per_week_at(p, self.correlation)

    # ----------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        if self.legacy_threshold is not None:
            return dict(self.extra)  # a format-1 file is written back as it was
        return {
            **self.extra,
            "format": 2,
            "method": "conditions-lognormal-t",
            "sigma": self.sigma,
            "rule": self.rule.to_dict(),
            "window_exceedance": self.rule.window_exceedance(self.correlation),
            "correlation": self.correlation,
            "correlation_pairs": self.correlation_pairs,
            "tail_dof": self.tail_dof,
            "conditions": {
                c: {
                    "n": st.n,
                    "scale": st.scale,
                    "sigma": st.sigma,
                    "threshold": st.threshold,
                    "dcase_threshold": st.dcase_threshold,
                }
                for c, st in self.conditions.items()
            },
            "tails": {c: list(v) for c, v in self.tails.items()},
        }

    @classmethod
    def from_dict(
        cls, d: Any, where: str, legacy_conditions: Sequence[str] = (DEFAULT_CONDITION,)
    ) -> ConditionCalibration:
        """Format 2, or a format-1 calibration (one threshold) for ``legacy_conditions``."""
        if not isinstance(d, Mapping):
            raise PackageError(f"{where}: a calibration must be a JSON object")
        if d.get("format") != 2:
            from monitor.model.thresholds import Calibration

            old = Calibration.from_dict(dict(d))
            stats = {
                c: ConditionStats(old.n, old.threshold, 0.0, old.threshold, old.threshold)
                for c in legacy_conditions
            }
            return cls(stats, 0.0, AlarmRule(), {}, old.threshold, dict(d))
        known = {
            "format",
            "method",
            "sigma",
            "rule",
            "window_exceedance",
            "conditions",
            "tails",
            "correlation",
            "correlation_pairs",
            "tail_dof",
        }
        conds = d.get("conditions")
        if not isinstance(conds, Mapping) or not conds:
            raise PackageError(f"{where}: 'conditions' must be a non-empty object")
        stats = {}
        for name, c in conds.items():
            try:
                validate_condition_name(name)
                stats[name] = ConditionStats(
                    int(c["n"]),
                    _pos(c, "scale"),
                    _pos(c, "sigma"),
                    _pos(c, "threshold"),
                    _pos(c, "dcase_threshold"),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise PackageError(f"{where}: conditions[{name!r}] is invalid ({exc})") from None
        sigma = d.get("sigma")
        if not _is_number(sigma) or not sigma > 0:
            raise PackageError(f"{where}: 'sigma' must be a positive number; got {sigma!r}")
        tails = d.get("tails", {})
        ok = isinstance(tails, Mapping) and all(
            isinstance(v, list) and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
            for v in tails.values()
        )
        if not ok:
            raise PackageError(f"{where}: 'tails' must map conditions to lists of finite numbers")
        # a calibration written before the correlation was measured: the conservative prior
        rho = d.get("correlation", CORRELATION_PRIOR)
        if not _is_number(rho):
            raise PackageError(f"{where}: 'correlation' must be a number; got {rho!r}")
        try:
            _check_correlation(float(rho))
        except ValueError as exc:
            raise PackageError(f"{where}: {exc}") from None
        pairs = d.get("correlation_pairs", 0)
        if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 0:
            raise PackageError(f"{where}: 'correlation_pairs' must be a count; got {pairs!r}")
        tail_scores = {str(c): tuple(float(x) for x in v) for c, v in tails.items()}
        if "tail_dof" in d:
            dof = d["tail_dof"]
            if dof is not None and not (_is_number(dof) and TAIL_MIN_DOF <= dof <= TAIL_MAX_DOF):
                raise PackageError(
                    f"{where}: 'tail_dof' must be null or a number in "
                    f"[{TAIL_MIN_DOF:g}, {TAIL_MAX_DOF:g}]; got {dof!r}"
                )
        else:  # written before the tail shape was fitted: fit it on the stored scores
            dof = tail_dof(tail_scores.values())
        cal = cls(
            stats,
            float(sigma),
            AlarmRule.from_dict(d.get("rule"), where),
            tail_scores,
            extra={k: v for k, v in d.items() if k not in known},
            correlation=float(rho),
            correlation_pairs=pairs,
            tail_dof=None if dof is None else float(dof),
        )
        # thresholds written before the correlation or the tail shape: recomputed (higher)
        if "correlation" in d and "tail_dof" in d:
            return cal
        log.info(
            "%s: written before %s; thresholds recomputed (correlation %.2f, score tail %s); "
            "enrol or export again to store them",
            where,
            "the window-to-window correlation" if "correlation" not in d else "the tail fit",
            cal.correlation,
            "normal" if cal.tail_dof is None else f"Student t, {cal.tail_dof:.1f} dof",
        )
        return cal.with_rule(cal.rule)


def _is_number(v: Any) -> TypeGuard[int | float]:
    """A JSON number (``true``/``false`` are ints to Python, not numbers to a reader)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pos(d: Mapping[str, Any], key: str) -> float:
    v = float(d[key])
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{key} must be a positive number; got {d[key]!r}")
    return v


def default_rule(
    window_seconds: float,
    hop_seconds: float,
    false_alarms_per_week: float = DEFAULT_FALSE_ALARMS_PER_WEEK,
    burst_seconds: float = DEFAULT_BURST_SECONDS,
) -> AlarmRule:
    """The budget spent on the default alert rule for these windows (`persistence_rule`)."""
    n, m = persistence_rule(window_seconds, hop_seconds, burst_seconds)
    return AlarmRule(false_alarms_per_week, window_seconds, hop_seconds, n, m)


def scorer_domains(conditions: Sequence[str]) -> list[str]:
    """The scorers' two domains from any number of conditions: the largest condition is
    'source' (ties: a condition named 'source', else the first by name), every other 'target'
    (domain-wise scorers rescale the small conditions within themselves)."""
    names, counts = np.unique(np.asarray(list(conditions), dtype=str), return_counts=True)
    if names.size == 0:
        return []
    pairs = zip(counts.tolist(), names.tolist(), strict=True)
    main = max(pairs, key=lambda t: (t[0], t[1] == "source"))[1]
    return ["source" if c == main else "target" for c in conditions]


def calibrate_conditions(
    scores: ArrayLike,
    embeddings: ArrayLike,
    conditions: Sequence[str],
    rule: AlarmRule,
    *,
    bank_rows: ArrayLike | None = None,
    recordings: ArrayLike | None = None,
) -> tuple[ConditionCalibration, np.ndarray]:
    """Per-condition calibration from normal scores, and the condition each was matched to.

    ``embeddings``/``conditions``: every scored embedding; ``bank_rows``: which of them the
    bank keeps (default all): those are matched by their nearest OTHER bank row, the rest as
    live windows are; ``recordings``: the recording of each (default: each its own).
    """
    x = np.asarray(embeddings, dtype=np.float32)
    conds = np.asarray(list(conditions), dtype=str)
    rows = np.arange(len(x)) if bank_rows is None else np.asarray(bank_rows)
    matcher = ConditionMatcher(x[rows], conds[rows].tolist())
    codes = np.empty(len(x), dtype=np.int64)
    codes[rows] = matcher.loo_match()
    rest = np.setdiff1d(np.arange(len(x)), rows)
    if rest.size:
        codes[rest] = matcher.match(x[rest])
    matched = np.asarray([matcher.names[i] for i in codes], dtype=str)
    cal = ConditionCalibration.fit(
        scores, matched.tolist(), rule, names=matcher.names, recordings=recordings
    )
    return cal, matched
