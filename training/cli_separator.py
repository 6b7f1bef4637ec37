"""`sonitor train-separator` and `sonitor separate`: the spectral separator's subcommands."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CKPT_NAME = "separator.safetensors"


def cmd_train_separator(args: argparse.Namespace) -> int:
    import torch

    from monitor.errors import DataError
    from training.data import discover, load_clips, supplemental_kind
    from training.fit import subsample_train
    from training.recipes.base import MachineArrays
    from training.recipes.separation import separator_material
    from training.separator.masking import save_separator
    from training.separator.train import TrainConfig, evaluate_separator, train_separator

    if args.threads:
        torch.set_num_threads(args.threads)
    found = discover(args.data_dir)
    if args.machines:
        unknown = sorted(set(args.machines) - set(found))
        if unknown:
            raise DataError(f"{args.data_dir}: no machine type(s) {unknown}; found {sorted(found)}")
        found = {m: found[m] for m in args.machines}
    machines = {}
    for name, md in found.items():
        train = subsample_train(md.train, args.max_train, args.seed)
        machines[name] = MachineArrays(
            machine=name,
            waves=load_clips(train),
            domains=[c.domain for c in train],
            supplemental=load_clips(md.supplemental) if md.supplemental else None,
            supplemental_kind=supplemental_kind(md.supplemental) if md.supplemental else None,
        )
    clean, noise, why = separator_material(machines, tuple(args.noise_dir or ()))
    # hold out every 5th clean and noise clip to report separation quality on unseen audio
    held_c, held_z = clean[::5], noise[::5]
    fit_c = [c for i, c in enumerate(clean) if i % 5] or clean
    fit_z = [z for i, z in enumerate(noise) if i % 5] or noise
    print(f"clean: {len(clean)} clips ({json.dumps(why)}); noise: {len(noise)} clips")
    t0 = time.perf_counter()
    sep, hist = train_separator(
        fit_c,
        fit_z,
        frontend=args.frontend,
        config=TrainConfig(steps=args.steps, batch_size=args.batch_size),
        seed=args.seed,
        device=args.device,
        progress_bar=not args.quiet,
    )
    hist["clean_from"] = why
    held = [
        evaluate_separator(sep, held_c, held_z, snr, n=args.eval_mixtures, seconds=1.0)
        for snr in (-6.0, 0.0, 6.0)
    ]
    out = Path(args.out)
    path = save_separator(out / CKPT_NAME, sep, {"training": hist, "held_out": held})
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s -> {path}")
    for r in held:
        print(
            f"  held-out {r['snr_db']:+.0f} dB: SI-SDR {r['si_sdr_mixture']:+.1f} -> "
            f"{r['si_sdr_separated']:+.1f} dB (improvement {r['si_sdri']:+.1f}), mask accuracy "
            f"{r['mask_accuracy']:.3f}"
        )
    return 0


def cmd_separate(args: argparse.Namespace) -> int:
    from monitor.audio.io import load_audio, write_wav
    from training.separator.masking import load_separator, separate_waveform

    sep = load_separator(args.separator)
    if args.mask or args.floor is not None:
        sep.set_mask(args.mask or sep.mask_mode, args.floor or sep.mask_floor, sep.threshold)
    y = separate_waveform(sep, load_audio(args.input))
    write_wav(args.output, y)
    print(f"wrote {args.output} ({y.size / 16000:.1f} s, {sep.mask_mode} mask)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-separator",
        help="train the U-Net mask that separates machine sound from background noise",
        description=(
            "Mixtures of clean machine sound (supplemental clean clips, else normal training "
            "clips) and noise (supplemental noise-only clips and --noise-dir folders) at SNRs "
            "uniform in [-10, 10] dB; target the hard mask in the encoder's mel domain. Writes "
            "OUT/separator.safetensors (+ .json) and reports SI-SDR and mask accuracy on "
            "held-out mixtures."
        ),
    )
    p.add_argument("data_dir", help="DCASE-layout folder: <root>/<machine>/{train,supplemental}/")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--noise-dir", nargs="+", help="noise folders (searched recursively)")
    p.add_argument("--machines", nargs="+", help="only these machine types")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    p.add_argument("--batch-size", type=int, default=16, help="mixtures per step (default 16)")
    p.add_argument(
        "--frontend",
        default="ced",
        choices=["ced", "logmel"],
        help="mel domain: ced (stage1*, 64 mels) or logmel (simclr, 128 mels); default ced",
    )
    p.add_argument("--max-train", type=int, help="at most N training clips per machine")
    p.add_argument(
        "--eval-mixtures", type=int, default=8, help="held-out mixtures per SNR (default 8)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_train_separator)

    p = subparsers.add_parser(
        "separate",
        help="write the separated machine sound of a recording (for listening)",
        description=(
            "Applies the separator's mel mask to the recording's STFT (mapped back to linear "
            "frequency bins) and inverts it. Scoring never does this: there the mask acts on "
            "the encoder's mel frames directly."
        ),
    )
    p.add_argument("--separator", required=True, help="separator checkpoint (.safetensors)")
    p.add_argument("input", help="audio file (any WAV/FLAC, resampled to 16 kHz mono)")
    p.add_argument("output", help="WAV file to write")
    p.add_argument("--mask", choices=["soft", "hard"], help="override the checkpoint's mask mode")
    p.add_argument("--floor", type=float, help="override the mask floor (0 < floor <= 1)")
    p.set_defaults(handler=cmd_separate)
