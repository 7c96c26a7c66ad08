"""A rebalance under load: a second detector joins the group mid-stream and leaves again
(once cleanly, once by SIGKILL). Every message is decided, every anomaly has an event, and a
message decided twice (replayed after the hand-over) gives the same event_id."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from tests.integration.kafka_helpers import (
    committed_all,
    read_all,
    start_detector,
    wait_for,
)
from tests.integration.test_detector import expected_anomalies, telemetry

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
RATE = 2500  # messages per second offered while the group changes


def _stream(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], out: list) -> None:
    """Produce at a steady rate; out gets each record's (partition, offset), in order."""
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    start = time.monotonic()
    futures = []
    for i, (k, v) in enumerate(records):
        futures.append(p.send(topic, key=k, value=v))
        if i % 100 == 99:
            time.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))
    p.flush()
    out.extend((m.partition, m.offset) for m in (f.get(timeout=30) for f in futures))
    p.close()


@pytest.mark.parametrize("leave", ["sigterm", "sigkill"])
def test_join_and_leave_under_load_loses_nothing(
    leave: str, kafka_bootstrap: str, make_topic, bundle_dir: Path, tmp_path: Path
) -> None:
    topic = make_topic(f"rebal-{leave}", partitions=4)
    group = f"g-rebal-{leave}"
    # 48,000 messages, ~19 s: room for a join, a rebalance kafka-python may take 3 s over, and
    # a 6 s session timeout after SIGKILL, all while the stream still flows
    records, x, _ = telemetry(12000, seed=17, fault_rate=0.02)
    scores = {"topics__scores": f"{topic}.scores"}
    a = start_detector(tmp_path, kafka_bootstrap, bundle_dir, topic, group, **scores)
    positions: list[tuple[int, int]] = []
    producer = threading.Thread(target=_stream, args=(kafka_bootstrap, topic, records, positions))
    try:
        a.wait_ready()
        producer.start()
        wait_for(lambda: a.metric("vigil_messages_scored_total") > 0, 60, "a to consume")
        b = start_detector(tmp_path, kafka_bootstrap, bundle_dir, topic, group, **scores)
        wait_for(lambda: b.metric("vigil_messages_scored_total") > 0, 60, "b to take a share")
        # b consumes as soon as it has partitions; a may still be rejoining at that moment.
        wait_for(lambda: 0 < a.health()["partitions_assigned"] < 4, 60, "a and b to share")
        if leave == "sigterm":
            assert b.terminate() == 0
        else:
            b.kill()
        wait_for(lambda: a.health()["partitions_assigned"] == 4, 60, "a to take all back")
        assert producer.is_alive(), "the stream ended before the group changed back"
        producer.join()
        wait_for(lambda: committed_all(kafka_bootstrap, group, topic), 120, "offsets committed")
    finally:
        producer.join()
        assert a.terminate() == 0

    decided = {}
    for r in read_all(kafka_bootstrap, f"{topic}.scores"):
        s = orjson.loads(r.value)
        decided.setdefault((s["source"]["partition"], s["source"]["offset"]), []).append(s)
    assert set(decided) == set(positions)  # every message decided
    events = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, f"{topic}.anomalies")]
    events = [e for e in events if e["episode"]["state"] != "close"]
    want = {positions[i] for i in np.flatnonzero(expected_anomalies(bundle_dir, x))}
    got = {(e["source"]["partition"], e["source"]["offset"]): e["event_id"] for e in events}
    assert set(got) == want  # every anomaly has an event, nothing else alarmed
    for e in events:  # a replayed message repeats its event_id
        assert got[(e["source"]["partition"], e["source"]["offset"])] == e["event_id"]
    replayed = sum(len(v) - 1 for v in decided.values())
    print(f"{leave}: {len(positions)} messages, {len(want)} anomalies, {replayed} replayed")
