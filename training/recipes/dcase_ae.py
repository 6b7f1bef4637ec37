"""`dcase_ae`: the official DCASE Task 2 baseline autoencoder, MSE score. The peer to beat.

One autoencoder per machine type on 5-frame x 128-mel vectors; a clip's score is its mean
reconstruction error. Training scores are in-sample, as the official baseline computes them for
its gamma-fit threshold.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from training.dcase_ae import ae_clip_scores, train_autoencoder
from training.recipes.base import MachineArrays, Recipe, RecipeOptions


class DcaseAE(Recipe):
    name: ClassVar[str] = "dcase_ae"
    summary: ClassVar[str] = "official DCASE baseline autoencoder, MSE score (the peer to beat)"

    def __init__(self, options: RecipeOptions | None = None) -> None:
        super().__init__(options)
        self.models: dict[str, Any] = {}
        self._train_scores: dict[str, np.ndarray] = {}

    def fit_machine(self, data: MachineArrays) -> None:
        opts = self.options
        kwargs: dict[str, Any] = dict(opts.extra.get("dcase_ae", {}))
        if opts.epochs:
            kwargs["epochs"] = opts.epochs
        model, _ = train_autoencoder(
            data.waves, device=opts.device, seed=opts.seed, progress=opts.progress, **kwargs
        )
        self.models[data.machine] = model
        self._train_scores[data.machine] = ae_clip_scores(model, data.waves)

    def score(self, machine: str, waves: np.ndarray) -> np.ndarray:
        return ae_clip_scores(self.models[machine], waves)

    def train_scores(self, machine: str) -> np.ndarray:
        return self._train_scores[machine]

    def describe(self) -> dict[str, Any]:
        return {"recipe": self.name, "score": "mean reconstruction MSE"}
