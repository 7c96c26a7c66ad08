"""The source and sink contracts in memory: a seam for testing the loop without a broker.

`MemoryLog` stands for the broker: partitions of records and a group's committed offsets.
`MemorySource` is one member of that group; a test moves its partitions (`revoke`,
`assign`) the way a rebalance would. `MemorySink` appends what it is sent to the log once
`wait` acknowledges it, and can be told to refuse the next waits, as a broker refusing a
batch would. Each keeps a record of what happened (commits, sends, waits) for assertions.

This is a seam, not a model of Kafka: it proves what the loop does with the contract
(commit after acknowledgement, retries, revokes), not how either client behaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from operator import attrgetter

from detector.errors import PublishError
from detector.kafka.batch import Batch, Fields
from detector.kafka.types import Delivery, Outgoing, TopicPartition

__all__ = ["MEMORY", "MemoryDelivery", "MemoryLog", "MemoryRecord", "MemorySink", "MemorySource"]


@dataclass(frozen=True)
class MemoryRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)


MEMORY = Fields(**{f.name: attrgetter(f.name) for f in fields(Fields)})


class MemoryLog:
    """Topics of partitions of records, and the committed offsets of one group."""

    def __init__(self) -> None:
        self.partitions: dict[TopicPartition, list[MemoryRecord]] = {}
        self.committed: dict[TopicPartition, int] = {}

    def create(self, topic: str, partitions: int = 1) -> list[TopicPartition]:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        for tp in tps:
            self.partitions.setdefault(tp, [])
        return tps

    def append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int = 0,
        timestamp_ms: int | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> int:
        """Append one record; returns its offset."""
        log = self.partitions.setdefault(TopicPartition(topic, partition), [])
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        log.append(MemoryRecord(topic, partition, len(log), key, value, ts, list(headers)))
        return len(log) - 1

    def records(self, topic: str) -> list[MemoryRecord]:
        """Every record of `topic`, partition by partition."""
        return [r for tp, log in sorted(self.partitions.items()) if tp.topic == topic for r in log]

    def topic_partitions(self, topic: str) -> list[TopicPartition]:
        return sorted(tp for tp in self.partitions if tp.topic == topic)


class MemorySource:
    """One group member reading `topics` from `log`; owns every partition until told not to."""

    def __init__(self, log: MemoryLog, topics: list[str]):
        self.log, self.topics = log, topics
        self.owned: list[TopicPartition] = []
        self.position: dict[TopicPartition, int] = {}
        self.revoked: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []  # each commit, next offsets
        self.keepalives = 0
        self.consumer: object | None = None
        self.on_poll: Callable[[MemorySource], None] | None = None  # a test's hook

    @property
    def connected(self) -> bool:
        return self.consumer is not None

    def connect(self) -> MemorySource:
        self.consumer = object()
        self.assign([tp for t in self.topics for tp in self.log.topic_partitions(t)])
        return self

    # -- what a rebalance does --------------------------------------------------------
    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Take partitions: each is read from its committed offset."""
        for tp in tps:
            if tp not in self.owned:
                self.owned.append(tp)
                self.position[tp] = self.log.committed.get(tp, 0)

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Give partitions up: their uncommitted records go to their next owner."""
        for tp in tps:
            if tp in self.owned:
                self.owned.remove(tp)
                self.position.pop(tp, None)
                self.revoked.add(tp)

    # -- the contract -----------------------------------------------------------------
    def poll_batch(self, max_size: int, max_wait_ms: int) -> Batch:
        if self.on_poll is not None:
            self.on_poll(self)
        out: list[MemoryRecord] = []
        for tp in self.owned:
            log, at = self.log.partitions.get(tp, []), self.position[tp]
            take = log[at : at + max_size - len(out)]
            out += take
            self.position[tp] = at + len(take)
        return Batch(out, MEMORY)

    def commit(self, last: dict[TopicPartition, int]) -> None:
        """Commit past `last` for the partitions still owned (as the adapters do)."""
        offsets = {tp: o + 1 for tp, o in last.items() if tp in self.owned}
        if offsets:
            self.log.committed.update(offsets)
            self.commits.append(offsets)

    def flush_commits(self) -> None: ...

    def lag(self, last: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        return {
            tp: len(self.log.partitions.get(tp, [])) - o - 1
            for tp, o in last.items()
            if tp in self.owned
        }

    def take_revoked(self) -> set[TopicPartition]:
        revoked, self.revoked = self.revoked, set()
        return revoked

    def assigned(self) -> int:
        return len(self.owned)

    def group_stable(self) -> bool:
        return True

    def broker_reachable(self) -> bool:
        return self.connected

    def keepalive(self) -> None:
        self.keepalives += 1

    def close(self) -> None:
        self.consumer = None


class MemoryDelivery(Delivery):
    def __init__(self, records: list[Outgoing]):
        super().__init__(records)
        self.acknowledged = False

    def done(self) -> bool:
        return self.acknowledged


class MemorySink:
    """Acknowledges a batch's records in `wait`, appending them to `log`; refuses the next
    `refuse` waits with a PublishError (records of a refused wait are not appended)."""

    def __init__(self, log: MemoryLog, refuse: int = 0):
        self.log, self.refuse = log, refuse
        self.sends = 0
        self.refused = 0
        self.on_refuse: Callable[[MemorySink], None] | None = None  # a test's hook

    def send(self, records: list[Outgoing]) -> MemoryDelivery:
        self.sends += 1
        return MemoryDelivery(records)

    def wait(self, d: Delivery) -> None:
        assert isinstance(d, MemoryDelivery)
        if d.acknowledged:
            return
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            if self.on_refuse is not None:
                self.on_refuse(self)
            raise PublishError(f"{len(d.records)} of {len(d.records)} records not acknowledged")
        for r in d.records:
            self.log.append(r.topic, r.value, r.key, headers=r.headers)
        d.acknowledged, d.acked_at = True, time.time()

    def close(self) -> None: ...
