"""The librdkafka (confluent-kafka) adapter: source, sink and group-less reader with the
contracts of `detector.kafka.types`, as the kafka-python adapter's.

librdkafka fetches, checks CRCs and parses record batches in C threads that do not hold
the GIL, so the loop's core is left to decoding and scoring. Its callbacks (rebalance,
commit results, errors, statistics) run inside `consume`, on the loop's own thread.

Only neutral types cross this module's edge: partitions are `detector.kafka.TopicPartition`
(confluent-kafka's own are made only to call the client), and errors are
`detector.errors.KafkaError` (`CommitFailed`, `PublishError`), or `ConfigError` where
librdkafka refuses its configuration or the broker this client's security settings.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import fields
from operator import methodcaller
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka import KafkaError as RdError
from confluent_kafka import TopicPartition as RdPartition

from detector.errors import CommitFailed, ConfigError, KafkaError, PublishError
from detector.kafka.batch import Batch, Fields
from detector.kafka.refusals import (
    certificate_untrusted,
    configuration_refused,
    credentials_refused,
)
from detector.kafka.types import Delivery, Outgoing, TopicPartition
from detector.ops.settings import KafkaSettings, Settings

__all__ = [
    "LIBRDKAFKA",
    "RdDelivery",
    "RdKafkaReader",
    "RdKafkaSink",
    "RdKafkaSource",
    "rd_config",
]

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.1  # how long a poll waits when nothing comes: the loop's beat when idle
STATS_INTERVAL_MS = 2_000  # broker states for /readyz, parsed on the loop's thread
CONNECT_TIMEOUT_S = 5.0  # the first metadata request: is a broker there?


def _rd_timestamp(m: Any) -> int:
    return m.timestamp()[1]  # (type, ms); ms is -1 when the type says "not available"


# confluent_kafka.Message has reading methods, one per field.
LIBRDKAFKA = Fields(
    **{f.name: methodcaller(f.name) for f in fields(Fields)} | {"timestamp": _rd_timestamp}
)


def rd_config(k: KafkaSettings) -> dict[str, Any]:
    """librdkafka's names for the connection and security settings."""
    cfg: dict[str, Any] = {
        "bootstrap.servers": ",".join(s.strip() for s in k.bootstrap_servers.split(",")),
        "client.id": k.client_id,
        "security.protocol": k.security_protocol.lower(),
        "socket.timeout.ms": k.request_timeout_ms,
        "reconnect.backoff.max.ms": 5_000,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        if k.ssl_cafile:
            cfg["ssl.ca.location"] = str(k.ssl_cafile)
        if k.ssl_certfile:
            cfg["ssl.certificate.location"] = str(k.ssl_certfile)
        if k.ssl_keyfile:
            cfg["ssl.key.location"] = str(k.ssl_keyfile)
        cfg["ssl.endpoint.identification.algorithm"] = "https" if k.ssl_check_hostname else "none"
    if k.security_protocol.startswith("SASL"):
        cfg["sasl.mechanism"] = k.sasl_mechanism
        cfg["sasl.username"] = k.username
        cfg["sasl.password"] = k.secret()
    return cfg


_error = methodcaller("error")


def _tp(p: Any) -> TopicPartition:
    return TopicPartition(p.topic, p.partition)


def _tp_of(m: Any) -> TopicPartition:
    return TopicPartition(m.topic(), m.partition())


def _rd(tp: TopicPartition, offset: int | None = None) -> RdPartition:
    return RdPartition(tp.topic, tp.partition) if offset is None else RdPartition(*tp, offset)


# Errors of a read that no retry heals: the range cannot be read to its end.
_UNREADABLE = {
    RdError.UNKNOWN_TOPIC_OR_PART,
    RdError._UNKNOWN_PARTITION,
    RdError._UNKNOWN_TOPIC,
    RdError.TOPIC_AUTHORIZATION_FAILED,
}


def _refused_settings(err: RdError) -> bool:
    """Whether an error callback's error is the broker refusing this client's security
    settings (bad credentials, a certificate this client does not trust)."""
    code = err.code()
    return code == RdError._AUTHENTICATION or (
        code in (RdError._SSL, RdError._TRANSPORT) and "certificate verify failed" in err.str()
    )


def _refusal(k: KafkaSettings, fatal: KafkaException | None) -> ConfigError | None:
    """What to fix when the broker refused this client's security settings, if it did."""
    if fatal is None:
        return None
    if fatal.args[0].code() == RdError._AUTHENTICATION:
        return credentials_refused(k, str(fatal))
    text = fatal.args[0].str()
    return certificate_untrusted(k, text[text.find("certificate verify failed") :].split(",")[0])


def _configuration_refused(e: KafkaException) -> ConfigError:
    err = e.args[0] if e.args else None
    return configuration_refused(err.str() if isinstance(err, RdError) else str(e))


def _kafka_error(e: KafkaException) -> KafkaError:
    return KafkaError(str(e.args[0]) if e.args else str(e))


class RdKafkaSource:
    """Polls batches (by size or time, whichever comes first) and commits explicit offsets."""

    def __init__(
        self, settings: Settings, on_commit_error: Callable[[Exception], None] | None = None
    ):
        self.settings = settings
        self.on_commit_error = on_commit_error
        self.consumer: Consumer | None = None
        self._owned: set[TopicPartition] = set()
        self._revoked: set[TopicPartition] = set()
        self._lock = threading.Lock()  # callbacks run on this thread; close() may not
        self._newest: dict[TopicPartition, int] = {}  # next offsets, for the final commit
        self._unsent: dict[TopicPartition, int] = {}  # not yet sent, or sent and failed
        self._next_commit = 0.0  # monotonic time before which no commit is sent
        self._brokers_up: bool | None = None  # from the statistics; None before the first
        self._fatal: KafkaException | None = None  # what the error callback saw at connect

    # -- connection ----------------------------------------------------------------------
    def connect(self) -> RdKafkaSource:
        """One attempt; raises KafkaError when the broker is unreachable, ConfigError when it
        refuses the credentials, the client does not trust its certificate or librdkafka
        refuses its configuration."""
        k = self.settings.kafka
        self._fatal = None
        try:
            consumer = Consumer(
                {
                    **rd_config(k),
                    "group.id": k.group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": k.auto_offset_reset,
                    "session.timeout.ms": k.session_timeout_ms,
                    "max.poll.interval.ms": k.max_poll_interval_ms,
                    "fetch.wait.max.ms": k.fetch_max_wait_ms,
                    "max.partition.fetch.bytes": 4 * 1024 * 1024,
                    "check.crcs": True,
                    "statistics.interval.ms": STATS_INTERVAL_MS,
                    "error_cb": self._on_error,
                    "stats_cb": self._on_stats,
                    "on_commit": self._on_commit,
                    "logger": logging.getLogger("librdkafka"),
                }
            )
        except KafkaException as e:
            raise _configuration_refused(e) from e
        try:
            consumer.list_topics(timeout=CONNECT_TIMEOUT_S)  # a real request: is a broker there?
        except KafkaException as e:
            consumer.poll(0)  # serves the error callback: was it a refusal?
            consumer.close()
            raise _refusal(k, self._fatal) or _kafka_error(e) from e
        t = self.settings.topics
        topics = [f"^{t.input_pattern}"] if t.input_pattern else list(t.input)
        try:
            consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        except KafkaException as e:  # an invalid pattern or topic name
            consumer.close()
            raise _configuration_refused(e) from e
        self._brokers_up = True
        self.consumer = consumer
        return self

    @property
    def connected(self) -> bool:
        return self.consumer is not None

    # -- callbacks (inside consume, on the loop's thread) --------------------------------
    def _on_error(self, err: RdError) -> None:
        if _refused_settings(err):
            self._fatal = KafkaException(err)
        if err.code() == RdError._ALL_BROKERS_DOWN:
            self._brokers_up = False
        log.debug("librdkafka: %s", err)

    def _on_stats(self, text: str) -> None:
        brokers = orjson.loads(text).get("brokers", {})
        self._brokers_up = any(b.get("state") == "UP" for b in brokers.values())

    def _on_assign(self, consumer: Consumer, partitions: list[RdPartition]) -> None:
        got = set(map(_tp, partitions))
        with self._lock:
            self._owned |= got
        log.info("partitions assigned: %s", sorted(got))

    def _on_revoke(self, consumer: Consumer, partitions: list[RdPartition]) -> None:
        gone = set(map(_tp, partitions))
        with self._lock:
            self._owned -= gone
            self._revoked |= gone
        log.info("partitions revoked: %s", sorted(gone))

    def _on_commit(self, err: RdError | None, partitions: list[RdPartition]) -> None:
        failed = err is not None or any(p.error is not None for p in partitions)
        if not failed:
            return
        with self._lock:
            for p in partitions:  # sent again with the next, unless newer offsets wait
                if p.offset >= 0:
                    self._unsent.setdefault(_tp(p), p.offset)
        why = err or next(p.error for p in partitions if p.error is not None)
        log.debug("commit failed, sent again: %s", why)
        if self.on_commit_error is not None:
            self.on_commit_error(CommitFailed(f"commit failed: {why}"))

    # -- the loop's calls ----------------------------------------------------------------
    def poll_batch(self, max_size: int, max_wait_ms: int) -> Batch:
        """Records from assigned partitions, in offset order per partition: takes what is
        fetched already (waiting up to IDLE_POLL_S for the first), then waits at most
        `max_wait_ms` more for the batch to fill."""
        assert self.consumer is not None
        c = self.consumer
        try:
            msgs = c.consume(max_size, 0) or c.consume(1, IDLE_POLL_S)
        except KafkaException as e:
            raise _kafka_error(e) from e
        if msgs and len(msgs) < max_size and max_wait_ms > 0:
            try:
                msgs += c.consume(max_size - len(msgs), max_wait_ms / 1000.0)
            except KafkaException as e:
                # The messages in hand are consumed already (raising would skip them): they
                # make this batch, and the next poll meets the error again.
                log.warning("consume: %s", e)
        if any(map(_error, msgs)):
            for m in msgs:
                if m.error() is not None:
                    log.warning("consume: %s", m.error())
            msgs = [m for m in msgs if m.error() is None]
        batch = Batch(msgs, LIBRDKAFKA)
        if self._revoked:  # records of partitions revoked meanwhile go to their new owner
            owned = self._owned
            batch = batch.only(lambda t, p: TopicPartition(t, p) in owned)
        return batch

    def commit(self, last: dict[TopicPartition, int]) -> None:
        """Commit past the last offset of each owned partition, without waiting for the
        broker's answer (at most once per kafka.commit_interval_ms: the newest offsets go
        with the next); a failed commit's offsets go out again with the next. CommitFailed
        if librdkafka refuses the request itself."""
        with self._lock:
            offsets = {tp: o + 1 for tp, o in last.items()}
            self._newest.update(offsets)
            self._unsent.update(offsets)
        self.flush_commits()

    def flush_commits(self) -> None:
        """Send the offsets not yet committed, unless the last commit went out less than
        kafka.commit_interval_ms ago."""
        now = time.monotonic()
        if self.consumer is None or not self._unsent or now < self._next_commit:
            return
        self._next_commit = now + self.settings.kafka.commit_interval_ms / 1000.0
        with self._lock:
            owned = {tp: o for tp, o in self._unsent.items() if tp in self._owned}
            self._unsent = {}
        if owned:
            parts = [_rd(tp, o) for tp, o in owned.items()]
            try:
                self.consumer.commit(offsets=parts, asynchronous=True)
            except KafkaException as e:
                with self._lock:  # sent again with the next, unless newer offsets wait
                    for tp, o in owned.items():
                        self._unsent.setdefault(tp, o)
                raise CommitFailed(f"commit failed: {e.args[0] if e.args else e}") from e

    def lag(self, last: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        assert self.consumer is not None
        out = {}
        for tp, off in last.items():
            if tp not in self._owned:
                continue
            # The high watermark that came with the last fetch: no request.
            _, high = self.consumer.get_watermark_offsets(_rd(tp), cached=True)
            if high >= 0:
                out[tp] = max(0, high - off - 1)
        return out

    def take_revoked(self) -> set[TopicPartition]:
        """Partitions revoked since the last call (their entity state must go)."""
        with self._lock:
            revoked, self._revoked = self._revoked, set()
        return revoked

    def assigned(self) -> int:
        return len(self._owned) if self.consumer is not None else 0

    def group_stable(self) -> bool:
        """librdkafka completes its rebalances itself: no rejoin watchdog needed."""
        return self.consumer is not None

    def broker_reachable(self) -> bool:
        return self.consumer is not None and bool(self._brokers_up)

    def keepalive(self) -> None:
        """Stay in the group while a batch is being retried: poll with nothing to fetch.
        Best effort: the retry goes on whatever this poll meets (the next poll reports it)."""
        if self.consumer is None:
            return
        c = self.consumer
        try:
            parts = c.assignment()
            c.pause(parts)
            try:
                stray = c.consume(1, 0)
            finally:
                c.resume(parts)
            for m in stray:  # fetched before the pause: it must be read again, not skipped
                if m.error() is None:
                    c.seek(RdPartition(m.topic(), m.partition(), m.offset()))
        except KafkaException as e:
            log.debug("keepalive poll failed: %s", e)

    def close(self) -> None:
        if self.consumer is None:
            return
        c, self.consumer = self.consumer, None
        with self._lock:
            newest = {tp: o for tp, o in self._newest.items() if tp in self._owned}
            self._newest, self._unsent = {}, {}
        if newest:  # the async commits may still be in flight: make sure of them
            parts = [_rd(tp, o) for tp, o in newest.items()]
            try:
                c.commit(offsets=parts, asynchronous=False)
            except KafkaException as e:
                log.warning("final commit failed; the owner replays from the one before: %s", e)
        try:
            c.close()  # leaves the group promptly
        except (KafkaException, RuntimeError) as e:
            log.warning("closing the consumer: %s", e)
        with self._lock:
            self._owned = set()


class RdDelivery(Delivery):
    """One batch's records on their way to the broker, counted down by delivery reports
    (which librdkafka hands out inside `poll` and `flush`, on the loop's thread)."""

    def __init__(self, records: list[Outgoing], producer: Producer):
        super().__init__(records)
        self.producer = producer
        self.pending = 0
        self.failures: list[str] = []
        self.error: KafkaError | None = None  # a send that failed before reaching librdkafka
        self.sent_at = time.time()

    def _report(self, err: RdError | None, msg: Any) -> None:
        self.pending -= 1
        if err is not None:
            self.failures.append(err.str())
        else:  # when the acknowledgement came, not when this report is served
            self.acked_at = max(self.acked_at, self.sent_at + (msg.latency() or 0.0))

    def done(self) -> bool:
        if self.pending and self.error is None:
            self.producer.poll(0)
        return self.error is not None or self.pending == 0


class RdKafkaSink:
    """Sends a batch's records without waiting; `wait` returns once all are acknowledged."""

    def __init__(self, settings: Settings):
        self.settings = settings.kafka
        self.timeout_s = self.settings.delivery_timeout_ms / 1000.0
        self.producer = self._producer()

    def _producer(self) -> Producer:
        """A new producer (it connects in the background): ConfigError if librdkafka
        refuses its configuration."""
        k = self.settings
        try:
            return Producer(
                {
                    **rd_config(k),
                    "acks": "all",
                    "enable.idempotence": True,  # retries never duplicate or reorder a key's events
                    "linger.ms": 2,
                    "delivery.timeout.ms": k.delivery_timeout_ms,
                    "logger": logging.getLogger("librdkafka"),
                }
            )
        except KafkaException as e:
            raise _configuration_refused(e) from e

    def send(self, records: list[Outgoing]) -> RdDelivery:
        d = RdDelivery(records, self.producer)
        try:
            for r in records:
                self._produce(r, d)
                d.pending += 1
        except (BufferError, KafkaException) as e:
            d.error = KafkaError(str(e))
        self.producer.poll(0)
        return d

    def _produce(self, r: Outgoing, d: RdDelivery) -> None:
        send = self.producer.produce
        try:
            send(r.topic, r.value, r.key, headers=r.headers, on_delivery=d._report)
        except BufferError:  # the local queue is full: let it drain, then once more
            self.producer.poll(1.0)
            send(r.topic, r.value, r.key, headers=r.headers, on_delivery=d._report)

    def wait(self, d: Delivery) -> None:
        """Raise PublishError unless every record of `d` is acknowledged."""
        assert isinstance(d, RdDelivery)
        if d.error is None and d.pending:
            self.producer.flush(self.timeout_s)
        if d.error is not None or d.pending or d.failures:
            failed = d.pending + len(d.failures)
            first = d.error or (d.failures[0] if d.failures else "not acknowledged in time")
            # Some refusals leave librdkafka's idempotent producer in a fatal state: the
            # batch is sent again on a fresh one (what is still queued is dropped).
            self.producer.purge()
            self.producer.flush(0)
            self.producer = self._producer()
            raise PublishError(
                f"{failed or len(d.records)} of {len(d.records)} records not acknowledged: {first}"
            )

    def close(self) -> None:
        remaining = self.producer.flush(5.0)
        if remaining:
            log.warning("closing the producer with %d records unacknowledged", remaining)


class RdKafkaReader:
    """Reads offset ranges of partitions outside the detectors' group, never committing.
    librdkafka's consumer wants a group id even to assign partitions by hand: a throw-away
    one, with auto-commit off and nothing ever committed, so no group is ever created on
    the broker."""

    def __init__(self, settings: Settings):
        k = settings.kafka
        self.timeout_s = k.request_timeout_ms / 1000.0
        self._fatal: KafkaException | None = None
        try:
            self.consumer = Consumer(
                {
                    **rd_config(k),
                    "group.id": f"vigil-reader-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",  # a range partly gone to retention
                    # A partition's end is its high watermark (what kafka-python reads to):
                    # read_committed would stop short of it while a transaction is open.
                    "isolation.level": "read_uncommitted",
                    # An end-of-partition event ends a range whose last offsets are gone
                    # (retention, compaction, a transaction marker): no wait for them.
                    "enable.partition.eof": True,
                    "error_cb": self._on_error,
                    "logger": logging.getLogger("librdkafka"),
                }
            )
        except KafkaException as e:
            raise _configuration_refused(e) from e
        try:
            self.consumer.list_topics(timeout=self.timeout_s)  # is a broker there?
        except KafkaException as e:
            self.consumer.poll(0)  # serves the error callback: was it a refusal?
            self.consumer.close()
            raise _refusal(k, self._fatal) or _kafka_error(e) from e

    def _on_error(self, err: RdError) -> None:
        if _refused_settings(err):
            self._fatal = KafkaException(err)
        log.debug("librdkafka: %s", err)

    def _topics(self) -> dict[str, Any]:
        try:
            return self.consumer.list_topics(timeout=self.timeout_s).topics
        except KafkaException as e:
            raise _kafka_error(e) from e

    def partitions(self, topics: list[str]) -> list[TopicPartition]:
        md = self._topics()
        return [
            TopicPartition(t, p)
            for t in topics
            if t in md and md[t].error is None
            for p in sorted(md[t].partitions)
        ]

    def topics_matching(self, pattern: str) -> list[str]:
        # Kafka's own topics (__consumer_offsets, __transaction_state) are left out, as
        # kafka-python leaves them out.
        return sorted(
            t for t in self._topics() if not t.startswith("__") and re.fullmatch(pattern, t)
        )

    def offsets_for_time(self, tps: list[TopicPartition], ms: int) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        # A negative "time" would ask for librdkafka's logical offsets (end, beginning).
        query = [_rd(tp, max(0, ms)) for tp in tps]
        try:
            found = self.consumer.offsets_for_times(query, timeout=self.timeout_s)
        except KafkaException as e:
            raise _kafka_error(e) from e
        for p in found:
            if p.error is not None:
                raise KafkaError(f"offsets for times of {p.topic}[{p.partition}]: {p.error}")
        # -1: no record at or after `ms` (or none at all): the partition's end.
        out = {_tp(p): p.offset for p in found}
        end = self.end_offsets([tp for tp, o in out.items() if o < 0])
        return {tp: end[tp] if o < 0 else o for tp, o in out.items()}

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        out = {}
        for tp in tps:
            try:
                marks = self.consumer.get_watermark_offsets(_rd(tp), timeout=self.timeout_s)
            except KafkaException as e:
                raise _kafka_error(e) from e
            if marks is None:
                raise KafkaError(f"no end offset of {tp.topic}[{tp.partition}] in time")
            out[tp] = marks[1]
        return out

    def read(
        self, ranges: dict[TopicPartition, tuple[int, int]], max_batch: int = 5_000
    ) -> Iterator[Batch]:
        """The records of each partition in [start, end), a batch per consume (at most
        `max_batch` records; offset order within a partition), until every partition
        reached its end."""
        stop = {tp: b for tp, (a, b) in ranges.items() if b > a}
        if not stop:
            return
        todo = set(stop)
        c = self.consumer
        try:
            c.assign([_rd(tp, ranges[tp][0]) for tp in stop])
            # librdkafka keeps a partition paused across unassign and assign: one paused at
            # the end of an earlier read would never be fetched again.
            c.resume([_rd(tp) for tp in stop])
            while todo:
                msgs = c.consume(max_batch, 1.0)
                if msgs and any(map(_error, msgs)):
                    msgs = self._events(msgs, todo)
                if not msgs:
                    # Retention may have moved a partition's start past its range's end.
                    for p in c.position([_rd(tp) for tp in todo]):
                        if p.offset >= stop[_tp(p)]:
                            self._done(_tp(p), todo)
                    continue
                batch = Batch(msgs, LIBRDKAFKA)
                over = False  # records at or past a partition's end, fetched before its pause
                for tp, last in batch.last_offsets().items():
                    end = stop.get(tp, 0)
                    over |= last >= end
                    if tp in todo and last >= end - 1:
                        self._done(tp, todo)
                if over:
                    f = LIBRDKAFKA
                    batch = Batch(
                        [m for m in msgs if f.offset(m) < stop.get(_tp_of(m), 0)], LIBRDKAFKA
                    )
                if batch:
                    yield batch
        except KafkaException as e:
            raise _kafka_error(e) from e
        finally:
            try:
                c.unassign()  # nothing fetched between reads; the next assigns afresh
            except (KafkaException, RuntimeError) as e:
                log.debug("unassign: %s", e)

    def _events(self, msgs: list[Any], todo: set[TopicPartition]) -> list[Any]:
        """The records among `msgs`; an end-of-partition event ends its partition's range
        (everything before its end is delivered by then), other errors are logged (librdkafka
        retries what can be retried), or raised when the partition cannot be read."""
        for m in msgs:
            err = m.error()
            if err is None:
                continue
            if err.code() == RdError._PARTITION_EOF:
                tp = _tp_of(m)
                if tp in todo:
                    self._done(tp, todo)
            elif err.fatal() or err.code() in _UNREADABLE:
                raise KafkaError(f"reading {m.topic()}[{m.partition()}]: {err}")
            else:
                log.warning("consume: %s", err)
        return [m for m in msgs if m.error() is None]

    def _done(self, tp: TopicPartition, todo: set[TopicPartition]) -> None:
        todo.discard(tp)
        self.consumer.pause([_rd(tp)])  # fetch no more of it

    def close(self) -> None:
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as e:
            log.warning("closing the reader: %s", e)
