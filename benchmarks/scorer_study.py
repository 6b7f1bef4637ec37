"""Train a recipe once, then compare scorers on the same embeddings (SYNTHETIC benchmark data).

    python benchmarks/scorer_study.py DATA_DIR --recipe simclr --out bench-out/scorers
    python benchmarks/scorer_study.py bench-out/val1/data --synth-seed 1 --seed 1 ...  # validation

Embeddings are cached in `<out>/embeddings.npz` (plain arrays), so a second run only re-scores.
Prints one official score per scorer, as in `benchmarks/bench_recipes.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scorer_candidates import CANDIDATES  # benchmarks/ is on sys.path when run as a script

from monitor.model.scoring import scorer_by_name
from training import dcase_metrics as metrics
from training.data import discover, load_clips
from training.fit import load_machine
from training.recipes.base import RecipeOptions
from training.recipes.registry import make_recipe

SCORERS = (
    "mahalanobis",
    "mahalanobis_domainwise",
    "mahalanobis_knn",
    "knn",
    "rescaled_knn_domainwise",
)


def embed_all(data_dir: Path, recipe: str, seed: int, extra: dict) -> dict[str, np.ndarray]:
    found = discover(data_dir)
    rec, _ = make_recipe(recipe, RecipeOptions(seed=seed, progress=False, extra=extra))
    arrays = {m: load_machine(md, supplemental=rec.uses_supplemental) for m, md in found.items()}
    t0 = time.perf_counter()
    rec.prepare(arrays)
    print(f"prepare {time.perf_counter() - t0:.0f} s", flush=True)
    out: dict[str, np.ndarray] = {}
    for m, md in found.items():
        out[f"{m}/train"] = rec.embed(arrays[m].waves)
        out[f"{m}/train_domains"] = np.array([d or "source" for d in arrays[m].domains])
        out[f"{m}/test"] = rec.embed(load_clips(md.test, workers=2))
        out[f"{m}/test_domains"] = np.array([c.domain or "source" for c in md.test])
        out[f"{m}/test_labels"] = np.array([c.label == "anomaly" for c in md.test], int)
    return out


def breakdown(machine: str, s: np.ndarray, labels: np.ndarray, domains: np.ndarray) -> None:
    """Which pair of groups is hard: e.g. target normals vs source anomalies."""
    from sklearn.metrics import roc_auc_score

    groups = {
        f"{d[0]}{'a' if a else 'n'}": (labels == a) & (domains == d)
        for d in ("source", "target")
        for a in (0, 1)
    }
    parts = []
    for neg in ("sn", "tn"):
        for pos in ("sa", "ta"):
            y = np.r_[np.zeros(groups[neg].sum()), np.ones(groups[pos].sum())]
            auc = roc_auc_score(y, np.r_[s[groups[neg]], s[groups[pos]]])
            parts.append(f"{neg}-vs-{pos} {auc:.3f}")
    med = " ".join(f"{g} {np.median(s[m]):.4g}" for g, m in groups.items())
    print(f"  {machine}: AUC {', '.join(parts)}; median score {med}")


def alarms(machine: str, scorer, s: np.ndarray, labels: np.ndarray, domains: np.ndarray) -> None:
    """False alarms per domain and detections at the threshold the package would carry."""
    from monitor.model.thresholds import calibrate

    cal = calibrate(scorer.loo_scores(), method="gamma", q=0.9)
    above = s > cal.threshold
    fa = {d: float(np.mean(above[(labels == 0) & (domains == d)])) for d in ("source", "target")}
    print(
        f"  {machine}: threshold {cal.threshold:.4g} ({cal.method}); normal clips above it: "
        f"source {fa['source']:.2f}, target {fa['target']:.2f}; anomalies above it "
        f"{np.mean(above[labels == 1]):.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--recipe", default="simclr")
    ap.add_argument("--out", type=Path, default=Path("bench-out/scorers"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--scorers",
        nargs="+",
        default=list(SCORERS),
        help=f"scorer names, or rejected candidates: {', '.join(CANDIDATES)}",
    )
    ap.add_argument("--extra", default="{}", help="recipe options, e.g. '{\"simclr\": {...}}'")
    ap.add_argument("--breakdown", action="store_true", help="AUC per normal/anomaly domain pair")
    ap.add_argument(
        "--alarms",
        action="store_true",
        help="share of test clips above the calibrated threshold (gamma on LOO scores, 0.9), "
        "per domain: what a daemon with this bank would flag",
    )
    ap.add_argument(
        "--synth-seed",
        type=int,
        help="first generate DATA_DIR as the benchmark's synthetic set (3 machines, 300 + 10 "
        "training, 50 per test group, 10 s) with this seed, e.g. 1 for a validation set",
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.synth_seed is not None and not (args.data_dir / "SYNTHETIC").exists():
        from training.synth import generate_dataset

        generate_dataset(
            args.data_dir,
            machines=("fan", "pump", "gearbox"),
            n_train_source=300,
            n_train_target=10,
            n_test_per_group=50,
            n_supplemental=10,
            seconds=10.0,
            seed=args.synth_seed,
        )
    cache = args.out / "embeddings.npz"
    if cache.exists():
        emb = dict(np.load(cache, allow_pickle=False))
    else:
        emb = embed_all(args.data_dir, args.recipe, args.seed, json.loads(args.extra))
        np.savez(cache, **emb)
    machines = sorted({k.split("/")[0] for k in emb})
    results = {}
    for name in args.scorers:
        params = {"metric": "cosine"} if "knn" in name and "mahal" not in name else {}
        rows = []
        for m in machines:
            sc = CANDIDATES[name]() if name in CANDIDATES else scorer_by_name(name, **params)
            sc = sc.fit(emb[f"{m}/train"], domains=list(emb[f"{m}/train_domains"]))
            s = sc.score_samples(emb[f"{m}/test"])
            r = metrics.machine_scores(emb[f"{m}/test_labels"], s, list(emb[f"{m}/test_domains"]))
            r["machine"] = m
            rows.append(r)
            if args.breakdown:
                breakdown(m, s, emb[f"{m}/test_labels"], emb[f"{m}/test_domains"])
            if args.alarms and hasattr(sc, "loo_scores"):
                alarms(m, sc, s, emb[f"{m}/test_labels"], emb[f"{m}/test_domains"])
        table = metrics.summary_table(rows)
        results[name] = table[-1]
        off = metrics.official_score(rows)
        print(f"{args.recipe}:{name}: official {off:.4f}  {json.dumps(table[-1], default=str)}")
    (args.out / "scorers.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
