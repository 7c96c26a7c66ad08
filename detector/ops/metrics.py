"""Every metric the detector exports: prefix `vigil_`, base units, bounded labels.

Per-message distributions (scores, decision latency) are observed a whole batch at a
time with numpy (`BatchHistogram`): no Python call per message.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from detector.contract.drift import psi
from detector.contract.events import REASONS

__all__ = ["BatchHistogram", "Metrics", "RecentQuantiles", "Reference", "TopEntities"]

disable_created_metrics()  # the *_created series double the output for no dashboard use

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
SCORE_BUCKETS = tuple(float(b) for b in np.logspace(-4, 4, 17))
SEVERITY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.5, 2.0, 5.0, 10.0, 100.0)


class TopEntities(Collector):
    """The entities (cards, terminals, pumps) with the most anomalous messages lately, per
    entity field: a count per entity decayed with `half_life_s`, of which only the `k`
    largest per field are exported. One series per entity would be unbounded; a top list
    is what a dashboard shows."""

    def __init__(
        self,
        registry: CollectorRegistry,
        k: int = 10,
        half_life_s: float = 3600.0,
        max_tracked: int = 10_000,
    ):
        self.k, self.max_tracked = k, max_tracked
        self._rate = np.log(2.0) / half_life_s
        # (field, entity) -> (count, as of when): decayed on read, so adding stays O(1)
        self._counts: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def add(self, field: str, entities: Iterable[str | None], now_s: float) -> None:
        with self._lock:
            for e in entities:
                if e is None:
                    continue
                count, at = self._counts.get((field, e), (0.0, now_s))
                self._counts[field, e] = (count * math.exp(-self._rate * (now_s - at)) + 1.0, now_s)
            if len(self._counts) > self.max_tracked:  # forget the quietest half
                values = self._decayed(now_s)
                cut = np.median(list(values.values()))
                self._counts = {k: (v, now_s) for k, v in values.items() if v > cut}

    def _decayed(self, now_s: float) -> dict[tuple[str, str], float]:
        return {
            k: count * math.exp(-self._rate * (now_s - at))
            for k, (count, at) in self._counts.items()
        }

    def top(self, now_s: float) -> dict[str, list[tuple[str, float]]]:
        """Per field, the k entities with the largest decayed counts, largest first."""
        with self._lock:
            values = self._decayed(now_s)
        out: dict[str, list[tuple[str, float]]] = {}
        for (field, entity), v in sorted(values.items(), key=lambda kv: -kv[1]):
            if len(out.setdefault(field, [])) < self.k:
                out[field].append((entity, v))
        return out

    def collect(self) -> Iterable[GaugeMetricFamily]:
        import time

        g = GaugeMetricFamily(
            "vigil_entity_anomalies",
            f"Anomalous messages per entity, decayed with a {np.log(2.0) / self._rate:.0f} s "
            f"half-life: the {self.k} largest per entity field (key: the message key).",
            labels=["field", "entity"],
        )
        for field, entries in self.top(time.time()).items():
            for entity, v in entries:
                g.add_metric([field, entity], round(v, 6))
        yield g


class BatchHistogram(Collector):
    """A Prometheus histogram fed with numpy arrays."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ):
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last: above every bound
        self.total = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return
        # bucket i counts values <= bounds[i] ('le' semantics): searchsorted side="left"
        idx = np.searchsorted(self.bounds, v, side="left")
        binned = np.bincount(idx, minlength=len(self.counts))
        with self._lock:
            self.counts += binned
            self.total += float(v.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self.counts)
            total = self.total
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        buckets.append(("+Inf", float(cumulative[-1])))
        fam = HistogramMetricFamily(self.name, self.documentation)
        fam.add_metric([], buckets, sum_value=total)
        yield fam

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


