import shutil
import subprocess

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from detector.metrics import LATENCY_BUCKETS, BatchHistogram, Metrics


def test_batch_histogram_matches_prometheus_histogram() -> None:
    values = np.concatenate(
        [np.random.default_rng(0).exponential(0.05, 5000), LATENCY_BUCKETS, [np.nan]]
    )
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    BatchHistogram("h_seconds", "x", LATENCY_BUCKETS, r1).observe_many(values)
    ref = Histogram("h_seconds", "x", buckets=LATENCY_BUCKETS, registry=r2)
    for v in values[np.isfinite(values)]:
        ref.observe(v)
    for le in [*map(str, LATENCY_BUCKETS), "+Inf"]:
        assert r1.get_sample_value("h_seconds_bucket", {"le": le}) == r2.get_sample_value(
            "h_seconds_bucket", {"le": le}
        ), le
    assert r1.get_sample_value("h_seconds_count") == r2.get_sample_value("h_seconds_count")
    assert r1.get_sample_value("h_seconds_sum") == pytest.approx(
        r2.get_sample_value("h_seconds_sum")
    )


def test_metrics_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make setup` (Debian package prometheus)"
    m = Metrics()
    m.set_model("m", "v1", "CPUExecutionProvider", 0.5)
    m.consumed.labels("telemetry").inc(10)
    m.invalid.labels("not_json").inc()
    m.latency.observe_many(np.array([0.001, 0.2]))
    m.scores.observe_many(np.array([0.1, 3.0]))
    m.lag.labels("telemetry", "0").set(3)
    text = generate_latest(m.registry)
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert b"vigil_messages_consumed_total" in text
