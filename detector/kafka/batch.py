"""One poll's records, whichever Kafka client fetched them.

kafka-python hands out records with attributes, librdkafka (confluent-kafka) messages with
methods. A `Batch` keeps the client's own objects and reads the columns every row needs
(values, timestamps) in one C-level pass; a `Record` with everything is built only for the
few rows that become events or dead letters. Each adapter defines the `Fields` that read
its client's objects (`kafka_python.KAFKA_PYTHON`, `librdkafka.LIBRDKAFKA`), so this module
imports no client.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from detector.kafka.types import TopicPartition

__all__ = ["Batch", "Fields", "Record"]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms since the epoch; -1 when the record has none
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Fields:
    """How to read each field of one client's record objects (C-level getters such as
    `operator.attrgetter` keep the column reads fast)."""

    topic: Callable[[Any], str]
    partition: Callable[[Any], int]
    offset: Callable[[Any], int]
    key: Callable[[Any], bytes | None]
    value: Callable[[Any], bytes | None]
    timestamp: Callable[[Any], int]
    headers: Callable[[Any], list[tuple[str, bytes]] | None]


class Batch:
    """Records in poll order (offset order within a partition)."""

    def __init__(self, raw: list[Any], fields: Fields):
        self.raw = raw
        self.fields = fields

    def __len__(self) -> int:
        return len(self.raw)

    def __bool__(self) -> bool:
        return bool(self.raw)

    def __getitem__(self, i: int) -> Record:
        r, f = self.raw[i], self.fields
        return Record(
            f.topic(r), f.partition(r), f.offset(r), f.key(r), f.value(r), f.timestamp(r),
            list(f.headers(r) or []),
        )  # fmt: skip

    @cached_property
    def values(self) -> list[bytes | None]:
        return list(map(self.fields.value, self.raw))

    @cached_property
    def timestamps(self) -> list[int]:
        return list(map(self.fields.timestamp, self.raw))

    def position(self, i: int) -> tuple[str, int, int]:
        """Topic, partition and offset of record i (an event's source, without a Record)."""
        r, f = self.raw[i], self.fields
        return f.topic(r), f.partition(r), f.offset(r)

    def column(self, name: str, rows: Any) -> list[Any]:
        """One field of the records at `rows` (indices), e.g. the topics of windowed rows."""
        get, raw = getattr(self.fields, name), self.raw
        return [get(raw[i]) for i in rows]

    def last_offsets(self) -> dict[TopicPartition, int]:
        """The highest offset of each partition: computed once, to commit and measure lag."""
        f, raw = self.fields, self.raw
        # Offsets only grow within a partition's records: the last pair of each key wins.
        keys = zip(map(f.topic, raw), map(f.partition, raw), strict=True)
        last = dict(zip(keys, map(f.offset, raw), strict=True))
        return {TopicPartition(t, p): o for (t, p), o in last.items()}

    def topic_counts(self) -> Counter[str]:
        return Counter(map(self.fields.topic, self.raw))

    def only(self, keep: Callable[[str, int], bool]) -> Batch:
        """The records of the partitions that `keep(topic, partition)` accepts."""
        f = self.fields
        return Batch([r for r in self.raw if keep(f.topic(r), f.partition(r))], f)
