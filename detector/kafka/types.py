"""The client-neutral Kafka contract: what the loop and the trainer see of any client.

The loop speaks only these types. Each adapter (`kafka_python`, `librdkafka`) translates its
client's partitions, records and errors into them, and `memory` implements them without a
broker for tests. Errors are `detector.errors.KafkaError` and its subclasses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:  # batch.py imports TopicPartition from here
    from detector.kafka.batch import Batch

__all__ = [
    "BatchSink",
    "BatchSource",
    "Delivery",
    "Outgoing",
    "PartitionReader",
    "TopicPartition",
]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True)
class Outgoing:
    """One record to produce: an anomaly event, a dead letter, a score record."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class Delivery:
    """One batch's records on their way to the broker; the sink that sent them awaits them.

    Adapters subclass it to track their client's acknowledgements; `acked_at` is when the
    last acknowledgement came (the send time when nothing was due)."""

    def __init__(self, records: list[Outgoing]):
        self.records = records
        self.acked_at = time.time()

    def done(self) -> bool:
        """Whether every record is acknowledged or failed: `BatchSink.wait` won't block."""
        raise NotImplementedError


class BatchSource(Protocol):
    """What the loop needs of a consumer in a group, with explicit commits."""

    @property
    def connected(self) -> bool: ...
    def connect(self) -> BatchSource:
        """One attempt: KafkaError if the broker is unreachable, ConfigError if it refused
        this client's settings or credentials."""
        ...

    def poll_batch(self, max_size: int, max_wait_ms: int) -> Batch:
        """Records of owned partitions, offset order per partition; KafkaError on failure."""
        ...

    def commit(self, last: dict[TopicPartition, int]) -> None:
        """Commit past `last` (the highest offset handled per partition), asynchronously."""
        ...

    def flush_commits(self) -> None: ...
    def lag(self, last: dict[TopicPartition, int]) -> dict[TopicPartition, int]: ...
    def take_revoked(self) -> set[TopicPartition]:
        """Partitions revoked since the last call."""
        ...

    def assigned(self) -> int: ...
    def group_stable(self) -> bool: ...
    def broker_reachable(self) -> bool: ...
    def keepalive(self) -> None:
        """Stay in the group while a batch is retried, fetching nothing."""
        ...

    def close(self) -> None: ...


class BatchSink(Protocol):
    """What the loop needs of a producer: send a batch's records, then wait for them."""

    def send(self, records: list[Outgoing]) -> Delivery: ...
    def wait(self, d: Delivery) -> None:
        """Return once every record of `d` is acknowledged; PublishError otherwise."""
        ...

    def close(self) -> None: ...


class PartitionReader(Protocol):
    """Reads offset ranges of partitions outside any consumer group (never commits):
    what `vigil-train collect` needs."""

    def partitions(self, topics: list[str]) -> list[TopicPartition]:
        """The partitions of `topics` that exist, in topic then partition order."""
        ...

    def topics_matching(self, pattern: str) -> list[str]:
        """The broker's topics whose names match the regular expression `pattern`."""
        ...

    def offsets_for_time(self, tps: list[TopicPartition], ms: int) -> dict[TopicPartition, int]:
        """The first offset whose timestamp is at or after `ms`, per partition (its end
        offset when there is none)."""
        ...

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def read(
        self, ranges: dict[TopicPartition, tuple[int, int]], max_batch: int = 5_000
    ) -> Iterator[Batch]:
        """The records of each partition in [start, end), in batches."""
        ...

    def close(self) -> None: ...
