"""`sonitor evaluate`: fit a recipe per machine type, score the test clips, report like DCASE.

For every machine type in the data folder: fit on `train/` (and `supplemental/` where the recipe
uses it), score `test/`, write the DCASE submission files
`anomaly_score_<machine>_section_00_test.csv` and `decision_result_<machine>_section_00_test.csv`
(no header, higher = more anomalous), and where the test labels are known the official metrics
(AUC per domain, pAUC, harmonic mean) as CSV, markdown and plots.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import DataError
from monitor.model.thresholds import calibrate
from training import dcase_metrics as metrics
from training.data import (
    ClipInfo,
    MachineData,
    clip_kind,
    discover,
    load_clips,
    supplemental_kind,
)
from training.recipes.base import MachineArrays, RecipeOptions
from training.recipes.registry import make_recipe

log = logging.getLogger(__name__)


@dataclass
class MachineOutcome:
    machine: str
    files: list[str]
    scores: np.ndarray
    decisions: np.ndarray
    threshold: float
    labels: np.ndarray | None  # 1 = anomaly; None when the names hide the labels
    domains: list[str | None]
    metrics: dict[str, Any] | None


@dataclass
class Evaluation:
    recipe: str
    why: str
    outcomes: list[MachineOutcome]
    official_score: float | None
    timings: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


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


def _load_machine(
    md: MachineData, use_supplemental: bool, max_train: int | None, seed: int, workers: int
) -> MachineArrays:
    train = subsample_train(md.train, max_train, seed)
    if not train:
        raise DataError(f"{md.machine}: no training clips found")
    supp = None
    kind = supplemental_kind(md.supplemental) if md.supplemental else None
    if use_supplemental and md.supplemental:
        supp = load_clips(md.supplemental, workers=workers)
    return MachineArrays(
        machine=md.machine,
        waves=load_clips(train, workers=workers),
        domains=[c.domain for c in train],
        supplemental=supp,
        supplemental_kind=kind,
        supplemental_kinds=[clip_kind(c.path) for c in md.supplemental]
        if supp is not None
        else None,
    )


def _write_submission(out: Path, machine: str, files: list[str], scores, decisions) -> None:
    with open(out / f"anomaly_score_{machine}_section_00_test.csv", "w", newline="") as f:
        csv.writer(f).writerows(zip(files, (f"{s:.8g}" for s in scores), strict=True))
    with open(out / f"decision_result_{machine}_section_00_test.csv", "w", newline="") as f:
        csv.writer(f).writerows(zip(files, (int(d) for d in decisions), strict=True))


def evaluate(
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: str = "auto",
    options: RecipeOptions | None = None,
    *,
    machines: list[str] | None = None,
    max_train: int | None = None,
    threshold_method: str = "gamma",
    threshold_q: float = 0.9,
    plots: bool = True,
    workers: int = 2,
) -> Evaluation:
    """Run one recipe over every machine type in `data_dir`; write results into `out_dir`."""
    options = options or RecipeOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = discover(data_dir)
    if machines:
        unknown = sorted(set(machines) - set(found))
        if unknown:
            raise DataError(f"{data_dir}: no machine type(s) {unknown}; found {sorted(found)}")
        found = {m: found[m] for m in machines}

    rec, why = make_recipe(recipe, options)
    log.info("recipe %s (%s)", rec.name, why)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    arrays = {
        m: _load_machine(md, rec.uses_supplemental, max_train, options.seed, workers)
        for m, md in found.items()
    }
    timings["load_train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rec.prepare(arrays)
    timings["prepare_s"] = time.perf_counter() - t0

    outcomes: list[MachineOutcome] = []
    t_fit = t_score = 0.0
    for m, md in found.items():
        t0 = time.perf_counter()
        rec.fit_machine(arrays[m])
        cal = calibrate(rec.train_scores(m), method=threshold_method, q=threshold_q)
        t_fit += time.perf_counter() - t0
        arrays[m].waves = np.empty((0, 0), np.float32)  # free memory early

        if not md.test:
            log.warning("%s: no test clips; fitted only", m)
            continue
        t0 = time.perf_counter()
        scores = np.asarray(rec.score(m, load_clips(md.test, workers=workers)), dtype=np.float64)
        t_score += time.perf_counter() - t0
        files = [c.path.name for c in md.test]
        decisions = (scores > cal.threshold).astype(int)
        _write_submission(out, m, files, scores, decisions)

        labelled = all(c.label is not None for c in md.test)
        labels = np.array([c.label == "anomaly" for c in md.test], int) if labelled else None
        domains = [c.domain for c in md.test]
        res = None
        if labels is not None and 0 < labels.sum() < len(labels):
            res = metrics.machine_scores(labels, scores, domains, decisions=decisions)
            res["machine"] = m
            res["threshold"] = cal.threshold
        outcomes.append(
            MachineOutcome(m, files, scores, decisions, cal.threshold, labels, domains, res)
        )
    timings["fit_s"] = t_fit
    timings["score_s"] = t_score

    scored = [o.metrics for o in outcomes if o.metrics is not None]
    official = metrics.official_score(scored) if scored else None
    if official is not None and np.isnan(official):
        # Single-domain data (e.g. DCASE 2020 names): AUC(target) is undefined, so the official
        # score is too. Report the harmonic mean of what exists, and say that it is not official.
        official = metrics.official_score(scored, ignore_missing=True)
        log.warning("a domain has no normal test clips: score is the hmean of the defined values")
    ev = Evaluation(rec.name, why, outcomes, official, timings)
    if scored:
        ev.rows = metrics.summary_table(scored)
        metrics.write_csv(ev.rows, out / "results.csv")
        (out / "results.md").write_text(metrics.to_markdown(ev.rows) + "\n")
    if plots and scored:
        from training.plots import plot_outcomes

        plot_outcomes(outcomes, out)
    summary = {
        "recipe": rec.name,
        "why": why,
        "description": rec.describe(),
        "data_dir": str(data_dir),
        "machines": list(found),
        "official_score": official,
        "timings_s": timings,
        "threshold": {"method": threshold_method, "q": threshold_q},
        "per_machine": scored,
    }
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
    return ev


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
