"""The model package of the false-alarm benchmark: trained once, enrolled, cached.

The same calls as `sonitor export --data` and `sonitor demo` (`training.fit.fit_recipe` with the
default recipe `simclr`, `export.package_writer.build_package`), with the recipe's own step
budget for this many clips (about 7 minutes on one CPU core), then
`monitor.model.enroll.enroll` (`sonitor enroll`) of the monitored SYNTHETIC unit's own normal
sound in both of its conditions (`--condition source`, `--condition target`), from takes that
no stream replays. Training data: a SYNTHETIC DCASE set of one machine type (its `train/` source
clips and a few target clips) and, when ``../shared/data`` is there, the REAL MIMII ID 00
training split as a second machine type.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fab_audio import SR, RealMachine, regimes, synth_normal

STAMP = "fab-package.json"


@dataclass(frozen=True)
class TrainSizes:
    """How much training; the package is rebuilt whenever any of these change."""

    synth_source: int  # SYNTHETIC source-domain training clips
    synth_target: int  # SYNTHETIC target-domain training clips (DCASE's "few")
    real_train: int  # REAL MIMII ID 00 training clips (the rest are held out)
    clip_seconds: float  # training clip = analysis window (a multiple of 512 samples)
    hop_seconds: float  # daemon hop
    steps: int  # SimCLR optimiser steps
    batch_size: int
    crop_seconds: float
    enroll_seconds: float  # the unit's normal sound enrolled per condition
    seed: int = 0


def data_folder(out: Path, machine: str, sizes: TrainSizes, real: RealMachine | None) -> Path:
    """``out/data``: the SYNTHETIC machine type and (linked, under DCASE 2023 names) the REAL
    training clips; test splits are not needed (no offline score here)."""
    from training import synth

    synth_dir = synth.generate_dataset(
        out / "synth",
        machines=(machine,),
        n_train_source=sizes.synth_source,
        n_train_target=sizes.synth_target,
        n_test_per_group=0,
        n_supplemental=0,
        seconds=sizes.clip_seconds,
        seed=sizes.seed,
        overwrite=True,
    )
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    os.symlink((synth_dir / machine).resolve(), data / machine)
    if real is not None:
        train = data / "mimii_id00" / "train"
        train.mkdir(parents=True)
        for i, p in enumerate(real.train):
            os.symlink(p.resolve(), train / f"section_00_source_train_normal_{i:04d}.wav")
    return data


def build(
    out: Path, machine: str, sizes: TrainSizes, real: RealMachine | None, say: Any = print
) -> tuple[Path, dict[str, Any]]:
    """The package (cached: rebuilt only when the sizes or the data change); its build record."""
    pkg = out / "package"
    want = {
        "sizes": asdict(sizes),
        "machine": machine,
        "real_train": [p.name for p in real.train] if real else [],
    }
    stamp = out / STAMP
    if (pkg / "manifest.json").exists() and stamp.exists():
        record = json.loads(stamp.read_text())
        if record.get("want") == want:
            say(f"package: cached {pkg} (built in {record['timings']['total_s']:.0f} s)")
            return pkg, record
    t0 = time.perf_counter()
    data = data_folder(out, machine, sizes, real)
    t_data = time.perf_counter()
    rec, specs, parity = _train(data, sizes)
    t_train = time.perf_counter()
    _export(pkg, rec, specs, parity, sizes)
    t_export = time.perf_counter()
    enrolled = _enroll_unit(pkg, out / "enrol", machine, sizes)
    t_end = time.perf_counter()
    record = {
        "want": want,
        "recipe": rec.describe(),
        "machines": {s.name: len(s.domains) for s in specs},
        "enrolled": enrolled,
        "timings": {
            "data_s": t_data - t0,
            "train_s": t_train - t_data,
            "export_s": t_export - t_train,
            "enrol_s": t_end - t_export,
            "total_s": t_end - t0,
        },
    }
    stamp.write_text(json.dumps(record, indent=1, default=str))
    say(f"package: built {pkg} in {t_end - t0:.0f} s ({json.dumps(record['timings'])})")
    return pkg, record


def _train(data: Path, sizes: TrainSizes) -> tuple[Any, list[Any], np.ndarray]:
    from export.package_writer import MachineSpec
    from training.fit import fit_recipe
    from training.recipes.base import RecipeOptions
    from training.train_utils import one_torch_thread

    simclr = {
        "steps": sizes.steps,
        "batch_size": sizes.batch_size,
        "crop_seconds": sizes.crop_seconds,
    }
    opts = RecipeOptions(seed=sizes.seed, progress=False, extra={"simclr": simclr})
    with one_torch_thread():
        fitted = fit_recipe(data, "auto", opts, seconds=sizes.clip_seconds, supplemental=False)
    rec = fitted.recipe
    specs = []
    for m in fitted.machines:
        a = fitted.arrays[m]
        kw = {"levels": MachineSpec.levels_of(a.waves)} if hasattr(MachineSpec, "levels_of") else {}
        specs.append(MachineSpec(m, rec.train_embeddings[m], a.domains, rec.scorers[m], **kw))
    parity = next(iter(fitted.arrays.values())).waves[:4].copy()
    return rec, specs, parity


def _export(pkg: Path, rec: Any, specs: list[Any], parity: np.ndarray, sizes: TrainSizes) -> None:
    from export.package_writer import build_package
    from training.train_utils import one_torch_thread

    if pkg.exists():
        shutil.rmtree(pkg)
    summary = {
        "synthetic": True,
        "note": "SYNTHETIC + REAL MIMII ID 00 (benchmarks/fab_package.py)",
        "machines": {s.name: {"n_train": len(s.domains)} for s in specs},
        "recipe": rec.describe(),
    }
    with one_torch_thread():
        build_package(
            pkg,
            rec.model,
            specs,
            recipe=rec.name,
            parity_clips=parity,
            training_data=summary,
            window_seconds=sizes.clip_seconds,
            hop_seconds=sizes.hop_seconds,
        )


def _enroll_unit(pkg: Path, folder: Path, machine: str, sizes: TrainSizes) -> dict[str, Any]:
    """`sonitor enroll --condition C` of the unit's own normal sound in each condition."""
    from monitor.audio.io import write_wav
    from monitor.model.enroll import enroll

    folder.mkdir(parents=True, exist_ok=True)
    done = {}
    for i, (cond, regime) in enumerate(regimes(machine).items()):
        x = synth_normal(machine, regime, sizes.enroll_seconds, seed=1000 + i)
        wav = write_wav(
            folder / f"{machine}-{cond}.wav",
            x,
            SR,
            "PCM_16",
            comment="SYNTHETIC sonitor bench_false_alarms enrolment",
        )
        res = enroll(pkg, machine, [wav], condition=cond)
        done[cond] = res.summary()
    return done
