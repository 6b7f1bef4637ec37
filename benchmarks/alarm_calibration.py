"""Clips over the threshold per condition: one gamma threshold (before) against per-condition
thresholds fitted to a false-alarm budget (`monitor.model.conditions`, after). SYNTHETIC data.

Reads the embeddings cached by `benchmarks/scorer_study.py` (train and test embeddings, domains
and labels of each machine type), so a recipe is trained once:

    python benchmarks/scorer_study.py bench-out/set0/data --synth-seed 0 --recipe simclr \
        --out bench-out/set0/simclr --scorers mahalanobis_knn
    python benchmarks/alarm_calibration.py bench-out/set0/simclr --scorer mahalanobis_knn

Prints, per machine type and test domain, the share of normal clips (FPR) and of anomalies (TPR)
over: the old threshold (gamma 0.9 quantile of all leave-one-out scores), the new DCASE-quantile
thresholds (0.9 per condition) and the new alarm thresholds (the budget, with the default alert
rule for 10 s windows every 1 s), both from the scores of clips held out in turn (10 folds, as a
package calibrates), and the AUCs (the ranking is the scorer's: unchanged). "TPR best at FPR
10 %" is the ceiling that no threshold can pass: the share of anomalies above the highest
threshold that keeps at most 10 % of the condition's normal test clips above it (chosen on the
test clips themselves).

A second table checks the shape of the tail the thresholds extrapolate: normal test clips over
each condition's (1 - p) quantile at p = 0.01, 0.003, 0.001, with the fitted tail
(`ConditionCalibration.tail_dof`) and with a normal tail (the log-normal model alone), summed
over machine types and conditions.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from monitor.model.conditions import CORRELATION_PRIOR, default_rule
from monitor.model.scoring import scorer_by_name
from monitor.model.thresholds import calibrate
from training import dcase_metrics as metrics
from training.alarms import calibrate_clips


def _fit(name: str, x: np.ndarray, domains: list[str]):
    params: dict = {}
    if name == "rescaled_knn_domainwise":
        params = {"metric": "cosine", "k": 16}
    elif name == "mahalanobis_knn":
        params = {"k": 16}
    return scorer_by_name(name, **params).fit(x, domains=domains)


def best_tpr(normal: np.ndarray, anomalous: np.ndarray, max_fpr: float) -> float:
    """The share of ``anomalous`` above the lowest threshold with at most ``max_fpr`` of
    ``normal`` strictly above it: what the best possible threshold reaches."""
    allowed = int(np.floor(max_fpr * len(normal) + 1e-9))  # normals allowed above it
    t = np.sort(normal)[::-1][allowed] if allowed < len(normal) else -np.inf
    return float(np.mean(anomalous > t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache_dir", type=Path, help="a scorer_study.py --out folder")
    ap.add_argument("--scorer", default="mahalanobis_knn")
    ap.add_argument("--false-alarms-per-week", type=float, default=1.0)
    ap.add_argument("--window-seconds", type=float, default=10.0)
    ap.add_argument("--hop-seconds", type=float, default=1.0)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    emb = dict(np.load(args.cache_dir / "embeddings.npz", allow_pickle=False))
    rule = default_rule(args.window_seconds, args.hop_seconds, args.false_alarms_per_week)
    machines = sorted({k.split("/")[0] for k in emb})
    rows, aucs = [], []
    tail_ps = (0.01, 0.003, 0.001)
    tail = {p: [0, 0, 0] for p in tail_ps}  # normal clips, over (fitted tail), over (normal)
    dofs = []
    for m in machines:
        x, d = emb[f"{m}/train"], emb[f"{m}/train_domains"].tolist()
        xt, dt, y = emb[f"{m}/test"], emb[f"{m}/test_domains"], emb[f"{m}/test_labels"]
        sc = _fit(args.scorer, x, d)
        loo = sc.loo_scores()
        s = sc.score_samples(xt)
        aucs.append({**metrics.machine_scores(y, s, dt.tolist()), "machine": m})
        old = s > calibrate(loo, "gamma", 0.9).threshold
        mcal = calibrate_clips(sc, x, d, rule, m)  # as a package calibrates
        cal = mcal.calibration
        assert mcal.matcher is not None
        matched = mcal.matcher.match_names(xt)
        norm_s = cal.normalise(s, matched)
        alarm = norm_s > 1
        dcase = cal.normalise(s, matched, dcase=True) > 1
        normal_tail = replace(cal, tail_dof=None)
        dofs.append(f"{m} {'normal' if cal.tail_dof is None else f'{cal.tail_dof:.1f}'}")
        names = np.asarray(matched)
        for p_ in tail_ps:
            for c in cal.names:
                sel = (names == c) & (y == 0)
                tail[p_][0] += int(sel.sum())
                tail[p_][1] += int(np.sum(s[sel] > cal.threshold_at(c, p_)))
                tail[p_][2] += int(np.sum(s[sel] > normal_tail.threshold_at(c, p_)))
        for dom in ("source", "target"):
            n, a = (dt == dom) & (y == 0), (dt == dom) & (y == 1)
            row = {
                "machine": m,
                "condition": dom,
                "FPR old": float(old[n].mean()),
                "TPR old": float(old[a].mean()),
                "FPR DCASE/cond": float(dcase[n].mean()),
                "TPR DCASE/cond": float(dcase[a].mean()),
                "FPR alarm": float(alarm[n].mean()),
                "TPR alarm": float(alarm[a].mean()),
                "TPR best at FPR 10 %": best_tpr(norm_s[n], norm_s[a], 0.1),
                "matched own": float(np.mean(np.asarray(matched)[n | a] == dom)),
            }
            rows.append(row)
    p, p_rho = rule.window_exceedance(), rule.window_exceedance(CORRELATION_PRIOR)
    print(
        f"rule: {json.dumps(rule.to_dict())}; per-window p = {p_rho:.3g} at the clips' "
        f"correlation prior {CORRELATION_PRIOR} ({p:.3g} for independent windows)"
    )
    print(metrics.to_markdown(rows))
    table = metrics.summary_table(aucs)
    print(metrics.to_markdown(table))
    print(f"tail degrees of freedom: {', '.join(dofs)}")
    tail_rows = [
        {
            "p": p_,
            "normal test clips": n,
            "over, fitted tail": a,
            "x p, fitted tail": a / n / p_,
            "over, normal tail": b,
            "x p, normal tail": b / n / p_,
        }
        for p_, (n, a, b) in tail.items()
    ]
    print(metrics.to_markdown(tail_rows))
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "auc": table, "tail": tail_rows}, indent=1, default=str)
        )


if __name__ == "__main__":
    main()
