"""Alarm thresholds from scores of held-out normal data. Plain numpy.

- Empirical quantile: the score exceeded by a fraction `1 - q` of normal samples.
- Peaks over threshold (Siffer et al., "Anomaly Detection in Streams with Extreme
  Value Theory", KDD 2017): fit a generalised Pareto distribution to the excesses over a
  high initial threshold t and extrapolate to a target risk far below 1/n, where the
  empirical quantile has no data left.
"""

from __future__ import annotations

import math

import numpy as np

from detector.contract.bundle import ErrorStats, Threshold

__all__ = ["error_stats", "fit_gpd", "pot_threshold", "quantile_threshold"]


def quantile_threshold(scores: np.ndarray, q: float = 0.99, margin: float = 1.0) -> Threshold:
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    s = _check(scores)
    value = float(np.quantile(s, q, method="higher")) * margin
    return Threshold(
        value=value,
        method="quantile",
        params={"q": q, "fpr": 1.0 - q, "n": len(s), "margin": margin},
    )


def fit_gpd(excesses: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (gamma, sigma) of a generalised Pareto distribution.

    Profile likelihood over theta = gamma / sigma (Grimshaw's reduction): for a given
    theta the optimal gamma is mean(log(1 + theta y)), leaving a 1-D search.
    """
    y = np.asarray(excesses, dtype=np.float64)
    y = y[y > 0]
    if len(y) < 3:
        raise ValueError("need at least 3 positive excesses to fit a GPD")
    n, ymax, ymean = len(y), y.max(), y.mean()

    def loglik(theta: float) -> tuple[float, float, float]:
        if abs(theta) < 1e-12:
            sigma = ymean
            return -n * math.log(sigma) - n, 0.0, sigma
        t = 1.0 + theta * y
        if np.any(t <= 0):
            return -math.inf, 0.0, 1.0
        gamma = float(np.mean(np.log(t)))
        sigma = gamma / theta
        if sigma <= 0 or gamma == 0:
            return -math.inf, 0.0, 1.0
        return -n * math.log(sigma) - (1.0 + 1.0 / gamma) * float(np.sum(np.log(t))), gamma, sigma

    lo = -1.0 / ymax * (1 - 1e-6)
    thetas = np.concatenate([lo * np.logspace(0, -6, 200), [0.0], np.logspace(-6, 3, 300) / ymean])
    best = max((loglik(float(th)) for th in thetas), key=lambda r: r[0])
    return best[1], best[2]


def pot_threshold(
    scores: np.ndarray, risk: float = 1e-4, level: float = 0.98, margin: float = 1.0
) -> Threshold:
    if not 0.0 < risk < 1.0 or not 0.0 < level < 1.0:
        raise ValueError("POT needs 0 < risk < 1 and 0 < level < 1")
    s = _check(scores)
    t = float(np.quantile(s, level))
    peaks = s[s > t] - t
    if len(peaks) < 5:
        raise ValueError(
            f"POT needs at least 5 scores above its initial threshold (got {len(peaks)} of "
            f"{len(s)}); hold out more normal data or lower pot_level"
        )
    gamma, sigma = fit_gpd(peaks)
    ratio = risk * len(s) / len(peaks)
    if abs(gamma) < 1e-9:
        z = t - sigma * math.log(ratio)
    else:
        z = t + (sigma / gamma) * (ratio ** (-gamma) - 1.0)
    z = max(z, t) * margin
    return Threshold(
        value=float(z),
        method="pot",
        params={
            "risk": risk,
            "level": level,
            "t": t,
            "gamma": gamma,
            "sigma": sigma,
            "peaks": len(peaks),
            "n": len(s),
            "margin": margin,
        },
    )


def error_stats(feature_error: np.ndarray) -> ErrorStats:
    fe = np.asarray(feature_error, dtype=np.float64)
    return ErrorStats(mean=fe.mean(axis=0).tolist(), std=fe.std(axis=0).tolist())


def _check(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(s) == 0:
        raise ValueError("no calibration scores: hold out some normal data")
    if not np.isfinite(s).all():
        raise ValueError("calibration scores contain NaN or infinity")
    return s
