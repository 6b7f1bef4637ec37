"""Separation benchmark on SYNTHETIC data: separator quality, and what it does to the scores.

    flock /tmp/sonitor-bench.lock python benchmarks/bench_separation.py --out bench-out/separation

1. Separator quality. One separator per front-end (``ced`` for stage1, ``logmel`` for
   logmel_knn) is trained on the benchmark's material, as `stage1_separation` does: clean =
   supplemental clean clips 0-7 (fan, gearbox) and the pump's normal training clips; noise =
   pump's supplemental noise-only clips + noise set A. Held out: clean = supplemental clean clips
   8-9 and pump training clips not used; noise = noise set B. Reported at -6, 0, +6 dB: SI-SDR
   of the mixture, SI-SDR improvement (inverse STFT of the masked mixture), the same for the
   oracle hard mel mask (the ceiling of a mel-resolution mask), and mask accuracy.
2. Scores. A reduced copy of the benchmark set (``--max-train`` source + all target training
   clips, ``--test-per-group`` test clips per group) with noise set B added to EVERY clip, train
   and test (the whole hall got noisier), at each SNR relative to the clip's own power; each
   recipe is evaluated with and without ``--separator``, plus the clean data as a reference.

Noise sets (``../shared/data``): A = ESC-50 machine-noise pieces with an even index + the first
half of each background-noise recording; B = odd ESC-50 pieces + the second halves. So the
separator is tested on noise it did not train on (same kinds of sources).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from monitor.audio.io import load_audio, write_wav
from training.data import discover, load_clips, supplemental_kind
from training.evaluate import evaluate
from training.fit import subsample_train
from training.recipes.base import RecipeOptions
from training.separator.masking import save_separator
from training.separator.mixtures import AUDIO_SUFFIXES, mix_at_snr
from training.separator.train import TrainConfig, evaluate_separator, train_separator

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FRONTEND = {"stage1": "ced", "logmel_knn": "logmel", "simclr": "logmel", "stage2_ssl": "logmel"}
# slow recipes run only at --stage1-snrs (not on the clean copy)
SLOW = ("stage1", "stage2_ssl")
# a recipe whose separated form is another recipe (stage2_ssl refuses --separator)
WITH_SEPARATOR = {"stage2_ssl": "stage2_ssl_separation"}


def noise_sets(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    a: list[np.ndarray] = []
    b: list[np.ndarray] = []
    esc = sorted(
        p for p in (root / "esc50_machine_noise_1s").rglob("*") if p.suffix in AUDIO_SUFFIXES
    )
    for i, p in enumerate(esc):
        (a if i % 2 == 0 else b).append(load_audio(p))
    for p in sorted((root / "background_noise").glob("*.wav")):
        x = load_audio(p)
        a.append(x[: x.size // 2])
        b.append(x[x.size // 2 :])
    return a, b


def material(data: Path, max_train: int, seed: int):
    """(train clean, held-out clean, supplemental noise) from the benchmark set."""
    clean, held, supp_noise = [], [], []
    for name, md in discover(data).items():
        kind = supplemental_kind(md.supplemental) if md.supplemental else None
        if kind == "clean":
            s = load_clips(md.supplemental)
            clean += list(s[:8])
            held += list(s[8:])
        else:
            used = {c.path for c in subsample_train(md.train, max_train, seed)}
            clean += list(load_clips([c for c in md.train if c.path in used][:100]))
            held += list(load_clips([c for c in md.train if c.path not in used][:4]))
            if kind == "noise":
                supp_noise += list(load_clips(md.supplemental))
        print(f"{name}: supplemental {kind}", flush=True)
    return clean, held, supp_noise


def noisy_copy(data: Path, out: Path, snr: float | None, noise, args, rng) -> Path:
    """Reduced copy of ``data`` with noise added to every train/test clip (None: no noise)."""
    if (out / "DONE").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    for name, md in discover(data).items():
        train = subsample_train(md.train, args.max_train, args.seed)
        groups: dict[tuple, list] = {}
        for c in md.test:
            groups.setdefault((c.domain, c.label), []).append(c)
        test = [c for g in groups.values() for c in g[: args.test_per_group]]
        for c in train + test:
            x = load_audio(c.path)
            if snr is not None:
                z = noise[int(rng.integers(len(noise)))]
                z = np.tile(z, -(-x.size // z.size))
                start = int(rng.integers(0, z.size - x.size + 1))
                x = np.clip(x + mix_at_snr(x, z[start : start + x.size], snr), -1, 1)
            dest = out / name / c.path.parent.name / c.path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_wav(dest, x.astype(np.float32))
        if md.supplemental:
            (out / name / "supplemental").symlink_to(md.supplemental[0].path.parent.resolve())
        for extra in (data / name).glob("attributes_*.csv"):
            shutil.copy(extra, out / name / extra.name)
    (out / "DONE").write_text("ok\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-out/separation")
    ap.add_argument("--data", help="benchmark set (default <out>/data)")
    ap.add_argument("--snrs", nargs="+", type=float, default=[-6.0, 0.0, 6.0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--max-train", type=int, default=100, help="source training clips/machine")
    ap.add_argument("--test-per-group", type=int, default=25)
    ap.add_argument("--recipes", nargs="+", default=["logmel_knn", "stage1"])
    ap.add_argument("--stage1-snrs", nargs="*", type=float, default=[0.0],
                    help="SNRs stage1 (slow, random CED) runs at (default 0 only)")  # fmt: skip
    ap.add_argument("--mixtures", type=int, default=20, help="held-out mixtures per SNR")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--variants",
        action="store_true",
        help="only the mask study: logmel_knn with other mask modes/floors, reusing <out>'s "
        "noisy copies and separator-logmel checkpoint",
    )
    ap.add_argument(
        "--per-fault",
        action="store_true",
        help="only the analysis: AUC per synthetic fault type of every run in <out>/runs",
    )
    args = ap.parse_args()
    if args.variants:
        return mask_variants(args)
    if args.per_fault:
        return per_fault(args)
    torch.set_num_threads(1)
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    noise_a, noise_b = noise_sets(SHARED)
    clean, held, supp_noise = material(data, args.max_train, args.seed)
    print(f"clean {len(clean)}, held-out clean {len(held)}, noise A {len(noise_a)} + "
          f"supplemental {len(supp_noise)}, noise B {len(noise_b)}", flush=True)  # fmt: skip

    result: dict = {"meta": {}, "separators": {}, "scores": []}
    ckpts = {}
    for fe in sorted({FRONTEND[r] for r in args.recipes}):
        t0 = time.perf_counter()
        sep, hist = train_separator(
            clean, noise_a + supp_noise, frontend=fe, config=TrainConfig(steps=args.steps),
            seed=args.seed, progress_bar=False,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        ckpts[fe] = str(
            save_separator(out / f"separator-{fe}.safetensors", sep, {"training": hist})
        )
        quality = []
        for snr in args.snrs:
            for mode in ("soft", "hard"):
                sep.set_mask(mode, sep.mask_floor)
                r = evaluate_separator(sep, held, noise_b, snr, n=args.mixtures, seed=args.seed + 1)
                quality.append({"mask_mode": mode, **r})
                print(fe, mode, json.dumps(r), flush=True)
        sep.set_mask("soft", sep.mask_floor)
        result["separators"][fe] = {"train_s": train_s, "history": hist, "quality": quality}

    rng = np.random.default_rng(args.seed)
    conditions: list[float | None] = [None, *args.snrs]
    for snr in conditions:
        tag = "clean" if snr is None else f"{snr:+g}dB"
        noisy = noisy_copy(data, out / f"data-{tag}", snr, noise_b, args, rng)
        for recipe in args.recipes:
            if recipe in SLOW and (snr is None or snr not in args.stage1_snrs):
                continue
            for with_sep in (False, True):
                opts = RecipeOptions(
                    seed=args.seed, progress=False, ced_size="mini",
                    separator=ckpts[FRONTEND[recipe]] if with_sep else None,
                )  # fmt: skip
                t0 = time.perf_counter()
                name = f"{recipe}-{tag}-{'sep' if with_sep else 'plain'}"
                run = WITH_SEPARATOR.get(recipe, recipe) if with_sep else recipe
                ev = evaluate(noisy, out / "runs" / name, run, opts, plots=False)
                row = {
                    "recipe": recipe, "noise": tag, "separator": with_sep,
                    "official_score": ev.official_score, "official": ev.rows[-1],
                    "wall_s": time.perf_counter() - t0,
                }  # fmt: skip
                result["scores"].append(row)
                print(json.dumps(row, default=str), flush=True)

    result["meta"] = {
        "data": f"SYNTHETIC (bench data {data}), reduced: {args.max_train} source + all target "
        f"train clips, {args.test_per_group} test clips per group, per machine type",
        "steps": args.steps,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    (out / "separation.json").write_text(json.dumps(result, indent=2, default=str))
    print(to_markdown(result))
    (out / "separation.md").write_text(to_markdown(result))


VARIANTS = (("soft", 0.01), ("soft", 0.1), ("soft", 0.3), ("hard", 0.01), ("hard", 0.1))


def mask_variants(args: argparse.Namespace) -> None:
    """Why separation helps or hurts: the same separator, other masks, logmel_knn (cheap)."""
    from training.separator.masking import load_separator

    torch.set_num_threads(1)
    out = Path(args.out)
    base = out / "separator-logmel.safetensors"
    rows = []
    for snr in [None, *args.snrs]:
        tag = "clean" if snr is None else f"{snr:+g}dB"
        data = out / f"data-{tag}"
        for mode, floor in VARIANTS:
            sep = load_separator(base)
            sep.set_mask(mode, floor)
            ckpt = save_separator(out / "variants" / f"{mode}-{floor}.safetensors", sep)
            opts = RecipeOptions(seed=args.seed, progress=False, separator=str(ckpt))
            ev = evaluate(data, out / "runs" / f"variant-{tag}-{mode}-{floor}", "logmel_knn",
                          opts, plots=False)  # fmt: skip
            rows.append({"noise": tag, "mask": mode, "floor": floor, "official": ev.rows[-1]})
            print(json.dumps(rows[-1], default=str), flush=True)
    lines = ["| added noise | mask | floor | official | AUC (source) | AUC (target) | pAUC |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        o = r["official"]
        lines.append(
            f"| {r['noise']} | {r['mask']} | {r['floor']} | {o['hmean']:.4f} | "
            f"{o['AUC (source)']:.4f} | {o['AUC (target)']:.4f} | {o['pAUC']:.4f} |"
        )
    (out / "variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def fault_types(data: Path) -> dict[tuple[str, str], str]:
    """(machine, test file name) -> synthetic fault type, from the generator's own plan."""
    from training import synth
    from training.synth_sound import draw_fault

    params = json.loads((data / "SYNTHETIC").read_text().split("\n", 1)[1])["parameters"]
    specs = synth.plan(
        params["machines"], params["n_train_source"], params["n_train_target"],
        params["n_test_per_group"], params["n_supplemental"], params["seconds"], params["seed"],
        params["difficulty"],
    )  # fmt: skip
    return {
        (s.machine, s.filename): draw_fault(s)["type"]
        for s in specs
        if s.split == "test" and s.label == "anomaly"
    }


