"""Classical detectors for the TEP benchmark, in plain numpy.

All are fitted on the same normal rows as the autoencoder, on the same z-scores, and give
one score per row, so that they take exactly the same calibration:

- Hotelling T^2: squared Mahalanobis distance with the full covariance of the z-scores
  (pseudo-inverse, so exactly collinear features cannot break it).
- PCA T^2 + SPE: T^2 on the first k principal components and the squared prediction error
  on the rest, combined as max(T^2 / mean T^2, SPE / mean SPE) over the training rows: the
  classic "alarm when either statistic is too high" with one threshold.
- Lagged T^2: Hotelling's T^2 of the last L samples stacked, [x_t, x_t-1, ..., x_t-L+1]
  (the statistic of dynamic PCA without dropping components): the covariance across lags
  makes a broken dynamic relation (a controller that stops acting, a valve that sticks)
  as visible as a broken static one. Optionally averaged over the last W rows, like the
  trainer's `--score window-mean`.

A detector is fitted on segments: stretches of consecutive rows, each in time order (the
cross-fitting blocks around a held-out one), so that no lag vector joins two stretches.
Rows without a full history (the first L-1, or L+W-2, of a scored stretch) score NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "FitFn",
    "ScoreFn",
    "components_for",
    "cross_fitted",
    "hotelling_t2",
    "lagged_t2",
    "pca_t2_spe",
]

ScoreFn = Callable[[np.ndarray], np.ndarray]
FitFn = Callable[[Sequence[np.ndarray]], ScoreFn]


def _standardiser(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """z-scores as the trainer computes them (population std; constant columns get 1)."""
    x64 = x.astype(np.float64)
    mean, std = x64.mean(axis=0), x64.std(axis=0)
    std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return lambda y: (y.astype(np.float64) - mean) / std


def hotelling_t2(segments: Sequence[np.ndarray]) -> ScoreFn:
    return lagged_t2(segments, lags=1)


def _stack_lags(z: np.ndarray, lags: int) -> np.ndarray:
    """[N - L + 1, L * F]: each row's last L samples (in any fixed order: T^2 ignores it)."""
    if len(z) < lags:
        return np.empty((0, lags * z.shape[1]))
    return sliding_window_view(z, lags, axis=0).reshape(len(z) - lags + 1, -1)


def _trailing_mean(s: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value and the window-1 before it; NaN where there are fewer."""
    out = np.full(len(s), np.nan)
    if window <= len(s):
        out[window - 1 :] = sliding_window_view(s, window).mean(axis=1)
    return out


def lagged_t2(segments: Sequence[np.ndarray], lags: int, window: int = 1) -> ScoreFn:
    x = np.concatenate(segments)
    standardise = _standardiser(x)
    stacked = np.concatenate([_stack_lags(standardise(s), lags) for s in segments])
    precision = np.linalg.pinv(np.cov(stacked, rowvar=False), hermitian=True)

    def score(y: np.ndarray) -> np.ndarray:
        z = _stack_lags(standardise(y), lags)
        t2 = np.full(len(y), np.nan)
        t2[lags - 1 :] = np.einsum("ij,jk,ik->i", z, precision, z)
        return t2 if window == 1 else _trailing_mean(t2, window)

    return score


def components_for(x: np.ndarray, variance: float) -> int:
    """Smallest k whose principal components explain `variance` of the z-scores' variance."""
    z = _standardiser(x)(x)
    lam = np.linalg.eigvalsh(np.cov(z, rowvar=False))[::-1]
    return int(np.searchsorted(np.cumsum(lam) / lam.sum(), variance) + 1)


def pca_t2_spe(segments: Sequence[np.ndarray], components: int) -> ScoreFn:
    x = np.concatenate(segments)
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
    as `trainer.build.cross_fitted_scores`, so that every detector calibrates alike. Rows
    in a block's warm-up (no full history inside the block) are left out, as there."""
    blocks = np.array_split(np.arange(len(x)), folds)
    out = []
    for k, idx in enumerate(blocks):
        rest = [x[b] for j, b in enumerate(blocks) if j != k]
        s = fit(rest)(x[idx])
        out.append(s[~np.isnan(s)])
    return np.concatenate(out)
