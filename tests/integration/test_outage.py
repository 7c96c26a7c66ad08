"""The broker stopped mid-stream and started again: the detector reports not-ready during
the outage, recovers without a restart, and loses nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from tests.conftest import FEATURES_SYNTH, ROOT, free_port
from tests.integration.kafka_helpers import (
    committed_all,
    produce,
    read_all,
    start_detector,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
SCRIPT = str(ROOT / "scripts" / "kafka-dev")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A broker of this test's own (the session's must not go down)."""
    args = [
        "--port",
        str(free_port()),
        "--controller-port",
        str(free_port()),
        "--dir",
        str(tmp_path / "k"),
    ]
    subprocess.run([SCRIPT, "start", *args], check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{args[1]}", args
    finally:
        subprocess.run([SCRIPT, "stop", "--dir", args[-1]], capture_output=True, timeout=60)


def _records(n: int, start: int) -> list[tuple[bytes, bytes]]:
    return [
        (
            f"pump-{i % 4}".encode(),
            orjson.dumps({f: 1.0 + 0.001 * (i % 50) for f in FEATURES_SYNTH}),
        )
        for i in range(start, start + n)
    ]


def test_broker_outage_is_survived_without_loss(
    own_broker, bundle_dir: Path, tmp_path: Path
) -> None:
    bootstrap, args = own_broker
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic("plant", 2, 1)])
    admin.close()
    positions = produce(bootstrap, "plant", _records(3000, 0))
    d = start_detector(
        tmp_path, bootstrap, bundle_dir, "plant", "g-out", topics__scores="plant.scores"
    )
    try:
        d.wait_ready()
        wait_for(lambda: committed_all(bootstrap, "g-out", "plant"), 60, "first phase committed")
        subprocess.run(
            [SCRIPT, "stop", "--dir", args[-1]], check=True, capture_output=True, timeout=60
        )
        wait_for(lambda: d.health()["code"] == 503, 60, "not ready during the outage")
        assert not d.health()["broker_reachable"]
        assert d.health("/healthz")["code"] == 200 and d.proc.poll() is None
        subprocess.run(
            [SCRIPT, "start", "--keep", *args], check=True, capture_output=True, timeout=180
        )
        positions += produce(bootstrap, "plant", _records(3000, 3000))
        wait_for(lambda: d.health()["code"] == 200, 120, "ready again without a restart")
        wait_for(lambda: committed_all(bootstrap, "g-out", "plant"), 120, "second phase committed")
        assert d.metric("vigil_messages_scored_total") >= len(positions)
    finally:
        assert d.terminate() == 0
    decided = {
        (orjson.loads(r.value)["source"]["partition"], orjson.loads(r.value)["source"]["offset"])
        for r in read_all(bootstrap, "plant.scores")
    }
    assert decided == set(positions)
