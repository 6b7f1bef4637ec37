"""What every recipe does: learn a machine type's normal sound, then score clips.

A recipe has two phases so that shared work is done once:
- `prepare(machines)`: train whatever is shared across machine types (the SimCLR encoder is trained
  once on every machine type's clips together; frozen CED needs nothing);
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

from monitor.audio.frontend import CED_HOP
from monitor.model.scoring import scorer_by_name

log = logging.getLogger(__name__)


@dataclass
class MachineArrays:
    """A machine type's training material, loaded as 16 kHz float32 waveforms."""

    machine: str
    waves: np.ndarray  # [N, samples]
    domains: list[str | None]
    supplemental: np.ndarray | None = None  # [M, samples] or None
    supplemental_kind: str | None = None  # "clean" | "noise" | "mixed" | None
    supplemental_kinds: list[str | None] | None = None  # per clip, when the names tell it


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
    separator: str | None = None  # separator checkpoint put in front of the encoder
    steps: int | None = None  # override the recipe's optimiser steps (stage2_ssl*)
    noise_dirs: tuple[str, ...] = ()  # background-noise folders for augmentation (stage2_ssl*)
    augment_config: str | None = None  # YAML/JSON augmentation config file (stage2_ssl*)
    supplemental_kind: str | None = None  # "clean" | "noise": overrides the names (stage2)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Recipe(ABC):
    """Base class; see the module docstring for the protocol."""

    name: ClassVar[str]
    summary: ClassVar[str]
    uses_supplemental: ClassVar[bool] = False
    # Whether `--separator` can go in front of this recipe's encoder (make_recipe refuses it
    # otherwise, rather than ignoring it silently).
    accepts_separator: ClassVar[bool] = False
    # STFT hop (samples) of the encoder's log-mel front-end: an exported package's window and
    # hop must be multiples of it, and `sonitor export --data` picks them before training.
    frame_hop: ClassVar[int] = CED_HOP

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

    def embed_machine(self, machine: str, waves: np.ndarray) -> np.ndarray | None:
        """Embeddings that `score` would score (None: this recipe scores without any); with them
        evaluation matches each clip to its operating condition as the daemon does."""
        return None

    def score_embeddings(self, machine: str, embeddings: np.ndarray) -> np.ndarray:
        """Scores of `embed_machine`'s output (= `score` on the same clips)."""
        raise NotImplementedError(f"recipe {self.name!r} scores clips, not embeddings")

    def describe(self) -> dict[str, Any]:
        """Hyper-parameters worth writing next to the results."""
        return {"recipe": self.name}


class EmbeddingRecipe(Recipe):
    """An encoder (waveform -> embedding) followed by one of `monitor.model.scoring`'s scorers.

    The scorer is the same code the daemon runs, so offline and live scores agree.
    """

    default_scorer: ClassVar[str] = "rescaled_knn"
    default_metric: ClassVar[str] = "cosine"
    accepts_separator: ClassVar[bool] = True

    def __init__(self, options: RecipeOptions | None = None) -> None:
        super().__init__(options)
        self.scorers: dict[str, Any] = {}
        self.train_embeddings: dict[str, np.ndarray] = {}
        self.separator: Any = None  # a training.separator Separator once attached

    def attach_separator(self, separator: Any) -> None:
        """Put a spectral separator in front of the encoder (inside its log-mel front-end).

        Recipes whose encoder is a torch module with one `CEDFrontEnd`/`LogMel` (``self.model``)
        get it for free; others must override this (`logmel_knn` does) or refuse.
        """
        import torch

        from monitor.errors import SonitorError
        from training.separator.masking import insert_separator

        model = getattr(self, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise SonitorError(
                f"recipe {self.name!r} has no torch encoder with a log-mel front-end to put "
                "--separator in front of"
            )
        insert_separator(model, separator)
        self.separator = separator

    def ensure_separator(self) -> None:
        """Attach `options.separator` once, after `prepare` has built the encoder."""
        if self.options.separator and self.separator is None:
            from training.separator.masking import load_separator

            self.attach_separator(load_separator(self.options.separator))

    @abstractmethod
    def embed(self, waves: np.ndarray) -> np.ndarray:
        """[N, samples] -> [N, D] float32 embeddings."""

    def scorer_name(self) -> str:
        return self.options.scorer or self.default_scorer

    def new_scorer(self, domains: list[str | None] | None = None) -> Any:
        """A fresh, unfitted scorer for one machine type: `--scorer` or the recipe's default,
        with `monitor.model.scoring`'s parameters; a domain-wise scorer falls back to its pooled
        variant when `domains` has only 1-2 target clips (it needs 3 per domain)."""
        name = self.scorer_name()
        n_target = sum(d == "target" for d in domains or [])
        fallback = {"rescaled_knn_domainwise": "rescaled_knn", "mahalanobis_knn": "mahalanobis"}
        if name in fallback and 0 < n_target < 3:
            log.warning(
                "only %d target clip(s): %s needs 3 per domain; using %s",
                n_target,
                name,
                fallback[name],
            )
            name = fallback[name]
        params: dict[str, Any] = {}
        if name == "mahalanobis_knn":
            params["k"] = self.options.k
        elif "knn" in name:
            params["metric"] = self.default_metric
            if name.startswith("rescaled"):
                params["k"] = self.options.k
        return scorer_by_name(name, **params)

    def fit_machine(self, data: MachineArrays) -> None:
        self.ensure_separator()
        x = self.embed(data.waves)
        self.train_embeddings[data.machine] = x
        scorer = self.new_scorer(data.domains)
        self.scorers[data.machine] = scorer.fit(x, domains=data.domains)

    def score(self, machine: str, waves: np.ndarray) -> np.ndarray:
        return self.scorers[machine].score_samples(self.embed(waves))

    def embed_machine(self, machine: str, waves: np.ndarray) -> np.ndarray | None:
        return self.embed(waves)

    def score_embeddings(self, machine: str, embeddings: np.ndarray) -> np.ndarray:
        return self.scorers[machine].score_samples(embeddings)

    def train_scores(self, machine: str) -> np.ndarray:
        return self.scorers[machine].loo_scores()

    def describe(self) -> dict[str, Any]:
        d = {"recipe": self.name, "scorer": self.scorer_name(), "k": self.options.k}
        if self.separator is not None:
            d["separator"] = getattr(self.separator, "source", None) or self.separator.config()
        return d
