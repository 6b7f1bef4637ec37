"""What shrinking a bank with the greedy coreset changes: scores, AUCs, threshold. SYNTHETIC data.

    python benchmarks/bench_coreset.py [--out bench-out/coreset]

Long enrolments make large banks; `sonitor enroll --max-bank N` keeps N embeddings per machine
with a greedy k-center coreset (per domain, so the few target clips survive). For each bank size
this prints the rank correlation of the test scores with the full bank's, the AUCs, how often the
decisions agree, and the same for a random subset of the same size (the naive alternative).
Features are log-mel statistics (`logmel_knn`), so the script needs no training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from monitor.model.enroll import calibration_scores, spearman, subsample_bank
from monitor.model.scoring import scorer_by_name
from monitor.model.thresholds import calibrate
from training.data import discover, load_clips
from training.dcase_metrics import machine_scores
from training.recipes.logmel_knn import logmel_stats
from training.synth import generate_dataset

SCORERS = {"rescaled_knn": {"k": 16, "metric": "euclidean"}, "knn": {"k": 1, "metric": "euclidean"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-out/coreset")
    ap.add_argument("--train-source", type=int, default=600)
    args = ap.parse_args()
    root = generate_dataset(
        Path(args.out) / "data",
        machines=("fan", "gearbox"),
        n_train_source=args.train_source,
        n_train_target=10,
        n_test_per_group=25,
        n_supplemental=0,
        seconds=4.0,
    )
    for machine, md in discover(root).items():
        x_tr = logmel_stats(load_clips(md.train))
        d_tr = np.array([c.domain for c in md.train])
        x_te = logmel_stats(load_clips(md.test))
        y = np.array([c.label == "anomaly" for c in md.test], int)
        d_te = [c.domain for c in md.test]
        for name, params in SCORERS.items():
            full = scorer_by_name(name, **params).fit(x_tr, list(d_tr))
            s_full = full.score_samples(x_te)
            thr_full = calibrate(full.loo_scores()).threshold
            r = machine_scores(y, s_full, d_te)
            print(
                f"{machine} {name} full bank n={len(x_tr)}: AUC source/target "
                f"{r['auc_source']:.3f}/{r['auc_target']:.3f}, pAUC {r['pauc']:.3f}"
            )
            for n in (len(x_tr) // 2, len(x_tr) // 4, len(x_tr) // 8):
                kept = subsample_bank(x_tr, d_tr, n, metric="euclidean")
                sub = scorer_by_name(name, **params).fit(x_tr[kept], list(d_tr[kept]))
                s_sub = sub.score_samples(x_te)
                thr = calibrate(calibration_scores(sub, x_tr, kept)).threshold
                r = machine_scores(y, s_sub, d_te)
                rnd = np.sort(np.random.default_rng(0).choice(len(x_tr), n, replace=False))
                s_rnd = (
                    scorer_by_name(name, **params)
                    .fit(x_tr[rnd], list(d_tr[rnd]))
                    .score_samples(x_te)
                )
                r_rnd = machine_scores(y, s_rnd, d_te)
                print(
                    f"  n={n}: score rank corr {spearman(s_full, s_sub):.3f} "
                    f"(random {spearman(s_full, s_rnd):.3f}); AUC source/target "
                    f"{r['auc_source']:.3f}/{r['auc_target']:.3f} pAUC {r['pauc']:.3f} (random "
                    f"{r_rnd['auc_source']:.3f}/{r_rnd['auc_target']:.3f}/{r_rnd['pauc']:.3f}); "
                    f"decisions agree {np.mean((s_full > thr_full) == (s_sub > thr)):.3f}"
                )


if __name__ == "__main__":
    main()
