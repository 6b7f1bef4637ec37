"""The official DCASE Task 2 score (2023-2025), computed as nttcslab/dcase2024_task2_evaluator does.

Per machine type (section 00):
- AUC (source) / AUC (target): ROC-AUC over that domain's NORMAL test clips plus ALL anomalous
  clips of both domains (the evaluator's mask ``(domain == d) | (y_true != 0)``).
- pAUC: ``sklearn.metrics.roc_auc_score(y, score, max_fpr=0.1)`` over all clips; sklearn returns
  the McClish-standardised partial AUC, 0.5*(1 + (A - max_fpr^2/2) / (max_fpr - max_fpr^2/2)),
  so a random scorer gets 0.5.
- Official score: ``scipy.stats.hmean`` of every AUC (source), AUC (target) and pAUC of all
  machine types, each value floored at float eps (``numpy.maximum(x, sys.float_info.epsilon)``).

A set with only one class (a domain with no normal clips, or no anomalies at all) has no AUC:
recent scikit-learn returns NaN for it (older ones raised), so the evaluator's official score is
then NaN. We return NaN the same way; ``official_score(..., ignore_missing=True)`` drops such
entries instead (then it is no longer the official number: say so when reporting it).
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

__all__ = [
    "MAX_FPR",
    "machine_scores",
    "official_score",
    "summary_table",
    "to_markdown",
    "write_csv",
]

MAX_FPR = 0.1
EPS = sys.float_info.epsilon
DOMAINS = ("source", "target")
OFFICIAL_KEYS = ("auc_source", "auc_target", "pauc")
OFFICIAL_ROW = "official score"


def _validated(y_true: ArrayLike, y_score: ArrayLike, domains: Sequence[str | None]):
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true and y_score must be 1-D; got shapes {y.shape} and {s.shape}")
    if isinstance(domains, str):
        raise ValueError("domains must be a sequence of 'source'/'target', not one string")
    # None = unknown (DCASE 2020 names carry no domain): such clips count as source.
    d = np.asarray(["source" if v is None else v for v in domains], dtype=object)
    if not len(y) == len(s) == len(d):
        raise ValueError(
            f"y_true, y_score and domains differ in length: {len(y)}, {len(s)}, {len(d)}"
        )
    if len(y) == 0:
        raise ValueError("no clips to evaluate")
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        bad = y[~np.isin(y, (0, 1))][0].item() if y.dtype.kind in "biuf" else y.dtype
        raise ValueError(f"y_true must be 0 (normal) or 1 (anomaly); found {bad!r}")
    if s.dtype.kind not in "iuf":
        raise ValueError(f"y_score must be real numbers; got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"y_score[{i}] is {s[i]}; anomaly scores must be finite")
    for i, value in enumerate(d):
        if value not in DOMAINS:
            raise ValueError(f"domains[{i}] is {value!r}; expected 'source', 'target' or None")
    return y.astype(np.int64), s, d


def _auc(y: np.ndarray, s: np.ndarray, max_fpr: float | None = None) -> float:
    """sklearn's ROC-AUC (or McClish pAUC); NaN when one class is missing, as recent sklearn."""
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def machine_scores(
    y_true: ArrayLike,
    y_score: ArrayLike,
    domains: Sequence[str | None],
    max_fpr: float = MAX_FPR,
    decisions: ArrayLike | None = None,
) -> dict[str, Any]:
    """AUC (source), AUC (target), pAUC and counts for one machine type (one section).

    ``y_true``: 1 = anomaly, 0 = normal; ``y_score``: higher = more anomalous; ``domains``:
    'source'/'target' per clip, None (unknown, e.g. DCASE 2020 names) counting as source, so
    single-domain data gets AUC (source) = plain AUC and AUC (target) = NaN. With
    ``decisions`` (0/1 per clip, e.g. score > threshold) adds the evaluator's precision, recall
    and F1 per domain (over that domain's clips).
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1]; got {max_fpr!r}")
    y, s, d = _validated(y_true, y_score, domains)
    out: dict[str, Any] = {
        "auc_all": _auc(y, s),
        "pauc": _auc(y, s, max_fpr=max_fpr),
    }
    for domain in DOMAINS:
        mask = (d == domain) | (y != 0)
        out[f"auc_{domain}"] = _auc(y[mask], s[mask])
    out["n_clips"] = int(y.size)
    for domain in DOMAINS:
        out[f"n_normal_{domain}"] = int(np.sum((d == domain) & (y == 0)))
        out[f"n_anomaly_{domain}"] = int(np.sum((d == domain) & (y == 1)))
    if decisions is not None:
        out.update(_decision_scores(y, d, decisions))
    return out


def _decision_scores(y: np.ndarray, d: np.ndarray, decisions: ArrayLike) -> dict[str, float]:
    """Precision / recall / F1 per domain, denominators floored at eps as the evaluator does."""
    pred = np.asarray(decisions)
    if pred.shape != y.shape or not np.isin(pred, (0, 1)).all():
        raise ValueError(f"decisions must be {y.size} values of 0/1; got shape {pred.shape}")
    out = {}
    for domain in DOMAINS:
        m = d == domain
        tp = float(np.sum((pred[m] == 1) & (y[m] == 1)))
        fp = float(np.sum((pred[m] == 1) & (y[m] == 0)))
        fn = float(np.sum((pred[m] == 0) & (y[m] == 1)))
        precision = tp / max(tp + fp, EPS)
        recall = tp / max(tp + fn, EPS)
        out[f"precision_{domain}"] = precision
        out[f"recall_{domain}"] = recall
        out[f"f1_{domain}"] = 2.0 * precision * recall / max(precision + recall, EPS)
    return out


def _official_values(per_machine: Iterable[Mapping[str, Any]]) -> list[float]:
    """AUC (source) of every machine, then AUC (target), then pAUC: the evaluator's order."""
    machines = list(per_machine)
    if not machines:
        raise ValueError("official_score needs at least one machine's scores")
    values = []
    for key in OFFICIAL_KEYS:
        for i, m in enumerate(machines):
            if key not in m:
                name = m.get("machine", f"#{i}")
                raise ValueError(f"machine {name} scores lack {key!r} (use machine_scores())")
            values.append(float(m[key]))
    return values