def per_fault(args: argparse.Namespace) -> None:
    """AUC of each fault type (all normal test clips vs that type's anomalies), pooled."""
    import csv

    from sklearn.metrics import roc_auc_score

    out = Path(args.out)
    faults = fault_types(Path(args.data) if args.data else out / "data")
    kinds = sorted(set(faults.values()))
    lines = [f"| run | {' | '.join(kinds)} |", "|---" * (len(kinds) + 1) + "|"]
    for run in sorted((out / "runs").iterdir()):
        per: dict[str, list] = {k: [] for k in kinds}
        for f in sorted(run.glob("anomaly_score_*_section_00_test.csv")):
            machine = f.name.removeprefix("anomaly_score_").split("_section_")[0]
            rows = list(csv.reader(f.read_text().splitlines()))
            normal = [float(s) for n, s in rows if "_normal_" in n]
            for k in kinds:
                anom = [float(s) for n, s in rows if faults.get((machine, n)) == k]
                if anom:
                    y = [0] * len(normal) + [1] * len(anom)
                    per[k].append(roc_auc_score(y, normal + anom))
        cells = [f"{np.mean(v):.3f}" if v else "-" for v in per.values()]
        lines.append(f"| {run.name} | {' | '.join(cells)} |")
    text = "AUC per fault type (mean over machine types)\n\n" + "\n".join(lines) + "\n"
    (out / "per_fault.md").write_text(text)
    print(text)


