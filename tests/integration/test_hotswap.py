"""Hot-swap under continuous load against the real broker: every input offset decided
exactly once, versions change at batch boundaries, bad versions never decide."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from detector.model.registry import publish, read_current, set_current
from tests.conftest import FEATURES_SYNTH, copy_as_version
from tests.integration.kafka_helpers import committed_all, read_all, start_detector, wait_for
from trainer import data
from trainer.build import build_bundle
from trainer.config import TrainConfig

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _bundle(normal_csv: Path, out: Path, seed: int, features: list[str] | None = None) -> Path:
    ds = data.load([str(normal_csv)], features=FEATURES_SYNTH)
    if features is not None:
        ds = data.Dataset(features, ds.values, ds.files, 0)
    build_bundle(ds, TrainConfig(epochs=4, seed=seed, name="synth-test"), out, progress=False)
    time.sleep(1.1)  # versions carry a one-second UTC timestamp
    return out


def _broken_copy(src: Path, model_dir: Path, version: str) -> None:
    dst = copy_as_version(src, model_dir / version, version)
    (dst / "model.onnx").write_bytes((dst / "model.onnx").read_bytes()[:200])  # truncated


def test_versions_swap_under_load_without_loss_or_double_scoring(
    kafka_bootstrap: str, make_topic, bundle_dir: Path, synth_data: dict[str, Path], tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    model_dir = registry / "synth-test"
    publish(bundle_dir, registry)
    first = read_current(model_dir)
    good = [_bundle(synth_data["normal"], tmp_path / f"b{i}", seed=i) for i in (1, 2)]
    alien = _bundle(
        synth_data["normal"], tmp_path / "alien", seed=3, features=[f"other_{i}" for i in range(8)]
    )

    topic = make_topic("swap", partitions=2)
    d = start_detector(
        tmp_path,
        kafka_bootstrap,
        model_dir,
        topic,
        "g-swap",
        topics__scores=f"{topic}.scores",
        model__poll_interval_s="0.2",
        batch__max_size="200",
    )
    stop = threading.Event()
    produced = [0]

    def load() -> None:
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        i = 0
        while not stop.is_set():
            value = orjson.dumps({f: 1.0 + 0.001 * (i % 100) for f in FEATURES_SYNTH})
            p.send(topic, key=f"pump-{i % 4}".encode(), value=value)
            produced[0] += 1
            i += 1
            if i % 50 == 0:
                time.sleep(0.02)
        p.flush()
        p.close()

    served: list[str] = [first]
    bad: list[str] = []
    try:
        d.wait_ready()
        producer = threading.Thread(target=load)
        producer.start()
        scored = lambda: d.metric("vigil_messages_scored_total")  # noqa: E731
        # Swap only once the detector is consuming, so each version decides some messages.
        wait_for(lambda: scored() > 0, 60, "the detector to consume")

        def swap_to(action: Callable[[], object]) -> None:
            before = d.metric("vigil_model_reloads_total", {"result": "ok"}) + d.metric(
                "vigil_model_reloads_total", {"result": "failed"}
            )
            action()
            wait_for(
                lambda: (
                    d.metric("vigil_model_reloads_total", {"result": "ok"})
                    + d.metric("vigil_model_reloads_total", {"result": "failed"})
                    > before
                ),
                30,
                "the watcher's verdict",
            )
            seen = scored()
            wait_for(lambda: scored() > seen + 200, 60, "messages decided after the verdict")

        swap_to(lambda: served.append(publish(good[0], registry).manifest.version))
        _broken_copy(good[1], model_dir, "29990101T000000Z-badbad01")
        bad.append("29990101T000000Z-badbad01")
        swap_to(lambda: set_current(model_dir, "29990101T000000Z-badbad01"))
        swap_to(lambda: bad.append(publish(alien, registry).manifest.version))
        swap_to(lambda: served.append(publish(good[1], registry).manifest.version))
        swap_to(lambda: (set_current(model_dir, first), served.append(first)))
        # SIGHUP also asks for a look (and forgives refused versions; they fail again).
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        stop.set()
        producer.join()
        wait_for(lambda: committed_all(kafka_bootstrap, "g-swap", topic), 90, "offsets committed")
        assert d.metric("vigil_model_reloads_total", {"result": "ok"}) == 3
        assert d.metric("vigil_model_reloads_total", {"result": "failed"}) >= 2
        assert d.health()["code"] == 200  # refusals never cost readiness
    finally:
        stop.set()
        assert d.terminate() == 0

    decisions = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, f"{topic}.scores")]
    by_offset = defaultdict(list)
    for s in decisions:
        by_offset[(s["source"]["partition"], s["source"]["offset"])].append(s["model_version"])
    assert len(decisions) == produced[0]  # exactly one decision per input message
    assert all(len(v) == 1 for v in by_offset.values())
    versions = {v[0] for v in by_offset.values()}
    assert not versions & set(bad)
    assert versions <= set(served) and len(versions) >= 2
    # Per partition, the deciding version changes only at swaps: contiguous runs in offset order.
    for partition in {p for p, _ in by_offset}:
        seq = [by_offset[k][0] for k in sorted(k for k in by_offset if k[0] == partition)]
        runs = [v for i, v in enumerate(seq) if i == 0 or v != seq[i - 1]]
        assert len(runs) <= len(served), runs
