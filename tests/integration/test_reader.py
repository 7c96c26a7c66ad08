"""The group-less partition reader (`vigil-train collect`'s) of both clients, on the real
broker: time ranges to offsets, and exactly the records inside them."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
from kafka import KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from detector.kafka import Batch, PartitionReader, TopicPartition, open_reader
from detector.ops.settings import KafkaSettings

pytestmark = pytest.mark.kafka
# An hour ago, on a whole second: record times the broker's retention (seven days) keeps
# for the whole session. Times from years ago are deleted by the broker's first retention
# check, five minutes after it starts, and the ranges below would be gone mid-test.
BASE_MS = (int(time.time()) - 3600) * 1000
N = 40  # records 0..39, one second apart, record i in partition i % 2


def _reader(bootstrap: str, client: str) -> PartitionReader:
    # The reader reads only the Kafka settings (a whole Settings wants a model bundle).
    settings = SimpleNamespace(kafka=KafkaSettings(bootstrap_servers=bootstrap, client=client))
    return open_reader(settings)  # type: ignore[arg-type]


def _rows(batches: list[Batch]) -> list[tuple[int, int, int, int]]:
    """(partition, offset, value, timestamp) of every record, in the order read."""
    return [
        (r.partition, r.offset, int(r.value or b"-1"), r.timestamp)
        for b in batches
        for r in (b[i] for i in range(len(b)))
    ]


@pytest.fixture(scope="module")
def topic(kafka_bootstrap: str) -> str:
    name = f"reader-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(name, 2, 1)])
    admin.close()
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    futures = [
        p.send(name, f"{i}".encode(), partition=i % 2, timestamp_ms=BASE_MS + i * 1000)
        for i in range(N)
    ]
    p.flush()
    assert [f.get(timeout=30).offset for f in futures] == [i // 2 for i in range(N)]
    p.close()
    return name


@pytest.mark.parametrize("client", ["librdkafka", "kafka-python"])
def test_a_time_range_reads_exactly_its_records(
    client: str, kafka_bootstrap: str, topic: str
) -> None:
    reader = _reader(kafka_bootstrap, client)
    try:
        tps = reader.partitions([topic, f"{topic}-missing"])
        assert tps == [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        assert all(type(tp) is TopicPartition for tp in tps)
        assert reader.topics_matching(f"{topic[:-3]}.*") == [topic]
        assert reader.topics_matching(topic[:-1]) == []  # the whole name must match
        assert reader.end_offsets(tps) == dict.fromkeys(tps, N // 2)

        # Records 10..29 (times 10 s .. 29.5 s): offsets 5..14 of both partitions.
        start = reader.offsets_for_time(tps, BASE_MS + 10_000)
        stop = reader.offsets_for_time(tps, BASE_MS + 29_500)
        assert start == dict.fromkeys(tps, 5) and stop == dict.fromkeys(tps, 15)
        assert all(type(tp) is TopicPartition for tp in start)
        # Past the last record (and on an empty range of times): the end offset.
        assert reader.offsets_for_time(tps, BASE_MS + 10**9) == dict.fromkeys(tps, N // 2)
        assert reader.offsets_for_time(tps, 0) == dict.fromkeys(tps, 0)

        ranges = {tp: (start[tp], stop[tp]) for tp in tps}
        batches = list(reader.read(ranges, max_batch=3))
        assert all(0 < len(b) <= 3 for b in batches)
        rows = _rows(batches)
        assert sorted(v for _, _, v, _ in rows) == list(range(10, 30))  # each exactly once
        for p in (0, 1):  # offset order within a partition
            offsets = [o for q, o, _, _ in rows if q == p]
            assert offsets == list(range(5, 15))
        assert all(ts == BASE_MS + v * 1000 and v % 2 == p for p, _, v, ts in rows)

        # One partition to its end, the other not at all (empty range), then a second read
        # of the same reader and partition: each read starts afresh.
        rows = _rows(list(reader.read({tps[0]: (12, 20), tps[1]: (7, 7)})))
        assert [(p, o) for p, o, _, _ in rows] == [(0, o) for o in range(12, 20)]
        rows = _rows(list(reader.read({tps[0]: (0, 2)})))
        assert [v for _, _, v, _ in rows] == [0, 2]
        assert list(reader.read({tps[0]: (7, 7), tps[1]: (9, 3)})) == []
    finally:
        reader.close()


@pytest.mark.parametrize("client", ["librdkafka", "kafka-python"])
def test_no_partitions_for_missing_topics(client: str, kafka_bootstrap: str) -> None:
    reader = _reader(kafka_bootstrap, client)
    try:
        assert reader.partitions(["reader-never-created"]) == []
        assert reader.offsets_for_time([], BASE_MS) == {} and reader.end_offsets([]) == {}
        assert not any(t.startswith("__") for t in reader.topics_matching(".*"))
    finally:
        reader.close()


@pytest.mark.parametrize("client", ["librdkafka", "kafka-python"])
def test_a_range_gone_to_retention_reads_what_is_left_and_ends(
    client: str, kafka_bootstrap: str
) -> None:
    """Records deleted below a range (retention, a delete-records request) while it is
    read: the reader reads what is left of the range and stops, never waits for what is
    gone."""
    name = f"reader-gone-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(name, 1, 1)])
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(20):
        p.send(name, f"{i}".encode(), partition=0, timestamp_ms=BASE_MS + i * 1000)
    p.flush()
    p.close()
    admin.delete_records({KafkaTopicPartition(name, 0): 15}, timeout_ms=30_000)
    admin.close()
    tp = TopicPartition(name, 0)
    reader = _reader(kafka_bootstrap, client)
    try:
        assert [v for _, _, v, _ in _rows(list(reader.read({tp: (12, 20)})))] == [
            15,
            16,
            17,
            18,
            19,
        ]
        assert list(reader.read({tp: (5, 10)})) == []  # all of it gone
        assert [v for _, _, v, _ in _rows(list(reader.read({tp: (3, 17)})))] == [15, 16]
    finally:
        reader.close()
