"""Synthetic payment-card transactions with labelled fraud (numpy only, vectorised).

A re-implementation of the design of the simulator in the Fraud Detection Handbook (Le Borgne,
Siblini, Lebichot, Bontempi, ULB: "Reproducible Machine Learning for Credit Card Fraud
Detection - Practical Handbook", chapter "Transaction data simulator"):

- customers on a 100 x 100 grid, each with a mean amount ~ U(5, 100) (std = mean / 2) and a
  mean number of transactions per day ~ U(0, 4); terminals on the same grid; a customer pays
  only at terminals closer than `radius` (customers with none never pay);
- per day and customer, Poisson(mean_nb_tx_per_day) transactions at a time of day
  ~ N(noon, 20000 s), an amount ~ N(mean, std) (re-drawn ~ U(0, 2 mean) when negative, then
  rounded to cents) and a terminal drawn uniformly among the customer's terminals;
- three fraud scenarios, applied in this order (a later one relabels an earlier one):
  1. every amount above 220 is fraud;
  2. every day some terminals are compromised: all their transactions from that day and the
     next `terminal_compromise_days - 1` days are fraud;
  3. every day some cards are compromised: over that day and the next
     `card_compromise_days - 1` days a third of their transactions have their amount
     multiplied by 5 and are fraud.

Where this differs from the handbook's code, and why:

- Times that fall outside the day are dropped, as the handbook does (its ~1.75 M transactions
  for 5000 customers over 183 days count on it); clipping them to midnight would pile ~3 % of
  the traffic on two instants a detector could learn. Times have millisecond resolution.
- Scenario 3 samples a third of each card's transactions in the window (rounded down), where
  the handbook samples a third of the three cards' transactions taken together; when one card
  is compromised again before its window closes, its transactions from the new day on belong
  to the new window, so no amount is multiplied twice (the handbook may multiply by 25).
- Compromises start on every simulated day (the handbook stops a day before the end).

One generator (`numpy.random.default_rng(seed)`) drives everything, so a seed and the
parameters fix the output. The work is whole-array numpy; the only Python loops run over
blocks of customers (distances), the handful of compromises per day, or chunks of records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

__all__ = ["COLUMNS", "Profiles", "Transactions", "card_key", "simulate", "terminal_key"]

COLUMNS = [
    "transaction_id",
    "tx_time_ms",
    "tx_time_days",
    "customer_id",
    "terminal_id",
    "tx_amount",
    "tx_fraud",
    "tx_fraud_scenario",
]
GRID = 100.0  # side of the square the customers and terminals live on
DAY_MS = 86_400_000
_TIME_MEAN_S = 86_400 / 2  # transactions cluster around noon ...
_TIME_STD_S = 20_000.0  # ... with a spread of about 5.5 hours
_DISTANCE_CHUNK = 1 << 22  # customer-terminal pairs per distance block (~32 MB of float64)


def card_key(customer_id: int) -> str:
    """The card id of the stream records: 42 -> "C00042" (wider past 99999)."""
    return f"C{customer_id:05d}"


def terminal_key(terminal_id: int) -> str:
    """The terminal id of the stream records: 7 -> "T00007" (wider past 99999)."""
    return f"T{terminal_id:05d}"


@dataclass(frozen=True)
class Profiles:
    """The simulated population; row i describes customer (or terminal) id i."""

    customer_xy: np.ndarray  # [C, 2] float64, location on the grid
    mean_amount: np.ndarray  # [C] float64
    std_amount: np.ndarray  # [C] float64
    mean_nb_tx_per_day: np.ndarray  # [C] float64
    terminal_xy: np.ndarray  # [T, 2] float64


@dataclass(frozen=True)
class Transactions:
    """Transaction columns in time order, plus the population and the compromises behind the
    labels (ground truth for analysis; a detector must not see them)."""

    transaction_id: np.ndarray  # [N] int64, 0..N-1 in time order
    tx_time_ms: np.ndarray  # [N] int64, epoch milliseconds, non-decreasing
    tx_time_days: np.ndarray  # [N] int32, day index from `start` (0-based)
    customer_id: np.ndarray  # [N] int64, row of profiles.customer_xy
    terminal_id: np.ndarray  # [N] int64, row of profiles.terminal_xy
    tx_amount: np.ndarray  # [N] float64, in cents precision
    tx_fraud: np.ndarray  # [N] int8, 1 for fraud
    tx_fraud_scenario: np.ndarray  # [N] int8, 0 legitimate, else the scenario (1, 2, 3)
    profiles: Profiles
    compromised_terminals: np.ndarray  # [K, 2] int64 rows of (first day, terminal_id)
    compromised_cards: np.ndarray  # [K, 2] int64 rows of (first day, customer_id)

    def __len__(self) -> int:
        return len(self.transaction_id)

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in COLUMNS}

    def to_table(self) -> pa.Table:
        """The columns as a pyarrow Table (same names and dtypes)."""
        return pa.table(self.columns())

    def to_record(self, i: int, *, labels: bool = False) -> dict[str, int | float | str]:
        """Row `i` as the stream sees it; see `records` for the fields."""
        record: dict[str, int | float | str] = {
            "transaction_id": int(self.transaction_id[i]),
            "ts": int(self.tx_time_ms[i]),
            "card_id": card_key(int(self.customer_id[i])),
            "terminal_id": terminal_key(int(self.terminal_id[i])),
            "amount": float(self.tx_amount[i]),
        }
        if labels:
            record["fraud"] = int(self.tx_fraud[i])
            record["fraud_scenario"] = int(self.tx_fraud_scenario[i])
        return record

    def records(
        self, start: int = 0, stop: int | None = None, *, labels: bool = False, chunk: int = 65_536
    ) -> Iterator[dict[str, int | float | str]]:
        """JSON-ready dicts for rows [start, stop), in time order:

        `transaction_id` (int), `ts` (epoch ms, int), `card_id` ("C00042"), `terminal_id`
        ("T00007"), `amount` (float, cents); with `labels`, also `fraud` (0/1) and
        `fraud_scenario` (0-3). Labels are off by default: a real stream learns them late."""
        stop = len(self) if stop is None else min(stop, len(self))
        for a in range(start, stop, chunk):
            b = min(stop, a + chunk)
            cols = [
                self.transaction_id[a:b].tolist(),
                self.tx_time_ms[a:b].tolist(),
                self.customer_id[a:b].tolist(),
                self.terminal_id[a:b].tolist(),
                self.tx_amount[a:b].tolist(),
            ]
            extra = [self.tx_fraud[a:b].tolist(), self.tx_fraud_scenario[a:b].tolist()]
            for j, (tid, ts, card, term, amount) in enumerate(zip(*cols, strict=True)):
                record: dict[str, int | float | str] = {
                    "transaction_id": tid,
                    "ts": ts,
                    "card_id": card_key(card),
                    "terminal_id": terminal_key(term),
                    "amount": amount,
                }
                if labels:
                    record["fraud"] = extra[0][j]
                    record["fraud_scenario"] = extra[1][j]
                yield record


def _terminals_within(
    customer_xy: np.ndarray, terminal_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of the terminals closer than `radius` to each customer: customer c may use
    flat[offsets[c]:offsets[c + 1]]. Brute force in blocks of customers, which keeps memory
    bounded and takes a fraction of a second for 5000 x 10000."""
    per_block = max(1, _DISTANCE_CHUNK // max(1, len(terminal_xy)))
    r2 = radius * radius
    rows, cols = [], []
    for a in range(0, len(customer_xy), per_block):
        block = customer_xy[a : a + per_block]
        d2 = (block[:, None, 0] - terminal_xy[None, :, 0]) ** 2
        d2 += (block[:, None, 1] - terminal_xy[None, :, 1]) ** 2
        r, c = np.nonzero(d2 < r2)  # row-major: terminals stay grouped by customer
        rows.append(r + a)
        cols.append(c)
    row = np.concatenate(rows) if rows else np.empty(0, np.int64)
    flat = np.concatenate(cols).astype(np.int64) if cols else np.empty(0, np.int64)
    counts = np.bincount(row, minlength=len(customer_xy))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return offsets, flat


def _distinct_per_row(rng: np.random.Generator, rows: int, n: int, k: int) -> np.ndarray:
    """[rows, k] int64: in each row, k distinct integers drawn uniformly from [0, n).

    Draw the j-th pick among the n - j values not taken yet, then shift it past the values
    already taken (in increasing order): a loop over k, vectorised over rows."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot pick {k} distinct values out of {n}; lower the count per day")
    out = np.empty((rows, k), np.int64)
    for j in range(k):
        pick = rng.integers(0, n - j, size=rows)
        for taken in np.sort(out[:, :j], axis=1).T:
            pick += pick >= taken
        out[:, j] = pick
    return out


def _compromises(rng: np.random.Generator, days: int, population: int, per_day: int) -> np.ndarray:
    """[days * per_day, 2] rows of (first day, id): `per_day` distinct ids each day."""
    ids = _distinct_per_row(rng, days, population, per_day)
    return np.stack([np.repeat(np.arange(days), per_day), ids.ravel()], axis=1).astype(np.int64)


def _latest_compromise(
    ids: np.ndarray, day: np.ndarray, compromises: np.ndarray, days: int, window: int
) -> np.ndarray:
    """For each transaction, the row of `compromises` (first day, id) that covers it: the
    latest compromise of its id begun on or before its day and less than `window` days
    before; -1 when none. A searchsorted on (id, day) keys, no per-compromise mask."""
    if len(compromises) == 0:
        return np.full(len(ids), -1, np.int64)
    key = compromises[:, 1] * days + compromises[:, 0]
    order = np.argsort(key, kind="stable")
    skey = key[order]
    i = np.searchsorted(skey, ids * days + day, side="right") - 1
    hit = i >= 0
    j = i[hit]
    hit[hit] = (skey[j] // days == ids[hit]) & (day[hit] - skey[j] % days < window)
    return np.where(hit, order[np.maximum(i, 0)], -1)


def _pick_share(
    rng: np.random.Generator, groups: np.ndarray, n_groups: int, share: float
) -> np.ndarray:
    """Indices of a random floor(share x size) members of each group (groups[i] in
    [0, n_groups)): shuffle within groups by sorting on (group, random key)."""
    order = np.lexsort((rng.random(len(groups)), groups))
    sizes = np.bincount(groups, minlength=n_groups)
    first = np.cumsum(sizes) - sizes
    g = groups[order]
    rank = np.arange(len(groups)) - first[g]
    quota = np.floor(sizes * share + 1e-9).astype(np.int64)  # 1e-9: 3 x (1/3) must give 1
    return order[rank < quota[g]]


def simulate(
    n_customers: int = 5000,
    n_terminals: int = 10000,
    days: int = 183,
    *,
    seed: int = 0,
    radius: float = 5.0,
    start: datetime = datetime(2026, 4, 1, tzinfo=UTC),
    amount_threshold: float = 220.0,
    compromised_terminals_per_day: int = 2,
    terminal_compromise_days: int = 28,
    compromised_cards_per_day: int = 3,
    card_compromise_days: int = 14,
    card_fraud_share: float = 1 / 3,
    card_fraud_multiplier: float = 5.0,
) -> Transactions:
    """Simulate `days` days of card payments, labelled with the handbook's fraud scenarios.

    n_customers, n_terminals: population sizes (customer and terminal ids are 0-based rows).
    days: length of the simulation; day d covers [start + d days, start + d + 1 days).
    seed: seed of the single numpy generator; same seed and parameters, same output.
    radius: a customer pays only at terminals strictly closer than this (grid is 100 x 100);
        the handbook's 5 gives about 78 terminals per customer.
    start: timezone-aware instant of day 0, 00:00 (default 2026-04-01 UTC).
    amount_threshold: scenario 1, any amount above it is fraud.
    compromised_terminals_per_day: scenario 2, distinct terminals compromised each day.
    terminal_compromise_days: scenario 2, days (from the compromise day on) during which
        every transaction at a compromised terminal is fraud.
    compromised_cards_per_day: scenario 3, distinct customers whose card leaks each day.
    card_compromise_days: scenario 3, days (from the leak on) the card is abused.
    card_fraud_share: scenario 3, share of the card's transactions in that window (rounded
        down) that become fraud.
    card_fraud_multiplier: scenario 3, factor applied to the amount of those transactions.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware, e.g. datetime(2026, 4, 1, tzinfo=UTC)")
    if min(n_customers, n_terminals, days) < 1 or radius <= 0:
        raise ValueError("n_customers, n_terminals, days and radius must all be positive")
    if min(terminal_compromise_days, card_compromise_days) < 1:
        raise ValueError("compromise windows must last at least one day")
    if not 0.0 <= card_fraud_share <= 1.0:
        raise ValueError(f"card_fraud_share must be in [0, 1], got {card_fraud_share}")
    rng = np.random.default_rng(seed)

    customer_xy = rng.uniform(0.0, GRID, (n_customers, 2))
    mean_amount = rng.uniform(5.0, 100.0, n_customers)
    mean_nb = rng.uniform(0.0, 4.0, n_customers)
    terminal_xy = rng.uniform(0.0, GRID, (n_terminals, 2))
    profiles = Profiles(customer_xy, mean_amount, mean_amount / 2, mean_nb, terminal_xy)
    offsets, flat = _terminals_within(customer_xy, terminal_xy, radius)
    n_available = np.diff(offsets)

    # Day-major counts, then one row per transaction
    counts = rng.poisson(mean_nb, size=(days, n_customers))
    counts[:, n_available == 0] = 0
    cell = np.repeat(np.arange(days * n_customers), counts.ravel())
    day, customer = np.divmod(cell, n_customers)
    time_s = rng.normal(_TIME_MEAN_S, _TIME_STD_S, len(cell))
    inside = (time_s > 0) & (time_s < 86_400)  # the handbook drops the others
    day, customer, time_s = day[inside], customer[inside], time_s[inside]

    mean = mean_amount[customer]
    amount = rng.normal(mean, mean / 2)
    negative = amount < 0
    amount[negative] = rng.uniform(0.0, 2 * mean[negative])
    amount = np.round(amount, 2)
    terminal = flat[offsets[customer] + rng.integers(0, n_available[customer])]

    time_ms = day * DAY_MS + np.floor(time_s * 1000).astype(np.int64)
    order = np.argsort(time_ms, kind="stable")
    day, customer, terminal, amount, time_ms = (
        a[order] for a in (day, customer, terminal, amount, time_ms)
    )

    # Fraud scenarios, in the handbook's order: each one relabels what it touches
    scenario = np.zeros(len(day), np.int8)
    scenario[amount > amount_threshold] = 1
    bad_terminals = _compromises(rng, days, n_terminals, compromised_terminals_per_day)
    hit = _latest_compromise(terminal, day, bad_terminals, days, terminal_compromise_days)
    scenario[hit >= 0] = 2
    bad_cards = _compromises(rng, days, n_customers, compromised_cards_per_day)
    window = _latest_compromise(customer, day, bad_cards, days, card_compromise_days)
    in_window = np.flatnonzero(window >= 0)
    abused = in_window[_pick_share(rng, window[in_window], len(bad_cards), card_fraud_share)]
    amount[abused] = np.round(amount[abused] * card_fraud_multiplier, 2)
    scenario[abused] = 3

    start_ms = (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    return Transactions(
        transaction_id=np.arange(len(day), dtype=np.int64),
        tx_time_ms=start_ms + time_ms,
        tx_time_days=day.astype(np.int32),
        customer_id=customer.astype(np.int64),
        terminal_id=terminal,
        tx_amount=amount,
        tx_fraud=(scenario > 0).astype(np.int8),
        tx_fraud_scenario=scenario,
        profiles=profiles,
        compromised_terminals=bad_terminals,
        compromised_cards=bad_cards,
    )