def _hmean(values: Sequence[float]) -> float:
    return float(scipy.stats.hmean(np.maximum(np.asarray(values, dtype=float), EPS)))


def official_score(per_machine: Iterable[Mapping[str, Any]], ignore_missing: bool = False) -> float:
    """Harmonic mean of all AUC (source), AUC (target) and pAUC, each floored at float eps.

    NaN if any value is NaN (as the evaluator), unless ``ignore_missing`` drops those values.
    """
    values = _official_values(per_machine)
    if ignore_missing:
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return math.nan
    if any(math.isnan(v) for v in values):
        return math.nan
    return _hmean(values)


def _named(results: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]]):
    if isinstance(results, Mapping):
        return [(str(name), scores) for name, scores in results.items()]
    named = []
    for i, scores in enumerate(results):
        if "machine" not in scores:
            raise ValueError(f"results[{i}] lacks a 'machine' name (or pass a dict by machine)")
        named.append((str(scores["machine"]), scores))
    return named


def summary_table(
    results: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row per machine (AUC source/target, pAUC, their harmonic mean) + the official row.

    ``results``: {machine: machine_scores(...)} or a list of such dicts with a 'machine' key.
    The last row ("official score") holds the harmonic mean over machines of each column and,
    under "hmean", the official score itself.
    """
    named = _named(results)
    if not named:
        raise ValueError("summary_table needs at least one machine's scores")
    columns = {"AUC (source)": "auc_source", "AUC (target)": "auc_target", "pAUC": "pauc"}
    rows = []
    for name, scores in named:
        values = _official_values([{**scores, "machine": name}])
        row: dict[str, Any] = {"machine": name}
        row.update({col: v for col, v in zip(columns, values, strict=True)})
        row["hmean"] = math.nan if any(math.isnan(v) for v in values) else _hmean(values)
        rows.append(row)
    last: dict[str, Any] = {"machine": OFFICIAL_ROW}
    for col in columns:
        col_values = [r[col] for r in rows]
        last[col] = math.nan if any(math.isnan(v) for v in col_values) else _hmean(col_values)
    last["hmean"] = official_score([scores for _, scores in named])
    rows.append(last)
    return rows


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table (floats to 4 decimals; missing cells blank)."""
    if not rows:
        raise ValueError("to_markdown needs at least one row")
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Rows to a CSV with a header (full float precision); parent folders are created."""
    if not rows:
        raise ValueError("write_csv needs at least one row")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(rows), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path
