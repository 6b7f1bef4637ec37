"""The interface every scorer implements (scikit-learn's shape, DCASE's sign)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from monitor.model.scoring.arrays import FORMAT_VERSION
from monitor.model.scoring.inputs import DOMAINS, as_matrix, domain_codes


class Scorer(ABC):
    """Common interface: fit on normal embeddings, score new ones (higher = more anomalous)."""

    name: ClassVar[str]
    n_features_in_: int | None  # embedding size seen by fit(); None until fitted

    @abstractmethod
    def fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> Scorer:
        """Fit on normal embeddings ``X`` [N, D]; ``domains``: 'source'/'target'/None per row."""

    @abstractmethod
    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """Anomaly scores [N] (higher = more anomalous; the negative of sklearn's convention)."""

    @abstractmethod
    def loo_scores(self) -> np.ndarray:
        """Leave-one-out scores [N_train] of the training embeddings (feed the gamma threshold)."""

    @abstractmethod
    def partial_fit(self, X: ArrayLike, domains: Sequence[str | None] | None = None) -> Scorer:
        """Add embeddings (enrolment); the result equals fitting on the concatenated data."""

    @abstractmethod
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Fitted state and hyper-parameters as pickle-free arrays."""

    @classmethod
    @abstractmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Scorer: ...

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "n_features_in_", None) is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(f"{type(self).__name__} is not fitted; call fit() first")

    def _refit_with(
        self,
        stored: np.ndarray,
        stored_codes: np.ndarray,
        X: ArrayLike,
        domains: Sequence[str | None] | None,
    ) -> Any:
        """``partial_fit`` for scorers that keep their embeddings: fit on stored + new."""
        if not self.is_fitted:
            return self.fit(X, domains)
        X = self._check_query(X)
        codes = domain_codes(domains, X.shape[0])
        both = [DOMAINS[c] for c in np.concatenate([stored_codes, codes])]
        return self.fit(np.vstack([stored, X]), both)

    def _check_query(self, X: ArrayLike) -> np.ndarray:
        self._check_fitted()
        Q = as_matrix(X)
        if Q.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {Q.shape[1]} features but the scorer was fitted on {self.n_features_in_}"
            )
        return Q

    def _header(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        return {"kind": np.array(self.name), "format_version": np.array(FORMAT_VERSION)}
