"""Scorers by name, as a package manifest and a recipe name them, and back from stored arrays.

- `scorer_by_name(name, **params)`: a fresh scorer (recipes, enrolment, benchmarks, tests);
  ValueError on a bad name or parameter. `fixed_params(name)`: what the name itself decides.
- `scorer_from_arrays(arrays)`: a FITTED scorer from its ``to_arrays()`` output (the daemon).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from monitor.errors import PackageError
from monitor.model.scoring.arrays import FORMAT_VERSION, read_int, read_str
from monitor.model.scoring.base import Scorer
from monitor.model.scoring.knn import KNNScorer, RescaledKNNScorer
from monitor.model.scoring.mahalanobis import DomainwiseMahalanobisScorer, MahalanobisScorer
from monitor.model.scoring.mahalanobis_knn import MahalanobisKNNScorer

# name -> (class, constructor arguments the name fixes)
_REGISTRY: dict[str, tuple[type[Scorer], dict[str, Any]]] = {
    "knn": (KNNScorer, {}),
    "rescaled_knn": (RescaledKNNScorer, {"domainwise": False}),
    "rescaled_knn_domainwise": (RescaledKNNScorer, {"domainwise": True}),
    "mahalanobis": (MahalanobisScorer, {"covariance": "ml"}),
    "mahalanobis_robust": (MahalanobisScorer, {"covariance": "robust"}),
    "mahalanobis_domainwise": (DomainwiseMahalanobisScorer, {}),
    "mahalanobis_knn": (MahalanobisKNNScorer, {}),
}
SCORER_NAMES = tuple(_REGISTRY)


def scorer_by_name(name: str, **params: Any) -> Scorer:
    """A fresh (unfitted) scorer by registry name; ``params`` go to its constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORER_NAMES)}")
    cls, fixed = _REGISTRY[name]
    clash = set(fixed) & set(params)
    if clash:
        raise ValueError(f"scorer {name!r} fixes {sorted(clash)}; do not pass them")
    try:
        return cls(**fixed, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for scorer {name!r}: {exc}") from None


def fixed_params(name: str) -> dict[str, Any]:
    """Constructor arguments that the registry name ``name`` fixes (do not pass them again)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORER_NAMES)}")
    return dict(_REGISTRY[name][1])


def scorer_from_arrays(arrays: Mapping[str, np.ndarray]) -> Scorer:
    """Rebuild a fitted scorer from ``to_arrays()`` output (e.g. an ``np.load`` of a ``.npz``).

    Raises PackageError naming the missing or malformed key.
    """
    kind = read_str(arrays, "kind")
    version = read_int(arrays, "format_version")
    if version != FORMAT_VERSION:
        raise PackageError(f"scorer format_version {version} is not supported (expected 1)")
    if kind not in _REGISTRY:
        raise PackageError(f"scorer kind {kind!r} is unknown; known: {', '.join(SCORER_NAMES)}")
    cls, fixed = _REGISTRY[kind]
    try:
        scorer = cls._from_arrays(arrays)
    except ValueError as exc:
        raise PackageError(f"scorer arrays of kind {kind!r} are invalid: {exc}") from None
    if scorer.name != kind:
        raise PackageError(f"scorer kind {kind!r} does not match its parameters ({scorer!r})")
    return scorer
