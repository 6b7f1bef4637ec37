"""What every recipe does: learn a machine type's normal sound, then score clips.

A recipe has two phases so that shared work is done once:
- `prepare(machines)`: train whatever is shared across machine types (the SimCLR encoder is trained
  once on every machine type, as the second seed does; frozen CED needs nothing);
- `fit_machine(machine, data)`: fit that machine type's scorer (bank, covariance, autoencoder).
Then `score(machine, waves)` gives anomaly scores (higher = more anomalous) and
`train_scores(machine)` the leave-one-out training scores that calibrate the decision threshold.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from monitor.scoring import make_scorer

log = logging.getLogger(__name__)


@dataclass
class MachineArrays:
    """A machine type's training material, loaded as 16 kHz float32 waveforms."""

    machine: str
    waves: np.ndarray  # [N, samples]
    domains: list[str | None]
    supplemental: np.ndarray | None = None  # [M, samples] or None
    supplemental_kind: str | None = None  # "clean" | "noise" | "mixed" | None


@dataclass
class RecipeOptions:
    """Options shared by the recipes; each recipe reads the ones it understands."""

    device: str = "cpu"
    seed: int = 0
    checkpoint: str | None = None  # official CED weights (stage1)
    ced_size: str = "mini"  # used when no checkpoint tells the size
    embed_blocks: tuple[int, ...] | None = None
    scorer: str | None = None  # override the recipe's default scorer
    k: int = 16
    epochs: int | None = None  # override the recipe's default epoch count
    batch_size: int = 16  # inference batch size
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Recipe(ABC):
    """Base class; see the module docstring for the protocol."""

    name: ClassVar[str]
    summary: ClassVar[str]
    uses_supplemental: ClassVar[bool] = False

    def __init__(self, options: RecipeOptions | None = None) -> None:
        self.options = options or RecipeOptions()

    def prepare(self, machines: dict[str, MachineArrays]) -> None:  # noqa: B027 - optional hook
        """Train what is shared across machine types (default: nothing)."""

    @abstractmethod
    def fit_machine(self, data: MachineArrays) -> None: ...

    @abstractmethod
    def score(self, machine: str, waves: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def train_scores(self, machine: str) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]:
        """Hyper-parameters worth writing next to the results."""
        return {"recipe": self.name}


class EmbeddingRecipe(Recipe):
    """An encoder (waveform -> embedding) followed by one of `monitor.scoring`'s scorers.

    The scorer is the same code the daemon runs, so offline and live scores agree.
    """

    default_scorer: ClassVar[str] = "rescaled_knn"
    default_metric: ClassVar[str] = "cosine"

    def __init__(self, options: RecipeOptions | None = None) -> None:
        super().__init__(options)
        self.scorers: dict[str, Any] = {}
        self.train_embeddings: dict[str, np.ndarray] = {}

    @abstractmethod
    def embed(self, waves: np.ndarray) -> np.ndarray:
        """[N, samples] -> [N, D] float32 embeddings."""

    def scorer_name(self) -> str:
        return self.options.scorer or self.default_scorer

    def make_scorer(self, domains: list[str | None] | None = None) -> Any:
        name = self.scorer_name()
        n_target = sum(d == "target" for d in domains or [])
        if name == "rescaled_knn_domainwise" and 0 < n_target < 3:
            log.warning(
                "only %d target clip(s): a domain-wise target bank needs 3; using the pooled bank",
                n_target,
            )
            name = "rescaled_knn"
        params: dict[str, Any] = {}
        if "knn" in name:
            params["metric"] = self.default_metric
            if name.startswith("rescaled"):
                params["k"] = self.options.k
        return make_scorer(name, **params)

    def fit_machine(self, data: MachineArrays) -> None:
        x = self.embed(data.waves)
        self.train_embeddings[data.machine] = x
        scorer = self.make_scorer(data.domains)
        self.scorers[data.machine] = scorer.fit(x, domains=data.domains)

    def score(self, machine: str, waves: np.ndarray) -> np.ndarray:
        return self.scorers[machine].score_samples(self.embed(waves))

    def train_scores(self, machine: str) -> np.ndarray:
        return self.scorers[machine].loo_scores()

    def describe(self) -> dict[str, Any]:
        return {"recipe": self.name, "scorer": self.scorer_name(), "k": self.options.k}
