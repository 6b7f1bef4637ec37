"""Stage 2 (SimSiam) ablation and augmentation timing on a SYNTHETIC DCASE-layout data set.

    # each augmentation removed in turn (plus the untrained start and the full set)
    python benchmarks/bench_ablation.py --out bench-out/stage2-ablation --machines pump \
        --recipe stage2_ssl_supplemental --noise-dir ../shared/data/background_noise
    # time per batch of each augmentation vs one SimSiam model step
    python benchmarks/bench_ablation.py --timing

Ablation rows: `untrained` (steps 0: the encoder stage 2 starts from), `full`, then `-<name>`
for each augmentation. `--variant NAME=JSON` adds rows with other `extra["stage2"]` settings
(e.g. `lr0.2='{"simsiam": {"lr": 0.2}}'`; a `"steps"` key sets the row's steps). Writes
`<out>/ablation.md` and `<out>/ablation.json`.
The data (`<out>/data` unless `--data`) are synthetic: the numbers compare settings, not
machines in a plant.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from training.augment_wave import NAMES, NoiseBank, WaveAugmentConfig, WaveAugmenter
from training.evaluate import evaluate
from training.recipes.base import RecipeOptions
from training.synth import generate_dataset


def timing(args: argparse.Namespace) -> None:
    """Seconds per batch (32 crops of 1 s, one view) per augmentation and per model step."""
    from training.models.ced import CED
    from training.simclr import StageEmbedder
    from training.simsiam import SimSiamModel, simsiam_loss

    torch.set_num_threads(args.threads)
    bs, n = 32, 16000
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    bank = NoiseBank([rng.standard_normal(5 * n).astype(np.float32)])
    x = torch.from_numpy(rng.standard_normal((bs, int(1.11 * n)) + ()).astype(np.float32) * 0.05)
    rows = []
    for name in NAMES:
        specs = dict(WaveAugmentConfig().without(*NAMES).specs)
        base = WaveAugmentConfig().specs[name]
        specs[name] = type(base)(1.0, base.low, base.high)  # p = 1: every crop
        aug = WaveAugmenter(WaveAugmentConfig(specs), bank, bank)
        aug(x, n, gen)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            aug(x, n, gen)
        rows.append((f"ours: {name} (p = 1)", (time.perf_counter() - t0) / args.repeats))
    import audiomentations as am

    xs = x.numpy()
    lib = {
        "gain": am.Gain(min_gain_db=-6, max_gain_db=6, p=1.0),
        "polarity": am.PolarityInversion(p=1.0),
        "pitch_shift": am.PitchShift(min_semitones=-1, max_semitones=1, p=1.0),
        "time_stretch": am.TimeStretch(
            min_rate=0.9, max_rate=1.1, leave_length_unchanged=False, p=1.0
        ),
    }
    for name, op in lib.items():
        op(xs[0], n)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            for row in xs:
                op(row, n)
        rows.append((f"audiomentations: {name} (p = 1)", (time.perf_counter() - t0) / args.repeats))
    default = WaveAugmenter(WaveAugmentConfig.seed_set(), bank, bank)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        default(x, n, gen)
    rows.append(
        ("ours: default chain (all six, their p)", (time.perf_counter() - t0) / args.repeats)
    )
    encoders = {
        "resnet18 stage 1 (stage2 default)": (StageEmbedder(stage=1), 128),
        "ced-mini": (CED("mini"), 256),
    }
    for name, (enc, dim) in encoders.items():
        model = SimSiamModel(enc, dim).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        v = torch.randn(2 * bs, n) * 0.05
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            _, z, p = model(v)
            loss = simsiam_loss(p[:bs], p[bs:], z[:bs], z[bs:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        rows.append((f"model step, {name}, 2 views", float(np.median(times[1:]))))
    print(f"batch {bs} crops of 1 s, torch threads {args.threads}, {os.cpu_count()} cores")
    print("| what | seconds per batch |\n|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.3f} |")


def ablation(args: argparse.Namespace) -> None:
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    if not (data / "SYNTHETIC").exists():
        generate_dataset(
            data,
            machines=tuple(args.machines),
            n_train_source=args.train_source,
            n_train_target=10,
            n_test_per_group=50,
            n_supplemental=10,
            seconds=10.0,
            seed=args.seed,
        )
    base = json.loads(args.stage2) if args.stage2 else {}
    # the ablation starts from the seed's full set (the recipe default leaves the speed two off)
    seed = WaveAugmentConfig.seed_set()
    full_aug = WaveAugmentConfig.from_mapping({**seed.to_dict(), **base.get("augment", {})})
    base = {**base, "augment": full_aug}
    variants: list[tuple[str, dict, int | None]] = []
    if not args.no_untrained:
        variants.append(("untrained", base, 0))
    if not args.no_full:
        variants.append(("full", base, None))
    for name in [] if args.no_removals else NAMES:
        variants.append((f"-{name}", {**base, "augment": full_aug.without(name)}, None))
    for spec in args.variant or []:
        label, _, text = spec.partition("=")
        extra = json.loads(text)
        steps = extra.pop("steps", None)  # {"steps": 300}: this row's SimSiam steps
        if "augment" in extra:  # changes on top of the seed's full set
            aug = {**seed.to_dict(), **extra["augment"]}
            extra["augment"] = WaveAugmentConfig.from_mapping(aug)
        variants.append((label, {**base, **extra}, steps))
    rows = []
    for label, stage2, steps in variants:
        opts = RecipeOptions(
            seed=args.seed,
            progress=False,
            steps=steps if steps is not None else args.steps,
            noise_dirs=tuple(args.noise_dir or ()),
            extra={"stage2": stage2},
        )
        t0 = time.perf_counter()
        ev = evaluate(
            data,
            out / label,
            recipe=args.recipe,
            options=opts,
            machines=args.machines,
            max_train=args.max_train,
            plots=False,
        )
        wall = time.perf_counter() - t0
        o = ev.rows[-1]
        desc = json.loads((out / label / "evaluation.json").read_text())["description"]
        rows.append({"variant": label, "official": o, "wall_s": wall, "description": desc})
        print(f"{label}: official {ev.official_score:.4f} ({wall:.0f} s)", flush=True)
    meta = {
        "recipe": args.recipe,
        "machines": args.machines,
        "max_train": args.max_train,
        "steps": args.steps,
        "noise_dirs": args.noise_dir,
        "stage2": args.stage2,
        "cores": os.cpu_count(),
    }
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"Recipe {args.recipe}; machines {', '.join(args.machines)}; training clips per machine: "
        f"{args.max_train or 'all'}; steps {args.steps or 'default budget'}; noise folders "
        f"{args.noise_dir or 'none'}.",
        "",
        "| variant | official score | AUC (source) | AUC (target) | pAUC | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = r["official"]
        lines.append(
            f"| {r['variant']} | {o['hmean']:.4f} | {o['AUC (source)']:.4f} | "
            f"{o['AUC (target)']:.4f} | {o['pAUC']:.4f} | {r['wall_s']:.0f} s |"
        )
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timing", action="store_true", help="time augmentations vs a model step")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for --timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench-out/stage2-ablation")
    ap.add_argument("--data", help="existing SYNTHETIC data folder (default <out>/data)")
    ap.add_argument("--machines", nargs="+", default=["fan", "pump", "gearbox"])
    ap.add_argument("--train-source", type=int, default=300)
    ap.add_argument("--max-train", type=int, help="at most N training clips per machine")
    ap.add_argument("--recipe", default="stage2_ssl_supplemental")
    ap.add_argument("--steps", type=int, help="SimSiam steps (default: the recipe's budget)")
    ap.add_argument("--noise-dir", action="append", help="background-noise folder (repeatable)")
    ap.add_argument("--stage2", help='JSON for extra["stage2"], e.g. {"simsiam": {"lr": 0.2}}')
    ap.add_argument("--variant", action="append", help="LABEL=JSON: one more row")
    ap.add_argument("--no-removals", action="store_true", help="skip the -<augmentation> rows")
    ap.add_argument("--no-untrained", action="store_true", help="skip the steps-0 row")
    ap.add_argument("--no-full", action="store_true", help="skip the full-augmentation row")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.timing:
        timing(args)
    else:
        ablation(args)


if __name__ == "__main__":
    main()
