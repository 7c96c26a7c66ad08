"""The loop without a broker: `detector.kafka.memory`'s source and sink behind the same
contracts as the Kafka adapters. What the loop does with them (commit after the
acknowledgement, retries, revokes, swaps, dead letters) is checked here in milliseconds;
tests/integration checks the same on the real broker with both clients."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.app.live import LiveModel
from detector.app.loop import Detector, Stopped
from detector.contract.bundle import load_bundle
from detector.kafka import TopicPartition
from detector.kafka.memory import MemoryLog, MemorySink, MemorySource
from detector.model.scorer import Scorer
from detector.model.watcher import mapping_for
from detector.ops.http import Health
from detector.ops.metrics import Metrics
from detector.ops.settings import Settings, load_settings
from tests.conftest import FEATURES_SYNTH, copy_as_version
from trainer.synth import simulate

TOPIC, EVENTS, DLQ = "telemetry", "vigil.anomalies", "vigil.dlq"


class Watcher:
    """Hands the loop one candidate at the n-th `take` (as ModelWatcher does after checks)."""

    def __init__(self, candidate: Scorer, after: int):
        self.candidate, self.after, self.calls = candidate, after, 0

    def take(self) -> Scorer | None:
        self.calls += 1
        return self.candidate if self.calls == self.after else None

    def observe(self, values: list[bytes | None]) -> None: ...


def _messages(n: int, seed: int = 7, fault_rate: float = 0.2) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of synthetic telemetry, a good share of it faulty."""
    t = simulate(n // 4 + 1, 4, seed=seed, fault_rate=fault_rate)
    return [
        (
            t.entity[i].encode(),
            orjson.dumps(dict(zip(FEATURES_SYNTH, map(float, t.values[i]), strict=True))),
        )
        for i in range(n)
    ]


def _settings(bundle: Path, **sections: dict) -> Settings:
    sections = {"batch": {"max_size": 100, "max_wait_ms": 0}} | sections
    return load_settings(
        None,
        model={"path": str(bundle)},
        topics={"input": [TOPIC], "anomalies": EVENTS, "dlq": DLQ},
        **sections,
    )


def _detector(
    bundle: Path,
    log: MemoryLog,
    sink: MemorySink | None = None,
    watcher: Watcher | None = None,
    stop: threading.Event | None = None,
    **sections: dict,
) -> tuple[Detector, MemorySource, MemorySink, Metrics]:
    settings = _settings(bundle, **sections)
    b = load_bundle(bundle)
    live = LiveModel.of(Scorer(b, "cpu"), mapping_for(settings, b))
    source = MemorySource(log, [TOPIC]).connect()
    sink = sink or MemorySink(log)
    metrics = Metrics()
    d = Detector(
        settings, live, source, sink, metrics, Health(), stop or threading.Event(), watcher
    )
    return d, source, sink, metrics


def _fill(log: MemoryLog, n: int, partitions: int = 1) -> None:
    log.create(TOPIC, partitions)
    for i, (key, value) in enumerate(_messages(n)):
        log.append(TOPIC, value, key, partition=i % partitions)


def _drain(d: Detector, steps: int = 50) -> None:
    for _ in range(steps):
        d.step()
    d.finish()


def _versions(log: MemoryLog, topic: str) -> list[str]:
    return [dict(r.headers)["vigil.model.version"].decode() for r in log.records(topic)]


def test_offsets_are_committed_only_after_the_batch_is_acknowledged(bundle_dir: Path) -> None:
    log = MemoryLog()
    _fill(log, 300)
    sink = MemorySink(log, refuse=2)
    d, source, _, metrics = _detector(bundle_dir, log, sink)
    seen_while_refused: list[int] = []
    sink.on_refuse = lambda s: seen_while_refused.append(len(source.commits))

    d.step()  # batch 1 decided and sent, not yet acknowledged: nothing committed
    assert source.commits == [] and log.records(EVENTS) == []
    d.step()  # batch 2 decided; batch 1 settles first: refused twice, then acknowledged
    assert seen_while_refused == [0, 0], "a commit went out while the batch was refused"
    assert source.commits == [{TopicPartition(TOPIC, 0): 100}]
    assert metrics.publish_retries._value.get() == 2
    assert source.keepalives == 2  # the group membership was kept while retrying
    _drain(d)
    assert log.committed == {TopicPartition(TOPIC, 0): 300}
    events = [orjson.loads(r.value) for r in log.records(EVENTS)]
    assert events, "faulty telemetry raised no event: the test does not exercise events"
    # At-least-once without duplicates here: each source offset publishes at most once.
    offsets = [e["source"]["offset"] for e in events]
    assert len(offsets) == len(set(offsets))


def test_a_stop_during_a_retry_commits_nothing(bundle_dir: Path) -> None:
    log, stop = MemoryLog(), threading.Event()
    _fill(log, 100)
    sink = MemorySink(log, refuse=10**6)
    sink.on_refuse = lambda s: stop.set() if s.refused >= 2 else None
    d, source, _, _ = _detector(bundle_dir, log, sink, stop=stop)
    d.step()
    with pytest.raises(Stopped):
        d.finish()
    assert source.commits == [] and log.committed == {}
    assert log.records(EVENTS) == [], "records of a refused batch were published"


def test_a_swap_happens_between_two_batches(bundle_dir: Path, tmp_path: Path) -> None:
    log = MemoryLog()
    _fill(log, 400)
    v2 = copy_as_version(bundle_dir, tmp_path / "v2", "v2")
    candidate = Scorer(load_bundle(v2), "cpu")
    watcher = Watcher(candidate, after=3)  # taken before the third batch
    d, _, _, _ = _detector(bundle_dir, log, watcher=watcher, alerts={"k": 1, "n": 1})
    v1 = d.live.version
    _drain(d)
    assert d.live.version == "v2" and d.live.scorer is candidate
    # Each batch is one model's: events of offsets < 200 carry v1, the rest v2.
    for r in log.records(EVENTS):
        offset = orjson.loads(r.value)["source"]["offset"]
        assert dict(r.headers)["vigil.model.version"].decode() == (v1 if offset < 200 else "v2")
    assert set(_versions(log, EVENTS)) == {v1, "v2"}


def test_a_revoke_mid_batch_leaves_that_partition_to_its_next_owner(bundle_dir: Path) -> None:
    log = MemoryLog()
    _fill(log, 200, partitions=2)
    d, source, _, _ = _detector(bundle_dir, log, batch={"max_size": 160, "max_wait_ms": 0})
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    d.step()  # partition 0 whole and 60 records of partition 1 sent, not committed
    assert source.position == {p0: 100, p1: 60}
    source.revoke([p1])  # a rebalance before the batch settles
    _drain(d)
    assert p1 not in log.committed, "offsets of a revoked partition were committed"
    assert log.committed[p0] == 100
    # The next owner reads partition 1 from the start and commits it; nothing is lost.
    d2, s2, _, _ = _detector(bundle_dir, log)
    s2.revoke([p0])
    _drain(d2)
    assert log.committed == {p0: 100, p1: 100}


def test_a_malformed_message_goes_to_the_dlq_with_its_reason(bundle_dir: Path) -> None:
    log = MemoryLog()
    _fill(log, 10)
    bad = log.append(TOPIC, b'{"not": "telemetry"', b"pump-01", headers=[("trace", b"abc")])
    log.append(TOPIC, b'{"flow_m3h": "fast"}', b"pump-01")
    d, _, _, metrics = _detector(bundle_dir, log)
    _drain(d)
    dead = log.records(DLQ)
    assert [dict(r.headers)["vigil.reason"] for r in dead] == [b"not_json", b"missing_feature"]
    first = dict(dead[0].headers)
    assert dead[0].value == b'{"not": "telemetry"' and first["trace"] == b"abc"
    assert first["vigil.source.offset"] == str(bad).encode()
    assert log.committed == {TopicPartition(TOPIC, 0): 12}
    assert metrics.invalid.labels("not_json")._value.get() == 1


def test_each_entitys_events_begin_with_an_open_episode(bundle_dir: Path) -> None:
    log = MemoryLog()
    _fill(log, 300)
    d, _, _, _ = _detector(bundle_dir, log)
    _drain(d)
    events = [orjson.loads(r.value) for r in log.records(EVENTS)]
    states = [e["episode"]["state"] for e in events]
    assert "open" in states
    by_entity: dict[str, list[str]] = {}
    for e in events:
        by_entity.setdefault(e["key"], []).append(e["episode"]["state"])
    for seq in by_entity.values():  # every entity's episodes open before they go on
        assert seq[0] == "open"
        assert all(a != "close" or b == "open" for a, b in itertools.pairwise(seq))
    assert np.isfinite([e["score"] for e in events]).all()
