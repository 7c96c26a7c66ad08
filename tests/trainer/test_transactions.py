import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from trainer.transactions import (
    COLUMNS,
    DAY_MS,
    Transactions,
    _distinct_per_row,
    simulate,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(t: datetime) -> int:
    return (t - EPOCH) // timedelta(milliseconds=1)


@pytest.fixture(scope="module")
def tx() -> Transactions:
    """The handbook's population over six weeks (~0.4 M transactions, well under a second)."""
    return simulate(5000, 10000, 42, seed=7)


def covered(pairs: np.ndarray, size: int, days: int, window: int) -> np.ndarray:
    """[size, days] bool: id i is compromised on day d."""
    out = np.zeros((size, days), bool)
    for first, i in pairs:
        out[i, first : first + window] = True
    return out


def test_seeded_determinism() -> None:
    a, b = simulate(300, 600, 20, seed=1), simulate(300, 600, 20, seed=1)
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.compromised_cards, b.compromised_cards)
    c = simulate(300, 600, 20, seed=2)
    assert len(c) != len(a) or not np.array_equal(c.tx_amount, a.tx_amount)


def test_columns_dtypes_and_time_order(tx: Transactions) -> None:
    dtypes = {
        "transaction_id": np.int64,
        "tx_time_ms": np.int64,
        "tx_time_days": np.int32,
        "customer_id": np.int64,
        "terminal_id": np.int64,
        "tx_amount": np.float64,
        "tx_fraud": np.int8,
        "tx_fraud_scenario": np.int8,
    }
    assert {n: c.dtype.type for n, c in tx.columns().items()} == dtypes
    assert all(len(c) == len(tx) for c in tx.columns().values())
    assert (np.diff(tx.tx_time_ms) >= 0).all()
    np.testing.assert_array_equal(tx.transaction_id, np.arange(len(tx)))
    start = epoch_ms(datetime(2026, 4, 1, tzinfo=UTC))
    np.testing.assert_array_equal((tx.tx_time_ms - start) // DAY_MS, tx.tx_time_days)
    assert tx.tx_time_days.min() == 0 and tx.tx_time_days.max() == 41
    # Roughly the handbook's volume: 5000 customers x 2 tx/day on average, minus ~3 % of
    # times outside the day
    assert 0.9 * 5000 * 2 * 42 < len(tx) < 1.05 * 5000 * 2 * 42


def test_custom_start() -> None:
    start = datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
    t = simulate(100, 200, 3, seed=0, start=start)
    assert (
        epoch_ms(start) <= t.tx_time_ms.min() and t.tx_time_ms.max() < epoch_ms(start) + 3 * DAY_MS
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        simulate(100, 200, 3, start=datetime(2026, 1, 1))


def test_terminals_within_radius(tx: Transactions) -> None:
    p = tx.profiles
    gap = p.customer_xy[tx.customer_id] - p.terminal_xy[tx.terminal_id]
    assert (np.hypot(gap[:, 0], gap[:, 1]) < 5.0).all()
    small = simulate(200, 2000, 5, seed=3, radius=2.0)
    gap = (
        small.profiles.customer_xy[small.customer_id]
        - small.profiles.terminal_xy[small.terminal_id]
    )
    assert len(small) > 0 and (np.hypot(gap[:, 0], gap[:, 1]) < 2.0).all()


def test_customers_without_terminals_make_no_transactions() -> None:
    t = simulate(300, 30, 10, seed=4, radius=3.0)
    p = t.profiles
    d = np.hypot(*(p.customer_xy[:, None, :] - p.terminal_xy[None, :, :]).transpose(2, 0, 1))
    stranded = np.flatnonzero((d >= 3.0).all(axis=1))
    assert 0 < len(stranded) < 300  # both kinds exist, so the check below means something
    assert len(t) > 0 and not np.isin(t.customer_id, stranded).any()


def test_amounts_are_cents_and_non_negative(tx: Transactions) -> None:
    cents = tx.tx_amount * 100
    np.testing.assert_allclose(cents, np.round(cents), atol=1e-6)
    assert (tx.tx_amount >= 0).all()
    legit = tx.tx_fraud_scenario == 0
    ratio = tx.tx_amount[legit] / tx.profiles.mean_amount[tx.customer_id[legit]]
    assert 0.9 < np.median(ratio) < 1.1


def test_fraud_label_matches_scenario(tx: Transactions) -> None:
    np.testing.assert_array_equal(tx.tx_fraud, (tx.tx_fraud_scenario > 0).astype(np.int8))
    assert set(np.unique(tx.tx_fraud_scenario).tolist()) == {0, 1, 2, 3}


def test_scenario_1_large_amounts(tx: Transactions) -> None:
    s = tx.tx_fraud_scenario
    assert (s == 1).sum() > 0
    assert (tx.tx_amount[s == 1] > 220).all()
    assert (tx.tx_amount[s == 0] <= 220).all()  # no large amount is left legitimate


def test_scenario_2_compromised_terminals(tx: Transactions) -> None:
    comp = tx.compromised_terminals
    days = int(tx.tx_time_days.max()) + 1
    assert comp.shape == (2 * days, 2)
    for d in range(days):  # two distinct terminals every day
        assert len(set(comp[comp[:, 0] == d, 1].tolist())) == 2
    hot = covered(comp, 10000, days, 28)[tx.terminal_id, tx.tx_time_days]
    s = tx.tx_fraud_scenario
    assert hot.sum() > 100
    assert np.isin(s[hot], (2, 3)).all()  # every transaction there is fraud (3 may relabel)
    assert hot[s == 2].all()  # and scenario 2 happens nowhere else
    # the window closes after 28 days: the day a terminal was compromised plus 27
    late = covered(comp, 10000, days, 29)[tx.terminal_id, tx.tx_time_days] & ~hot
    assert late.sum() > 0 and not (s[late] == 2).any()


def test_scenario_3_compromised_cards(tx: Transactions) -> None:
    comp = tx.compromised_cards
    days = int(tx.tx_time_days.max()) + 1
    assert comp.shape == (3 * days, 2)
    leaked = covered(comp, 5000, days, 14)[tx.customer_id, tx.tx_time_days]
    s = tx.tx_fraud_scenario
    assert (s == 3).sum() > 50
    assert leaked[s == 3].all()
    share = (s[leaked] == 3).mean()
    assert 0.28 < share <= 1 / 3  # a third of each window, rounded down
    # Inflated five-fold: amounts of cents times 5, about 5 x the customer's usual amount
    cents = np.round(tx.tx_amount[s == 3] * 100).astype(np.int64)
    assert (cents % 5 == 0).all()
    ratio = tx.tx_amount[s == 3] / tx.profiles.mean_amount[tx.customer_id[s == 3]]
    assert 4.0 < np.median(ratio) < 6.0


def test_fraud_share_is_of_the_handbooks_order(tx: Transactions) -> None:
    share = tx.tx_fraud.mean()
    by_scenario = np.bincount(tx.tx_fraud_scenario, minlength=4) / len(tx)
    assert 0.002 < share < 0.015, share
    assert (by_scenario[1:] > 0).all()
    assert by_scenario[1] < by_scenario[2]  # as in the handbook: terminals give most fraud


def test_scenarios_can_be_turned_off() -> None:
    t = simulate(300, 600, 10, seed=5, compromised_terminals_per_day=0, compromised_cards_per_day=0)
    assert len(t) > 0 and set(np.unique(t.tx_fraud_scenario).tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="distinct"):
        simulate(10, 5, 2, compromised_terminals_per_day=6)


def test_distinct_per_row_is_distinct_and_uniform() -> None:
    picks = _distinct_per_row(np.random.default_rng(0), 30000, 5, 3)
    assert ((picks >= 0) & (picks < 5)).all()
    assert all(len(set(row)) == 3 for row in picks[:2000].tolist())
    counts = np.bincount(picks.ravel(), minlength=5)
    np.testing.assert_allclose(counts / counts.sum(), 0.2, atol=0.01)
    # the position of a value in the row is uniform too (the shift keeps the draw unbiased)
    np.testing.assert_allclose(np.bincount(picks[:, 2], minlength=5) / 30000, 0.2, atol=0.01)


def test_table_and_records() -> None:
    t = simulate(200, 400, 5, seed=6)
    table = t.to_table()
    assert table.column_names == COLUMNS and table.num_rows == len(t)
    np.testing.assert_array_equal(table.column("tx_amount").to_numpy(), t.tx_amount)
    recs = list(t.records(chunk=7))
    assert len(recs) == len(t)
    first = recs[0]
    assert set(first) == {"transaction_id", "ts", "card_id", "terminal_id", "amount"}
    assert first["card_id"] == f"C{t.customer_id[0]:05d}" and len(str(first["card_id"])) == 6
    assert first["terminal_id"] == f"T{t.terminal_id[0]:05d}"
    assert first["ts"] == t.tx_time_ms[0] and first["amount"] == t.tx_amount[0]
    assert json.loads(json.dumps(recs[-1])) == recs[-1] == t.to_record(len(t) - 1)
    labelled = list(t.records(3, 10, labels=True))
    assert len(labelled) == 7 and labelled[0]["transaction_id"] == 3
    assert labelled[0] == t.to_record(3, labels=True)
    assert [r["fraud"] for r in labelled] == t.tx_fraud[3:10].tolist()
