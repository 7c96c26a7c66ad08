"""`vigil-detect run` as a real process against the real broker."""

from __future__ import annotations

import time
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest

from detector.contract.bundle import load_bundle
from detector.contract.events import event_schema
from detector.model.scorer import Scorer
from tests.conftest import FEATURES_SYNTH
from tests.integration.kafka_helpers import (
    committed_all,
    produce,
    read_all,
    start_detector,
    wait_for,
)
from trainer.synth import simulate

pytestmark = pytest.mark.kafka
SCHEMA = event_schema()


def telemetry(
    steps: int, seed: int, fault_rate: float = 0.1
) -> tuple[list[tuple[bytes, bytes]], np.ndarray, np.ndarray]:
    t = simulate(steps, 4, seed=seed, fault_rate=fault_rate)
    records = [
        (
            t.entity[i].encode(),
            orjson.dumps(
                {
                    "ts": int(t.timestamp_ms[i]),
                    **{f: float(v) for f, v in zip(FEATURES_SYNTH, t.values[i], strict=True)},
                }
            ),
        )
        for i in range(len(t.values))
    ]
    return records, t.values, t.label


def expected_anomalies(bundle_dir: Path, x: np.ndarray) -> np.ndarray:
    """The offline decision for each row: the same Scorer the daemon uses."""
    s = Scorer(load_bundle(bundle_dir), provider="cpu")
    return s.score(x).score > s.threshold


# Both consumer clients keep the contract: librdkafka (the default) and kafka-python.
CLIENTS = pytest.mark.parametrize("client", ["librdkafka", "kafka-python"])


@CLIENTS
def test_end_to_end_events_offsets_and_metrics(
    kafka_bootstrap: str, make_topic, bundle_dir: Path, tmp_path: Path, client: str
) -> None:
    topic = make_topic("e2e", partitions=2)
    records, x, labels = telemetry(300, seed=11)
    positions = produce(kafka_bootstrap, topic, records)
    want = expected_anomalies(bundle_dir, x)
    group = f"g-e2e-{client}"
    d = start_detector(
        tmp_path,
        kafka_bootstrap,
        bundle_dir,
        topic,
        group,
        topics__scores=f"{topic}.scores",
        kafka__client=client,
    )
    try:
        d.wait_ready()
        wait_for(
            lambda: committed_all(kafka_bootstrap, group, topic),
            60,
            "offsets committed to the end",
        )
        published = read_all(kafka_bootstrap, f"{topic}.anomalies")
        closes = [e for e in published if orjson.loads(e.value)["episode"]["state"] == "close"]
        events = [e for e in published if e not in closes]
        scores = read_all(kafka_bootstrap, f"{topic}.scores")
        n = len(records)
        assert d.metric("vigil_messages_consumed_total", {"topic": topic}) == n
        assert d.metric("vigil_messages_scored_total") == n
        assert d.metric("vigil_anomalies_total") == len(events) == int(want.sum())
        assert d.metric("vigil_records_published_total", {"kind": "score"}) == len(scores) == n
        assert d.metric("vigil_threshold") > 0 and d.metric("vigil_ready") == 1
        assert d.metric("vigil_decision_latency_seconds_count") == n
    finally:
        assert d.terminate() == 0
    # Exactly the messages the offline scorer flags, each once, keyed by entity.
    by_pos = {pos: i for i, pos in enumerate(positions)}
    flagged = set()
    for e in events:
        body = orjson.loads(e.value)
        jsonschema.validate(body, SCHEMA)
        i = by_pos[(body["source"]["partition"], body["source"]["offset"])]
        flagged.add(i)
        assert e.key == records[i][0] and body["key"] == records[i][0].decode()
        headers = dict(e.headers)
        assert headers["content-type"] == b"application/json"
        assert headers["vigil.model.version"].decode() == body["model"]["version"]
        assert body["severity"] > 1 and len(body["top_features"]) == 3
    assert flagged == set(np.flatnonzero(want))
    # Episodes open on an alarm and close after normal decisions: one stream per fault.
    opened = {
        orjson.loads(e.value)["episode"]["id"]
        for e in events
        if orjson.loads(e.value)["episode"]["state"] == "open"
    }
    assert closes and {orjson.loads(e.value)["episode"]["id"] for e in closes} <= opened
    # And they are the faults: most labelled rows alarm, few normal rows do.
    recall = want[labels == 1].mean()
    false_alarms = want[labels == 0].mean()
    assert recall > 0.6 and false_alarms < 0.03, (recall, false_alarms)


BAD = {
    "not_json": b"{nope",
    "not_object": b"[1, 2, 3]",
    "missing_feature": orjson.dumps({"flow_m3h": 1.0}),
    "wrong_type": orjson.dumps({f: (1.0 if f != "speed_rpm" else "fast") for f in FEATURES_SYNTH}),
    "not_finite": orjson.dumps({f: (1.0 if f != "speed_rpm" else 1e300) for f in FEATURES_SYNTH}),
    "too_large": b'{"pad": "' + b"x" * 5000 + b'"}',
    "empty": None,
}


