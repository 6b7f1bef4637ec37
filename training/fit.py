"""Fit a recipe on a DCASE-layout data folder: the one path behind `sonitor evaluate`,
`sonitor export --data` and `sonitor demo`.

The steps, in order: find the machine types in the folder (or only the ones asked for), keep at
most `max_train` training clips of each (seeded; every target-domain clip is kept), load them
(cut or padded to `seconds` when given, so that a package's banks are embedded exactly as the
daemon embeds its windows), let the recipe train what its machine types share (`prepare`), then
fit each machine type in turn (`fit_machine`). A caller that must act on one machine type before
the next is fitted (score its test clips, free its waveforms) passes `on_fitted`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from monitor.errors import DataError
from training.data import (
    ClipInfo,
    MachineData,
    clip_kind,
    discover,
    load_clips,
    supplemental_kind,
)
from training.recipes.base import MachineArrays, Recipe, RecipeOptions
from training.recipes.registry import make_recipe

log = logging.getLogger(__name__)


@dataclass
class FittedRecipe:
    """A recipe fitted on every selected machine type, and the material it was fitted on."""

    recipe: Recipe
    why: str  # why this recipe: `--recipe NAME`, or what `auto` saw
    machines: dict[str, MachineData]  # the machine types fitted, as discovered, in fit order
    train: dict[str, list[ClipInfo]]  # the training clips each one was fitted on
    arrays: dict[str, MachineArrays]  # their waveforms (a caller may empty them once used)
    seconds: float | None  # the length every clip was cut or padded to; None: its own length
    timings: dict[str, float] = field(default_factory=dict)  # load_train_s, prepare_s, fit_s


def select_machines(
    data_dir: str | Path, machines: list[str] | None = None
) -> dict[str, MachineData]:
    """The machine types of `data_dir`, or only `machines` (in that order); unknown names raise."""
    found = discover(data_dir)
    if machines:
        unknown = sorted(set(machines) - set(found))
        if unknown:
            raise DataError(f"{data_dir}: no machine type(s) {unknown}; found {sorted(found)}")
        found = {m: found[m] for m in machines}
    return found


def subsample_train(clips: list[ClipInfo], n: int | None, seed: int) -> list[ClipInfo]:
    """Keep at most n training clips, keeping every target clip (they are few and precious)."""
    if n is None or len(clips) <= n:
        return clips
    target = [c for c in clips if c.domain == "target"]
    rest = [c for c in clips if c.domain != "target"]
    rng = np.random.default_rng(seed)
    keep = max(n - len(target), 0)
    idx = np.sort(rng.choice(len(rest), size=min(keep, len(rest)), replace=False))
    return [rest[i] for i in idx] + target


def common_seconds(clips: list[ClipInfo], sample_rate: int = 16000, hop: int = 160) -> float:
    """The most common clip length (ties: the longest), on the 10 ms frame grid."""
    from monitor.audio.io import audio_info

    counts = Counter(round(audio_info(c.path).duration_s * sample_rate) for c in clips)
    n = max(counts, key=lambda k: (counts[k], k))
    return (n - n % hop) / sample_rate


def load_machine(
    md: MachineData,
    train: list[ClipInfo] | None = None,
    *,
    supplemental: bool = False,
    seconds: float | None = None,
    workers: int = 2,
) -> MachineArrays:
    """One machine type's training clips (`train`, default all of them) as waveforms; with
    `supplemental`, also its supplemental clips and their kind (from the names)."""
    train = md.train if train is None else train
    if not train:
        raise DataError(f"{md.machine}: no training clips found")
    arrays = MachineArrays(
        machine=md.machine,
        waves=load_clips(train, workers=workers, seconds=seconds),
        domains=[c.domain for c in train],
    )
    if supplemental:
        arrays.supplemental_kind = supplemental_kind(md.supplemental) if md.supplemental else None
        if md.supplemental:
            arrays.supplemental = load_clips(md.supplemental, workers=workers, seconds=seconds)
            arrays.supplemental_kinds = [clip_kind(c.path) for c in md.supplemental]
    return arrays


def fit_recipe(
    data_dir: str | Path,
    recipe: str = "auto",
    options: RecipeOptions | None = None,
    *,
    machines: list[str] | None = None,
    max_train: int | None = None,
    seconds: float | Literal["common"] | None = None,
    supplemental: bool | None = None,
    workers: int = 2,
    on_fitted: Callable[[FittedRecipe, str], None] | None = None,
) -> FittedRecipe:
    """Fit `recipe` (or what `auto` picks) on the training clips of `data_dir`.

    `machines`: only these machine types. `max_train`: at most this many training clips each
    (drawn with `options.seed`). `seconds`: cut or pad every clip to this length; ``"common"``:
    to the most common training clip length; None: each clip set keeps its most common length.
    `supplemental`: load the supplemental clips (default: when the recipe uses them).
    `options.progress` gives the recipes' progress bars. `on_fitted(fitted, machine)` runs after
    each machine type is fitted, before the next one is.
    """
    options = options or RecipeOptions()
    found = select_machines(data_dir, machines)
    rec, why = make_recipe(recipe, options)
    log.info("recipe %s (%s)", rec.name, why)
    if supplemental is None:
        supplemental = rec.uses_supplemental

    t0 = time.perf_counter()
    train = {m: subsample_train(md.train, max_train, options.seed) for m, md in found.items()}
    empty = [m for m, clips in train.items() if not clips]
    if empty:
        raise DataError(f"{empty[0]}: no training clips found")
    if seconds == "common":
        seconds = common_seconds([c for clips in train.values() for c in clips])
    arrays = {
        m: load_machine(md, train[m], supplemental=supplemental, seconds=seconds, workers=workers)
        for m, md in found.items()
    }
    fitted = FittedRecipe(rec, why, found, train, arrays, seconds)
    fitted.timings["load_train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rec.prepare(arrays)
    fitted.timings["prepare_s"] = time.perf_counter() - t0

    fitted.timings["fit_s"] = 0.0
    for m in found:
        t0 = time.perf_counter()
        rec.fit_machine(arrays[m])
        fitted.timings["fit_s"] += time.perf_counter() - t0
        if on_fitted is not None:
            on_fitted(fitted, m)
    return fitted
