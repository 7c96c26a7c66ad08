"""Publishing events fails (the anomaly topic refuses writes): the detector does not commit,
retries with backoff, exports the failure in metrics, and catches up once publishing works.

The failure is a real refusal from the broker: the anomaly topic is created with a
`max.message.bytes` smaller than any event, so every write fails until the test raises the
limit again (a dynamic topic config, as an operator would change it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

from tests.integration.kafka_helpers import (
    committed_all,
    committed_offsets,
    produce,
    read_all,
    start_detector,
    wait_for,
)
from tests.integration.test_detector import expected_anomalies, telemetry

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _max_message_bytes(admin: KafkaAdminClient, topic: str, n: int) -> None:
    admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(n)})]
    )


def test_publish_failure_is_retried_uncommitted_then_caught_up(
    kafka_bootstrap: str, make_topic, bundle_dir: Path, tmp_path: Path
) -> None:
    topic = make_topic("pubfail", partitions=2)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics(
        [NewTopic(f"{topic}.anomalies", 1, 1, topic_configs={"max.message.bytes": "64"})]
    )
    records, x, _ = telemetry(1000, seed=21, fault_rate=0.05)
    positions = produce(kafka_bootstrap, topic, records)
    anomalous = np.flatnonzero(expected_anomalies(bundle_dir, x))
    assert len(anomalous) > 10
    first_anomaly = {}  # partition -> offset of its first anomalous message
    for i in anomalous:
        p, o = positions[i]
        first_anomaly[p] = min(o, first_anomaly.get(p, o))

    d = start_detector(
        tmp_path,
        kafka_bootstrap,
        bundle_dir,
        topic,
        "g-pubfail",
        kafka__request_timeout_ms="1500",
        kafka__delivery_timeout_ms="3000",
        batch__max_size="100",
    )
    try:
        wait_for(lambda: d.metric("vigil_publish_retries_total") >= 3, 90, "publish retries")
        assert d.metric("vigil_kafka_errors_total", {"operation": "publish"}) >= 3
        status = d.health()
        assert "publishing failed" in status.get("reason", ""), status
        # Nothing at or after a batch whose events were refused is committed.
        committed = committed_offsets(kafka_bootstrap, "g-pubfail", topic)
        for p, o in first_anomaly.items():
            assert committed.get(p, 0) <= o, (p, committed, first_anomaly)

        _max_message_bytes(admin, f"{topic}.anomalies", 1_048_588)  # publishing works again
        wait_for(lambda: committed_all(kafka_bootstrap, "g-pubfail", topic), 120, "catch-up")
        wait_for(lambda: d.health()["reason"] == "serving", 30, "serving after catching up")
    finally:
        admin.close()
        assert d.terminate() == 0

    events = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, f"{topic}.anomalies")]
    opened = {
        (e["source"]["partition"], e["source"]["offset"])
        for e in events
        if e["episode"]["state"] != "close"
    }
    assert opened == {positions[i] for i in anomalous}  # every anomaly, and nothing else
