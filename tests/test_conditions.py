"""Operating conditions and budget-calibrated thresholds (`monitor.model.conditions`): the maths,
the small-sample rule, the package round trip and old packages."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from package_fixtures import copy_package, make_tiny_package, synthetic_machine_audio
from scipy.stats import norm
from scipy.stats import t as student_t

from monitor.alerting.machine import AlertMachine, AlertPolicy
from monitor.errors import PackageError
from monitor.model import enroll as en
from monitor.model.conditions import (
    CORRELATION_PRIOR,
    TAIL_SHAPE_MIN_P,
    AlarmRule,
    ConditionCalibration,
    ConditionMatcher,
    calibrate_conditions,
    default_rule,
    persistence_rule,
    scorer_domains,
    shrunk_correlation,
    tail_dof,
    tail_factor,
    within_recording_correlation,
)
from monitor.model.package import ModelPackage

# ----------------------------------------------------------------------------- the alert rule


GRIDS = [(10.0, 1.0, 2.0), (9.984, 1.024, 2.0), (2.0, 0.5, 1.0), (10.0, 1.0, 0.5)]


@pytest.mark.parametrize(("window", "hop", "burst"), GRIDS)
def test_no_burst_up_to_burst_seconds_can_alarm_but_a_sustained_change_does(window, hop, burst):
    """Windows every hop; a burst [a, a + b) makes every window it overlaps anomalous."""
    n, m = persistence_rule(window, hop, burst)
    policy = AlertPolicy(n_above=n, m_windows=m, cooldown_s=0.0, min_hold_s=0.0)
    for onset in np.linspace(20.0, 20.0 + hop, 7):  # every phase of the burst against the hops
        machine, alarmed = AlertMachine("s", policy), False
        for i in range(200):
            start = i * hop
            hit = start < onset + burst and start + window > onset
            events = machine.step(start + window, 5.0 if hit else 0.1, True)
            alarmed |= any(e.type == "start" for e in events)
        assert not alarmed, (onset, n, m)
    # a sustained fault: alarmed n hops after the first window that contains it
    machine, first = AlertMachine("s", policy), None
    for i in range(200):
        start = i * hop
        events = machine.step(start + window, 5.0 if start + window > 20.0 else 0.1, True)
        if first is None and any(e.type == "start" for e in events):
            first = start + window - 20.0
    assert first is not None and first <= n * hop + 1e-6


def test_budget_maths_round_trip_and_the_dependence_rule():
    rule = default_rule(10.0, 1.0, false_alarms_per_week=1.0, burst_seconds=2.0)
    assert (rule.n_above, rule.m_windows) == (13, 15)
    # 13 windows every 1 s span 12 s: two independent 10 s observations must both exceed
    assert rule.independent_windows == 2
    assert rule.false_alarms_per_week_at(rule.window_exceedance()) == pytest.approx(1.0)
    assert rule.window_exceedance() == pytest.approx(math.sqrt(10.0 / 604800.0))
    one = AlarmRule(1.0, 10.0, 1.0, 1, 1)
    assert one.independent_windows == 1 and one.window_exceedance() == pytest.approx(10 / 604800)
    # correlated windows: the persistence buys less, so each window must exceed more rarely
    ps = [rule.window_exceedance(rho) for rho in (0.0, 0.3, 0.75, 0.99)]
    assert ps == sorted(ps, reverse=True) and ps[-1] < 3 * 10 / 604800
    for rho, p in zip((0.0, 0.3, 0.75, 0.99), ps, strict=True):
        assert rule.false_alarms_per_week_at(p, rho) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="correlation"):
        rule.window_exceedance(1.0)
    with pytest.raises(ValueError, match="false_alarms_per_week"):
        AlarmRule(0.0, 10.0, 1.0, 1, 1)


def test_the_budget_holds_for_windows_that_share_a_take_effect():
    """Monte Carlo of the model behind the rule: k observations of one take share a take effect
    (correlation rho); at the threshold `window_exceedance(rho)` gives, all k exceed as often as
    the budget allows, where the independence threshold exceeds it many times over."""
    rule = AlarmRule(120.0, 10.0, 1.0, 13, 15)  # a large budget: the rate is measurable
    assert rule.independent_windows == 2
    target = 120.0 * 10.0 / 604800.0
    rng = np.random.default_rng(5)
    rho, n = 0.6, 4_000_000
    take = rng.standard_normal(n)
    obs = math.sqrt(rho) * take[:, None] + math.sqrt(1 - rho) * rng.standard_normal((n, 2))
    both = lambda p: float(np.mean(np.all(obs > norm.isf(p), axis=1)))  # noqa: E731
    assert both(rule.window_exceedance(rho)) == pytest.approx(target, rel=0.1)
    assert both(rule.window_exceedance(0.0)) > 3 * target


@pytest.mark.parametrize("rho", [0.0, 0.4, 0.8])
def test_the_correlation_is_measured_from_recordings_with_several_windows(rho):
    rng = np.random.default_rng(int(rho * 10))
    n_rec, per = 60, 20
    logs = np.repeat(math.sqrt(rho) * rng.standard_normal(n_rec), per)
    logs = logs + math.sqrt(1 - rho) * rng.standard_normal(n_rec * per)
    rec = np.repeat(np.arange(n_rec), per)
    conds = np.where(rec < 40, "a", "b")
    logs[conds == "b"] += 3.0  # another condition's level is not a take effect
    est, pairs = within_recording_correlation(logs, rec, conds.tolist())
    assert est == pytest.approx(rho, abs=0.1) and pairs == n_rec * (per - 1)
    # one window per recording: nothing to measure; the calibration takes the prior
    assert within_recording_correlation(logs[::per], rec[::per], conds[::per].tolist()) == (0, 0)
    cal = ConditionCalibration.fit(
        np.exp(logs), conds.tolist(), default_rule(10, 1), recordings=rec
    )
    assert cal.correlation_pairs == pairs and cal.correlation == pytest.approx(est, abs=0.01)
    blind = ConditionCalibration.fit(np.exp(logs), conds.tolist(), default_rule(10, 1))
    assert blind.correlation_pairs == 0 and blind.correlation == CORRELATION_PRIOR
    # a short enrolment: half its own measurement, half the prior
    assert shrunk_correlation(0.2, 10) == pytest.approx((0.2 + CORRELATION_PRIOR) / 2)
    back = ConditionCalibration.from_dict(json.loads(json.dumps(cal.to_dict())), "x")
    assert back.correlation == pytest.approx(
        cal.correlation
    ) and back.thresholds() == pytest.approx(cal.thresholds())


def test_a_calibration_from_before_the_correlation_gets_the_prior_and_higher_thresholds():
    rng = np.random.default_rng(6)
    cal = ConditionCalibration.fit(*_two_conditions(rng), default_rule(10, 1))
    old = cal.to_dict()
    for c in old["conditions"].values():  # what the independence rule wrote
        c["threshold"] = c["threshold"] / 2
    del old["correlation"], old["correlation_pairs"]
    back = ConditionCalibration.from_dict(old, "old.json")
    assert back.correlation == CORRELATION_PRIOR and back.correlation_pairs == 0
    assert back.thresholds() == pytest.approx(cal.thresholds())
    with pytest.raises(PackageError, match="old.json: correlation must be in"):
        ConditionCalibration.from_dict({**cal.to_dict(), "correlation": 1.5}, "old.json")


# ----------------------------------------------------------------------------- calibration


def _two_conditions(rng, n_main=300, n_small=10, sig_main=0.3, sig_small=0.45):
    logs = np.r_[rng.normal(0.0, sig_main, n_main), rng.normal(1.0, sig_small, n_small)]
    return np.exp(logs), ["source"] * n_main + ["fast"] * n_small


def test_each_condition_gets_its_own_threshold_and_json_round_trips():
    rng = np.random.default_rng(0)
    scores, conds = _two_conditions(rng)
    rule = default_rule(10.0, 1.0)
    cal = ConditionCalibration.fit(scores, conds, rule)
    thr = cal.thresholds()
    assert set(thr) == {"source", "fast"} and thr["fast"] > 2 * thr["source"]
    # the alarm threshold is far above the DCASE 0.9 one (a week is 60,000 windows)
    assert all(cal.thresholds()[c] > 1.5 * cal.thresholds(dcase=True)[c] for c in thr)
    # normalised: 1.0 at each condition's own threshold
    np.testing.assert_allclose(cal.normalise([thr["source"], thr["fast"]], ["source", "fast"]), 1)
    back = ConditionCalibration.from_dict(json.loads(json.dumps(cal.to_dict())), "x")
    assert back.thresholds() == pytest.approx(thr) and back.rule == rule
    # a larger budget lowers every threshold; the fit is kept
    loose = cal.with_rule(default_rule(10.0, 1.0, false_alarms_per_week=50.0))
    assert all(loose.thresholds()[c] < thr[c] for c in thr)


def test_alarm_threshold_meets_the_budget_on_fresh_normal_scores():
    """Log-normal normal scores: the share of fresh normal windows over each condition's
    threshold is near the target p on average (the small condition included)."""
    rng = np.random.default_rng(1)
    rule = default_rule(10.0, 1.0)
    p = rule.window_exceedance(CORRELATION_PRIOR)  # one score per recording: the prior
    exceed = {"source": [], "fast": []}
    for _ in range(200):
        scores, conds = _two_conditions(rng)
        thr = ConditionCalibration.fit(scores, conds, rule).thresholds()
        for c, (mu, sd) in {"source": (0.0, 0.3), "fast": (1.0, 0.45)}.items():
            exceed[c].append(norm.sf((math.log(thr[c]) - mu) / sd))
    assert np.mean(exceed["source"]) < 1.5 * p
    # the 10-score condition, MORE spread than the pooled one, pays for its spread being shrunk
    # towards the pooled one (about 4.5x the target at this p); a pooled shape alone would miss
    # the budget about sixtyfold (exp(1.0 + z sigma_pool) with sigma_pool ~ 0.3)
    assert np.mean(exceed["fast"]) < 6 * p
    z = norm.isf(p)
    pooled_only = norm.sf((1.0 + z * 0.3 - 1.0) / 0.45)
    assert pooled_only > 30 * p


def test_small_condition_costs_a_higher_threshold_than_a_large_one():
    rng = np.random.default_rng(2)
    base = rng.normal(0.0, 0.3, 300)
    rule = default_rule(10.0, 1.0)
    big = ConditionCalibration.fit(
        np.exp(np.r_[base, base[:300] + 1]), ["a"] * 300 + ["b"] * 300, rule
    )
    small = ConditionCalibration.fit(
        np.exp(np.r_[base, base[:10] + 1]), ["a"] * 300 + ["b"] * 10, rule
    )
    ratio = small.thresholds()["b"] / big.thresholds()["b"]
    assert 1.05 < ratio < 2.0


def test_matching_uses_the_nearest_other_reference():
    x = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99], [0.05, 1.0]], np.float32)
    m = ConditionMatcher(x, ["a", "a", "b", "b", "b"])
    assert m.match_names([[1, 0.05], [0.02, 1]]) == ["a", "b"]
    assert [m.names[i] for i in m.loo_match()] == ["a", "a", "b", "b", "b"]
    cal, matched = calibrate_conditions([0.1, 0.12, 0.3, 0.25, 0.28], x, m.codes.tolist() and
                                        ["a", "a", "b", "b", "b"], default_rule(10, 1))  # fmt: skip
    assert matched.tolist() == ["a", "a", "b", "b", "b"] and set(cal.names) == {"a", "b"}


def test_scorer_domains_make_the_largest_condition_the_source():
    assert scorer_domains(["x", "y", "y", "z"]) == ["target", "source", "source", "target"]
    assert scorer_domains(["target", "source"]) == ["target", "source"]


def test_bad_calibration_files_are_refused_by_name():
    cal = ConditionCalibration.fit(*_two_conditions(np.random.default_rng(3)), default_rule(10, 1))
    d = cal.to_dict()
    d["conditions"]["fast"]["threshold"] = -1
    with pytest.raises(PackageError, match=r"cal.json: conditions\['fast'\] is invalid"):
        ConditionCalibration.from_dict(d, "cal.json")
    with pytest.raises(PackageError, match="cal.json: 'sigma'"):
        ConditionCalibration.from_dict({**cal.to_dict(), "sigma": "x"}, "cal.json")


def test_the_tail_shape_is_fitted_and_only_raises_thresholds():
    rng = np.random.default_rng(7)
    assert tail_dof([rng.normal(size=3000)]) is None  # a normal law: no heavier tail
    heavy = tail_dof([rng.standard_t(5, 2000), 3 + 0.5 * rng.standard_t(5, 1000)])
    assert heavy is not None and 3.5 < heavy < 7.5  # each group standardised, then pooled
    assert tail_dof([rng.standard_t(3, 20)]) is None  # too few residuals to tell
    assert tail_dof([rng.standard_t(3, 4)] * 10) is None  # groups of < 5 are left out
    assert tail_factor(1e-4, None) == 1.0 and tail_factor(0.1, 6.0) == 1.0  # DCASE unchanged
    assert tail_factor(1e-3, 6.0) > tail_factor(1e-3, 12.0) > tail_factor(1e-3, 50.0) > 1.0
    # the shape is trusted down to TAIL_SHAPE_MIN_P; below it the ratio stays
    assert tail_factor(1e-5, 6.0) == tail_factor(TAIL_SHAPE_MIN_P, 6.0) < 1.5
    assert tail_factor(0.003, 6.0) < tail_factor(TAIL_SHAPE_MIN_P, 6.0)


def test_a_heavy_tailed_score_keeps_its_budget_where_a_normal_tail_would_not():
    """Log scores with a Student t (6 dof) tail: the fitted shape keeps fresh normal windows
    over the threshold near p; the log-normal shape alone lets several times p through."""
    rng = np.random.default_rng(8)
    # a budget that puts p near TAIL_SHAPE_MIN_P, down to where the shape is trusted
    rule, dof, sd = default_rule(4.0, 1.0, false_alarms_per_week=30.0), 6.0, 0.3
    scale = sd * math.sqrt((dof - 2) / dof)  # unit variance times sd
    exceed, normal_only = [], []
    for _ in range(40):
        logs = scale * rng.standard_t(dof, 600)
        cal = ConditionCalibration.fit(np.exp(logs), ["source"] * 600, rule)
        assert cal.tail_dof is not None
        p = rule.window_exceedance(cal.correlation)
        exceed.append(student_t.sf(math.log(cal.thresholds()["source"]) / scale, dof) / p)
        gauss = replace(cal, tail_dof=None).with_rule(rule)
        normal_only.append(student_t.sf(math.log(gauss.thresholds()["source"]) / scale, dof) / p)
    assert np.median(normal_only) > 3.0
    assert 0.3 < np.median(exceed) < 1.6


def test_a_calibration_from_before_the_tail_shape_is_refitted_from_its_scores(caplog):
    rng = np.random.default_rng(9)
    logs = 0.3 * rng.standard_t(5, 400)
    cal = ConditionCalibration.fit(np.exp(logs), ["source"] * 400, default_rule(10, 1))
    assert cal.tail_dof is not None
    back = ConditionCalibration.from_dict(json.loads(json.dumps(cal.to_dict())), "cal.json")
    assert back.tail_dof == pytest.approx(cal.tail_dof)
    old = cal.to_dict()
    del old["tail_dof"]
    for c in old["conditions"].values():  # what the log-normal tail wrote
        c["threshold"] = c["threshold"] / 2
    with caplog.at_level("INFO", logger="monitor.model.conditions"):
        back = ConditionCalibration.from_dict(old, "old.json")
    assert "old.json: written before the tail fit; thresholds recomputed" in caplog.text
    assert back.tail_dof == pytest.approx(cal.tail_dof)
    assert back.thresholds() == pytest.approx(cal.thresholds())
    with pytest.raises(PackageError, match="cal.json: 'tail_dof' must be null or a number"):
        ConditionCalibration.from_dict({**cal.to_dict(), "tail_dof": 1.0}, "cal.json")


# ----------------------------------------------------------------------------- packages


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("cond") / "pkg", machines=("fan",))


def test_conditions_round_trip_through_the_package(base, tmp_path):
    pkg_dir = copy_package(base, tmp_path / "pkg")
    fast = synthetic_machine_audio("pump", 1, 30.0, seed=4)[0]  # another regime: other harmonics
    res = en.enroll(pkg_dir, "fan", waveforms=[("fast run", fast)], condition="fast")
    pkg = ModelPackage.load(pkg_dir)
    fan = pkg.machine("fan")
    assert fan.conditions == ("fast", "source")
    assert pkg.manifest.machines["fan"].conditions == {"fast": 15, "source": 64}
    assert set(fan.calibration.thresholds()) == {"fast", "source"}
    # the enrolled recording has many windows: the window-to-window correlation is measured
    assert fan.calibration.correlation_pairs >= 14  # 15 windows of 2 s
    assert fan.calibration.correlation != CORRELATION_PRIOR
    pairs = fan.calibration.correlation_pairs
    assert f"window-to-window correlation {res.correlation:.2f} ({pairs} window pairs)" in (
        res.summary()
    )
    # the tail shape is fitted on the same scores, stored, and said
    assert res.tail_dof == fan.calibration.tail_dof
    assert ("score tail: normal" if res.tail_dof is None else "score tail: Student t") in (
        res.summary()
    )
    assert res.threshold == pytest.approx(fan.threshold)
    # a window of the new regime is matched to it and judged by its threshold
    other = synthetic_machine_audio("pump", 1, 2.0, seed=99)[0]
    from monitor.model.runtime import Embedder

    a = fan.assess(Embedder(pkg).embed(other[None]))
    assert a.conditions == ["fast"]
    assert a.thresholds[0] == pytest.approx(fan.calibration.threshold_of("fast"))
    assert a.normalised[0] == pytest.approx(a.raw[0] / a.thresholds[0])


def test_a_package_of_the_previous_format_still_loads_and_scores(base, tmp_path):
    """Format-1 calibration (one gamma threshold) and a bank without condition arrays."""
    pkg_dir = copy_package(base, tmp_path / "old")
    cal_path = pkg_dir / "machines" / "fan" / "calibration.json"
    bank_path = pkg_dir / "machines" / "fan" / "bank.npz"
    old = {"method": "gamma", "q": 0.9, "threshold": 0.5, "params": {"a": 2.0}, "n": 64}
    cal_path.write_text(json.dumps(old))
    with np.load(bank_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in ("conditions", "matched")}
    with open(bank_path, "wb") as f:
        np.savez(f, **arrays)
    manifest = json.loads((pkg_dir / "manifest.json").read_text())
    for rel in (cal_path, bank_path):
        key = rel.relative_to(pkg_dir).as_posix()
        from monitor.model.package import sha256_file

        manifest["files"][key] = {"sha256": sha256_file(rel), "bytes": rel.stat().st_size}
    manifest["machines"]["fan"].pop("conditions", None)
    (pkg_dir / "manifest.json").write_text(json.dumps(manifest))
    pkg = ModelPackage.load(pkg_dir)
    fan = pkg.machine("fan")
    assert fan.conditions == ("source",) and fan.threshold == 0.5
    res = en.score_files(pkg, "fan", [_wav(tmp_path, "fan")])[0]
    assert res.condition == "source" and res.normalised == pytest.approx(res.score / 0.5)
    # enrolling into it writes the new format
    en.enroll(pkg_dir, "fan", waveforms=[("more", synthetic_machine_audio("fan", 1, 8.0)[0])])
    assert json.loads(cal_path.read_text())["format"] == 2


def _wav(tmp_path: Path, machine: str) -> Path:
    from monitor.audio.io import write_wav

    return write_wav(tmp_path / f"{machine}.wav", synthetic_machine_audio(machine, 1, 4.0)[0])
