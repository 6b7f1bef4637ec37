"""`sonitor export`: write a model package from a trained run, a data set, or CED weights.

    sonitor export --run RUN_DIR --out PKG
    sonitor export --data DATA_DIR [--recipe NAME ...] --out PKG [--save-run RUN_DIR]
    sonitor export --checkpoint ced-mini.safetensors [--data DATA_DIR] --out PKG

Without ``--data``, ``--checkpoint`` gives a package with no machines yet: add them with
`sonitor enroll`, no training needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from monitor.errors import SonitorError
from training.cli import EXTRA, REQUIRES  # noqa: F401 - read by monitor.cli.sonitor


def _on_grid(seconds: float, hop: int, what: str, recipe: str) -> float:
    """``seconds`` if it is a whole number of frame hops, else a SonitorError naming the option."""
    from monitor.audio.frontend import SAMPLE_RATE

    n = int(round(seconds * SAMPLE_RATE))
    if n <= 0 or n % hop:
        k = max(1, n // hop)
        raise SonitorError(
            f"{what} {seconds:g} = {n} samples is not a multiple of the {hop}-sample frame hop "
            f"of recipe {recipe!r}: use e.g. {k * hop / SAMPLE_RATE:g} or "
            f"{(k + 1) * hop / SAMPLE_RATE:g}"
        )
    return seconds


def _data_grid(args: argparse.Namespace) -> tuple[float | None, float]:
    """Window and hop of a `--data` export on the recipe's frame grid, settled BEFORE training.

    Default window: the most common training clip length cut down to a whole number of frame
    hops (10 s clips give 9.984 s for the 512-sample hop of simclr, 10 s for CED's 160); default
    hop: the multiple of the frame hop nearest to 1 s. Explicit values off the grid are refused
    here, not after minutes of training. The window is None when there are no training clips
    (`fit_recipe` says so).
    """
    from monitor.audio.frontend import SAMPLE_RATE
    from training.cli import _options
    from training.fit import common_seconds, select_machines, subsample_train
    from training.recipes.registry import recipe_class, resolve_auto

    options = _options(args)
    name = resolve_auto(options)[0] if args.recipe == "auto" else args.recipe
    frame_hop = recipe_class(name).frame_hop
    if args.hop_seconds:
        hop = _on_grid(args.hop_seconds, frame_hop, "--hop-seconds", name)
    else:
        hop = max(1, round(SAMPLE_RATE / frame_hop)) * frame_hop / SAMPLE_RATE
    if args.window_seconds:
        return _on_grid(args.window_seconds, frame_hop, "--window-seconds", name), hop
    clips = [
        c
        for md in select_machines(args.data, args.machines).values()
        for c in subsample_train(md.train, args.max_train, options.seed)
    ]
    if not clips:
        return None, hop
    window = common_seconds(clips, SAMPLE_RATE, hop=frame_hop)
    if window <= 0:
        raise SonitorError(f"{args.data}: training clips shorter than one frame hop of {name!r}")
    return window, hop


def _train_from_data(args: argparse.Namespace, window: float | None):
    """Fit the recipe on DATA_DIR; returns (recipe name, model, machine specs, training summary,
    window seconds, parity clips, labelled test clips per machine for the int8 drift or None)."""
    import torch

    from export.package_writer import MachineSpec
    from training.cli import _options
    from training.data import load_clips
    from training.fit import fit_recipe

    # every clip is cut (or padded) to the package window: banks are embedded exactly as the
    # daemon will embed its windows
    fitted = fit_recipe(
        args.data,
        args.recipe,
        _options(args),
        machines=args.machines,
        max_train=args.max_train,
        seconds=window or "common",
        supplemental=False,  # banks and encoder from train/ only, whatever the recipe
    )
    rec, arrays, window = fitted.recipe, fitted.arrays, fitted.seconds
    summary: dict = {"root": str(Path(args.data).resolve()), "machines": {}}
    for m, a in arrays.items():
        summary["machines"][m] = {
            "n_train": len(a.domains),
            "n_source": a.domains.count("source"),
            "n_target": a.domains.count("target"),
            "window_seconds": window,
        }
    specs = [
        MachineSpec(
            m,
            rec.train_embeddings[m],
            arrays[m].domains,
            rec.scorers[m],
            levels=MachineSpec.levels_of(arrays[m].waves),
        )
        for m in fitted.machines
    ]
    model = getattr(rec, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise SonitorError(
            f"recipe {rec.name!r} has no neural encoder to export (packages hold an ONNX "
            "encoder and banks); use stage1 or simclr"
        )
    parity = next(iter(arrays.values())).waves[:4]  # real clips for the parity check
    test = None
    if args.int8:
        test = {}
        for m, md in fitted.machines.items():
            labelled = [c for c in md.test if c.label is not None]
            if labelled:
                test[m] = (
                    load_clips(labelled, workers=2, seconds=window),
                    np.array([c.label == "anomaly" for c in labelled], int),
                    [c.domain for c in labelled],
                )
    summary["recipe"] = rec.describe()
    return rec.name, model, specs, summary, window, parity, test


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from export.package_writer import build_package
    from monitor.model.package import CalibrationDefaults

    torch.set_num_threads(max(1, args.torch_threads))
    if not (args.run or args.data or args.checkpoint):
        raise SonitorError("give --run DIR, --data DIR or --checkpoint PATH")
    if args.run and (args.data or args.checkpoint):
        raise SonitorError("--run cannot be combined with --data or --checkpoint")
    if args.run and args.separator:
        raise SonitorError(
            "--separator with --run: the run's banks were embedded without it; export from "
            "--data with --separator instead"
        )
    parity = test = None
    if args.run:
        from export.run_dir import load_run

        run = load_run(args.run)
        recipe, model, specs = run.meta["recipe"], run.model, run.machines
        summary = run.meta.get("training_data", {})
        window = args.window_seconds or run.meta["window_seconds"]
        hop = args.hop_seconds or run.meta.get("hop_seconds", 1.0)
    elif args.data:
        if args.checkpoint and args.recipe == "auto":
            args.recipe = "stage1"
        window, hop = _data_grid(args)
        recipe, model, specs, summary, window, parity, test = _train_from_data(args, window)
        if args.save_run:
            from export.run_dir import save_run

            save_run(
                args.save_run,
                recipe=recipe,
                model=model,
                machines=specs,
                window_seconds=window,
                hop_seconds=hop,
                training_data=summary,
            )
            print(f"run saved in {args.save_run}")
    else:
        from training.models.ced import load_ced_checkpoint

        blocks = tuple(int(b) for b in args.embed_blocks.split(",")) if args.embed_blocks else (11,)
        model = load_ced_checkpoint(args.checkpoint, embed_blocks=blocks)
        if args.separator:  # no banks yet: enrolment will embed through the separator
            from training.separator.masking import insert_separator, load_separator

            insert_separator(model, load_separator(args.separator))
        recipe, specs = "stage1", []
        summary = {"checkpoint": str(args.checkpoint), "machines": {}}
        window, hop = args.window_seconds or 10.0, args.hop_seconds or 1.0
    default_scorer = None
    if not specs:
        # raw pretrained embeddings: Euclidean distance (cosine suits embeddings trained to be
        # compared by angle, as "Keeping the Balance" (Wilkinghoff et al.) uses it)
        default_scorer = (args.scorer or "rescaled_knn", {"k": args.k, "metric": "euclidean"})
    path, report = build_package(
        args.out,
        model,
        specs,
        recipe=recipe,
        window_seconds=window,
        hop_seconds=hop,
        parity_clips=parity,
        int8=args.int8,
        precision=args.precision,
        drift_data=test,
        training_data=summary,
        default_scorer=default_scorer,
        calibration=CalibrationDefaults(
            false_alarms_per_week=args.false_alarms_per_week, burst_seconds=args.burst_seconds
        ),
        max_bank_size=args.max_bank,
        archive=args.archive,
    )
    emb = report["embeddings"]
    print(f"package written: {path}")
    print(f"  machines: {', '.join(s.name for s in specs) or 'none yet (use sonitor enroll)'}")
    print(
        f"  parity onnxruntime vs PyTorch: max abs diff {emb['full']['max_abs_diff']:.3g}, "
        f"min cosine {emb['full']['min_cosine']:.8f}"
        + (f"; streaming split {emb['split']['max_abs_diff']:.3g}" if "split" in emb else "")
    )
    if "int8_drift" in report:
        d = report["int8_drift"]
        per = d["machines"].values()
        line = (
            f"  int8 drift vs fp32: embedding cosine min {d['embedding']['min_cosine']:.6f}, "
            f"score rank correlation min {min(m['spearman'] for m in per):.4f}, decision "
            f"agreement min {min(m['decision_agreement'] for m in per):.3f}"
            if per
            else f"  int8 drift vs fp32: embedding cosine min {d['embedding']['min_cosine']:.6f}"
        )
        if "official_score_change" in d:
            line += (
                f", official score {d['official_score_fp32']:.4f} -> {d['official_score_int8']:.4f}"
            )
        print(line + " (all numbers in manifest.json: encoder.int8.drift)")
    if args.archive:
        print(f"  archive: {args.archive}")
    return 0


# `sonitor demo` is registered here too (this module's docstring is `sonitor export --help`): it
# trains, exports, enrols and runs the daemon, so it belongs to the top layer, beside export.
def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on a fresh machine: synthetic audio -> model -> package -> live alert."""
    from export.demo import run_demo

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SonitorError(f"--out {out}: exists and is not a folder")
    return run_demo(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    from training.cli import add_recipe_arguments

    p = subparsers.add_parser(
        "export",
        help="write a model package (ONNX encoder + banks + thresholds) for the daemon",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="package folder to write")
    p.add_argument("--run", type=Path, help="a trained run directory (see export/run_dir.py)")
    p.add_argument("--data", type=Path, help="train the recipe on this DCASE-layout data set")
    p.add_argument("--machines", nargs="+", help="only these machine types of --data")
    p.add_argument("--max-train", type=int, help="at most this many training clips per machine")
    p.add_argument("--save-run", type=Path, help="also save the trained run here (with --data)")
    p.add_argument(
        "--window-seconds",
        type=float,
        help="analysis window (default: the training clip length, cut to the recipe's frame "
        "hop; 10 with --checkpoint alone)",
    )
    p.add_argument(
        "--hop-seconds",
        type=float,
        help="window hop of the daemon (default: the multiple of the frame hop nearest to 1)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="add an int8 encoder (MatMul weights only) and check its drift",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="the package's default encoder precision (default fp32)",
    )
    p.add_argument(
        "--false-alarms-per-week",
        type=float,
        default=1.0,
        help="false-alarm budget per machine: each operating condition's threshold is fitted to "
        "it from the leave-one-out scores (default 1)",
    )
    p.add_argument(
        "--burst-seconds",
        type=float,
        default=2.0,
        help="foreign sounds up to this long never raise an alarm (the default alert rule's "
        "persistence; default 2)",
    )
    p.add_argument(
        "--max-bank",
        type=int,
        default=4096,
        help="bank size cap; larger banks get a greedy coreset (default 4096)",
    )
    p.add_argument("--archive", type=Path, help="also write the single-file archive (.tar)")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads (default 1)")
    add_recipe_arguments(p)
    p.set_defaults(handler=cmd_export)

    p = subparsers.add_parser(
        "demo",
        help="the main job end to end: synthetic audio -> model -> package -> daemon -> alert",
        description=(
            "Needs no microphone, broker or downloaded model. Generates SYNTHETIC machine "
            "sound, trains the default recipe briefly, exports the ONNX package, enrols normal "
            "sound, replays a recording with an injected fault through the daemon and prints "
            "the live scores and the alert. Exit 0 only when the fault raised the alert and "
            "nothing raised one before it."
        ),
    )
    from export import demo

    demo.add_arguments(p)
    p.set_defaults(handler=cmd_demo)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience
    parser = argparse.ArgumentParser(prog="sonitor")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
