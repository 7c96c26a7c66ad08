"""The metrics fraud practitioners report, and the time-based split they evaluate on.

Following the Fraud Detection Handbook (Le Borgne et al., ULB), chapters "Performance metrics"
and "Model validation and selection":

- threshold-free, per transaction: ROC AUC and average precision (scikit-learn);
- operational, per card: card precision top-k. Investigators can check k cards a day, so each
  day the cards are ranked by their most suspicious transaction and the metric is the share
  of the k checked cards that were indeed compromised that day, averaged over the days;
- a time split: train on some days, skip a delay (frauds are only known after investigation),
  test on the days after it.

Inputs are plain arrays, one entry per transaction: the day index, the card (customer) id,
the detector's score (higher = more suspicious) and the 0/1 fraud label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "FraudMetrics",
    "average_precision",
    "card_precision_at_k",
    "card_precision_at_k_per_day",
    "fraud_metrics",
    "roc_auc",
    "time_split",
]


@dataclass(frozen=True)
class FraudMetrics:
    roc_auc: float  # NaN when the labels hold a single class
    average_precision: float  # NaN when there is no fraud
    card_precision_at_k: float  # mean over the days present; NaN when there are none
    k: int
    n: int  # transactions
    n_fraud: int


def _labels(y_true: ArrayLike, n: int | None = None) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be a 1-D array of 0/1 fraud labels")
    if n is not None and len(y) != n:
        raise ValueError(f"y_true has {len(y)} entries, expected one per transaction ({n})")
    return y.astype(np.int8)


def _scores(scores: ArrayLike, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"scores must be a 1-D array with one entry per transaction ({n})")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity; score every transaction first")
    return s


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve; NaN (not an exception) when only one class is present."""
    y = _labels(y_true)
    s = _scores(scores, len(y))
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def average_precision(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Average precision (area under the precision-recall curve, step-wise); NaN without any
    fraud, where scikit-learn would warn and return 0."""
    y = _labels(y_true)
    s = _scores(scores, len(y))
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, s))


def _card_days(
    days: np.ndarray, cards: np.ndarray, scores: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group by (day, card): one row each with the card's highest score that day and whether
    it had a fraud that day, sorted by day, then score descending, then genuine before fraud
    (so that ties never help the detector), then card."""
    order = np.lexsort((cards, days))
    d, c = days[order], cards[order]
    new = np.ones(len(d), bool)
    new[1:] = (d[1:] != d[:-1]) | (c[1:] != c[:-1])
    first = np.flatnonzero(new)
    d, c = d[first], c[first]
    s = np.maximum.reduceat(scores[order], first)
    f = np.maximum.reduceat(y[order], first)
    rank = np.lexsort((c, f, -s, d))
    return d[rank], c[rank], s[rank], f[rank]


def card_precision_at_k_per_day(
    days: ArrayLike,
    customer_ids: ArrayLike,
    scores: ArrayLike,
    y_true: ArrayLike,
    k: int = 100,
    *,
    remove_detected: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Card precision top-k of each day present: (sorted day values, precisions).

    Each day a card's score is its highest transaction score of that day and it counts as
    compromised if any of its transactions that day is fraud. The k highest-scoring cards are
    the alerts; the precision is (compromised cards among them) / k.

    Choices, as in the handbook's code unless said otherwise:
    - a day with fewer than k cards still divides by k: the unused alert slots are misses, so
      such a day cannot reach 1;
    - with `remove_detected`, a card found compromised (in the alerts and fraud) is blocked:
      it leaves the ranking of the following days;
    - ties (equal scores) rank genuine cards before compromised ones: the detector gets the
      worst order of its ties, so a constant score earns nothing (the handbook leaves the
      order to pandas' sort).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    d = np.asarray(days)
    cards = np.asarray(customer_ids)
    y = _labels(y_true, len(d))
    s = _scores(scores, len(d))
    if cards.shape != d.shape or d.ndim != 1:
        raise ValueError("days and customer_ids must be 1-D arrays of the same length")
    if len(d) == 0:
        return np.empty(0, d.dtype), np.empty(0)
    _, card_index = np.unique(cards, return_inverse=True)
    gd, gc, _, gf = _card_days(d, card_index.ravel(), s, y)
    day_values, first, sizes = np.unique(gd, return_index=True, return_counts=True)
    hits = np.zeros(len(day_values))
    blocked = np.zeros(int(gc.max()) + 1, bool)
    for i, (a, n) in enumerate(zip(first, sizes, strict=True)):  # one pass per day
        c, f = gc[a : a + n], gf[a : a + n]
        if remove_detected:
            open_ = ~blocked[c]
            c, f = c[open_], f[open_]
        found = c[:k][f[:k] == 1]
        hits[i] = len(found)
        if remove_detected:
            blocked[found] = True
    return day_values, hits / k


def card_precision_at_k(
    days: ArrayLike,
    customer_ids: ArrayLike,
    scores: ArrayLike,
    y_true: ArrayLike,
    k: int = 100,
    *,
    remove_detected: bool = True,
) -> float:
    """Mean over the days present of `card_precision_at_k_per_day`; NaN without data."""
    _, per_day = card_precision_at_k_per_day(
        days, customer_ids, scores, y_true, k, remove_detected=remove_detected
    )
    return float(per_day.mean()) if len(per_day) else float("nan")


def time_split(
    days: ArrayLike,
    train_days: int,
    delay_days: int,
    test_days: int,
    start_day: int = 0,
    *,
    customer_ids: ArrayLike | None = None,
    y_true: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) over the transactions, by day index:

    train: start_day <= day < start_day + train_days
    (delay: the next delay_days days, in neither set)
    test:  the test_days days after the delay.

    The delay stands for the time investigators need to confirm frauds: a model put in
    production at the end of training only knows the labels of the training days.

    With `customer_ids` and `y_true`, the test set also drops, as the handbook does, the
    transactions of cards already known to be compromised: on test day t, the cards with a
    fraud on a day in [start_day, t - delay_days) (they would be blocked by then).
    """
    if train_days < 1 or test_days < 1 or delay_days < 0:
        raise ValueError("train_days and test_days must be >= 1 and delay_days >= 0")
    d = np.asarray(days)
    train_end = start_day + train_days
    test_start = train_end + delay_days
    train = (d >= start_day) & (d < train_end)
    test = (d >= test_start) & (d < test_start + test_days)
    if (customer_ids is None) != (y_true is None):
        raise ValueError("give both customer_ids and y_true to drop known compromised cards")
    if customer_ids is not None and y_true is not None:
        cards = np.asarray(customer_ids)
        y = _labels(y_true, len(d))
        _, card_index = np.unique(cards, return_inverse=True)
        card_index = card_index.ravel()
        first_fraud = np.full(card_index.max(initial=-1) + 1, np.iinfo(np.int64).max)
        seen = (y == 1) & (d >= start_day)
        np.minimum.at(first_fraud, card_index[seen], d[seen].astype(np.int64))
        test &= ~(first_fraud[card_index] < d - delay_days)
    return train, test


def fraud_metrics(
    days: ArrayLike,
    customer_ids: ArrayLike,
    scores: ArrayLike,
    y_true: ArrayLike,
    k: int = 100,
    *,
    remove_detected: bool = True,
) -> FraudMetrics:
    """All of the above on one set of scored transactions (usually a test mask's worth)."""
    y = _labels(y_true)
    return FraudMetrics(
        roc_auc=roc_auc(y, scores),
        average_precision=average_precision(y, scores),
        card_precision_at_k=card_precision_at_k(
            days, customer_ids, scores, y, k, remove_detected=remove_detected
        ),
        k=k,
        n=len(y),
        n_fraud=int(y.sum()),
    )
