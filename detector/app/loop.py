"""The detector's loop: poll → decode → score → publish → wait for acks → commit.

At-least-once: a batch's offsets are committed only after every anomaly event, dead-letter
record and score record of that batch has been acknowledged by the broker. A crash
anywhere before that replays the batch; event ids make the replays recognisable.

One batch is in flight at a time: while the broker acknowledges batch N, the loop polls,
decodes and scores batch N+1, and sends N+1's records only after N is acknowledged and
committed, so a key's events keep their order and a failed batch is retried alone.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import orjson
from kafka.errors import CommitFailedError, KafkaConfigurationError, KafkaError

from detector.contract.behaviour import BehaviourSpec
from detector.contract.bundle import load_bundle
from detector.contract.events import (
    CONTENT_TYPE,
    EventRows,
    Source,
    dlq_headers,
    iso_ms_many,
    make_events,
    make_score_records,
)
from detector.errors import ConfigError, PublishError
from detector.features.behaviour import BehaviourState
from detector.features.decode import (
    Decoded,
    decode_batch,
    entity_key,
    event_times,
    kafka_times,
)
from detector.features.windows import Windows
from detector.kafka import (
    BatchSink,
    BatchSource,
    Delivery,
    Outgoing,
    TopicPartition,
    open_sink,
    open_source,
)
from detector.kafka.batch import Batch
from detector.model.registry import resolve
from detector.model.scorer import Decisions, Scorer, Scores, decide, top_features
from detector.model.watcher import ModelWatcher, mapping_for, mapping_with
from detector.ops.http import Health, HttpServer
from detector.ops.metrics import Metrics, Reference
from detector.ops.notify import Notifier
from detector.ops.settings import Settings
from detector.state.episodes import Episodes
from detector.state.windows import EntityState

__all__ = ["Detector", "run"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stopped(Exception):
    """Shutdown was asked for while a batch was still unpublished: leave it uncommitted."""


def reference_of(scorer: Scorer, threshold: float) -> Reference:
    """What the drift and alert-ratio gauges compare a model's recent scores with. An
    overridden threshold has no calibrated alarm rate."""
    m = scorer.bundle.manifest
    calibrated = m.validation.get("calibration_alarm_rate")
    return Reference(
        threshold, calibrated if threshold == scorer.threshold else None, m.score_reference
    )


@dataclass
class InFlight:
    """A scored batch whose records were sent; committed once they are acknowledged."""

    batch: Batch
    decoded: Decoded
    scores: Scores
    decisions: Decisions
    event_ms: np.ndarray
    delivery: Delivery
    started: float


class Detector:
    """Batch by batch; every side effect goes through `source` and `sink`."""

    def __init__(
        self,
        settings: Settings,
        scorer: Scorer,
        source: BatchSource,
        sink: BatchSink,
        metrics: Metrics,
        health: Health,
        stop: threading.Event,
        watcher: ModelWatcher | None = None,
        shadow: Scorer | None = None,
    ):
        self.settings, self.source, self.sink = settings, source, sink
        self.metrics, self.health, self.stop = metrics, health, stop
        self.watcher, self.shadow = watcher, shadow
        self._unstable_since: float | None = None
        self.in_flight: InFlight | None = None
        a = settings.alerts
        self.episodes = Episodes(
            a.k, a.n, a.close_after, a.continue_every, settings.state.max_entities
        )
        self.mapping = mapping_for(settings, scorer.bundle)
        self._serve(scorer)
        if shadow is not None:
            missing = set(self.scorer.features) ^ set(shadow.features)
            if missing:
                raise ConfigError(
                    f"the shadow model's features differ from the live model's: {sorted(missing)[:5]}"
                )
            live = self.scorer.bundle.manifest.categorical or {}
            if numeric := set(shadow.bundle.manifest.categorical or {}) - set(live):
                raise ConfigError(
                    f"the shadow model reads {sorted(numeric)} as categorical, the live model "
                    "as numbers: shadow-score a model with the same kinds of features"
                )
            sm = shadow.bundle.manifest
            metrics.shadow_info.labels(sm.name, sm.version).set(1)
            metrics.shadow_threshold.set(shadow.threshold)
            metrics.recent.forget("shadow", reference_of(shadow, shadow.threshold))

    def _serve(self, scorer: Scorer) -> None:
        """Make `scorer` the live model. Called at start and between two batches.
        Entity state survives a swap when window and features are unchanged."""
        old = getattr(self, "scorer", None)
        keep = (
            old is not None
            and old.window == scorer.window
            and list(old.features) == list(scorer.features)
        )
        if scorer.window == 1:
            self.state = None
        elif not keep or self.state is None:
            st = self.settings.state
            self.state = EntityState(
                scorer.window, len(scorer.features), st.max_entities, st.idle_ttl_s
            )
            self._evicted_seen = 0
        spec = scorer.bundle.manifest.behaviour
        if spec is None:
            self.behaviour = None
        elif old is None or old.bundle.manifest.behaviour != spec or self.behaviour is None:
            self.behaviour = self._restore(spec)  # a new spec: its state starts afresh
        if spec is not None:
            m = scorer.bundle.manifest
            self._from_payload = np.array([m.features.index(f) for f in m.payload_features])
            self._derived = np.array([m.features.index(f) for f in spec.names()])
        self.scorer = scorer
        self.mapping = mapping_with(self.mapping, scorer.bundle)
        self.threshold = self.settings.model.threshold or scorer.threshold
        m = scorer.bundle.manifest
        self.model_id = (m.name, m.version)
        self.metrics.set_model(m.name, m.version, scorer.provider, self.threshold)
        self.metrics.recent.forget("live", reference_of(scorer, self.threshold))
        if self.shadow is not None:
            self._shadow_order = np.array([scorer.features.index(f) for f in self.shadow.features])

    # -- the loop ------------------------------------------------------------------------
    def step(self) -> int:
        if self.in_flight is not None and self.in_flight.delivery.done():
            self.settle()  # acknowledged already: commit before anything else happens
        self.source.flush_commits()  # offsets waiting for the commit in flight to answer
        self.snapshot()
        revoked = self.source.take_revoked()
        if revoked:
            gone = {(tp.topic, tp.partition) for tp in revoked}
            self.episodes.drop_partitions(gone)
            if self.state is not None:
                dropped = self.state.drop_partitions(gone)
                log.info("dropped the window state of %d entities of revoked partitions", dropped)
        if self.watcher is not None:
            candidate = self.watcher.take()
            if candidate is not None:
                old = self.model_id[1]
                self._serve(candidate)  # between two batches: each batch is one model's
                log.info("model swapped: %s -> %s", old, self.model_id[1])
        self._watch_rebalance()
        if not self.source.connected:  # a rejoin that could not connect: try again
            self._report_health()
            try:
                self.source.connect()
            except KafkaError as e:
                self.metrics.kafka_errors.labels("connect").inc()
                log.warning("cannot reconnect to Kafka (%s); retrying", e)
                self.stop.wait(2.0)
            return 0
        b = self.settings.batch
        try:
            batch = self.source.poll_batch(b.max_size, b.max_wait_ms)
        except KafkaError as e:
            self.metrics.kafka_errors.labels("poll").inc()
            log.warning("poll failed: %s", e)
            self.stop.wait(1.0)
            batch = []
        self._report_health()
        if batch:
            self.process(batch)
        else:
            self.settle()
            if not self.health.broker_reachable:
                # kafka-python's poll returns at once without a broker: don't spin, back off.
                self.stop.wait(0.5)
        return len(batch)

    def process(self, batch: Batch) -> None:
        """Decode and score `batch`, settle the batch before it, then send this one's records."""
        started = time.perf_counter()
        values = batch.values
        decoded = decode_batch(values, self.mapping)
        event_ms = event_times(decoded, batch.timestamps)
        decoded = self._with_behaviour(decoded, event_ms)
        inputs, decoded, event_ms = self._windows(batch, decoded, event_ms)
        t0 = time.perf_counter()
        scores = self.scorer.score(inputs)
        self.metrics.inference.observe(time.perf_counter() - t0)
        decisions = decide(scores, self.threshold, top_k=0)  # ranked for events only
        if self.shadow is not None:
            self._score_shadow(inputs, decoded)
        if self.watcher is not None:
            self.watcher.observe(values)
        outgoing = self._outgoing(batch, decoded, scores, decisions, event_ms)
        self.settle()  # raises Stopped if shutdown comes while the batch before is retried
        delivery = self.sink.send(outgoing)
        self.in_flight = InFlight(batch, decoded, scores, decisions, event_ms, delivery, started)

    def settle(self) -> None:
        """Wait until the batch in flight is acknowledged (retrying it if need be), commit its
        offsets and record it. Raises Stopped if shutdown comes first: nothing is committed."""
        f = self.in_flight
        if f is None:
            return
        self._await(f.delivery)
        self.in_flight = None
        try:
            self.source.commit(last := f.batch.last_offsets())
        except (CommitFailedError, KafkaError) as e:
            # The group moved on (rebalance): the new owner replays from the last commit.
            self.metrics.kafka_errors.labels("commit").inc()
            log.warning("commit failed, the batch will be replayed by the partition's owner: %s", e)
            return
        self._record(f, last)

    # -- helpers -------------------------------------------------------------------------
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

    def _windows(
        self, batch: Batch, decoded: Decoded, event_ms: np.ndarray
    ) -> tuple[np.ndarray | Windows, Decoded, np.ndarray]:
        """Model inputs, and the decoded rows and event times they decide. Windowed models
        see windows from per-entity state; warm-up and late rows drop out here (counted,
        never dead-lettered)."""
        if self.state is None:
            return decoded.x, decoded, event_ms
        idx = decoded.index
        keys = decoded.keys
        if keys is None:
            keys = [
                k.decode("utf-8", "replace") if k is not None else None
                for k in batch.column("key", idx)
            ]
        w = self.state.windows(
            batch.column("topic", idx),
            np.array(batch.column("partition", idx), dtype=np.int64),
            keys,
            event_ms,
            decoded.x,
        )
        m = self.metrics
        m.warmup.inc(w.warmup)
        m.late.inc(w.late)
        m.entities.set(len(self.state))
        m.evictions.inc(self.state.evicted - self._evicted_seen)
        self._evicted_seen = self.state.evicted
        sub = Decoded(
            x=decoded.x[w.rows],
            index=idx[w.rows],
            keys=[keys[r] for r in w.rows] if decoded.keys is not None else None,
            times_ms=decoded.times_ms[w.rows] if decoded.times_ms is not None else None,
            rejects=decoded.rejects,
        )
        return w.windows, sub, event_ms[w.rows]

    def _payload_values(self, decoded: Decoded, j: int) -> dict[str, float | str]:
        """The message's own feature values (a payment's amount), for models whose other
        features are derived: the event then shows what was paid beside how it looked."""
        text = decoded.categories or {}
        return {
            f: text[f][j] if f in text else float(decoded.x[j, col])
            for f, col in zip(self.mapping.features, self._from_payload, strict=True)
        }

    def _count_entities(self, f: InFlight) -> None:
        """Anomalous messages per entity, for the dashboard's top lists."""
        rows = np.flatnonzero(f.decisions.anomaly)
        if len(rows) == 0:
            return
        now, d = time.time(), f.decoded
        fields = d.entities or {}
        if self.mapping.key_field not in fields:  # the key names an entity of its own
            raw = f.batch.column("key", d.index[rows])
            keys = [entity_key(d, j, k) for j, k in zip(rows.tolist(), raw, strict=True)]
            self.metrics.top_entities.add("key", keys, now)
        for field, values in fields.items():
            self.metrics.top_entities.add(field, [values[j] for j in rows], now)

    def _restore(self, spec: BehaviourSpec) -> BehaviourState:
        """The behaviour state of the last run, from its snapshot, if it fits `spec`."""
        self._snapshot_at = time.monotonic()
        path = self.settings.state.snapshot_path
        if path is None or not path.exists():
            return BehaviourState(spec)
        try:
            state = BehaviourState.load(spec, path)
        except (ValueError, OSError) as e:
            log.warning("behaviour snapshot %s not used, starting afresh: %s", path, e)
            return BehaviourState(spec)
        log.info("behaviour state restored from %s: %d entities", path, len(state))
        return state

    def snapshot(self, force: bool = False) -> None:
        """Write the behaviour state when it is due (or `force`); exact at shutdown, when no
        batch is in flight, so a restart neither forgets cards nor counts one twice."""
        path = self.settings.state.snapshot_path
        if self.behaviour is None or path is None:
            return
        every = self.settings.state.snapshot_every_s
        if not force and time.monotonic() - self._snapshot_at < every:
            return
        self._snapshot_at = time.monotonic()
        try:
            self.behaviour.save(path)
        except OSError as e:
            log.warning("cannot write the behaviour snapshot %s: %s", path, e)

    def _with_behaviour(self, decoded: Decoded, event_ms: np.ndarray) -> Decoded:
        """Derive the model's behaviour features from per-entity state (detector/features/behaviour.py,
        the trainer's own implementation) and put them beside the payload's, in the model's
        feature order. A row without an event time counts as now."""
        if self.behaviour is None or decoded.entities is None:
            return decoded
        spec = self.behaviour.spec
        payload = list(self.mapping.features)
        values = {f: decoded.x[:, payload.index(f)].astype(np.float64) for f in spec.fields()}
        t = np.where(np.isfinite(event_ms), event_ms, time.time() * 1000.0)
        derived = self.behaviour.update(decoded.entities, t, values)
        x = np.empty((len(decoded.x), len(self.scorer.features)), dtype=np.float32)
        x[:, self._from_payload] = decoded.x
        x[:, self._derived] = derived
        self.metrics.entities.set(len(self.behaviour))
        return replace(decoded, x=x)

    def _score_shadow(self, inputs: np.ndarray | Windows, decoded: Decoded) -> None:
        """The candidate scores the same rows; it publishes nothing, only metrics."""
        assert self.shadow is not None
        order = self._shadow_order
        if isinstance(inputs, Windows):  # windowed models have no categorical features
            x: np.ndarray | Windows = replace(inputs, rows=inputs.rows[:, order])
        else:
            x = inputs[..., order]
            if self.shadow.bundle.encoders and decoded.categories:  # its own codes
                for enc in self.shadow.bundle.encoders:
                    x[:, self.shadow.features.index(enc.name)] = enc.encode(
                        decoded.categories[enc.name]
                    )
        s = self.shadow.score(x).score
        self.metrics.shadow_scored.inc(len(s))
        self.metrics.shadow_anomalies.inc(int((s > self.shadow.threshold).sum()))
        self.metrics.shadow_scores.observe_many(s)
        self.metrics.recent.observe_many("shadow", s)

    def _outgoing(
        self,
        batch: Batch,
        decoded: Decoded,
        scores: Scores,
        decisions: Decisions,
        event_ms: np.ndarray,
    ) -> list[Outgoing]:
        t = self.settings.topics
        version = self.model_id[1]
        headers = [("content-type", CONTENT_TYPE), ("vigil.model.version", version.encode())]
        out: list[Outgoing] = []
        now_ms = time.time() * 1000.0

        def source_of(j: int) -> tuple[str, int, int]:
            return batch.position(decoded.index[j])

        raw_keys = decoded.keys if decoded.keys is not None else batch.column("key", decoded.index)
        transitions = self.episodes.update(decisions.anomaly, event_ms, raw_keys, source_of)
        for state, n in Counter(tr.state for tr in transitions).items():
            self.metrics.alert_events.labels(state).inc(n)
        if transitions:
            rows = np.array([tr.row for tr in transitions], dtype=np.int64)
            keys = [entity_key(decoded, j, raw_keys[j]) for j in rows.tolist()]
            started = [np.nan if tr.started_ms is None else tr.started_ms for tr in transitions]
            episodes: list[dict[str, object]] = [
                {"id": tr.episode_id, "state": tr.state, "started_at": at, "alarms": tr.alarms}
                for tr, at in zip(transitions, iso_ms_many(np.array(started)), strict=True)
            ]
            events = make_events(
                self._event_rows(batch, decoded, scores, event_ms, rows, keys, episodes),
                detected_ms=now_ms,
                model=self.model_id,
                threshold=self.threshold,
                features=self.scorer.features,
            )
            out += [
                Outgoing(t.anomalies, _encoded(key), orjson.dumps(event), headers)
                for event, key in zip(events, keys, strict=True)
            ]
        for rej in decoded.rejects:
            r = batch[rej.index]
            src = Source.of(r)
            out.append(
                Outgoing(
                    t.dlq,
                    r.key,
                    r.value or b"",
                    dlq_headers(r.headers, src, rej.reason, rej.detail, version),
                )
            )
        if t.scores:  # a record per message: positions and keys only, no full Record
            keys = [entity_key(decoded, j, k) for j, k in enumerate(raw_keys)]
            values = make_score_records(
                sources=_sources(batch, decoded.index),
                keys=keys,
                event_time_ms=event_ms,
                model_version=version,
                score=scores.score,
                threshold=self.threshold,
                anomaly=decisions.anomaly,
            )
            out += [
                Outgoing(t.scores, _encoded(key), value, headers)
                for key, value in zip(keys, values, strict=True)
            ]
        return out

    def _event_rows(
        self,
        batch: Batch,
        decoded: Decoded,
        scores: Scores,
        event_ms: np.ndarray,
        rows: np.ndarray,
        keys: list[str | None],
        episodes: list[dict[str, object]],
    ) -> EventRows:
        """The columns of the decided rows `rows` that publish an event."""
        rows_list = rows.tolist()
        top, share = top_features(scores.feature_error[rows], self.settings.model.top_features)
        entities = categorical = payload = None
        if decoded.entities:
            entities = [{e: v[j] for e, v in decoded.entities.items()} for j in rows_list]
        if decoded.categories:
            cats, coded = decoded.categories, self.mapping.categorical
            categorical = [{e.name: (cats[e.name][j], e.spec) for e in coded} for j in rows_list]
        if self.behaviour is not None:
            payload = [self._payload_values(decoded, j) for j in rows_list]
        return EventRows(
            sources=_sources(batch, decoded.index[rows]),
            keys=keys,
            event_time_ms=event_ms[rows],
            score=scores.score[rows],
            observed=decoded.x[rows],
            expected=scores.reconstruction[rows],
            top_index=top,
            top_share=share,
            episodes=episodes,
            entities=entities,
            categorical=categorical,
            payload=payload,
        )

    def _await(self, delivery: Delivery) -> None:
        """Block until `delivery` is acknowledged, sending its records again (with backoff)
        while the broker refuses them."""
        backoff = 0.25
        while True:
            try:
                self.sink.wait(delivery)
                return
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

    def _record(self, f: InFlight, last: dict[TopicPartition, int]) -> None:
        m = self.metrics
        for topic, n in f.batch.topic_counts().items():
            m.consumed.labels(topic).inc(n)
        m.scored.inc(len(f.decoded.index))
        n_anomalies = int(f.decisions.anomaly.sum())
        m.anomalies.inc(n_anomalies)
        for reason, n in Counter(r.reason for r in f.decoded.rejects).items():
            m.invalid.labels(reason).inc(n)
        t = self.settings.topics
        kinds = Counter(
            "event" if o.topic == t.anomalies else "dlq" if o.topic == t.dlq else "score"
            for o in f.delivery.records
        )
        for kind, n in kinds.items():
            m.published.labels(kind).inc(n)
        # Decided = its records acknowledged (scored, for a batch with nothing to publish).
        since = f.event_ms
        if self.settings.payload.latency_from == "kafka_timestamp":
            since = kafka_times(f.decoded, f.batch.timestamps)
        m.latency.observe_many((f.delivery.acked_at * 1000.0 - since) / 1000.0)
        m.scores.observe_many(f.scores.score)
        m.recent.observe_many("live", f.scores.score)
        m.severity.observe_many(f.decisions.severity)
        self._count_entities(f)
        m.batch_size.observe(len(f.batch))
        m.batch_seconds.observe(time.perf_counter() - f.started)
        m.last_batch.set(time.time())
        for tp, lag in self.source.lag(last).items():
            m.lag.labels(tp.topic, str(tp.partition)).set(lag)
        self.health.reason = "serving"

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


