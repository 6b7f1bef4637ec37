"""Benchmark every recipe on a SYNTHETIC DCASE-layout data set: official score and wall time.

    python benchmarks/bench_recipes.py --out bench-out/recipes [--train-source 990] [--seconds 10]

Writes `<out>/recipes.md` (the README table) and `<out>/recipes.json`. The data are synthetic
(`training.synth`), so the numbers compare recipes with each other; they are no claim about real
machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from training.evaluate import evaluate
from training.recipes.base import RecipeOptions
from training.synth import generate_dataset

RECIPES = ("logmel_knn", "dcase_ae", "simclr", "stage1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-out/recipes")
    ap.add_argument("--machines", nargs="+", default=["fan", "pump", "gearbox"])
    ap.add_argument("--train-source", type=int, default=990)
    ap.add_argument("--train-target", type=int, default=10)
    ap.add_argument("--test-per-group", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, help="override every trained recipe's epochs")
    args = ap.parse_args()

    out = Path(args.out)
    data = out / "data"
    t0 = time.perf_counter()
    if not (data / "SYNTHETIC").exists():
        generate_dataset(
            data,
            machines=tuple(args.machines),
            n_train_source=args.train_source,
            n_train_target=args.train_target,
            n_test_per_group=args.test_per_group,
            n_supplemental=10,
            seconds=args.seconds,
            seed=args.seed,
        )
    gen_s = time.perf_counter() - t0

    rows = []
    for spec in args.recipes:
        # "recipe" or "recipe:scorer" (e.g. logmel_knn:knn) to compare scorers on one recipe
        name, _, scorer = spec.partition(":")
        opts = RecipeOptions(
            seed=args.seed,
            epochs=args.epochs,
            progress=False,
            ced_size="mini",
            scorer=scorer or None,
        )
        t0 = time.perf_counter()
        ev = evaluate(data, out / spec.replace(":", "-"), recipe=name, options=opts, plots=True)
        wall = time.perf_counter() - t0
        per = {r["machine"]: r for r in ev.rows[:-1]}
        rows.append(
            {
                "recipe": spec,
                "official_score": ev.official_score,
                "wall_s": wall,
                "timings": ev.timings,
                "per_machine": per,
                "official": ev.rows[-1],
            }
        )
        print(f"{spec}: official score {ev.official_score:.4f}, {wall:.0f} s", flush=True)

    meta = {
        "data": f"SYNTHETIC: {len(args.machines)} machine types, {args.train_source}+"
        f"{args.train_target} train clips, {args.test_per_group} per test group, "
        f"{args.seconds:g} s, seed {args.seed}",
        "generation_s": gen_s,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    (out / "recipes.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2, default=str)
    )
    lines = [
        f"Data: {meta['data']}. CPU cores: {meta['cores']}.",
        "",
        "| recipe | official score | AUC (source) | AUC (target) | pAUC | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = r["official"]  # harmonic means over machine types, as the official score
        lines.append(
            f"| {r['recipe']} | {o['hmean']:.4f} | {o['AUC (source)']:.4f} | "
            f"{o['AUC (target)']:.4f} | {o['pAUC']:.4f} | {r['wall_s']:.0f} s |"
        )
    (out / "recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
