"""Kafka behind one client-neutral interface.

- `types`: partitions, outgoing records, deliveries, and the source, sink and reader
  protocols that the loop and the trainer use;
- `batch`: one poll's records, read column-wise whichever client fetched them;
- `librdkafka` (confluent-kafka, the default) and `kafka_python`: one adapter per client,
  each importing only its own client, loaded only when chosen (`kafka.client`);
- `memory`: the same contracts in memory, without a broker, for tests of the loop.

Errors are `detector.errors.KafkaError` and its subclasses, never a client's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from detector.kafka.batch import Batch, Record
from detector.kafka.types import (
    BatchSink,
    BatchSource,
    Delivery,
    Outgoing,
    PartitionReader,
    TopicPartition,
)

if TYPE_CHECKING:
    from detector.ops.settings import Settings

__all__ = [
    "Batch",
    "BatchSink",
    "BatchSource",
    "Delivery",
    "Outgoing",
    "PartitionReader",
    "Record",
    "TopicPartition",
    "open_reader",
    "open_sink",
    "open_source",
]


def open_source(
    settings: Settings, on_commit_error: Callable[[Exception], None] | None = None
) -> BatchSource:
    """The consumer of `kafka.client`, not yet connected."""
    if settings.kafka.client == "librdkafka":
        from detector.kafka.librdkafka import RdKafkaSource  # the client loads only if chosen

        return RdKafkaSource(settings, on_commit_error)
    from detector.kafka.kafka_python import KafkaSource

    return KafkaSource(settings, on_commit_error)


def open_sink(settings: Settings) -> BatchSink:
    """The producer of `kafka.client`; raises KafkaError if it cannot start."""
    if settings.kafka.client == "librdkafka":
        from detector.kafka.librdkafka import RdKafkaSink

        return RdKafkaSink(settings)
    from detector.kafka.kafka_python import KafkaSink

    return KafkaSink(settings)


def open_reader(settings: Settings) -> PartitionReader:
    """A group-less reader of offset ranges on `kafka.client` (for `vigil-train collect`)."""
    if settings.kafka.client == "librdkafka":
        from detector.kafka.librdkafka import RdKafkaReader

        return RdKafkaReader(settings)
    from detector.kafka.kafka_python import KafkaReader

    return KafkaReader(settings)