@dataclass(frozen=True)
class Reference:
    """What a model's recent scores are compared with: its threshold, the alarm rate and the
    score deciles of its calibration data (manifest)."""

    threshold: float
    calibrated_alert_ratio: float | None
    edges: list[float] | None


class RecentQuantiles(Collector):
    """The last `size` scores of the live and the shadow model, side by side: quantiles, the
    share above the threshold, and drift from the calibration data, so that an operator can
    compare a candidate on live traffic and see when the live model needs retraining."""

    QUANTILES = (0.5, 0.9, 0.99, 0.999)
    MIN_FOR_DRIFT = 500  # fewer scores than this say little about a distribution

    def __init__(self, registry: CollectorRegistry, size: int = 10_000):
        self.size = size
        self._buffers: dict[str, np.ndarray] = {}
        self._references: dict[str, Reference] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, model: str, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)[-self.size :]
        with self._lock:
            old = self._buffers.get(model, np.zeros(0))
            self._buffers[model] = np.concatenate([old, v])[-self.size :]

    def forget(self, model: str, reference: Reference | None = None) -> None:
        """A new model: its scores are not comparable with the old one's."""
        with self._lock:
            self._buffers.pop(model, None)
            if reference is not None:
                self._references[model] = reference

    def collect(self) -> Iterable[GaugeMetricFamily]:
        quantiles = GaugeMetricFamily(
            "vigil_recent_score_quantile",
            "Quantiles of the most recent scores (up to 10,000), by model role.",
            labels=["model", "q"],
        )
        ratio = GaugeMetricFamily(
            "vigil_recent_alert_ratio",
            "Share of the most recent scores (up to 10,000) above the threshold, by model role.",
            labels=["model"],
        )
        calibrated = GaugeMetricFamily(
            "vigil_calibrated_alert_ratio",
            "Share of the calibration data above the threshold (from the manifest).",
            labels=["model"],
        )
        drift = GaugeMetricFamily(
            "vigil_score_drift_psi",
            "Population stability index of the most recent scores against the calibration "
            "scores' deciles (0.1-0.25 moderate shift, above 0.25 retrain); from 500 scores.",
            labels=["model"],
        )
        with self._lock:
            buffers, references = dict(self._buffers), dict(self._references)
        for model, buf in sorted(buffers.items()):
            if not buf.size:
                continue
            for q, v in zip(self.QUANTILES, np.quantile(buf, self.QUANTILES), strict=True):
                quantiles.add_metric([model, repr(q)], float(v))
            ref = references.get(model)
            if ref is None:
                continue
            ratio.add_metric([model], float(np.mean(buf > ref.threshold)))
            if ref.edges is not None and buf.size >= self.MIN_FOR_DRIFT:
                drift.add_metric([model], psi(buf, ref.edges))
        for model, ref in sorted(references.items()):
            if ref.calibrated_alert_ratio is not None:
                calibrated.add_metric([model], ref.calibrated_alert_ratio)
        yield from (quantiles, ratio, calibrated, drift)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily("vigil_recent_score_quantile", "", labels=["model", "q"])
        for name in ("recent_alert_ratio", "calibrated_alert_ratio", "score_drift_psi"):
            yield GaugeMetricFamily(f"vigil_{name}", "", labels=["model"])


def _le(b: float) -> str:
    return repr(float(b))


