import dataclasses
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from trainer.fraud_metrics import (
    FraudMetrics,
    average_precision,
    card_precision_at_k,
    card_precision_at_k_per_day,
    fraud_metrics,
    roc_auc,
    time_split,
)


def cp(rows: list[tuple[int, str, float, int]], k: int, **kw: bool) -> list[float]:
    """Per-day card precision of (day, card, score, fraud) rows."""
    days, cards, scores, y = zip(*rows, strict=True)
    _, per_day = card_precision_at_k_per_day(days, cards, scores, y, k, **kw)
    return per_day.tolist()


def reference_cp(
    days: np.ndarray, cards: np.ndarray, scores: np.ndarray, y: np.ndarray, k: int, remove: bool
) -> list[float]:
    """The handbook's procedure, written naively with dicts (valid without score ties)."""
    blocked: set[int] = set()
    out = []
    for d in sorted(set(days.tolist())):
        best: dict[int, tuple[float, int]] = {}
        for c, s, f in zip(cards[days == d], scores[days == d], y[days == d], strict=True):
            if c in blocked:
                continue
            s0, f0 = best.get(c, (-math.inf, 0))
            best[c] = (max(s0, s), max(f0, f))
        top = sorted(best.items(), key=lambda item: -item[1][0])[:k]
        found = [c for c, (_, f) in top if f == 1]
        out.append(len(found) / k)
        if remove:
            blocked.update(found)
    return out


def test_auc_and_ap_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.1).astype(int)
    s = rng.normal(size=500) + y
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    assert 0.6 < roc_auc(y, s) < 0.95
    assert roc_auc(y, y.astype(float)) == 1.0 and average_precision(y, y.astype(float)) == 1.0


def test_undefined_cases_are_nan_and_bad_input_raises() -> None:
    assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert average_precision([1, 1], [0.1, 0.2]) == 1.0
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="one entry per transaction"):
        average_precision([0, 1], [0.1])


def test_card_precision_basic_day() -> None:
    rows = [(0, "A", 0.9, 1), (0, "B", 0.8, 0), (0, "C", 0.7, 1), (0, "D", 0.1, 0)]
    assert cp(rows, k=1) == [1.0]
    assert cp(rows, k=2) == [0.5]
    assert cp(rows, k=3) == [pytest.approx(2 / 3)]


def test_card_takes_its_max_score_and_any_fraud_of_the_day() -> None:
    # D's fraud scored low, but a legitimate payment of D scored highest: D is alerted, and
    # it is a compromised card that day, so the alert is a hit
    rows = [(0, "D", 0.1, 1), (0, "D", 0.95, 0), (0, "A", 0.9, 1), (0, "B", 0.5, 0)]
    assert cp(rows, k=1) == [1.0]
    # B has two transactions: it is one card, one alert slot
    rows = [(0, "B", 0.9, 0), (0, "B", 0.8, 0), (0, "A", 0.7, 1)]
    assert cp(rows, k=2) == [0.5]


def test_fewer_cards_than_k_divide_by_k() -> None:
    rows = [(0, "A", 0.9, 1), (0, "B", 0.2, 1)]
    assert cp(rows, k=5) == [0.4]


def test_ties_rank_genuine_cards_first() -> None:
    rows = [(0, "A", 0.5, 1), (0, "B", 0.5, 0), (0, "C", 0.5, 0), (0, "Z", 0.1, 0)]
    assert cp(rows, k=1) == [0.0]
    assert cp(rows, k=2) == [0.0]
    assert cp(rows, k=3) == [pytest.approx(1 / 3)]
    # a tie above the cut does not matter
    rows = [(0, "A", 0.5, 1), (0, "B", 0.5, 1), (0, "C", 0.1, 0)]
    assert cp(rows, k=2) == [1.0]


def test_detected_cards_are_removed_from_later_days() -> None:
    rows = [
        (0, "A", 0.9, 1),
        (0, "C", 0.1, 1),  # compromised but not alerted: stays in play
        (1, "A", 0.9, 1),
        (1, "B", 0.8, 0),
        (1, "C", 0.7, 1),
    ]
    assert cp(rows, k=1) == [1.0, 0.0]  # A blocked on day 1, B is the top card
    assert cp(rows, k=2) == [1.0, 0.0]  # A and C found on day 0; day 1 leaves B alone
    assert cp(rows, k=1, remove_detected=False) == [1.0, 1.0]
    assert cp(rows, k=2, remove_detected=False) == [1.0, 0.5]
    days, cards, scores, y = zip(*rows, strict=True)
    assert card_precision_at_k(days, cards, scores, y, k=1) == 0.5
    assert card_precision_at_k(days, cards, scores, y, k=1, remove_detected=False) == 1.0