def to_markdown(result: dict) -> str:
    lines = [
        "### Separator on held-out SYNTHETIC mixtures (noise set B, unseen)",
        "",
        "| front-end | mask | SNR | SI-SDR mixture | SI-SDRi | SI-SDRi oracle hard mel mask "
        "| mask accuracy | all-zero mask accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fe, s in result["separators"].items():
        for q in s["quality"]:
            lines.append(
                f"| {fe} | {q['mask_mode']} | {q['snr_db']:+.0f} dB | {q['si_sdr_mixture']:+.1f} | "
                f"{q['si_sdri']:+.1f} dB | {q['si_sdri_oracle_hard_mask']:+.1f} dB | "
                f"{q['mask_accuracy']:.3f} | {1 - q['ones_fraction']:.3f} |"
            )
        lines.append(
            f"| {fe} | training: {s['history']['steps']} steps, {s['train_s']:.0f} s | | | | | | |"
        )
    lines += [
        "",
        "### Official score with and without separation (SYNTHETIC + noise set B)",
        "",
        "Each cell: official score (AUC source / AUC target / pAUC).",
        "",
        "| recipe | added noise | without separator | with separator | wall (with) |",
        "|---|---|---|---|---|",
    ]
    rows = {(r["recipe"], r["noise"], r["separator"]): r for r in result["scores"]}

    def cell(r: dict) -> str:
        o = r["official"]
        return (
            f"{o['hmean']:.4f} ({o['AUC (source)']:.3f} / {o['AUC (target)']:.3f} / "
            f"{o['pAUC']:.3f})"
        )

    for (recipe, noise, sep), r in rows.items():
        w = rows.get((recipe, noise, True))
        if sep or w is None:
            continue
        lines.append(f"| {recipe} | {noise} | {cell(r)} | {cell(w)} | {w['wall_s']:.0f} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
