"""`sonitor evaluate`: fit a recipe per machine type, score the test clips, report like DCASE.

For every machine type in the data folder: fit on `train/` (and `supplemental/` where the recipe
uses it), score `test/`, write the DCASE submission files
`anomaly_score_<machine>_section_00_test.csv` and `decision_result_<machine>_section_00_test.csv`
(no header, higher = more anomalous), and where the test labels are known the official metrics
(AUC per domain, pAUC, harmonic mean) as CSV, markdown and plots.

Decisions come from the package's calibration code (`training.alarms`, `monitor.model.conditions`):
a threshold per operating condition (the DCASE domains), each clip judged against the condition it
sounds closest to. The decision files use the DCASE 0.9 quantile; `results.md` adds, per
condition, the share of normal clips (false-positive rate) and anomalies (true-positive rate)
over the alarm threshold a package would carry (the false-alarm budget) and over the DCASE one.
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

from monitor.model.conditions import default_rule
from training import dcase_metrics as metrics
from training.alarms import alarm_rows, calibrate_machine
from training.data import load_clips
from training.fit import FittedRecipe, fit_recipe
from training.recipes.base import RecipeOptions

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
    alarms: list[dict[str, Any]] = field(default_factory=list)  # per machine and condition


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
    false_alarms_per_week: float = 1.0,
    hop_seconds: float = 1.0,
    plots: bool = True,
    workers: int = 2,
) -> Evaluation:
    """Run one recipe over every machine type in `data_dir`; write results into `out_dir`."""
    options = options or RecipeOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outcomes: list[MachineOutcome] = []
    alarms: list[dict[str, Any]] = []
    t_score = 0.0

    def score_test(fitted: FittedRecipe, m: str) -> None:
        """Calibrate and score one machine type as soon as it is fitted, then free its clips."""
        nonlocal t_score
        rec, md = fitted.recipe, fitted.machines[m]
        t0 = time.perf_counter()
        waves = fitted.arrays[m].waves
        window = fitted.seconds or (waves.shape[1] / 16000 if waves.size else 10.0)
        rule = default_rule(window, min(hop_seconds, window), false_alarms_per_week)
        mcal = calibrate_machine(rec, m, fitted.arrays[m].domains, rule)
        cal = mcal.calibration
        fitted.timings["fit_s"] += time.perf_counter() - t0
        fitted.arrays[m].waves = np.empty((0, 0), np.float32)  # free memory early

        if not md.test:
            log.warning("%s: no test clips; fitted only", m)
            return
        t0 = time.perf_counter()
        scores, matched = mcal.score(rec, m, load_clips(md.test, workers=workers))
        t_score += time.perf_counter() - t0
        files = [c.path.name for c in md.test]
        decisions = (cal.normalise(scores, matched, dcase=True) > 1.0).astype(int)
        _write_submission(out, m, files, scores, decisions)

        labelled = all(c.label is not None for c in md.test)
        labels = np.array([c.label == "anomaly" for c in md.test], int) if labelled else None
        domains = [c.domain for c in md.test]
        res = None
        if labels is not None and 0 < labels.sum() < len(labels):
            res = metrics.machine_scores(labels, scores, domains, decisions=decisions)
            res["machine"] = m
            res["threshold"] = cal.threshold_of(cal.names[0], dcase=True)
            res["thresholds"] = {"alarm": cal.thresholds(), "dcase": cal.thresholds(dcase=True)}
            alarms.extend(alarm_rows(m, cal, scores, matched, labels, domains))
        outcomes.append(
            MachineOutcome(m, files, scores, decisions, cal.threshold, labels, domains, res)
        )

    fitted = fit_recipe(
        data_dir,
        recipe,
        options,
        machines=machines,
        max_train=max_train,
        workers=workers,
        on_fitted=score_test,
    )
    rec, why, found, timings = fitted.recipe, fitted.why, fitted.machines, fitted.timings
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
        md_text = metrics.to_markdown(ev.rows)
        if alarms:
            metrics.write_csv(alarms, out / "alarms.csv")
            md_text += (
                "\nClips over the threshold per condition (FPR: normal clips, TPR: anomalies), "
                f"at the alarm threshold ({false_alarms_per_week:g} false alarm(s) per week with "
                "the default alert rule) and at the DCASE 0.9 one (the decision files):\n\n"
                + metrics.to_markdown(alarms)
            )
        ev.alarms = alarms
        (out / "results.md").write_text(md_text + "\n")
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
        "threshold": {
            "method": "conditions-lognormal",
            "false_alarms_per_week": false_alarms_per_week,
            "dcase_q": 0.9,
        },
        "alarms": alarms,
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
