"""The official DCASE Task 2 evaluator: hand-counted AUCs, McClish pAUC by hand, hmean, tables."""

from __future__ import annotations

import csv
import math
import sys

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from training.dcase_metrics import (
    machine_scores,
    official_score,
    summary_table,
    to_markdown,
    write_csv,
)

EPS = np.finfo(float).eps

# 4 normals + 2 anomalies per domain, scores chosen so the pairs can be counted by hand
SRC_N, SRC_A = [0.1, 0.2, 0.3, 0.4], [0.35, 0.9]
TGT_N, TGT_A = [0.5, 0.6, 0.7, 0.8], [0.65, 0.95]
SCORES = SRC_N + SRC_A + TGT_N + TGT_A
LABELS = [0, 0, 0, 0, 1, 1] * 2
DOMS = ["source"] * 6 + ["target"] * 6


def test_hand_counted_aucs_include_anomalies_of_both_domains():
    m = machine_scores(LABELS, SCORES, DOMS)
    # AUC(source): all 4 anomalies x 4 source normals = 16 pairs; anomaly above normal in
    # 0.35: 3 (above 0.1, 0.2, 0.3), 0.9: 4, 0.65: 4, 0.95: 4 -> 15 / 16
    assert m["auc_source"] == pytest.approx(15 / 16)
    # with the source anomalies alone it would be (3 + 4) / 8 = 0.875
    # AUC(target): vs normals 0.5..0.8: 0.35: 0, 0.9: 4, 0.65: 2, 0.95: 4 -> 10 / 16
    assert m["auc_target"] == pytest.approx(10 / 16)
    # (target anomalies alone: (2 + 4) / 8 = 0.75)
    # AUC(all): 4 anomalies x 8 normals: 0.35: 3, 0.9: 8, 0.65: 6, 0.95: 8 -> 25 / 32
    assert m["auc_all"] == pytest.approx(25 / 32)
    assert (m["n_clips"], m["n_normal_source"], m["n_anomaly_source"]) == (12, 4, 2)
    assert (m["n_normal_target"], m["n_anomaly_target"]) == (4, 2)


def test_hand_computed_mcclish_pauc():
    """Descending: 0.95 A, 0.9 A, 0.8 N, ...: 8 normals, so the first false positive is at
    FPR 1/8 > 0.1 and the ROC sits at TPR = 2/4 on [0, 0.1]: raw area 0.1 * 0.5 = 0.05."""
    raw, min_area, max_area = 0.1 * 0.5, 0.1**2 / 2, 0.1
    expected = 0.5 * (1 + (raw - min_area) / (max_area - min_area))
    assert machine_scores(LABELS, SCORES, DOMS)["pauc"] == pytest.approx(expected)  # 0.7368


def roc_points(y, s):
    """ROC by a plain threshold sweep over distinct scores (ties move together)."""
    y, s = np.asarray(y), np.asarray(s)
    pos, neg = (y == 1).sum(), (y == 0).sum()
    points = [(0.0, 0.0)]
    for t in sorted(set(s.tolist()), reverse=True):
        points.append((((s >= t) & (y == 0)).sum() / neg, ((s >= t) & (y == 1)).sum() / pos))
    return points


def pauc_by_hand(y, s, max_fpr=0.1):
    area = 0.0
    pts = roc_points(y, s)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # interpolate the segment at max_fpr
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    min_area, max_area = max_fpr**2 / 2, max_fpr
    return 0.5 * (1 + (area - min_area) / (max_area - min_area))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pauc_equals_the_mcclish_formula_on_a_hand_integrated_roc(seed):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(60, int), np.ones(25, int)]
    s = np.round(rng.normal(size=85) + y * 1.0, 1)  # rounding creates ties
    d = rng.choice(["source", "target"], size=85)
    assert machine_scores(y, s, d)["pauc"] == pytest.approx(pauc_by_hand(y, s), abs=1e-12)


def test_random_scorer_pauc_is_one_half():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(2000, int), np.ones(2000, int)]
    d = rng.choice(["source", "target"], size=4000)
    m = machine_scores(y, rng.random(4000), d)
    assert m["pauc"] == pytest.approx(0.5, abs=0.02)  # sd ~0.0035 at this size
    assert m["auc_source"] == pytest.approx(0.5, abs=0.03)


def test_official_score_is_the_eps_floored_harmonic_mean():
    per = [
        {"auc_source": 0.5, "auc_target": 1.0, "pauc": 1.0},
        {"auc_source": 0.8, "auc_target": 0.6, "pauc": 0.7},
    ]
    by_hand = 6 / (1 / 0.5 + 1 / 1.0 + 1 / 1.0 + 1 / 0.8 + 1 / 0.6 + 1 / 0.7)
    assert official_score(per) == pytest.approx(by_hand)
    zero = [{"auc_source": 0.0, "auc_target": 1.0, "pauc": 1.0}]
    assert official_score(zero) == pytest.approx(3 / (1 / EPS + 2))  # floored, not an error
    assert official_score(zero) == pytest.approx(
        scipy.stats.hmean(np.maximum([0.0, 1.0, 1.0], sys.float_info.epsilon))
    )


