"""The SYNTHETIC data set in the DCASE Task 2 layout: which clips, their names, the files.

`generate_dataset` plans every clip (machine type, split, domain, label, the name-visible
attributes), renders it with `training.synth_sound` and writes the DCASE 2025 layout with
`attributes_00.csv`. The data are labelled SYNTHETIC in the README, a marker file and every WAV's
comment: numbers measured on them say nothing about real machines. Each clip is seeded on its
own, so the bytes do not depend on the number of worker processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from monitor.audio.io import write_wav
from monitor.errors import DataError
from training.synth_sound import SNR_DB, SR, ClipSpec, Recipe, recipe_for, render_clip

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER = "SYNTHETIC"


# ---------------------------------------------------------------------------- the data set


def _speeds(r: Recipe) -> tuple[list[int], int]:
    """Source speeds (three settings around nominal) and the target speed, rounded to 10 rpm."""
    src = [int(round(r.rpm * f / 10) * 10) for f in (0.96, 1.0, 1.04)]
    return src, int(round(r.rpm * r.target_speed / 10) * 10)


def plan(
    machines: Sequence[str],
    n_train_source: int,
    n_train_target: int,
    n_test_per_group: int,
    n_supplemental: int,
    seconds: float,
    seed: int,
    difficulty: float,
) -> list[ClipSpec]:
    """Every clip of the data set with its name-visible attributes, in a fixed order.

    Source: one of three speeds, load 40/60 %, factory background. Target: shifted speed, load
    85 %, the machine's target background. Supplemental alternates per machine (in the given
    order): clean source machine sound, then noise only (source and target backgrounds).
    """
    specs: list[ClipSpec] = []
    common = {"seed": seed, "seconds": seconds, "difficulty": difficulty}
    for mi, machine in enumerate(machines):
        r = recipe_for(machine)
        specs += [
            _spec(machine, r, "train", "source", "normal", i, common) for i in range(n_train_source)
        ]
        specs += [
            _spec(machine, r, "train", "target", "normal", i, common) for i in range(n_train_target)
        ]
        for domain in ("source", "target"):
            for label in ("normal", "anomaly"):
                specs += [
                    _spec(machine, r, "test", domain, label, i, common)
                    for i in range(n_test_per_group)
                ]
        for i in range(n_supplemental):
            if mi % 2 == 0:
                specs.append(_spec(machine, r, "supplemental", "source", "clean", i, common))
            else:  # noise only: source and target backgrounds alternate
                domain = "source" if i % 2 == 0 else "target"
                specs.append(_spec(machine, r, "supplemental", domain, "noise", i, common))
    return specs


def _spec(machine: str, r: Recipe, split: str, domain: str, label: str, i: int, common: dict):
    """One clip's name-visible attributes, drawn from its own stream (independent of audio)."""
    rng = ClipSpec(machine, split, domain, label, i, 0, 0, "", **common).rng(0)
    src_speeds, tgt_speed = _speeds(r)
    if domain == "source":
        speed, load, noise = int(rng.choice(src_speeds)), int(rng.choice([40, 60])), "factory"
    else:
        speed, load, noise = tgt_speed, 85, r.target_noise
    if label == "clean":
        noise = "none"
    return ClipSpec(machine, split, domain, label, i, speed, load, noise, **common)


def _render_and_write(args: tuple[str, list[ClipSpec]]) -> int:
    out_dir, specs = args
    for spec in specs:
        write_wav(
            Path(out_dir) / spec.relpath,
            render_clip(spec),
            SR,
            "PCM_16",
            comment=f"{MARKER} sonitor training.synth seed={spec.seed}",
        )
    return len(specs)