def test_mean_is_over_the_days_present() -> None:
    rows = [(3, "A", 0.9, 1), (10, "A", 0.9, 0), (10, "B", 0.1, 0)]
    days, cards, scores, y = zip(*rows, strict=True)
    day_values, per_day = card_precision_at_k_per_day(days, cards, scores, y, k=1)
    assert day_values.tolist() == [3, 10] and per_day.tolist() == [1.0, 0.0]
    assert card_precision_at_k(days, cards, scores, y, k=1) == 0.5
    assert math.isnan(card_precision_at_k([], [], [], [], k=1))
    with pytest.raises(ValueError, match="k must be"):
        card_precision_at_k(days, cards, scores, y, k=0)


@pytest.mark.parametrize("remove", [True, False])
def test_card_precision_matches_a_naive_reference(remove: bool) -> None:
    rng = np.random.default_rng(1)
    n = 3000
    days = rng.integers(0, 6, n)
    cards = rng.integers(0, 150, n)
    y = (rng.random(n) < 0.05).astype(int)
    scores = rng.random(n) + 0.3 * y  # continuous: no ties
    want = reference_cp(days, cards, scores, y, 10, remove)
    _, got = card_precision_at_k_per_day(days, cards, scores, y, 10, remove_detected=remove)
    np.testing.assert_allclose(got, want)
    assert 0 < np.mean(want) < 1  # the case is not degenerate


def test_time_split_masks() -> None:
    days = np.repeat(np.arange(30), 3)
    train, test = time_split(days, train_days=7, delay_days=5, test_days=4, start_day=2)
    assert not (train & test).any()
    assert sorted(set(days[train].tolist())) == list(range(2, 9))
    assert sorted(set(days[test].tolist())) == list(range(14, 18))
    gap = sorted(set(days[~train & ~test & (days >= 2) & (days < 18)].tolist()))
    assert gap == list(range(9, 14))  # exactly the delay
    train, test = time_split(days, 7, 0, 7)
    assert days[train].max() + 1 == days[test].min()
    with pytest.raises(ValueError):
        time_split(days, 0, 1, 1)


def test_time_split_drops_cards_known_compromised() -> None:
    # train days 0-1, delay 2-3, test 4-6
    days = [0, 1, 5, 5, 2, 4, 6, 3, 4, 6, 6]
    cards = [1, 2, 1, 3, 4, 4, 4, 5, 5, 5, 6]
    y = [1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    _, plain = time_split(days, 2, 2, 3)
    assert plain.tolist() == [False, False, True, True, False, True, True, False, True, True, True]
    _, test = time_split(days, 2, 2, 3, customer_ids=cards, y_true=y)
    # card 1: fraud in training -> gone; card 4: fraud on day 2, known from day 5 (> 2 + 2), so
    # kept on day 4 and dropped on day 6; card 5: fraud on day 3, known from day 6; card 6's
    # own fraud on day 6 stays (only earlier knowledge counts)
    assert test.tolist() == [
        False,
        False,
        False,
        True,
        False,
        True,
        False,
        False,
        True,
        False,
        True,
    ]
    with pytest.raises(ValueError, match="both"):
        time_split(days, 2, 2, 3, customer_ids=cards)


def test_fraud_metrics_bundle() -> None:
    rows = [(0, 1, 0.9, 1), (0, 2, 0.2, 0), (0, 3, 0.6, 0), (1, 1, 0.1, 0), (1, 2, 0.8, 1)]
    days, cards, scores, y = (list(c) for c in zip(*rows, strict=True))
    m = fraud_metrics(days, cards, scores, y, k=1)
    assert isinstance(m, FraudMetrics)
    assert (m.k, m.n, m.n_fraud) == (1, 5, 2)
    assert m.roc_auc == pytest.approx(roc_auc_score(y, scores))
    assert m.average_precision == pytest.approx(average_precision_score(y, scores))
    assert m.card_precision_at_k == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.k = 2  # type: ignore[misc]