def test_agreement_with_direct_sklearn_on_random_data():
    rng = np.random.default_rng(4)
    per, direct = [], []
    for _ in range(4):
        n = 200
        y = rng.integers(0, 2, n)
        d = np.where(rng.random(n) < 0.5, "source", "target")
        s = rng.normal(size=n) + 0.7 * y
        per.append(machine_scores(y, s, list(d)))
        src, tgt = (d == "source") | (y == 1), (d == "target") | (y == 1)
        vals = [roc_auc_score(y[src], s[src]), roc_auc_score(y[tgt], s[tgt])]
        vals.append(roc_auc_score(y, s, max_fpr=0.1))
        for key, v in zip(("auc_source", "auc_target", "pauc"), vals, strict=True):
            assert per[-1][key] == pytest.approx(v, abs=1e-15)
        direct.append(vals)
    flat = [v[i] for i in range(3) for v in direct]
    assert official_score(per) == pytest.approx(scipy.stats.hmean(flat), rel=1e-14)


def test_domain_without_normal_clips_gives_nan_like_the_evaluator():
    y = [0, 0, 1, 1, 1]
    d = ["source", "source", "source", "target", "target"]
    m = machine_scores(y, [0.1, 0.2, 0.9, 0.8, 0.7], d)
    assert m["auc_source"] == 1.0
    assert math.isnan(m["auc_target"])  # only anomalies in the target set: AUC undefined
    assert math.isnan(official_score([m]))
    assert official_score([m], ignore_missing=True) == pytest.approx(
        scipy.stats.hmean([m["auc_source"], m["pauc"]])
    )
    assert math.isnan(machine_scores([0, 0], [0.1, 0.2], ["source"] * 2)["pauc"])


def test_unknown_domains_count_as_source():
    """DCASE 2020 names carry no domain: AUC (source) is the plain AUC, AUC (target) NaN."""
    y, s = [0, 0, 0, 1, 1], [0.1, 0.4, 0.3, 0.35, 0.9]
    m = machine_scores(y, s, [None] * 5)
    assert m["auc_source"] == m["auc_all"] == pytest.approx(5 / 6)
    assert math.isnan(m["auc_target"]) and m["n_normal_source"] == 3


def test_decisions_give_precision_recall_f1_per_domain():
    dec = [0, 0, 0, 1, 0, 1] + [1, 0, 0, 0, 1, 1]  # source: tp 1, fp 1, fn 1; target: 2, 1, 0
    m = machine_scores(LABELS, SCORES, DOMS, decisions=dec)
    assert (m["precision_source"], m["recall_source"], m["f1_source"]) == (0.5, 0.5, 0.5)
    assert m["precision_target"] == pytest.approx(2 / 3) and m["recall_target"] == 1.0
    assert m["f1_target"] == pytest.approx(0.8)
    none = machine_scores(LABELS, SCORES, DOMS, decisions=[0] * 12)
    assert none["precision_source"] == 0.0 and none["f1_source"] == 0.0  # eps, no 0/0


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="differ in length: 3, 2, 3"):
        machine_scores([0, 1, 0], [0.1, 0.2], ["source"] * 3)
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1 \\(anomaly\\); found 2"):
        machine_scores([0, 2], [0.1, 0.2], ["source"] * 2)
    with pytest.raises(ValueError, match=r"domains\[1\] is 'tgt'"):
        machine_scores([0, 1], [0.1, 0.2], ["source", "tgt"])
    with pytest.raises(ValueError, match=r"y_score\[1\] is nan"):
        machine_scores([0, 1], [0.1, np.nan], ["source"] * 2)
    with pytest.raises(ValueError, match="max_fpr"):
        machine_scores([0, 1], [0.1, 0.2], ["source"] * 2, max_fpr=0)
    with pytest.raises(ValueError, match="lack 'pauc'"):
        official_score([{"auc_source": 0.5, "auc_target": 0.5}])


def test_summary_table_markdown_and_csv(tmp_path):
    fan = machine_scores(LABELS, SCORES, DOMS)
    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    valve = machine_scores(y, rng.normal(size=40) + y, ["source", "target"] * 20)
    rows = summary_table({"fan": fan, "valve": valve})
    assert [r["machine"] for r in rows] == ["fan", "valve", "official score"]
    assert rows[0]["AUC (source)"] == fan["auc_source"]
    assert rows[0]["hmean"] == pytest.approx(
        scipy.stats.hmean([fan["auc_source"], fan["auc_target"], fan["pauc"]])
    )
    assert rows[-1]["hmean"] == pytest.approx(official_score([fan, valve]))
    assert rows[-1]["pAUC"] == pytest.approx(scipy.stats.hmean([fan["pauc"], valve["pauc"]]))
    assert summary_table([{**fan, "machine": "fan"}])[0]["pAUC"] == fan["pauc"]

    md = to_markdown(rows)
    lines = md.strip().splitlines()
    assert lines[0] == "| machine | AUC (source) | AUC (target) | pAUC | hmean |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2].startswith("| fan | 0.9375 | 0.6250 | 0.7368 |")
    assert lines[-1].startswith("| official score |")

    path = write_csv(rows, tmp_path / "out" / "summary.csv")
    with path.open() as f:
        back = list(csv.DictReader(f))
    assert [r["machine"] for r in back] == ["fan", "valve", "official score"]
    assert float(back[-1]["hmean"]) == rows[-1]["hmean"]  # full precision survives