def _check_params(machines, counts: dict[str, int], seconds, seed, workers, difficulty) -> None:
    if not machines:
        raise DataError("machines: give at least one machine type")
    for m in machines:
        if not m or "/" in m or "\\" in m or m.startswith(".") or m != m.strip():
            raise DataError(f"machines: {m!r} is not usable as a folder name")
    if len(set(machines)) != len(machines):
        raise DataError(f"machines: duplicates in {list(machines)}")
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(f"{name} must be a whole number >= 0, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a whole number >= 0, got {seed!r}")
    if not seconds > 0:
        raise DataError(f"seconds must be > 0, got {seconds!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"workers must be a whole number >= 1, got {workers!r}")
    if not difficulty > 0:
        raise DataError(f"difficulty must be > 0, got {difficulty!r}")


def _read_marker(out: Path) -> dict | None:
    """The JSON part of an earlier run's SYNTHETIC marker, or None."""
    try:
        return json.loads((out / MARKER).read_text().split("\n", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def _prepare_out(out: Path, params: dict, overwrite: bool) -> bool:
    """Make `out` ready; True if it already holds this exact complete data set (reuse it)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        earlier = _read_marker(out)
        if earlier is not None and earlier.get("complete") and earlier.get("parameters") == params:
            return True
        if not overwrite:
            raise DataError(
                f"{out}: folder is not empty (and holds no complete SYNTHETIC set made with "
                "these parameters); choose a new folder or pass overwrite"
            )
        if earlier is None:
            raise DataError(
                f"{out}: not a sonitor SYNTHETIC data set (no {MARKER} file); "
                "refusing to overwrite it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return False


def generate_dataset(
    out_dir: str | Path,
    machines: Sequence[str] = ("fan", "pump", "gearbox"),
    n_train_source: int = 990,
    n_train_target: int = 10,
    n_test_per_group: int = 50,
    n_supplemental: int = 100,
    seconds: float = 10.0,
    seed: int = 0,
    workers: int = 2,
    difficulty: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Write a SYNTHETIC DCASE-2025-layout data set into `out_dir` and return its path.

    `<out>/<machine>/{train,test,supplemental}/section_00_...wav` (16-bit, 16 kHz), each
    machine's `attributes_00.csv`, and at the root `README.md` and a `SYNTHETIC` marker that
    record how the data were made. `difficulty` > 1 makes anomalies subtler, < 1 louder.
    A folder that already holds a complete set made with the same parameters is reused as it
    is; `overwrite` replaces an earlier SYNTHETIC set (never any other folder).
    """
    machines = tuple(machines)
    counts = {
        "n_train_source": n_train_source,
        "n_train_target": n_train_target,
        "n_test_per_group": n_test_per_group,
        "n_supplemental": n_supplemental,
    }
    _check_params(machines, counts, seconds, seed, workers, difficulty)
    params = {
        "machines": list(machines),
        **counts,
        "seconds": float(seconds),
        "seed": seed,
        "difficulty": float(difficulty),
        "sample_rate": SR,
        "format_version": FORMAT_VERSION,
    }
    out = Path(out_dir)
    if _prepare_out(out, params, overwrite):
        log.info("%s already holds this SYNTHETIC data set; reusing it", out)
        return out
    _write_marker(out, params, machines, complete=False)  # claims the folder before any clip
    specs = plan(machines, seconds=seconds, seed=seed, difficulty=difficulty, **counts)
    t0 = time.perf_counter()
    if workers == 1 or len(specs) < 8:
        _render_and_write((str(out), specs))
    else:
        chunks = [specs[i :: workers * 4] for i in range(workers * 4)]
        # fork where the OS has it: works from scripts without a __main__ guard (spawn and
        # forkserver re-import the caller's main module); workers only run numpy and scipy.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            list(pool.map(_render_and_write, [(str(out), c) for c in chunks if c]))
    elapsed = time.perf_counter() - t0
    for machine in machines:
        _write_attributes(out / machine, [s for s in specs if s.machine == machine])
    _write_readme(out, params, machines)
    _write_marker(out, params, machines, complete=True)
    log.debug("SYNTHETIC data set: %d clips in %.1f s -> %s", len(specs), elapsed, out)
    return out


def _write_attributes(machine_dir: Path, specs: list[ClipSpec]) -> None:
    """`attributes_00.csv` as DCASE 2023+ ships it: file_name,d1p,d1v,d2p,d2v,d3p,d3v."""
    machine_dir.mkdir(parents=True, exist_ok=True)
    lines = ["file_name,d1p,d1v,d2p,d2v,d3p,d3v"]
    for s in specs:
        cells = [c for kv in s.attributes for c in kv]
        cells += [""] * (6 - len(cells))
        lines.append(",".join([s.relpath, *cells]))
    (machine_dir / "attributes_00.csv").write_text("\n".join(lines) + "\n")


def _write_marker(out: Path, params: dict, machines: Sequence[str], complete: bool) -> None:
    recipes = {m: asdict(recipe_for(m)) for m in machines}
    body = {"complete": complete, "parameters": params, "recipes": recipes}
    (out / MARKER).write_text(
        "SYNTHETIC DATA: procedurally generated by sonitor (training.synth); no recording of a "
        "real machine.\n" + json.dumps(body, indent=2) + "\n"
    )


def _write_readme(out: Path, params: dict, machines: Sequence[str]) -> None:
    rows = []
    for m in machines:
        r = recipe_for(m)
        src, tgt = _speeds(r)
        kind = "clean machine sound" if machines.index(m) % 2 == 0 else "noise only"
        rows.append(
            f"| {m} | {', '.join(map(str, src))} rpm, load 40/60 %, factory | "
            f"{tgt} rpm, load 85 %, {r.target_noise} | {kind} |"
        )
    p = params
    (out / "README.md").write_text(f"""# SYNTHETIC machine-sound data set (DCASE Task 2 layout)

**These recordings are SYNTHETIC.** They were generated procedurally by `sonitor synth`
(`training/synth.py`, format version {FORMAT_VERSION}); no real machine was recorded. Scores
measured on them test the pipeline and compare methods with each other; they say nothing about
accuracy on real machines.

Reproduce: `python -m training.synth OUT --machines {" ".join(machines)} --n-train-source \
{p["n_train_source"]} --n-train-target {p["n_train_target"]} --n-test-per-group \
{p["n_test_per_group"]} --n-supplemental {p["n_supplemental"]} --seconds {p["seconds"]:g} \
--seed {p["seed"]} --difficulty {p["difficulty"]:g}` (the worker count does not change the bytes).

## Layout
`<machine>/train/section_00_<source|target>_train_normal_NNNN_speed_<rpm>_load_<%>_noise_<type>.wav`,
`<machine>/test/section_00_<source|target>_test_<normal|anomaly>_NNNN_...wav`
({p["n_test_per_group"]} per domain x label),
`<machine>/supplemental/section_00_<machine|noise>_<domain>_NNNN_...wav`
(DCASE 2025 style: `machine` = clean machine sound, `noise` = background only), and
`<machine>/attributes_00.csv`. 16-bit PCM, {SR} Hz, mono, {p["seconds"]:g} s.

## How the sound is made
Each machine type mixes rotating harmonics (fundamental = speed / 60 with slow speed jitter),
coloured flow noise modulated by the blade/vane/tooth pass, and periodic impacts ringing a
resonance, in its own proportions. Every clip draws its own small variations (speed, harmonic
levels, flow level, gain, background SNR). Background: factory (mains hum, rumble, clanks) in
the source domain at {SNR_DB["source"][0]:g} to {SNR_DB["source"][1]:g} dB SNR; pink or \
babble-like noise in the target domain at {SNR_DB["target"][0]:g} to {SNR_DB["target"][1]:g} dB SNR.

| machine | source domain | target domain | supplemental |
|---|---|---|---|
{chr(10).join(rows)}

Anomalies (test only; one per anomalous clip, type and severity drawn at random, severity
divided by difficulty {p["difficulty"]:g}): bearing-fault impulse trains at a non-integer order
ringing a 2-6 kHz resonance; imbalance (amplitude modulation at the rotation rate, stronger 1x);
rubbing (band-limited noise bursts once per revolution); a harmonic shifted, faded or an extra
half-order tone. File names carry only normal/anomaly, never the fault type.

Parameters: `{json.dumps(p)}`
""")


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `sonitor synth` / `python -m training.synth`."""
    parser.add_argument("out", help="output folder (new or empty)")
    parser.add_argument(
        "--machines",
        nargs="+",
        default=["fan", "pump", "gearbox"],
        help="machine types (fan, pump, gearbox have hand-made recipes; other "
        "names get a stable random one)",
    )
    parser.add_argument("--n-train-source", type=int, default=990)
    parser.add_argument("--n-train-target", type=int, default=10)
    parser.add_argument(
        "--n-test-per-group", type=int, default=50, help="test clips per domain x normal/anomaly"
    )
    parser.add_argument("--n-supplemental", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument(
        "--difficulty", type=float, default=1.0, help=">1 subtler anomalies, <1 louder"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier SYNTHETIC data set in OUT"
    )


def run(args: argparse.Namespace) -> int:
    """Generate from parsed arguments; prints where the SYNTHETIC data went."""
    t0 = time.perf_counter()
    out = generate_dataset(
        args.out,
        machines=tuple(args.machines),
        n_train_source=args.n_train_source,
        n_train_target=args.n_train_target,
        n_test_per_group=args.n_test_per_group,
        n_supplemental=args.n_supplemental,
        seconds=args.seconds,
        seed=args.seed,
        workers=args.workers,
        difficulty=args.difficulty,
        overwrite=args.overwrite,
    )
    n = sum(1 for _ in out.rglob("*.wav"))
    print(f"SYNTHETIC data set ready: {n} clips in {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synth",
        description="Generate a seeded SYNTHETIC machine-sound data set in the DCASE layout.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except DataError as exc:
        print(f"synth: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
