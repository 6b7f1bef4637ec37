"""`simclr`: the second seed. ResNet-18 trained from scratch with SimCLR's NT-Xent, Mahalanobis.

As in the seed report, ONE feature extractor is trained on the normal clips of every machine type,
then each machine type gets its own covariance estimate (maximum likelihood by default, or the
robust minimum covariance determinant with `--scorer mahalanobis_robust`) of the 128-d outputs of
the projection head.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from training.recipes.base import EmbeddingRecipe, MachineArrays, RecipeOptions
from training.recipes.inference import embed_waves
from training.simclr import train_simclr


class SimCLR(EmbeddingRecipe):
    name: ClassVar[str] = "simclr"
    summary: ClassVar[str] = "ResNet-18 from scratch, SimCLR NT-Xent, Mahalanobis (second seed)"
    default_scorer: ClassVar[str] = "mahalanobis"
    default_epochs: ClassVar[int] = 30

    def __init__(self, options: RecipeOptions | None = None) -> None:
        super().__init__(options)
        self.model: torch.nn.Module | None = None
        self.history: dict[str, Any] = {}

    def prepare(self, machines: dict[str, MachineArrays]) -> None:
        waves = np.concatenate([m.waves for m in machines.values()], axis=0)
        opts = self.options
        self.model, self.history = train_simclr(
            waves,
            epochs=opts.epochs or self.default_epochs,
            device=opts.device,
            seed=opts.seed,
            progress=opts.progress,
            **opts.extra.get("simclr", {}),
        )
        self.model.eval()

    def embed(self, waves: np.ndarray) -> np.ndarray:
        assert self.model is not None, "prepare() trains the encoder first"
        return embed_waves(
            self.model, waves, batch_size=self.options.batch_size, device=self.options.device
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(epochs=self.options.epochs or self.default_epochs)
        return d
