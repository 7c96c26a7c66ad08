"""The kafka-python adapter: a batch source with manual commits, a sink that reports
whether every record of a batch was acknowledged, and a group-less reader of offset ranges
(the contracts of `detector.kafka.types`).

Only neutral types cross this module's edge: partitions are `detector.kafka.TopicPartition`
(kafka-python's own namedtuple is made only to call the client), and kafka-python's errors
become `detector.errors.KafkaError` (`CommitFailed`, `PublishError`), or `ConfigError` where
the client refuses its configuration or the broker this client's security settings.
"""

from __future__ import annotations

import logging
import re
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields
from operator import attrgetter
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import (
    CommitFailedError,
    KafkaConfigurationError,
    KafkaConnectionError,
    SaslAuthenticationFailedError,
)
from kafka.errors import KafkaError as ClientError
from kafka.structs import MemberState, OffsetAndMetadata
from kafka.structs import TopicPartition as ClientPartition

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
    "KAFKA_PYTHON",
    "KafkaDelivery",
    "KafkaReader",
    "KafkaSink",
    "KafkaSource",
    "client_config",
]

log = logging.getLogger(__name__)
IDLE_POLL_MS = 100  # how long a poll waits when nothing comes: the loop's beat when idle

# kafka-python's ConsumerRecord is a namedtuple: every field is an attribute.
KAFKA_PYTHON = Fields(**{f.name: attrgetter(f.name) for f in fields(Fields)})


