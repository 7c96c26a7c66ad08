"""Classical detectors for the TEP benchmark, in plain numpy.

Both are fitted on the same normal rows as the autoencoder, on the same z-scores, and give
one score per row, so that they take exactly the same calibration:

- Hotelling T^2: squared Mahalanobis distance with the full covariance of the z-scores
  (pseudo-inverse, so exactly collinear features cannot break it).
- PCA T^2 + SPE: T^2 on the first k principal components and the squared prediction error
  on the rest, combined as max(T^2 / mean T^2, SPE / mean SPE) over the training rows: the
  classic "alarm when either statistic is too high" with one threshold.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["FitFn", "ScoreFn", "components_for", "cross_fitted", "hotelling_t2", "pca_t2_spe"]

ScoreFn = Callable[[np.ndarray], np.ndarray]
FitFn = Callable[[np.ndarray], ScoreFn]


def _standardiser(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """z-scores as the trainer computes them (population std; constant columns get 1)."""
    x64 = x.astype(np.float64)
    mean, std = x64.mean(axis=0), x64.std(axis=0)
    std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return lambda y: (y.astype(np.float64) - mean) / std


def hotelling_t2(x: np.ndarray) -> ScoreFn:
    standardise = _standardiser(x)
    precision = np.linalg.pinv(np.cov(standardise(x), rowvar=False), hermitian=True)

    def score(y: np.ndarray) -> np.ndarray:
        z = standardise(y)
        return np.einsum("ij,jk,ik->i", z, precision, z)

    return score


def components_for(x: np.ndarray, variance: float) -> int:
    """Smallest k whose principal components explain `variance` of the z-scores' variance."""
    z = _standardiser(x)(x)
    lam = np.linalg.eigvalsh(np.cov(z, rowvar=False))[::-1]
    return int(np.searchsorted(np.cumsum(lam) / lam.sum(), variance) + 1)


def pca_t2_spe(x: np.ndarray, components: int) -> ScoreFn:
    standardise = _standardiser(x)
    z = standardise(x)
    lam, vecs = np.linalg.eigh(np.cov(z, rowvar=False))
    order = np.argsort(lam)[::-1][:components]
    lam, loadings = lam[order], vecs[:, order]

    def both(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        zy = standardise(y)
        t = zy @ loadings
        spe = ((zy - t @ loadings.T) ** 2).sum(axis=1)
        return (t**2 / lam).sum(axis=1), spe

    t2_train, spe_train = both(x)
    t2_unit, spe_unit = t2_train.mean(), spe_train.mean()

    def score(y: np.ndarray) -> np.ndarray:
        t2, spe = both(y)
        return np.maximum(t2 / t2_unit, spe / spe_unit)

    return score


def cross_fitted(fit: FitFn, x: np.ndarray, folds: int) -> np.ndarray:
    """Score every row with a detector fitted on the other K-1 time blocks: the same blocks
    as `trainer.build.cross_fitted_scores`, so that every detector calibrates alike."""
    blocks = np.array_split(np.arange(len(x)), folds)
    out = np.empty(len(x))
    for k, idx in enumerate(blocks):
        rest = np.concatenate([b for j, b in enumerate(blocks) if j != k])
        out[idx] = fit(x[rest])(x[idx])
    return out