def _with_backoff(
    what: str, fn: Callable[[], T], stop: threading.Event, health: Health, metrics: Metrics
) -> T | None:
    """Retry `fn` until it succeeds or shutdown is asked for (then None): no crash loop."""
    backoff = 0.5
    while not stop.is_set():
        try:
            return fn()
        except KafkaConfigurationError as e:
            raise ConfigError(f"Kafka client configuration: {e}") from e
        except KafkaError as e:
            metrics.kafka_errors.labels("connect").inc()
            health.reason = f"cannot {what}: {e}"
            health.broker_reachable = False
            log.warning("cannot %s (%s); retrying in %.1fs", what, e, backoff)
            health.beat()
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
    return None


def run(settings: Settings, stop: threading.Event, reload: threading.Event | None = None) -> int:
    """Load the model, serve HTTP, connect, and loop until `stop` is set. Returns 0.
    Setting `reload` (SIGHUP) makes the model watcher look for a new version now."""
    ms = settings.model
    bundle = load_bundle(resolve(ms.path))
    scorer = Scorer(bundle, ms.provider, ms.threads, ms.spinning)
    log.info(
        "model %s loaded; provider %s, %s ONNX Runtime threads",
        bundle.label,
        scorer.provider,
        scorer.threads or "default",
    )
    shadow = None
    if ms.shadow_path is not None:
        shadow = Scorer(load_bundle(resolve(ms.shadow_path)), ms.provider, ms.threads, ms.spinning)
        log.info(
            "shadow model %s: scored beside the live one, publishing nothing", shadow.bundle.label
        )
    notifier = Notifier.from_env()
    metrics, health = Metrics(), Health(on_beat=notifier.watchdog)
    health.model_loaded = True
    with ExitStack() as stack:
        stack.callback(notifier.close)
        http = HttpServer(settings.http.host, settings.http.port, metrics.registry, health).start()
        stack.callback(http.stop)
        log.info("metrics and probes on http://%s:%d", settings.http.host, http.port)
        notifier.ready(f"model {bundle.label} on {scorer.provider}")
        source = open_source(
            settings, on_commit_error=lambda e: metrics.kafka_errors.labels("commit").inc()
        )
        if _with_backoff("connect to Kafka", source.connect, stop, health, metrics) is None:
            return 0
        stack.callback(source.close)
        sink = _with_backoff(
            "start the producer", lambda: open_sink(settings), stop, health, metrics
        )
        if sink is None:
            return 0
        stack.callback(sink.close)

        def on_reload(result: str, version: str, reason: str) -> None:
            metrics.reloads.labels(result).inc()

        watcher = ModelWatcher(
            Path(ms.path),
            scorer,
            mapping_for(settings, bundle),
            ms.provider,
            ms.threads,
            ms.poll_interval_s,
            on_reload,
            ms.spinning,
        ).start()
        stack.callback(watcher.stop)
        detector = Detector(settings, scorer, source, sink, metrics, health, stop, watcher, shadow)
        log.info(
            "consuming %s as group %s",
            settings.topics.input_pattern or settings.topics.input,
            settings.kafka.group_id,
        )
        # What start-up loaded (ONNX Runtime, numpy, pydantic: some 60,000 objects) lives as
        # long as the process: out of the collector's sight, a full collection takes
        # microseconds instead of 40 ms that would land on some batch's latency.
        gc.collect()
        gc.freeze()
        try:
            while not stop.is_set():
                if reload is not None and reload.is_set():
                    reload.clear()
                    watcher.request_reload()
                detector.step()
            detector.settle()  # the last batch in flight: acknowledged and committed
            detector.snapshot(force=True)
        except Stopped as e:
            log.info("%s", e)
        notifier.stopping()
        log.info("stopping: leaving the group and closing connections")
    return 0


def _encoded(key: str | None) -> bytes | None:
    return key.encode() if key is not None else None


def _sources(batch: Batch, index: np.ndarray) -> list[Source]:
    """Where the records at `index` came from, without a full Record each."""
    return [Source(*batch.position(i)) for i in index.tolist()]
