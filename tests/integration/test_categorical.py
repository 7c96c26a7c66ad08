"""Categorical features on the real broker: the daemon reads raw text values, codes them with
the bundle's vocabulary, scores them like the offline scorer, names the field and its values
in events, and dead-letters a value of the wrong type."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pyarrow.csv as pacsv
import pytest

from detector.contract.bundle import load_bundle
from detector.contract.events import event_schema
from detector.model.offline import score_file
from detector.model.scorer import Scorer
from tests.integration.kafka_helpers import (
    committed_all,
    produce,
    read_all,
    start_detector,
    wait_for,
)
from tests.trainer.test_categorical import _rows
from trainer.build import build_bundle
from trainer.config import TrainConfig
from trainer.prepare import fit_dataset

pytestmark = pytest.mark.kafka
SCHEMA = event_schema()


def test_categorical_stream_scores_like_offline_and_names_values(
    kafka_bootstrap: str, make_topic, tmp_path: Path
) -> None:
    rng = np.random.default_rng(11)
    pacsv.write_csv(_rows(rng, 4000), tmp_path / "train.csv")
    cfg = TrainConfig(epochs=80, folds=0, name="mixed")
    ds = fit_dataset(
        [str(tmp_path / "train.csv")], cfg, drop=["site"], categorical=["kind"]
    ).dataset
    build_bundle(ds, cfg, tmp_path / "mixed", False)

    test = _rows(rng, 300, mismatched=40)
    pacsv.write_csv(test, tmp_path / "test.csv")
    docs = test.drop(["site"]).to_pylist()
    bad = [
        orjson.dumps({"x": 1.0, "y": 2.0, "kind": 2.5}),
        orjson.dumps({"x": 1.0, "y": 2.0, "kind": None}),
        orjson.dumps({"x": 1.0, "y": 2.0}),
    ]
    records = [(b"k", v) for v in [*bad, *map(orjson.dumps, docs)]]
    topic = make_topic("mixed", partitions=1)
    produce(kafka_bootstrap, topic, records)
    d = start_detector(
        tmp_path,
        kafka_bootstrap,
        tmp_path / "mixed",
        topic,
        "g-mixed",
        topics__scores=f"{topic}.scores",
    )
    try:
        d.wait_ready()
        wait_for(lambda: committed_all(kafka_bootstrap, "g-mixed", topic), 60, "commit")
    finally:
        assert d.terminate() == 0

    dlq = read_all(kafka_bootstrap, f"{topic}.dlq")
    reasons = sorted(dict(r.headers)["vigil.reason"].decode() for r in dlq)
    assert reasons == ["missing_feature", "wrong_type", "wrong_type"], reasons

    # Online scores equal `vigil-detect score` on a file of the same rows (one decode path).
    online = [orjson.loads(r.value)["score"] for r in read_all(kafka_bootstrap, f"{topic}.scores")]
    scorer = Scorer(load_bundle(tmp_path / "mixed"), provider="cpu")
    offline = score_file(scorer, tmp_path / "test.csv").scores.score
    np.testing.assert_allclose(online, offline, rtol=1e-4, atol=1e-6)

    # Events about unseen kinds name the field, the value as sent and the expected value.
    events = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, f"{topic}.anomalies")]
    for e in events:
        jsonschema.validate(e, SCHEMA)
    alarmed = {e["source"]["offset"] - len(bad) for e in events}
    assert len(alarmed & set(range(40))) >= 36, sorted(alarmed)
    assert len(alarmed - set(range(40))) <= 8, sorted(alarmed)
    unseen = [e for e in events if 20 <= e["source"]["offset"] - len(bad) < 40]
    top = [e["top_features"][0] for e in unseen]
    assert sum(t["name"] == "kind" for t in top) >= 0.9 * len(top), top
    first = next(t for t in top if t["name"] == "kind")
    assert first["value"] == "zeta" and first["categorical"] is True
    assert first["expected"] in {"alpha", "beta", "gamma", "delta", "eps"}
