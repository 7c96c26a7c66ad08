import re
import shutil
import subprocess
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from detector.contract.drift import psi, reference_edges
from detector.ops.metrics import LATENCY_BUCKETS, BatchHistogram, Metrics, Reference, TopEntities


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
    m.recent.forget("live", Reference(0.5, 0.01, [0.1 * i for i in range(1, 10)]))
    m.recent.observe_many("live", np.linspace(0, 1, 1000))
    m.top_entities.add("card_id", ["C1", "C2", "C1"], time.time())
    text = generate_latest(m.registry)
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert b"vigil_messages_consumed_total" in text
    assert b'vigil_score_drift_psi{model="live"}' in text
    assert re.search(rb'vigil_entity_anomalies\{entity="C1",field="card_id"\} (2\.0|1\.99)', text)


def test_top_entities_keeps_the_k_loudest_per_field_and_forgets_with_time() -> None:
    top = TopEntities(CollectorRegistry(), k=2, half_life_s=60.0, max_tracked=6)
    top.add("card", ["a", "b", "b", "c", "c", "c", None], now_s=0.0)
    top.add("terminal", ["t1"], now_s=0.0)
    assert top.top(0.0) == {"card": [("c", 3.0), ("b", 2.0)], "terminal": [("t1", 1.0)]}
    # An hour of half-lives later, one fresh alert outweighs the old ones.
    top.add("card", ["a"], now_s=600.0)
    [(first, v), (second, old)] = top.top(600.0)["card"]
    assert (first, v) == ("a", pytest.approx(1.0 + 2**-10))
    assert second == "c" and old == pytest.approx(3 * 2**-10)
    # Bounded: past max_tracked entities, the quietest half is forgotten.
    top.add("card", [f"n{i}" for i in range(10)], now_s=600.0)
    assert len(top._counts) <= 6


def test_recent_alert_ratio_and_drift_against_the_reference() -> None:
    rng = np.random.default_rng(1)
    calibration = rng.gamma(2.0, 1.0, 20_000)
    threshold = float(np.quantile(calibration, 0.99))
    m = Metrics()
    m.recent.forget("live", Reference(threshold, 0.01, reference_edges(calibration)))
    get = m.registry.get_sample_value
    m.recent.observe_many("live", rng.gamma(2.0, 1.0, 400))
    assert get("vigil_score_drift_psi", {"model": "live"}) is None  # too few scores yet
    m.recent.observe_many("live", rng.gamma(2.0, 1.0, 10_000))  # same distribution
    assert get("vigil_score_drift_psi", {"model": "live"}) < 0.02
    assert get("vigil_recent_alert_ratio", {"model": "live"}) == pytest.approx(0.01, abs=0.005)
    assert get("vigil_calibrated_alert_ratio", {"model": "live"}) == 0.01
    m.recent.observe_many("live", rng.gamma(2.0, 1.0, 10_000) * 1.5)  # the process moved
    assert get("vigil_score_drift_psi", {"model": "live"}) > 0.25
    assert get("vigil_recent_alert_ratio", {"model": "live"}) > 0.05
    m.recent.forget("live", Reference(threshold, 0.01, reference_edges(calibration)))
    assert get("vigil_score_drift_psi", {"model": "live"}) is None  # a new model starts afresh


def test_psi_is_zero_for_the_reference_and_grows_with_the_shift() -> None:
    x = np.random.default_rng(2).normal(size=50_000)
    edges = reference_edges(x)
    assert psi(x, edges) < 1e-3
    shifts = [psi(x + d, edges) for d in (0.1, 0.3, 1.0)]
    assert shifts == sorted(shifts) and shifts[0] < 0.1 < 0.25 < shifts[2]
