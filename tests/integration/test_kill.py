"""kill -9 at random moments while 100,000 messages stream through: at the end every
anomalous input has an event, committed offsets reach the end of every partition, and
duplicates (replayed batches) carry the same event_id."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.conftest import FEATURES_SYNTH
from tests.integration.kafka_helpers import (
    committed_all,
    produce,
    read_all,
    start_detector,
    wait_for,
)
from tests.integration.test_detector import expected_anomalies
from trainer.synth import simulate

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
KILLS = 5


def test_kill_minus_9_loses_no_anomaly(
    kafka_bootstrap: str, make_topic, bundle_dir: Path, tmp_path: Path
) -> None:
    t = simulate(25_000, 4, seed=9, fault_rate=0.03)  # 100,000 messages
    values = [
        orjson.dumps(dict(zip(FEATURES_SYNTH, map(float, row), strict=True))) for row in t.values
    ]
    topic = make_topic("kill", partitions=4)
    positions = produce(
        kafka_bootstrap, topic, list(zip((e.encode() for e in t.entity), values, strict=True))
    )
    want = {positions[i] for i in np.flatnonzero(expected_anomalies(bundle_dir, t.values))}
    rng = random.Random(4)
    kills = 0
    for _ in range(KILLS):
        d = start_detector(
            tmp_path, kafka_bootstrap, bundle_dir, topic, "g-kill", batch__max_size="100"
        )
        d.wait_ready()
        time.sleep(rng.uniform(0.1, 0.6))  # somewhere inside the stream, mid-batch or not
        if committed_all(kafka_bootstrap, "g-kill", topic):
            d.kill()
            break
        d.kill()  # SIGKILL: no drain, no commit, no goodbye
        kills += 1
    d = start_detector(tmp_path, kafka_bootstrap, bundle_dir, topic, "g-kill")
    try:
        d.wait_ready()
        wait_for(
            lambda: committed_all(kafka_bootstrap, "g-kill", topic), 180, "the stream to be drained"
        )
    finally:
        assert d.terminate() == 0
    assert kills >= 3, "the stream finished too fast to kill the detector mid-way"
    events = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, f"{topic}.anomalies")]
    events = [e for e in events if e["episode"]["state"] != "close"]
    got = {(e["source"]["partition"], e["source"]["offset"]) for e in events}
    assert want <= got  # every anomalous input has at least one event
    assert got <= want  # and nothing else alarmed
    # A replayed message gives the same event_id: duplicates are recognisable.
    ids_by_source = {}
    for e in events:
        key = (e["source"]["partition"], e["source"]["offset"])
        assert ids_by_source.setdefault(key, e["event_id"]) == e["event_id"]
    duplicates = sum(
        n - 1
        for n in Counter((e["source"]["partition"], e["source"]["offset"]) for e in events).values()
    )
    print(f"{kills} kills, {len(events)} events for {len(want)} anomalies, {duplicates} duplicates")