class Metrics:
    """One instance per detector, on its own registry (tests make fresh ones)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.consumed = Counter(
            "vigil_messages_consumed", "Messages read from input topics.", ["topic"], registry=r
        )
        self.scored = Counter("vigil_messages_scored", "Messages decoded and scored.", registry=r)
        self.anomalies = Counter("vigil_anomalies", "Anomaly events published.", registry=r)
        self.invalid = Counter(
            "vigil_invalid_messages",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:
            self.invalid.labels(reason)
        self.published = Counter(
            "vigil_records_published",
            "Records acknowledged by the broker, by kind.",
            ["kind"],
            registry=r,
        )
        for kind in ("event", "dlq", "score"):
            self.published.labels(kind)
        self.kafka_errors = Counter(
            "vigil_kafka_errors",
            "Kafka operations that failed, by operation.",
            ["operation"],
            registry=r,
        )
        for op in ("connect", "poll", "publish", "commit", "rebalance"):
            self.kafka_errors.labels(op)
        self.batch_size = Histogram(
            "vigil_batch_size_messages",
            "Messages per processed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 50000),
            registry=r,
        )
        self.inference = Histogram(
            "vigil_inference_seconds",
            "ONNX Runtime time per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "vigil_batch_processing_seconds",
            "Decode, score, publish and commit time per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = BatchHistogram(
            "vigil_decision_latency_seconds",
            "Event time to decision (published and acknowledged), per message.",
            LATENCY_BUCKETS,
            r,
        )
        self.scores = BatchHistogram(
            "vigil_score", "Anomaly scores of scored messages.", SCORE_BUCKETS, r
        )
        self.severity = BatchHistogram(
            "vigil_severity_ratio", "Score divided by threshold, per message.", SEVERITY_BUCKETS, r
        )
        self.lag = Gauge(
            "vigil_consumer_lag_messages",
            "Messages behind the partition's high watermark.",
            ["topic", "partition"],
            registry=r,
        )
        self.threshold = Gauge("vigil_threshold", "Alarm threshold in use.", registry=r)
        self.model_info = Gauge(
            "vigil_model_info",
            "The model serving (always 1).",
            ["name", "version", "provider"],
            registry=r,
        )
        self.last_batch = Gauge(
            "vigil_last_batch_timestamp_seconds",
            "Unix time of the last committed batch.",
            registry=r,
        )
        self.ready = Gauge(
            "vigil_ready",
            "1 when model loaded, broker reachable and partitions assigned.",
            registry=r,
        )
        self.assigned = Gauge(
            "vigil_assigned_partitions", "Input partitions assigned to this detector.", registry=r
        )
        self.publish_retries = Counter(
            "vigil_publish_retries", "Batches whose publishing was retried.", registry=r
        )
        self.reloads = Counter(
            "vigil_model_reloads", "Model swap attempts, by result.", ["result"], registry=r
        )
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        self.recent = RecentQuantiles(r)
        self.alert_events = Counter(
            "vigil_alert_events",
            "Anomaly events published, by episode state.",
            ["state"],
            registry=r,
        )
        for state in ("open", "continue", "close"):
            self.alert_events.labels(state)
        self.top_entities = TopEntities(r)
        self.warmup = Counter(
            "vigil_warmup_samples",
            "Samples that only filled an entity's window (not scored).",
            registry=r,
        )
        self.late = Counter(
            "vigil_late_samples", "Samples dropped as older than their entity's newest.", registry=r
        )
        self.entities = Gauge("vigil_entities_tracked", "Entities with window state.", registry=r)
        self.evictions = Counter(
            "vigil_entity_evictions", "Entity states evicted (bound or idle TTL).", registry=r
        )
        self.shadow_scored = Counter(
            "vigil_shadow_messages_scored", "Messages scored by the shadow model.", registry=r
        )
        self.shadow_anomalies = Counter(
            "vigil_shadow_anomalies",
            "Messages the shadow model would have alerted on (nothing is published).",
            registry=r,
        )
        self.shadow_scores = BatchHistogram(
            "vigil_shadow_score", "Anomaly scores of the shadow model.", SCORE_BUCKETS, r
        )
        self.shadow_info = Gauge(
            "vigil_shadow_model_info",
            "The model in shadow (always 1).",
            ["name", "version"],
            registry=r,
        )
        self.shadow_threshold = Gauge(
            "vigil_shadow_threshold", "The shadow model's threshold.", registry=r
        )

    def set_model(self, name: str, version: str, provider: str, threshold: float) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, provider).set(1)
        self.threshold.set(threshold)
