"""`stage1`: frozen CED as feature extractor + k-NN with local-density rescaling.

Stage 1 of Ozeki et al., "Anomalous sound detection method using contrastive learning" (DCASE
2025, section 3.1); the rescaling is Wilkinghoff et al.'s "Keeping the Balance" (ICASSP 2025).

With official weights (`--checkpoint`, HF safetensors or the original `.pt`) this is the strongest
recipe that needs no training. Without them CED's weights are random: the recipe still runs (useful
for tests and timing) but says loudly that its numbers mean little.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from training.models.ced import CED, load_ced_checkpoint
from training.recipes.base import EmbeddingRecipe, RecipeOptions
from training.recipes.inference import embed_waves

log = logging.getLogger(__name__)


class Stage1(EmbeddingRecipe):
    name: ClassVar[str] = "stage1"
    summary: ClassVar[str] = "frozen pretrained CED + rescaled k-NN (Ozeki et al., stage 1)"
    # Domain-wise banks (GenRep, DCASE 2025): the pooled bank with K = 16 > 10 target clips
    # over-shrinks target distances; on the synthetic benchmark pooled 0.70 vs domain-wise 0.83
    # (README, benchmarks/bench_recipes.py). `--scorer rescaled_knn` gives the pooled variant.
    default_scorer: ClassVar[str] = "rescaled_knn_domainwise"
    # Raw pretrained embeddings: Euclidean distance (cosine is for embeddings trained to be
    # compared by angle; "Keeping the Balance" uses it for trained models only).
    default_metric: ClassVar[str] = "euclidean"

    def __init__(self, options: RecipeOptions | None = None) -> None:
        super().__init__(options)
        self.model: CED | None = None

    def load_model(self) -> CED:
        opts = self.options
        blocks = opts.embed_blocks or (11,)
        if opts.checkpoint:
            model = load_ced_checkpoint(opts.checkpoint, embed_blocks=blocks)
        else:
            log.warning(
                "stage1 without --checkpoint: CED-%s has RANDOM weights; scores are not meaningful",
                opts.ced_size,
            )
            import torch

            torch.manual_seed(opts.seed)
            model = CED(size=opts.ced_size, embed_blocks=blocks)
        return model.to(opts.device).eval()

    def prepare(self, machines: dict) -> None:
        self.model = self.load_model()

    def embed(self, waves: np.ndarray) -> np.ndarray:
        if self.model is None:
            self.model = self.load_model()
        return embed_waves(
            self.model,
            waves,
            batch_size=self.options.batch_size,
            device=self.options.device,
            progress=self.options.progress,
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            ced_size=getattr(self.model, "size", self.options.ced_size),
            checkpoint=self.options.checkpoint,
            pretrained=bool(self.options.checkpoint),
            embed_blocks=list(getattr(self.model, "embed_blocks", self.options.embed_blocks or ())),
        )
        return d