def client_config(k: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by consumers, producers and admin clients;
    ConfigError if the TLS files cannot be loaded."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in k.bootstrap_servers.split(",") if s.strip()],
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
        "request_timeout_ms": k.request_timeout_ms,
        "reconnect_backoff_max_ms": 5_000,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        try:
            ctx = ssl.create_default_context(cafile=str(k.ssl_cafile) if k.ssl_cafile else None)
            ctx.check_hostname = k.ssl_check_hostname
            if k.ssl_certfile:
                keyfile = str(k.ssl_keyfile) if k.ssl_keyfile else None
                ctx.load_cert_chain(str(k.ssl_certfile), keyfile)
        except (ssl.SSLError, OSError) as e:  # what librdkafka refuses as its configuration
            raise configuration_refused(f"the TLS files cannot be loaded ({e})") from e
        cfg["ssl_context"] = ctx
    if k.security_protocol.startswith("SASL"):
        cfg["sasl_mechanism"] = k.sasl_mechanism
        cfg["sasl_plain_username"] = k.username
        cfg["sasl_plain_password"] = k.secret()
    return cfg


class _RefusedBootstrap(logging.Filter):
    """kafka-python gives up a bootstrap with "Unable to bootstrap" and names the cause (bad
    credentials, an untrusted certificate) only in its log: keep that cause, so that the
    detector can say what to fix instead of retrying forever."""

    def __init__(self) -> None:
        super().__init__()
        self.cause: Exception | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for a in args:
            if isinstance(a, SaslAuthenticationFailedError) or (
                isinstance(a, KafkaConnectionError) and "CERTIFICATE_VERIFY_FAILED" in str(a)
            ):
                self.cause = a
        return True


_refused = _RefusedBootstrap()
logging.getLogger("kafka.net.manager").addFilter(_refused)


def refusal(k: KafkaSettings) -> ConfigError | None:
    """What to fix when the broker refused this client's security settings, if it did."""
    cause, _refused.cause = _refused.cause, None
    if isinstance(cause, SaslAuthenticationFailedError):
        return credentials_refused(k, cause.__class__.__name__)
    if cause is not None:
        return certificate_untrusted(k, str(cause).split("] ", 1)[-1])
    return None


def _neutral(e: ClientError, k: KafkaSettings | None = None) -> KafkaError | ConfigError:
    """kafka-python's error as the detector's own: ConfigError where the client refuses its
    configuration or (with `k`, as a client starts) the broker its security settings;
    CommitFailed for a commit the group refused; KafkaError otherwise (a retry may help)."""
    if isinstance(e, KafkaConfigurationError):
        return configuration_refused(str(e))
    if isinstance(e, CommitFailedError):
        return CommitFailed(str(e))
    refused = refusal(k) if k is not None else None
    return refused or KafkaError(str(e) or e.__class__.__name__)


def _client(tp: TopicPartition) -> ClientPartition:
    return ClientPartition(tp.topic, tp.partition)


def _ours(tp: ClientPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def _snapshot_subscribed_metadata(consumer: KafkaConsumer) -> None:
    """kafka-python takes the group's metadata snapshot before the subscription exists and
    renews it only with the next metadata response: the first join then assigns from an
    empty snapshot, and that response forces a second rebalance at once (one that
    kafka-python sometimes never finishes). The topics' partitions are known by now: take
    the snapshot again before the first join."""
    coordinator = getattr(consumer, "_coordinator", None)
    try:
        coordinator._handle_metadata_update(coordinator._cluster)  # type: ignore[union-attr]
    except Exception as e:  # private API: without it we only lose the early snapshot
        log.debug("could not renew the group metadata snapshot: %s", e)


class _Rebalance(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: only records what happened, never blocks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.revoked: set[TopicPartition] = set()
        self.assigned: set[TopicPartition] = set()
        self.generation = 0

    def on_partitions_revoked(self, revoked: Iterable[ClientPartition]) -> None:
        gone = set(map(_ours, revoked))
        with self.lock:
            self.revoked |= gone
            self.assigned -= gone
            self.generation += 1
        log.info("partitions revoked: %s", sorted(gone))

    def on_partitions_assigned(self, assigned: Iterable[ClientPartition]) -> None:
        got = set(map(_ours, assigned))
        with self.lock:
            self.assigned |= got
            self.generation += 1
        log.info("partitions assigned: %s", sorted(got))


class KafkaSource:
    """Polls batches (by size or time, whichever comes first) and commits explicit offsets."""

    def __init__(
        self, settings: Settings, on_commit_error: Callable[[Exception], None] | None = None
    ):
        self.settings = settings
        self.rebalance = _Rebalance()
        self.consumer: KafkaConsumer | None = None
        self.on_commit_error = on_commit_error
        self._commit_lock = threading.Lock()
        self._commit_in_flight = False
        # Keyed by kafka-python's partitions: they go to the client as they are.
        self._newest: dict[ClientPartition, OffsetAndMetadata] = {}  # for the final commit
        self._unsent: dict[ClientPartition, OffsetAndMetadata] = {}
        self._next_commit = 0.0  # monotonic time before which no commit is sent

    @property
    def connected(self) -> bool:
        return self.consumer is not None

    def connect(self) -> KafkaSource:
        """One attempt; raises KafkaError when the broker is unreachable, ConfigError when it
        refuses the credentials, the client does not trust its certificate or kafka-python
        refuses its configuration."""
        k = self.settings.kafka
        _refused.cause = None
        try:
            return self._connect(k)
        except ClientError as e:
            raise _neutral(e, k) from e

    def _connect(self, k: KafkaSettings) -> KafkaSource:
        consumer = KafkaConsumer(
            **client_config(k),
            group_id=k.group_id,
            enable_auto_commit=False,
            auto_offset_reset=k.auto_offset_reset,
            session_timeout_ms=k.session_timeout_ms,
            max_poll_interval_ms=k.max_poll_interval_ms,
            max_poll_records=self.settings.batch.max_size,
            fetch_max_wait_ms=k.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            check_crcs=True,
            bootstrap_timeout_ms=5_000,  # give the loop back often enough to report health
        )
        t = self.settings.topics
        if t.input_pattern:
            consumer.subscribe(pattern=t.input_pattern, listener=self.rebalance)
        else:
            # Join the group only once the topics' partitions are known: a join before that
            # gets an empty assignment and a second rebalance, which kafka-python can leave
            # waiting for the rebalance timeout.
            deadline = time.monotonic() + 10.0
            missing = list(t.input)
            while missing and time.monotonic() < deadline:
                missing = [topic for topic in missing if not consumer.partitions_for_topic(topic)]
                if missing:
                    time.sleep(0.2)
            if missing:
                log.warning("input topic(s) %s not found yet; subscribing anyway", missing)
            consumer.subscribe(topics=t.input, listener=self.rebalance)
            if not missing:
                _snapshot_subscribed_metadata(consumer)
        self.consumer = consumer
        return self

    def poll_batch(self, max_size: int, max_wait_ms: int) -> Batch:
        """Records from assigned partitions, in offset order per partition: waits up to
        IDLE_POLL_MS for the first, then takes everything already fetched and waits at
        most `max_wait_ms` more for the batch to fill."""
        assert self.consumer is not None
        records: list[Any] = []
        generation = self.rebalance.generation
        try:
            polled = self.consumer.poll(timeout_ms=IDLE_POLL_MS, max_records=max_size)
        except ClientError as e:
            raise _neutral(e) from e
        deadline = time.monotonic() + max_wait_ms / 1000.0
        while polled:
            for recs in polled.values():
                records.extend(recs)
            if len(records) >= max_size:
                break
            # One poll returns what one fetch brought: drain the rest without waiting,
            # or a partition whose records sit in the client's buffer falls behind.
            timeout = max(0, int((deadline - time.monotonic()) * 1000))
            try:
                polled = self.consumer.poll(timeout_ms=timeout, max_records=max_size - len(records))
            except ClientError as e:
                # The records in hand are consumed already (raising would skip them): they
                # make this batch, and the next poll meets the error again.
                log.warning("poll: %s", e)
                break
        batch = Batch(records, KAFKA_PYTHON)
        if records and self.rebalance.generation != generation:
            # A rebalance happened while the batch filled: records of partitions we no
            # longer own will be redelivered to their new owner; don't score them twice.
            owned = set(map(_ours, self.consumer.assignment()))
            batch = batch.only(lambda t, p: TopicPartition(t, p) in owned)
        return batch

    def commit(self, last: dict[TopicPartition, int]) -> None:
        """Commit past the last offset of each partition of a batch, without waiting for
        the broker's answer: a sync commit costs a round trip (about 10 ms here) per batch.
        One commit request is in flight at a time and the next carries the newest offsets
        (kafka-python refuses requests beyond its in-flight limit); one that fails is sent
        again with the next. `close` commits the newest offsets synchronously."""
        offsets = {_client(tp): OffsetAndMetadata(o + 1, "", -1) for tp, o in last.items()}
        with self._commit_lock:
            self._newest.update(offsets)
            self._unsent.update(offsets)
        self.flush_commits()

    def flush_commits(self) -> None:
        """Send the offsets not yet committed, unless a commit request is in flight or the
        last went out less than kafka.commit_interval_ms ago."""
        if self.consumer is None:
            return
        now = time.monotonic()
        with self._commit_lock:
            if self._commit_in_flight or not self._unsent or now < self._next_commit:
                return
            self._next_commit = now + self.settings.kafka.commit_interval_ms / 1000.0
            owned = self.consumer.assignment()  # a revoked partition is its new owner's
            offsets = {tp: o for tp, o in self._unsent.items() if tp in owned}
            self._unsent = {}
            if not offsets:
                return
            self._commit_in_flight = True
        try:
            self.consumer.commit_async(offsets, callback=self._committed)
        except ClientError:
            self._committed(offsets, sys.exc_info()[1])  # type: ignore[arg-type]

    def _committed(self, offsets: dict[ClientPartition, Any], response: object) -> None:
        """On the consumer's IO thread: a failed commit's offsets go out with the next, and
        `on_commit_error` hears of it as a CommitFailed."""
        with self._commit_lock:
            self._commit_in_flight = False
            if isinstance(response, Exception):
                for tp, o in offsets.items():
                    self._unsent.setdefault(tp, o)  # unless newer offsets are waiting
        if isinstance(response, Exception):
            log.debug("commit of %d partition(s) failed, sent again: %s", len(offsets), response)
            if self.on_commit_error is not None:
                self.on_commit_error(CommitFailed(f"commit failed: {response}"))

    def lag(self, last: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        assert self.consumer is not None
        out = {}
        owned = self.consumer.assignment()
        for tp, off in last.items():
            ctp = _client(tp)
            if ctp not in owned:  # revoked since the batch was polled
                continue
            try:
                hw = self.consumer.highwater(ctp)
            except ClientError:  # revoked on the IO thread meanwhile
                continue
            if hw is not None:
                out[tp] = max(0, hw - off - 1)
        return out

    def take_revoked(self) -> set[TopicPartition]:
        """Partitions revoked since the last call (their entity state must go)."""
        with self.rebalance.lock:
            revoked, self.rebalance.revoked = self.rebalance.revoked, set()
        return revoked

    def assigned(self) -> int:
        return len(self.consumer.assignment()) if self.consumer is not None else 0

    def group_stable(self) -> bool:
        """Whether the consumer is a settled member of its group (not mid-rebalance)."""
        if self.consumer is None:
            return False
        try:  # kafka-python has no public call for the member state
            return self.consumer._coordinator.state == MemberState.STABLE
        except AttributeError:
            return True

    def broker_reachable(self) -> bool:
        if self.consumer is None:
            return False
        try:  # kafka-python has no public "connected to any broker" call
            client = self.consumer._client
            return any(client.connected(b.node_id) for b in client.cluster.brokers())
        except Exception:
            return False

    def keepalive(self) -> None:
        """Stay in the group while a batch is being retried: poll with nothing to fetch.
        Best effort: the retry goes on whatever this poll meets (the next poll reports it)."""
        if self.consumer is None:
            return
        parts = self.consumer.assignment()
        try:
            self.consumer.pause(*parts)
            try:
                self.consumer.poll(timeout_ms=0)
            finally:
                self.consumer.resume(*parts)
        except ClientError as e:
            log.debug("keepalive poll failed: %s", e)

    def close(self) -> None:
        if self.consumer is not None:
            owned = self.consumer.assignment()
            with self._commit_lock:
                newest = {tp: o for tp, o in self._newest.items() if tp in owned}
                self._newest, self._unsent, self._commit_in_flight = {}, {}, False
            try:
                if newest:  # the async commits may still be in flight: make sure of them
                    self.consumer.commit(newest)
            except ClientError as e:  # CommitFailedError among them: the group moved on
                log.warning("final commit failed; the owner replays from the one before: %s", e)
            try:
                self.consumer.close(autocommit=False)  # leaves the group promptly
            except ClientError as e:
                log.warning("closing the consumer: %s", e)
            self.consumer = None


class KafkaDelivery(Delivery):
    """One batch's records on their way to the broker, as kafka-python's futures;
    `KafkaSink.wait` awaits them."""

    def __init__(self, records: list[Outgoing]):
        super().__init__(records)  # acked_at: now, until an acknowledgement comes
        self.futures: list[Any] = []
        self.error: KafkaError | None = None  # a send that failed before reaching a future

    def _acked(self, _: object) -> None:  # on the producer's IO thread
        self.acked_at = time.time()

    def done(self) -> bool:
        return self.error is not None or all(f.is_done for f in self.futures)


class KafkaSink:
    """Sends a batch's records without waiting; `wait` returns once all are acknowledged.

    The loop sends one batch, then polls, decodes and scores the next while the broker
    acknowledges it: the round trip overlaps the work instead of adding to it."""

    def __init__(self, settings: Settings):
        self.settings = settings.kafka
        self.timeout_s = self.settings.delivery_timeout_ms / 1000.0
        self.producer = self._producer()

    def _producer(self) -> KafkaProducer:
        """A new producer: KafkaError if it cannot bootstrap, ConfigError if kafka-python
        refuses its configuration or the broker its security settings."""
        k = self.settings
        _refused.cause = None
        try:
            return KafkaProducer(
                **client_config(k),
                acks="all",
                enable_idempotence=True,  # retries never duplicate or reorder a key's events
                linger_ms=2,
                batch_size=256 * 1024,
                max_in_flight_requests_per_connection=5,
                delivery_timeout_ms=k.delivery_timeout_ms,
                retries=2**31 - 1,
            )
        except ClientError as e:
            raise _neutral(e, k) from e

    def send(self, records: list[Outgoing]) -> KafkaDelivery:
        d = KafkaDelivery(records)
        try:
            for r in records:
                f = self.producer.send(r.topic, value=r.value, key=r.key, headers=r.headers)
                f.add_callback(d._acked)
                d.futures.append(f)
        except ClientError as e:  # also a closed producer's IllegalStateError
            d.error = KafkaError(str(e))
        return d

    def wait(self, d: Delivery) -> None:
        """Raise PublishError unless every record of `d` is acknowledged."""
        assert isinstance(d, KafkaDelivery)
        try:
            self._wait(d)
        except PublishError as e:
            # After some refusals (record too large, not authorised) kafka-python's idempotent
            # producer stays in a fatal state and fails every later send: start afresh.
            self.close()
            try:
                self.producer = self._producer()
            except KafkaError as restart:
                # No broker to bootstrap from (an outage): the closed producer fails the
                # next send at once, and the next wait starts afresh again.
                raise PublishError(f"{e}; the producer could not restart: {restart}") from e
            raise

    def _wait(self, d: KafkaDelivery) -> None:
        if d.error is not None:
            raise PublishError(f"publishing failed: {d.error}")
        if not d.done():
            try:
                self.producer.flush(timeout=self.timeout_s)
            except ClientError as e:
                raise PublishError(f"publishing failed: {e}") from e
        failed = [f for f in d.futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "not acknowledged in time"
            raise PublishError(
                f"{len(failed)} of {len(d.futures)} records not acknowledged: {first}"
            )

    def close(self) -> None:
        try:
            self.producer.close(timeout=5)
        except ClientError as e:
            log.warning("closing the producer: %s", e)


class KafkaReader:
    """Reads offset ranges of partitions outside any consumer group (no group id: nothing
    is ever committed, and the detectors' group is never disturbed)."""

    def __init__(self, settings: Settings):
        k = settings.kafka
        _refused.cause = None
        try:
            self.consumer = KafkaConsumer(
                **client_config(k),
                group_id=None,  # never the detectors' group; nothing is committed
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # a range partly gone to retention: what is left
                max_poll_records=5_000,
                max_partition_fetch_bytes=4 * 1024 * 1024,
            )
        except ClientError as e:
            raise _neutral(e, k) from e

    def partitions(self, topics: list[str]) -> list[TopicPartition]:
        try:
            return [
                TopicPartition(t, p)
                for t in topics
                for p in sorted(self.consumer.partitions_for_topic(t) or ())
            ]
        except ClientError as e:
            raise _neutral(e) from e

    def topics_matching(self, pattern: str) -> list[str]:
        try:
            topics = self.consumer.topics()  # internal topics left out
        except ClientError as e:
            raise _neutral(e) from e
        return sorted(t for t in topics if re.fullmatch(pattern, t))

    def offsets_for_time(self, tps: list[TopicPartition], ms: int) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        try:
            found = self.consumer.offsets_for_times({_client(tp): ms for tp in tps})
        except ClientError as e:
            raise _neutral(e) from e
        # None: no record at or after `ms` (or none at all): the partition's end.
        out = {tp: found[_client(tp)] for tp in tps}
        end = self.end_offsets([tp for tp, o in out.items() if o is None])
        return {tp: end[tp] if o is None else o.offset for tp, o in out.items()}

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        try:
            end = self.consumer.end_offsets([_client(tp) for tp in tps])
        except ClientError as e:
            raise _neutral(e) from e
        return {_ours(tp): o for tp, o in end.items()}

    def read(
        self, ranges: dict[TopicPartition, tuple[int, int]], max_batch: int = 5_000
    ) -> Iterator[Batch]:
        """The records of each partition in [start, end), a batch per poll (at most
        `max_batch` records; offset order within a partition), until every partition
        reached its end."""
        c = self.consumer
        todo = {_client(tp): r for tp, r in ranges.items() if r[1] > r[0]}
        if not todo:
            return
        try:
            c.assign(list(todo))
            for tp, (start, _) in todo.items():
                c.seek(tp, start)
            while todo:
                records: list[Any] = []
                for tp, recs in c.poll(timeout_ms=1000, max_records=max_batch).items():
                    if tp not in todo:
                        continue
                    stop = todo[tp][1]
                    records += (
                        recs if recs[-1].offset < stop else [r for r in recs if r.offset < stop]
                    )
                if records:
                    yield Batch(records, KAFKA_PYTHON)
                # Also partitions that returned nothing: retention may have moved them past
                # `stop`.
                done = [tp for tp, (_, stop) in todo.items() if c.position(tp) >= stop]
                if done:
                    for tp in done:
                        todo.pop(tp)
                    # Fetch no more of them. Not by pausing: kafka-python 3.0 parks what
                    # it fetched for a paused partition, and a later seek of it (the next
                    # read of the same partition) then never fetches again.
                    c.assign(list(todo))
        except ClientError as e:
            raise _neutral(e) from e

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False)
        except ClientError as e:
            log.warning("closing the reader: %s", e)
