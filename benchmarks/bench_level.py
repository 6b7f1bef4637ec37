"""Anomaly score against a level offset of the same normal audio, per recipe (SYNTHETIC data).

    python benchmarks/bench_level.py --data bench-out/set0/data --machine pump --max-train 100

Fits each recipe on one machine type's training clips, then scores its normal source-domain
test clips scaled by -6..+6 dB. Prints, per recipe and offset, the median score over the
median leave-one-out training score ("x typical"), and the share of clips over the threshold
a package would carry: the gamma 0.9-quantile one before per-condition calibration existed,
and the alarm threshold (`monitor.model.conditions`, 1 false alarm a week) where it does. Runs
on any checkout that has `training.fit.fit_recipe`, so the same command measures the code
before and after a change (e.g. in a `git worktree` of the older commit).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.data import load_clips
from training.fit import fit_recipe
from training.recipes.base import RecipeOptions

OFFSETS_DB = (-6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0)


def _thresholds(rec, machine: str, domains: list) -> tuple[str, float]:
    """(kind, raw threshold of the source condition) with whatever this checkout has."""
    try:
        from monitor.model.conditions import default_rule
        from training.alarms import calibrate_machine
    except ImportError:
        from monitor.model.thresholds import calibrate

        return "gamma 0.9", calibrate(rec.train_scores(machine)).threshold
    cal = calibrate_machine(rec, machine, domains, default_rule(10.0, 1.0)).calibration
    return "alarm (1/week)", cal.threshold_of("source")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--machine", default="pump")
    ap.add_argument("--recipes", nargs="+", default=["logmel_knn", "simclr", "stage1"])
    ap.add_argument("--max-train", type=int, default=100)
    ap.add_argument("--simclr-steps", type=int, default=150)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for recipe in args.recipes:
        opts = RecipeOptions(seed=0, progress=False, extra={"simclr": {"steps": args.simclr_steps}})
        fitted = fit_recipe(
            args.data, recipe, opts, machines=[args.machine], max_train=args.max_train
        )
        rec, md = fitted.recipe, fitted.machines[args.machine]
        kind, thr = _thresholds(rec, args.machine, fitted.arrays[args.machine].domains)
        typical = float(np.median(rec.train_scores(args.machine)))
        test = [c for c in md.test if c.label != "anomaly" and c.domain != "target"]
        waves = load_clips(test, workers=2)
        for off in OFFSETS_DB:
            s = np.asarray(rec.score(args.machine, waves * 10 ** (off / 20)), dtype=np.float64)
            rows.append(
                {
                    "recipe": recipe,
                    "offset_db": off,
                    "x_typical": float(np.median(s) / typical),
                    "over_threshold": float(np.mean(s > thr)),
                    "threshold": kind,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print("| recipe | threshold | " + " | ".join(f"{o:+g} dB" for o in OFFSETS_DB) + " |")
    print("|---|---|" + "---|" * len(OFFSETS_DB))
    for recipe in args.recipes:
        rr = [r for r in rows if r["recipe"] == recipe]
        cells = " | ".join(f"{r['x_typical']:.2f} ({100 * r['over_threshold']:.0f} %)" for r in rr)
        print(f"| {recipe} | {rr[0]['threshold']} | {cells} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
