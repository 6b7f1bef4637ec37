"""Anomaly scorers on clip embeddings, shared by offline evaluation and the live daemon.

Every scorer has scikit-learn's shape (``fit(X, domains=None)``, ``score_samples(X)``) but returns
ANOMALY scores: higher = more anomalous, the DCASE convention. This is the NEGATIVE of what
scikit-learn's outlier detectors return from ``score_samples`` (there higher = more normal).

Only numpy and scipy are used: scorers are fitted at training time and again at enrolment time on
an industrial PC without torch or scikit-learn, and offline numbers and live scores must come from
the same code. Scorers persist without pickle through ``to_arrays()`` / ``scorer_from_arrays()``
(plain numeric and unicode arrays, safe for ``np.load(..., allow_pickle=False)``).

Names used throughout: a *bank* is the set of reference (normal training) embeddings; *K* the
number of nearest neighbours; cosine distance is ``(1 - cos) / 2`` on L2-normalised rows (range
[0, 1]); a *domain* is ``"source"`` or ``"target"`` (None: unknown, counted as source).

Modules, in reading order:

- `base`: the `Scorer` interface (fit, score_samples, loo_scores, partial_fit, to_arrays);
- `knn`: plain k-NN and k-NN with local-density rescaling (pooled or one bank per domain);
- `mahalanobis`: squared Mahalanobis distance (maximum-likelihood or FastMCD covariance) and its
  domain-wise form (one pooled within-domain covariance, a mean per domain);
- `mahalanobis_knn`: domain-wise rescaled k-NN in the Mahalanobis metric;
- `registry`: scorers by name (`scorer_by_name`) and back from arrays (`scorer_from_arrays`);
- `coreset`: greedy k-center subsampling that keeps a bank small;
- helpers: `inputs` (argument checks), `distances` (chunked bank distances), `arrays` (reading
  persisted arrays), `mcd` (covariance estimation, FastMCD).

Everything importable from this package is listed in ``__all__``; the helper modules are
internal to it.
"""

from monitor.model.scoring.base import Scorer
from monitor.model.scoring.coreset import coreset_subsample
from monitor.model.scoring.inputs import DOMAINS, METRICS
from monitor.model.scoring.knn import KNNScorer, RescaledKNNScorer
from monitor.model.scoring.mahalanobis import DomainwiseMahalanobisScorer, MahalanobisScorer
from monitor.model.scoring.mahalanobis_knn import MahalanobisKNNScorer
from monitor.model.scoring.registry import (
    SCORER_NAMES,
    fixed_params,
    scorer_by_name,
    scorer_from_arrays,
)

__all__ = [
    "DOMAINS",
    "METRICS",
    "SCORER_NAMES",
    "DomainwiseMahalanobisScorer",
    "KNNScorer",
    "MahalanobisKNNScorer",
    "MahalanobisScorer",
    "RescaledKNNScorer",
    "Scorer",
    "coreset_subsample",
    "fixed_params",
    "scorer_by_name",
    "scorer_from_arrays",
]
