"""Offline alarms with the package's own calibration code: what `sonitor evaluate` reports
beside AUC and pAUC, so that offline numbers say what the daemon would flag.

A fitted recipe's leave-one-out training scores are calibrated per operating condition
(`monitor.model.conditions`: the DCASE domains of the training clips are the conditions), test
clips are matched to the condition of their nearest training embedding, and each clip's score is
divided by that condition's threshold, exactly as `ModelPackage` does live. Recipes that score
without embeddings (`dcase_ae`) get one pooled condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.model.conditions import (
    AlarmRule,
    ConditionCalibration,
    ConditionMatcher,
)
from monitor.model.enroll import build_bank, scorer_spec
from monitor.model.package import condition_names
from training.recipes.base import Recipe


@dataclass
class MachineCalibration:
    """One fitted machine type's calibration and how its clips are matched to conditions."""

    calibration: ConditionCalibration
    matcher: ConditionMatcher | None  # None: one pooled condition (no embeddings)

    def score(self, rec: Recipe, machine: str, waves: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Raw scores of clips and the condition each matched."""
        emb = rec.embed_machine(machine, waves)
        if emb is None or self.matcher is None:
            scores = np.asarray(rec.score(machine, waves), dtype=np.float64)
            return scores, [self.calibration.names[0]] * len(scores)
        scores = np.asarray(rec.score_embeddings(machine, emb), dtype=np.float64)
        return scores, self.matcher.match_names(emb)


def calibrate_machine(
    rec: Recipe, machine: str, domains: list[str | None], rule: AlarmRule
) -> MachineCalibration:
    """Per-condition calibration of a fitted machine type, from the scores of its training clips
    held out in turn (`monitor.model.enroll.cross_validated_scores`, as a package does)."""
    emb = getattr(rec, "train_embeddings", {}).get(machine)
    scorer = getattr(rec, "scorers", {}).get(machine)
    if emb is None or scorer is None:
        scores = np.asarray(rec.train_scores(machine), dtype=np.float64)
        pooled = ["source"] * len(scores)
        return MachineCalibration(ConditionCalibration.fit(scores, pooled, rule), None)
    return calibrate_clips(scorer, emb, domains, rule, machine)


def calibrate_clips(
    scorer: Any, emb: np.ndarray, domains: list[str | None], rule: AlarmRule, machine: str = ""
) -> MachineCalibration:
    """Per-condition calibration of ``scorer``, fitted on the clip embeddings ``emb`` (their
    DCASE domains are the conditions), as a package calibrates at export and enrolment: every
    clip a recording, held out in turn."""
    conds = condition_names(np.asarray(["" if d is None else d for d in domains]))
    name, params = scorer_spec(scorer)
    # the package's own path (`build_bank`), every clip kept: no coreset offline
    built = build_bank(
        machine, name, params, emb, list(domains), conds, np.arange(len(emb)), None, rule,
        max_bank=len(emb), fitted=scorer,
    )  # fmt: skip
    return MachineCalibration(built.calibration, ConditionMatcher(emb, conds.tolist()))


def alarm_rows(
    machine: str,
    cal: ConditionCalibration,
    scores: np.ndarray,
    matched: list[str],
    labels: np.ndarray,
    domains: list[str | None],
) -> list[dict[str, Any]]:
    """Per test domain: normal clips over the threshold (false-positive rate) and anomalies over
    it (true-positive rate), at the alarm threshold (the budget) and at the DCASE 0.9 one; and
    the false alarms per week that the alarm FPR would give under the alert rule the budget was
    spent on (`ConditionCalibration.false_alarms_per_week_at`, with its correlation: 0 when no
    normal clip crossed, which bounds it only as far as the number of clips allows)."""
    alarm = cal.normalise(scores, matched) > 1.0
    dcase = cal.normalise(scores, matched, dcase=True) > 1.0
    d = np.asarray([x or "source" for x in domains])
    rows = []
    for domain in sorted(set(d.tolist())):
        normal = (d == domain) & (labels == 0)
        anomal = (d == domain) & (labels == 1)
        rows.append(
            {
                "machine": machine,
                "condition": domain,
                "n_normal": int(normal.sum()),
                "n_anomaly": int(anomal.sum()),
                "FPR (alarm)": _share(alarm, normal),
                "alarms/week (est.)": cal.false_alarms_per_week_at(_share(alarm, normal)),
                "TPR (alarm)": _share(alarm, anomal),
                "FPR (DCASE 0.9)": _share(dcase, normal),
                "TPR (DCASE 0.9)": _share(dcase, anomal),
                "matched own condition": _share(np.asarray(matched) == domain, normal | anomal),
            }
        )
    return rows


def _share(flags: np.ndarray, mask: np.ndarray) -> float:
    return float(np.mean(flags[mask])) if mask.any() else float("nan")