@CLIENTS
def test_each_bad_input_lands_in_the_dlq_with_its_reason(
    kafka_bootstrap: str, make_topic, bundle_dir: Path, tmp_path: Path, client: str
) -> None:
    topic = make_topic("dlq")
    good = orjson.dumps({f: 1.0 for f in FEATURES_SYNTH})
    records = [(b"k", good)] + [(reason.encode(), v) for reason, v in BAD.items()] + [(b"k", good)]
    produce(kafka_bootstrap, topic, records)
    d = start_detector(
        tmp_path,
        kafka_bootstrap,
        bundle_dir,
        topic,
        f"g-dlq-{client}",
        payload__max_bytes="4096",
        kafka__client=client,
    )
    try:
        d.wait_ready()
        wait_for(
            lambda: committed_all(kafka_bootstrap, f"g-dlq-{client}", topic),
            60,
            "offsets committed",
        )
        dlq = read_all(kafka_bootstrap, f"{topic}.dlq")
        for reason in BAD:
            assert d.metric("vigil_invalid_messages_total", {"reason": reason}) == 1, reason
        assert d.metric("vigil_messages_scored_total") == 2
    finally:
        assert d.terminate() == 0
    assert len(dlq) == len(BAD)
    for r in dlq:
        h = dict(r.headers)
        reason = h["vigil.reason"].decode()
        assert r.key == reason.encode()  # original key kept
        assert (r.value or None) == BAD[reason]  # original bytes kept
        assert h["vigil.source.topic"].decode() == topic
        assert int(h["vigil.source.offset"]) == 1 + list(BAD).index(reason)
        assert h["vigil.detail"]


@CLIENTS
def test_sigterm_mid_stream_loses_nothing(
    kafka_bootstrap: str, make_topic, bundle_dir: Path, tmp_path: Path, client: str
) -> None:
    topic = make_topic("term", partitions=2)
    records, _, _ = telemetry(6000, seed=3, fault_rate=0.05)  # 24,000 messages
    positions = produce(kafka_bootstrap, topic, records)
    scores_topic = f"{topic}.scores"
    extra = {"topics__scores": scores_topic, "batch__max_size": "500", "kafka__client": client}
    group = f"g-term-{client}"
    d = start_detector(tmp_path, kafka_bootstrap, bundle_dir, topic, group, **extra)
    d.wait_ready()
    wait_for(lambda: d.metric("vigil_messages_scored_total") > 1000, 60, "some progress")
    t0 = time.monotonic()
    assert d.terminate(timeout=30) == 0
    assert time.monotonic() - t0 < 15
    first = len(read_all(kafka_bootstrap, scores_topic))
    assert first < len(records), "stopped too late to test anything"
    d2 = start_detector(tmp_path, kafka_bootstrap, bundle_dir, topic, group, **extra)
    try:
        d2.wait_ready()
        wait_for(lambda: committed_all(kafka_bootstrap, group, topic), 90, "catch-up after restart")
    finally:
        assert d2.terminate() == 0
    decided = {
        (orjson.loads(r.value)["source"]["partition"], orjson.loads(r.value)["source"]["offset"])
        for r in read_all(kafka_bootstrap, scores_topic)
    }
    assert decided == set(positions)  # every message decided at least once


def test_two_detectors_in_one_group_share_the_work(
    kafka_bootstrap: str, make_topic, bundle_dir: Path, tmp_path: Path
) -> None:
    topic = make_topic("pair", partitions=4)
    a = start_detector(tmp_path, kafka_bootstrap, bundle_dir, topic, "g-pair")
    b = start_detector(tmp_path, kafka_bootstrap, bundle_dir, topic, "g-pair")
    try:
        a.wait_ready()
        b.wait_ready()
        wait_for(
            lambda: (
                a.health()["partitions_assigned"] == 2 and b.health()["partitions_assigned"] == 2
            ),
            60,
            "an even split of 4 partitions",
        )
        records, x, _ = telemetry(1500, seed=5)
        produce(kafka_bootstrap, topic, records)
        wait_for(lambda: committed_all(kafka_bootstrap, "g-pair", topic), 60, "offsets committed")
        na, nb = a.metric("vigil_messages_scored_total"), b.metric("vigil_messages_scored_total")
        assert na > 0 and nb > 0 and na + nb == len(records)
    finally:
        assert a.terminate() == 0
        assert b.terminate() == 0
    events = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, f"{topic}.anomalies")]
    events = [e for e in events if e["episode"]["state"] != "close"]
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)) == int(expected_anomalies(bundle_dir, x).sum())


def test_broker_down_at_start_is_not_ready_but_alive(bundle_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import free_port

    d = start_detector(tmp_path, f"127.0.0.1:{free_port()}", bundle_dir, "t", "g")
    try:
        wait_for(lambda: d.health("/healthz")["code"] == 200, 30, "liveness")
        wait_for(
            lambda: d.metric("vigil_kafka_errors_total", {"operation": "connect"}) >= 2,
            30,
            "retries",
        )
        assert d.proc.poll() is None  # retrying with backoff, not crash-looping
        h = d.health("/readyz")
        assert h["code"] == 503 and not h["broker_reachable"]
        assert d.health("/healthz")["code"] == 200
    finally:
        t0 = time.monotonic()
        assert d.terminate() == 0
        assert time.monotonic() - t0 < 15
