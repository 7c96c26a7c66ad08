"""The detector's loop: poll → decode → derive → score → decide → publish → commit.

At-least-once: a batch's offsets are committed only after every anomaly event, dead-letter
record and score record of that batch has been acknowledged by the broker. A crash
anywhere before that replays the batch; event ids make the replays recognisable.

One batch is in flight at a time: while the broker acknowledges batch N, the loop polls,
decodes and scores batch N+1, and sends N+1's records only after N is acknowledged and
committed, so a key's events keep their order and a failed batch is retried alone.

Every side effect goes through the source and the sink (`detector.kafka`'s contracts), so
the loop runs the same on librdkafka, kafka-python or `detector.kafka.memory`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from detector.app.live import LiveModel, reference_of
from detector.app.publish import Decided, records_of
from detector.errors import ConfigError, KafkaError, PublishError
from detector.features.behaviour import BehaviourState
from detector.features.decode import Decoded, decode_batch, event_times, kafka_times
from detector.features.windows import Windows
from detector.kafka import Batch, BatchSink, BatchSource, Delivery, TopicPartition
from detector.model.scorer import Scorer, Scores, decide
from detector.model.watcher import ModelWatcher
from detector.ops.http import Health
from detector.ops.metrics import Metrics
from detector.ops.settings import Settings
from detector.state.episodes import Episodes, Transition
from detector.state.snapshot import BehaviourSnapshots
from detector.state.windows import EntityState

__all__ = ["Detector", "InFlight", "Stopped"]

log = logging.getLogger(__name__)


class Stopped(Exception):
    """Shutdown was asked for while a batch was still unpublished: leave it uncommitted."""


@dataclass(frozen=True)
class InFlight:
    """A decided batch whose records were sent; committed once they are acknowledged."""

    decided: Decided
    delivery: Delivery
    started: float  # perf_counter when the batch was polled


class Detector:
    """Batch by batch; every side effect goes through `source` and `sink`."""

    def __init__(
        self,
        settings: Settings,
        live: LiveModel,
        source: BatchSource,
        sink: BatchSink,
        metrics: Metrics,
        health: Health,
        stop: threading.Event,
        watcher: ModelWatcher | None = None,
    ):
        self.settings, self.source, self.sink = settings, source, sink
        self.metrics, self.health, self.stop = metrics, health, stop
        self.watcher = watcher
        self.in_flight: InFlight | None = None
        self._unstable_since: float | None = None
        a, st = settings.alerts, settings.state
        self.episodes = Episodes(a.k, a.n, a.close_after, a.continue_every, st.max_entities)
        self.snapshots = BehaviourSnapshots(st.snapshot_path, st.snapshot_every_s)
        self.windows: EntityState | None = None
        self.behaviour: BehaviourState | None = None
        self._evicted_seen = 0
        self.live = live
        self._go_live(live, previous=None)
        if live.shadow is not None:
            sm = live.shadow.bundle.manifest
            metrics.shadow_info.labels(sm.name, sm.version).set(1)
            metrics.shadow_threshold.set(live.shadow.threshold)
            metrics.recent.forget("shadow", reference_of(live.shadow, live.shadow.threshold))

    # -- the loop ------------------------------------------------------------------------
    def step(self) -> int:
        """One turn: what must happen between batches, then at most one batch."""
        self.between_batches()
        if not self.source.connected:  # a rejoin that could not connect: try again
            self._reconnect()
            return 0
        batch = self.poll()
        self._report_health()
        if batch:
            self.process(batch)
            return len(batch)
        self.settle()
        if not self.health.broker_reachable:
            # kafka-python's poll returns at once without a broker: don't spin, back off.
            self.stop.wait(0.5)
        return 0

    def process(self, batch: Batch) -> None:
        """Decide `batch`, settle the batch before it, then send this one's records."""
        started, live = time.perf_counter(), self.live
        decoded = decode_batch(batch.values, live.mapping)
        event_ms = event_times(decoded, batch.timestamps)
        inputs, decoded, event_ms = self.derive(batch, decoded, event_ms)
        scores = self.score(inputs, decoded)
        raw_keys = decoded.keys if decoded.keys is not None else batch.column("key", decoded.index)
        decided = Decided(
            batch, decoded, event_ms, scores, decide(scores, live.threshold, top_k=0), raw_keys
        )
        transitions = self.decide_episodes(decided)
        records = records_of(
            decided,
            transitions,
            live,
            self.settings.topics,
            self.settings.model.top_features,
            now_ms=time.time() * 1000.0,
        )
        if self.watcher is not None:
            self.watcher.observe(batch.values)
        self.settle()  # raises Stopped if shutdown comes while the batch before is retried
        self.in_flight = InFlight(decided, self.sink.send(records), started)

    def settle(self) -> None:
        """Wait until the batch in flight is acknowledged (retrying it if need be), commit its
        offsets and record it. Raises Stopped if shutdown comes first: nothing is committed."""
        f = self.in_flight
        if f is None:
            return
        delivery = self._await(f.delivery)
        self.in_flight = None
        last = f.decided.batch.last_offsets()
        try:
            self.source.commit(last)
        except KafkaError as e:
            # The group moved on (rebalance): the new owner replays from the last commit.
            self.metrics.kafka_errors.labels("commit").inc()
            log.warning("commit failed, the batch will be replayed by the partition's owner: %s", e)
            return
        self._record(replace(f, delivery=delivery), last)

    def finish(self) -> None:
        """At shutdown: the last batch in flight acknowledged and committed, state written."""
        self.settle()
        self.snapshots.maybe_write(self.behaviour, force=True)

    # -- the stages ----------------------------------------------------------------------
    def between_batches(self) -> None:
        """Commits, snapshots, revoked partitions and model swaps: never mid-batch."""
        if self.in_flight is not None and self.in_flight.delivery.done():
            self.settle()  # acknowledged already: commit before anything else happens
        self.source.flush_commits()  # offsets waiting for the commit in flight to answer
        self.snapshots.maybe_write(self.behaviour)
        if revoked := self.source.take_revoked():
            self._forget_partitions({(tp.topic, tp.partition) for tp in revoked})
        if self.watcher is not None and (candidate := self.watcher.take()) is not None:
            self.swap(candidate)
        self._watch_rebalance()

    def poll(self) -> Batch | None:
        b = self.settings.batch
        try:
            return self.source.poll_batch(b.max_size, b.max_wait_ms)
        except KafkaError as e:
            self.metrics.kafka_errors.labels("poll").inc()
            log.warning("poll failed: %s", e)
            self.stop.wait(1.0)
            return None

    def derive(
        self, batch: Batch, decoded: Decoded, event_ms: np.ndarray
    ) -> tuple[np.ndarray | Windows, Decoded, np.ndarray]:
        """The model's inputs, and the decoded rows and event times they decide: behaviour
        features beside the payload's, then windows for windowed models (warm-up and late
        rows drop out there: counted, never dead-lettered)."""
        decoded = self._with_behaviour(decoded, event_ms)
        if self.windows is None:
            return decoded.x, decoded, event_ms
        return self._windowed(batch, decoded, event_ms)

    def score(self, inputs: np.ndarray | Windows, decoded: Decoded) -> Scores:
        t0 = time.perf_counter()
        scores = self.live.scorer.score(inputs)
        self.metrics.inference.observe(time.perf_counter() - t0)
        if self.live.shadow is not None:
            self._score_shadow(inputs, decoded)
        return scores

    def decide_episodes(self, d: Decided) -> list[Transition]:
        """Alarm persistence: the rows that open, continue or close an episode."""

        def source_of(j: int) -> tuple[str, int, int]:
            return d.batch.position(d.decoded.index[j])

        transitions = self.episodes.update(d.decisions.anomaly, d.event_ms, d.raw_keys, source_of)
        for state, n in Counter(tr.state for tr in transitions).items():
            self.metrics.alert_events.labels(state).inc(n)
        return transitions

    def swap(self, candidate: Scorer) -> None:
        """Make `candidate` live, between two batches: each batch is one model's."""
        old = self.live
        shadow = old.shadow
        try:
            live = LiveModel.of(candidate, old.mapping, self.settings.model.threshold, shadow)
        except ConfigError as e:
            log.warning("the shadow model no longer fits the live one, dropped: %s", e)
            live = LiveModel.of(candidate, old.mapping, self.settings.model.threshold)
        self.live = live
        self._go_live(live, previous=old)
        log.info("model swapped: %s -> %s", old.version, live.version)

    # -- helpers -------------------------------------------------------------------------
    def _go_live(self, live: LiveModel, previous: LiveModel | None) -> None:
        """Per-entity state for `live`: kept from `previous` when its layout is the same
        (window and features for window buffers, the spec for behaviour state)."""
        st, layout = self.settings.state, live.layout
        same = previous is not None and previous.layout
        if layout.window == 1:
            self.windows = None
        elif not same or (same.window, same.features) != (layout.window, layout.features):
            self.windows = EntityState(
                layout.window, len(layout.features), st.max_entities, st.idle_ttl_s
            )
            self._evicted_seen = 0
        if layout.behaviour is None:
            self.behaviour = None
        elif not same or same.behaviour != layout.behaviour or self.behaviour is None:
            self.behaviour = self.snapshots.restore(layout.behaviour)  # a new spec: afresh
        self.metrics.set_model(live.name, live.version, live.scorer.provider, live.threshold)
        self.metrics.recent.forget("live", live.reference())

    def _forget_partitions(self, gone: set[tuple[str, int]]) -> None:
        self.episodes.drop_partitions(gone)
        if self.windows is not None:
            dropped = self.windows.drop_partitions(gone)
            log.info("dropped the window state of %d entities of revoked partitions", dropped)

    def _with_behaviour(self, decoded: Decoded, event_ms: np.ndarray) -> Decoded:
        """Derive the model's behaviour features from per-entity state (the trainer's own
        implementation, `detector.features.behaviour`) and put them beside the payload's,
        in the model's feature order. A row without an event time counts as now."""
        live = self.live
        if self.behaviour is None or decoded.entities is None:
            return decoded
        spec, payload = self.behaviour.spec, list(live.mapping.features)
        values = {f: decoded.x[:, payload.index(f)].astype(np.float64) for f in spec.fields()}
        t = np.where(np.isfinite(event_ms), event_ms, time.time() * 1000.0)
        derived = self.behaviour.update(decoded.entities, t, values)
        x = np.empty((len(decoded.x), len(live.features)), dtype=np.float32)
        x[:, live.from_payload] = decoded.x
        x[:, live.derived] = derived
        self.metrics.entities.set(len(self.behaviour))
        return replace(decoded, x=x)

    def _windowed(
        self, batch: Batch, decoded: Decoded, event_ms: np.ndarray
    ) -> tuple[Windows, Decoded, np.ndarray]:
        assert self.windows is not None
        idx, keys = decoded.index, decoded.keys
        if keys is None:
            keys = [
                k.decode("utf-8", "replace") if k is not None else None
                for k in batch.column("key", idx)
            ]
        w = self.windows.windows(
            batch.column("topic", idx),
            np.array(batch.column("partition", idx), dtype=np.int64),
            keys,
            event_ms,
            decoded.x,
        )
        m = self.metrics
        m.warmup.inc(w.warmup)
        m.late.inc(w.late)
        m.entities.set(len(self.windows))
        m.evictions.inc(self.windows.evicted - self._evicted_seen)
        self._evicted_seen = self.windows.evicted
        sub = Decoded(
            x=decoded.x[w.rows],
            index=idx[w.rows],
            keys=[keys[r] for r in w.rows] if decoded.keys is not None else None,
            times_ms=decoded.times_ms[w.rows] if decoded.times_ms is not None else None,
            rejects=decoded.rejects,
        )
        return w.windows, sub, event_ms[w.rows]

    def _score_shadow(self, inputs: np.ndarray | Windows, decoded: Decoded) -> None:
        """The candidate scores the same rows; it publishes nothing, only metrics."""
        shadow, order = self.live.shadow, self.live.shadow_order
        assert shadow is not None and order is not None
        if isinstance(inputs, Windows):  # windowed models have no categorical features
            x: np.ndarray | Windows = replace(inputs, rows=inputs.rows[:, order])
        else:
            x = inputs[..., order]
            if shadow.bundle.encoders and decoded.categories:  # its own codes
                for enc in shadow.bundle.encoders:
                    x[:, shadow.features.index(enc.name)] = enc.encode(decoded.categories[enc.name])
        s = shadow.score(x).score
        m = self.metrics
        m.shadow_scored.inc(len(s))
        m.shadow_anomalies.inc(int((s > shadow.threshold).sum()))
        m.shadow_scores.observe_many(s)
        m.recent.observe_many("shadow", s)

    def _await(self, delivery: Delivery) -> Delivery:
        """Block until `delivery` is acknowledged, sending its records again (with backoff)
        while the broker refuses them; returns the delivery that was acknowledged."""
        backoff = 0.25
        while True:
            try:
                self.sink.wait(delivery)
                return delivery
            except PublishError as e:
                self.metrics.kafka_errors.labels("publish").inc()
                self.metrics.publish_retries.inc()
                self.health.reason = f"publishing failed, retrying: {e}"
                log.warning("%s; retrying in %.2fs (batch not committed)", e, backoff)
            if self.stop.wait(backoff):
                raise Stopped("shutdown while retrying a batch; it stays uncommitted")
            backoff = min(backoff * 2, 10.0)
            self.source.keepalive()
            self.health.beat()
            delivery = self.sink.send(delivery.records)

    def _reconnect(self) -> None:
        self._report_health()
        try:
            self.source.connect()
        except KafkaError as e:
            self.metrics.kafka_errors.labels("connect").inc()
            log.warning("cannot reconnect to Kafka (%s); retrying", e)
            self.stop.wait(2.0)

    def _watch_rebalance(self) -> None:
        """A member stuck mid-rebalance for longer than kafka.rejoin_timeout_s (seen with
        kafka-python when a rebalance follows right after a join) rejoins as a new member.
        Between batches, so nothing uncommitted is in hand."""
        now = time.monotonic()
        if not self.source.connected or self.source.group_stable():
            self._unstable_since = None
            return
        if self._unstable_since is None:
            self._unstable_since = now
            return
        if now - self._unstable_since < self.settings.kafka.rejoin_timeout_s:
            return
        log.warning(
            "group membership not settled for %.0f s; rejoining as a new member",
            now - self._unstable_since,
        )
        self.metrics.kafka_errors.labels("rebalance").inc()
        self._unstable_since = now
        self.settle()
        self.source.close()  # the next step connects again, as a new member

    def _record(self, f: InFlight, last: dict[TopicPartition, int]) -> None:
        """Metrics of a committed batch."""
        m, d = self.metrics, f.decided
        for topic, n in d.batch.topic_counts().items():
            m.consumed.labels(topic).inc(n)
        m.scored.inc(len(d.decoded.index))
        m.anomalies.inc(int(d.decisions.anomaly.sum()))
        for reason, n in Counter(r.reason for r in d.decoded.rejects).items():
            m.invalid.labels(reason).inc(n)
        t = self.settings.topics
        kinds = Counter(
            "event" if o.topic == t.anomalies else "dlq" if o.topic == t.dlq else "score"
            for o in f.delivery.records
        )
        for kind, n in kinds.items():
            m.published.labels(kind).inc(n)
        # Decided = its records acknowledged (scored, for a batch with nothing to publish).
        since = d.event_ms
        if self.settings.payload.latency_from == "kafka_timestamp":
            since = kafka_times(d.decoded, d.batch.timestamps)
        m.latency.observe_many((f.delivery.acked_at * 1000.0 - since) / 1000.0)
        m.scores.observe_many(d.scores.score)
        m.recent.observe_many("live", d.scores.score)
        m.severity.observe_many(d.decisions.severity)
        self._count_entities(d)
        m.batch_size.observe(len(d.batch))
        m.batch_seconds.observe(time.perf_counter() - f.started)
        m.last_batch.set(time.time())
        for tp, lag in self.source.lag(last).items():
            m.lag.labels(tp.topic, str(tp.partition)).set(lag)
        self.health.reason = "serving"

    def _count_entities(self, d: Decided) -> None:
        """Anomalous messages per entity, for the dashboard's top lists."""
        rows = np.flatnonzero(d.decisions.anomaly)
        if len(rows) == 0:
            return
        now, fields = time.time(), d.decoded.entities or {}
        if self.live.mapping.key_field not in fields:  # the key names an entity of its own
            self.metrics.top_entities.add("key", d.keys(rows.tolist()), now)
        for field, values in fields.items():
            self.metrics.top_entities.add(field, [values[j] for j in rows], now)

    def _report_health(self) -> None:
        h = self.health
        h.beat()
        h.broker_reachable = self.source.broker_reachable()
        h.partitions_assigned = self.source.assigned()
        self.metrics.assigned.set(h.partitions_assigned)
        self.metrics.ready.set(1 if h.ready() else 0)
        if not h.broker_reachable:
            h.reason = "broker unreachable"
        elif not h.partitions_assigned:
            h.reason = "waiting for partition assignment"
