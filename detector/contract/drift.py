"""Has the live score distribution moved away from the one the threshold was set on?

The trainer stores the deciles of its held-out normal scores in the manifest
(`score_reference`). Live scores are binned by those edges; with no drift each of the ten
bins holds a tenth of them. The population stability index (PSI) measures the difference:
below 0.1 the distributions match, 0.1 to 0.25 is a moderate shift, above 0.25 the model no
longer describes the data well enough and should be retrained.
"""

from __future__ import annotations

import numpy as np

__all__ = ["REFERENCE_QUANTILES", "psi", "reference_edges"]

REFERENCE_QUANTILES = tuple(round(q, 1) for q in np.arange(0.1, 1.0, 0.1))
_FLOOR = 1e-4  # an empty bin would make the index infinite; this caps one bin's share


def reference_edges(scores: np.ndarray) -> list[float]:
    """The bin edges the trainer stores: deciles of normal scores."""
    return [float(v) for v in np.quantile(np.asarray(scores, np.float64), REFERENCE_QUANTILES)]


def psi(scores: np.ndarray, edges: list[float] | np.ndarray) -> float:
    """Population stability index of `scores` against equal-mass bins cut at `edges`."""
    e = np.asarray(edges, np.float64)
    expected = np.full(len(e) + 1, 1.0 / (len(e) + 1))
    counts = np.bincount(np.searchsorted(e, scores, side="right"), minlength=len(e) + 1)
    observed = np.maximum(counts / max(len(scores), 1), _FLOOR)
    return float(np.sum((observed - expected) * np.log(observed / expected)))
