"""`detector.kafka.PartitionReader` over a `MemoryLog`: `vigil-train collect` without a
broker. A seam, not a model of Kafka: offsets for times scan each partition's records."""

from __future__ import annotations

import re
from collections.abc import Iterator

from detector.kafka import Batch, TopicPartition
from detector.kafka.memory import MEMORY, MemoryLog


class MemoryReader:
    def __init__(self, log: MemoryLog):
        self.log = log
        self.closed = False
        self.read_ranges: list[dict[TopicPartition, tuple[int, int]]] = []

    def partitions(self, topics: list[str]) -> list[TopicPartition]:
        return [tp for t in topics for tp in self.log.topic_partitions(t)]

    def topics_matching(self, pattern: str) -> list[str]:
        return sorted({tp.topic for tp in self.log.partitions if re.fullmatch(pattern, tp.topic)})

    def offsets_for_time(self, tps: list[TopicPartition], ms: int) -> dict[TopicPartition, int]:
        out = {}
        for tp in tps:
            records = self.log.partitions[tp]
            out[tp] = next((r.offset for r in records if r.timestamp >= ms), len(records))
        return out

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.log.partitions[tp]) for tp in tps}

    def read(
        self, ranges: dict[TopicPartition, tuple[int, int]], max_batch: int = 5_000
    ) -> Iterator[Batch]:
        self.read_ranges.append(dict(ranges))
        for tp, (start, end) in ranges.items():
            records = self.log.partitions[tp][start:end]
            for i in range(0, len(records), max_batch):
                yield Batch(records[i : i + max_batch], MEMORY)

    def close(self) -> None:
        self.closed = True
