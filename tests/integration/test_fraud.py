"""Fraud end to end on the real broker: a model trained on legitimate transactions with
per-card and per-terminal behaviour features scores a simulated payment stream. The daemon
derives the behaviour features from its own state and gives the same scores as the offline
computation over the same sequence; bad transactions are dead-lettered with their reasons."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detector.contract.behaviour import BehaviourSpec
from detector.contract.bundle import load_bundle
from detector.contract.events import event_schema
from detector.features.behaviour import offline_features
from detector.model.offline import score_file
from detector.model.scorer import Scorer
from tests.integration.kafka_helpers import (
    committed_all,
    produce,
    read_all,
    start_detector,
    wait_for,
)
from trainer.build import build_bundle
from trainer.config import TrainConfig
from trainer.prepare import fit_dataset
from trainer.transactions import card_key, simulate, terminal_key

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
SCHEMA = event_schema()
SPEC = {
    "entities": [
        {"entity": "card_id", "mean_of": "amount", "since_previous": True},
        {"entity": "terminal_id"},
        {"entity": "card_id+terminal_id", "windows_days": [30], "log_counts": True},
    ]
}
TRAIN_DAYS = 25


def test_fraud_stream_scores_like_offline_and_dead_letters_bad_transactions(
    kafka_bootstrap: str, make_topic, tmp_path: Path
) -> None:
    # Compromised terminals take no part: their frauds are ordinary purchases that only
    # labels reveal (bench/fraud.py measures all three scenarios).
    t = simulate(n_customers=200, n_terminals=400, days=35, seed=5, compromised_terminals_per_day=0)
    cards = np.array([card_key(c) for c in t.customer_id])
    terminals = np.array([terminal_key(x) for x in t.terminal_id])
    train = (t.tx_time_days < TRAIN_DAYS) & (t.tx_fraud == 0)
    path = tmp_path / "legit.parquet"
    pq.write_table(
        pa.table(
            {
                "ts": t.tx_time_ms[train],
                "card_id": cards[train],
                "terminal_id": terminals[train],
                "amount": t.tx_amount[train],
            }
        ),
        path,
    )
    spec = BehaviourSpec.model_validate(SPEC)
    cfg = TrainConfig(epochs=8, folds=0, name="fraud")
    bounds = {"amount": (0.0, None)}
    ds = fit_dataset(
        [str(path)], cfg, features=["amount"], behaviour=spec, time_column="ts", bounds=bounds
    ).dataset
    bundle = build_bundle(ds, cfg, tmp_path / "fraud", False)
    assert bundle.manifest.behaviour == spec

    test = np.flatnonzero(t.tx_time_days >= TRAIN_DAYS)
    records = [
        (
            cards[i].encode(),
            orjson.dumps(
                {
                    "card_id": cards[i],
                    "terminal_id": terminals[i],
                    "amount": float(t.tx_amount[i]),
                    "ts": int(t.tx_time_ms[i]),
                }
            ),
        )
        for i in test
    ]
    bad = [
        (b"C-none", orjson.dumps({"terminal_id": "T00001", "amount": 10.0, "ts": 1})),
        (b"C00001", orjson.dumps({"card_id": "C00001", "terminal_id": "T1", "amount": "abc"})),
        (
            b"C00002",
            orjson.dumps({"card_id": "C00002", "terminal_id": "T1", "amount": -5.0, "ts": 1}),
        ),
    ]
    topic = make_topic("fraud", partitions=1)  # one partition: the order the offline pass sees
    half = len(records) // 2
    settings = {
        "payload__time_from": "field",
        "payload__time_field": "ts",
        "topics__scores": f"{topic}.scores",
        "state__snapshot_path": str(tmp_path / "behaviour.npz"),
        # The stream replays simulated days: latency counts from the send, not the event.
        "payload__latency_from": "kafka_timestamp",
    }
    positions = []
    top: list[str] = []
    # Two runs, a restart between them: the behaviour state carries over in its snapshot.
    for part in (records[:100] + bad + records[100:half], records[half:]):
        positions += produce(kafka_bootstrap, topic, part)
        d = start_detector(
            tmp_path, kafka_bootstrap, tmp_path / "fraud", topic, "g-fraud", **settings
        )
        try:
            d.wait_ready()
            wait_for(lambda: committed_all(kafka_bootstrap, "g-fraud", topic), 120, "commit")
            decided = d.metric("vigil_decision_latency_seconds_count")
            assert decided > 0
            assert d.metric("vigil_decision_latency_seconds_bucket", {"le": "10.0"}) == decided
            top = [ln for ln in d.get("/metrics")[1].decode().splitlines() if "entity=" in ln]
        finally:
            assert d.terminate() == 0
    assert "behaviour state restored" in d.log.read_text()

    dlq = read_all(kafka_bootstrap, f"{topic}.dlq")
    reasons = sorted(dict(r.headers)["vigil.reason"].decode() for r in dlq)
    assert reasons == ["bad_key", "out_of_range", "wrong_type"], reasons

    # The daemon's scores equal one offline pass over the same sequence of transactions.
    good_offsets = [o for _, o in positions[:100] + positions[100 + len(bad) :]]
    online = {
        (s := orjson.loads(r.value))["source"]["offset"]: s["score"]
        for r in read_all(kafka_bootstrap, f"{topic}.scores")
    }
    keys = {"card_id": list(cards[test]), "terminal_id": list(terminals[test])}
    derived = offline_features(
        spec, keys, t.tx_time_ms[test].astype(np.float64), {"amount": t.tx_amount[test]}
    )
    x = np.concatenate([t.tx_amount[test, None], derived], axis=1).astype(np.float32)
    scorer = Scorer(load_bundle(tmp_path / "fraud"), provider="cpu")
    offline = scorer.score(x).score
    # ... and `vigil-detect score` on a file of the same transactions says the same.
    stream_file = tmp_path / "stream.parquet"
    pq.write_table(
        pa.table(
            {
                "ts": t.tx_time_ms[test],
                "card_id": cards[test],
                "terminal_id": terminals[test],
                "amount": t.tx_amount[test],
            }
        ),
        stream_file,
    )
    scored = score_file(scorer, stream_file, time_column="ts")
    np.testing.assert_allclose(scored.scores.score, offline, rtol=1e-5)
    np.testing.assert_allclose([online[o] for o in good_offsets], offline, rtol=1e-4, atol=1e-5)

    # Events name the card and terminal, and behaviour features among the reasons.
    events = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, f"{topic}.anomalies")]
    opened = [e for e in events if e["episode"]["state"] != "close"]
    assert opened, "no alerts on a stream with fraud"
    assert all(set(e["entities"]) == {"card_id", "terminal_id"} for e in opened)
    named = {f["name"] for e in opened for f in e["top_features"]}
    assert named & set(spec.names()), named
    # The dashboard's top lists: the cards and terminals with the most anomalies lately.
    assert any('field="card_id"' in ln for ln in top), top
    assert any('field="terminal_id"' in ln for ln in top), top
    # Alerts concentrate fraud: far above its share of the stream.
    fraud_at = {good_offsets[j]: bool(t.tx_fraud[i]) for j, i in enumerate(test)}
    # ... and what was paid, beside the behaviour that made it suspicious.
    amount_at = {good_offsets[j]: float(t.tx_amount[i]) for j, i in enumerate(test)}
    for e in opened:
        jsonschema.validate(e, SCHEMA)
        assert e["payload"] == {"amount": pytest.approx(amount_at[e["source"]["offset"]])}
    alerted = [fraud_at[e["source"]["offset"]] for e in opened]
    base = float(t.tx_fraud[test].mean())
    precision = float(np.mean(alerted))
    print(json.dumps({"alerts": len(alerted), "precision": precision, "fraud_share": base}))
    assert precision > 3 * base
