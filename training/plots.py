"""ROC curves and score histograms as PNG, one figure per machine type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def _domain_mask(domains: list[str | None], labels: np.ndarray, domain: str) -> np.ndarray:
    """The official AUC(domain) set: that domain's normal clips plus every anomalous clip."""
    d = np.array([x == domain for x in domains])
    return d | (labels == 1)


def plot_outcomes(outcomes: list[Any], out: Path) -> list[Path]:
    """Write `roc_<machine>.png` and `hist_<machine>.png` for each labelled machine type."""
    written = []
    for o in outcomes:
        if o.labels is None:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for domain in ("source", "target"):
            mask = _domain_mask(o.domains, o.labels, domain)
            if o.labels[mask].min() == o.labels[mask].max():
                continue
            fpr, tpr, _ = roc_curve(o.labels[mask], o.scores[mask])
            auc = o.metrics.get(f"auc_{domain}") if o.metrics else None
            ax.plot(fpr, tpr, label=f"{domain} (AUC {auc:.3f})" if auc is not None else domain)
        ax.axvline(0.1, color="grey", ls=":", lw=1, label="FPR 0.1 (pAUC limit)")
        ax.plot([0, 1], [0, 1], color="lightgrey", lw=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {o.machine}")
        ax.legend(loc="lower right", fontsize=8)
        path = out / f"roc_{o.machine}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.histogram_bin_edges(o.scores, bins=40)
        for domain in ("source", "target"):
            for label, name in ((0, "normal"), (1, "anomaly")):
                sel = (np.array([d == domain for d in o.domains])) & (o.labels == label)
                if sel.any():
                    ax.hist(o.scores[sel], bins=bins, alpha=0.45, label=f"{domain} {name}")
        ax.axvline(o.threshold, color="k", ls="--", lw=1, label="threshold")
        ax.set(xlabel="anomaly score", ylabel="clips", title=f"scores: {o.machine}")
        ax.legend(fontsize=7)
        path = out / f"hist_{o.machine}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
