"""Training-side subcommands: `evaluate`, `synth`, `train-separator`, `separate`. Registered via
the entry point."""

from __future__ import annotations

import argparse
import logging
import time

from training.recipes.base import RecipeOptions
from training.recipes.registry import RECIPES

log = logging.getLogger(__name__)

# The `train` extra of pyproject.toml, as import names. `monitor.cli.sonitor` finds them (without
# importing) before it registers these subcommands; on a runtime-only install each of them only
# says which extra to install (tests/test_cli.py checks this list against the extra).
EXTRA = "train"
REQUIRES = ("torch", "sklearn", "safetensors", "tqdm", "matplotlib", "onnx", "onnxscript")


def _options(args: argparse.Namespace) -> RecipeOptions:
    blocks = tuple(int(b) for b in args.embed_blocks.split(",")) if args.embed_blocks else None
    return RecipeOptions(
        device=args.device,
        seed=args.seed,
        checkpoint=args.checkpoint,
        ced_size=args.ced_size,
        embed_blocks=blocks,
        scorer=args.scorer,
        k=args.k,
        epochs=args.epochs,
        progress=not args.quiet,
        steps=getattr(args, "steps", None),
        noise_dirs=tuple(getattr(args, "noise_dir", None) or ()),
        augment_config=getattr(args, "augment_config", None),
        supplemental_kind=getattr(args, "supplemental_kind", None),
        separator=getattr(args, "separator", None),
    )


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        default="auto",
        choices=["auto", *RECIPES],
        help="recipe (default auto: the strongest one that can run with what is available)",
    )
    p.add_argument("--checkpoint", help="official CED weights (HF model.safetensors or .pt)")
    p.add_argument(
        "--ced-size",
        default="mini",
        choices=["tiny", "mini", "small", "base"],
        help="CED size when no checkpoint is given (random weights; default mini)",
    )
    p.add_argument("--embed-blocks", help="CED blocks to mean-pool, e.g. 7,10 (default: last)")
    p.add_argument(
        "--scorer",
        help="override the recipe's scorer (knn, rescaled_knn, rescaled_knn_domainwise, "
        "mahalanobis, mahalanobis_robust, mahalanobis_domainwise, mahalanobis_knn)",
    )
    p.add_argument("--k", type=int, default=16, help="K for k-NN rescaling (default 16)")
    p.add_argument("--epochs", type=int, help="override the recipe's training epochs")
    p.add_argument(
        "--steps", type=int, help="override the recipe's optimiser steps (stage2_ssl*; 0: none)"
    )
    p.add_argument(
        "--noise-dir",
        action="append",
        help="folder of background-noise recordings for augmentation (stage2_ssl*; repeatable)",
    )
    p.add_argument(
        "--augment-config",
        help="YAML/JSON file: {augmentation: {p: 0.5, range: [lo, hi]}} (stage2_ssl*)",
    )
    p.add_argument(
        "--supplemental-kind",
        choices=["clean", "noise"],
        help="what supplemental/ holds when the file names do not say (stage2_ssl*)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--separator",
        help="separator checkpoint (sonitor train-separator) in front of the encoder; its "
        "front-end must match the recipe's (stage1: ced, simclr: logmel)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    t0 = time.perf_counter()
    ev = evaluate(
        args.data_dir,
        args.out,
        recipe=args.recipe,
        options=_options(args),
        machines=args.machines,
        max_train=args.max_train,
        false_alarms_per_week=args.false_alarms_per_week,
        hop_seconds=args.hop_seconds,
        plots=not args.no_plots,
        workers=args.workers,
    )
    wall = time.perf_counter() - t0
    print(f"recipe: {ev.recipe} ({ev.why})")
    if ev.rows:
        from training.dcase_metrics import to_markdown

        print(to_markdown(ev.rows))
        print(f"official score (harmonic mean): {ev.official_score:.4f}")
        if ev.alarms:
            print("clips over the threshold per condition (alarm budget / DCASE 0.9):")
            print(to_markdown(ev.alarms))
    else:
        print("test labels unknown: wrote the DCASE submission files only")
    print(f"wall time: {wall:.1f} s; results in {args.out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from training import synth

    return synth.run(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="fit a recipe on DATA_DIR's training clips and score its test clips (DCASE style)",
        description=(
            "For every machine type in DATA_DIR (DCASE Task 2 layout, 2020-2025): fit on train/ "
            "(and supplemental/ where the recipe uses it), score test/, write the DCASE "
            "submission CSVs and, where labels are known, AUC(source), AUC(target), pAUC and the "
            "official harmonic mean (CSV, markdown, ROC and histogram PNGs)."
        ),
    )
    p.add_argument("data_dir", help="DCASE-layout folder: <root>/<machine>/{train,test}/*.wav")
    p.add_argument("--out", required=True, help="output folder")
    add_recipe_arguments(p)
    p.add_argument("--machines", nargs="+", help="only these machine types")
    p.add_argument("--max-train", type=int, help="at most N training clips per machine (seeded)")
    p.add_argument(
        "--false-alarms-per-week",
        type=float,
        default=1.0,
        help="budget of the alarm thresholds reported per condition in results.md (default 1); "
        "the decision files keep the DCASE 0.9 quantile, per condition",
    )
    p.add_argument(
        "--hop-seconds",
        type=float,
        default=1.0,
        help="the daemon's hop the budget is spent on (default 1)",
    )
    p.add_argument("--workers", type=int, default=2, help="audio loading threads (default 2)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(handler=cmd_evaluate)

    p = subparsers.add_parser(
        "synth",
        help="generate a SYNTHETIC DCASE-layout data set (tests, demos, benchmarks)",
        description="Seeded synthetic machine sounds with anomalies and domain shift.",
    )
    from training import synth

    synth.add_arguments(p)
    p.set_defaults(handler=cmd_synth)

    from training import cli_separator

    cli_separator.register(subparsers)
