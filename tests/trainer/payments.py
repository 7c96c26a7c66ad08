"""Small simulated payments with a categorical field, and a payments model fitted on them
with behaviour and categorical features: shared by the trainer tests and the broker tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from detector.contract.behaviour import BehaviourSpec
from detector.contract.bundle import Bundle
from trainer.build import build_bundle
from trainer.config import TrainConfig
from trainer.prepare import fit_dataset
from trainer.transactions import Transactions, card_key, simulate, terminal_key

# Windows of days, not months: a few simulated weeks give the features a steady history.
SPEC = BehaviourSpec.model_validate(
    {
        "entities": [
            {"entity": "card_id", "windows_days": [1, 3], "mean_of": "amount"},
            {"entity": "terminal_id", "windows_days": [1, 3]},
            {"entity": "card_id+terminal_id", "windows_days": [3], "log_counts": True},
        ]
    }
)
WARMUP_DAYS = 6  # twice the longest window: the rows before only build behaviour state
MCC = np.array(["5411", "5812", "5999", "4111", "7011"])  # each terminal's merchant category
BOUNDS: dict[str, tuple[float | None, float | None]] = {"amount": (0.0, None)}


def payments(days: int = 30, seed: int = 5, customers: int = 150) -> Transactions:
    # Compromised terminals take no part: their frauds are ordinary purchases that only
    # labels reveal.
    return simulate(
        n_customers=customers,
        n_terminals=2 * customers,
        days=days,
        seed=seed,
        compromised_terminals_per_day=0,
    )


def mcc_of(t: Transactions) -> np.ndarray:
    return MCC[t.terminal_id % len(MCC)]


def columns(t: Transactions, rows: np.ndarray | slice = slice(None)) -> dict[str, object]:
    """The stream's fields of the transactions `rows`, and their labels."""
    return {
        "ts": t.tx_time_ms[rows],
        "card_id": np.array([card_key(c) for c in t.customer_id[rows]]),
        "terminal_id": np.array([terminal_key(x) for x in t.terminal_id[rows]]),
        "amount": t.tx_amount[rows],
        "mcc": mcc_of(t)[rows],
        "fraud": t.tx_fraud[rows],
    }


def table(t: Transactions, rows: np.ndarray | slice = slice(None)) -> pa.Table:
    return pa.table(columns(t, rows))


def record(t: Transactions, i: int) -> dict[str, object]:
    """Transaction i as a message: what a card payment carries, no label."""
    return {
        "card_id": card_key(int(t.customer_id[i])),
        "terminal_id": terminal_key(int(t.terminal_id[i])),
        "amount": float(t.tx_amount[i]),
        "mcc": str(mcc_of(t)[i]),
        "ts": int(t.tx_time_ms[i]),
    }


def fit_model(
    path: Path,
    out: Path,
    *,
    epochs: int = 4,
    name: str = "payments",
    seed: int = 0,
    warmup_days: float = WARMUP_DAYS,
) -> Bundle:
    """A payments model on a file of `table` rows, as `vigil-train fit --features amount,mcc
    --categorical mcc --behaviour SPEC --time-column ts --label-column fraud --bounds
    amount=0: --warmup 6d` fits it."""
    cfg = TrainConfig(epochs=epochs, folds=0, name=name, seed=seed, device="cpu", hidden=(32, 16))
    ds = fit_dataset(
        [str(path)],
        cfg,
        features=["amount", "mcc"],
        categorical=["mcc"],
        behaviour=SPEC,
        time_column="ts",
        label_column="fraud",
        bounds=BOUNDS,
        warmup_ms=int(warmup_days * 86_400_000),
    ).dataset
    return build_bundle(ds, cfg, out, progress=False)
