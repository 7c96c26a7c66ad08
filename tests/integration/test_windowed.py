"""A windowed model gives the same numbers from `vigil-detect score` as from the live
daemon fed the same rows through Kafka."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from detector.contract.bundle import load_bundle
from detector.model.offline import score_file
from detector.model.scorer import Scorer
from tests.conftest import FEATURES_SYNTH
from tests.integration.kafka_helpers import (
    committed_all,
    produce,
    read_all,
    start_detector,
    wait_for,
)
from trainer import data
from trainer.build import build_bundle
from trainer.config import TrainConfig
from trainer.synth import simulate

pytestmark = pytest.mark.kafka
WINDOW = 5


@pytest.mark.parametrize(
    "variant",
    [
        {"model": "conv"},
        # the setting recommended for sensor telemetry: lag-whitened, window-mean score
        {"model": "dense", "lags": 3, "score": "window-mean"},
    ],
    ids=["conv-newest", "dense-lags-window-mean"],
)
def test_daemon_and_offline_scorer_agree_on_windows(
    variant: dict,
    kafka_bootstrap: str,
    make_topic,
    synth_data: dict[str, Path],
    tmp_path: Path,
) -> None:
    ds = data.load([str(synth_data["normal"])], features=FEATURES_SYNTH, entity_column="entity")
    cfg = TrainConfig(
        window=WINDOW, entity_column="entity", epochs=6, folds=0, name="win", **variant
    )
    bundle = build_bundle(ds, cfg, tmp_path / "win", progress=False)
    assert bundle.manifest.window == WINDOW

    t = simulate(120, 4, seed=21, fault_rate=0.1)
    csv = tmp_path / "faulty.csv"
    pacsv.write_csv(pa.table(t.columns()), csv)
    offline = score_file(
        Scorer(load_bundle(bundle.path), provider="cpu"), csv, entity_column="entity"
    )
    warm = offline.warmup.astype(bool)
    assert warm.sum() == 4 * (WINDOW - 1)

    topic = make_topic("win", partitions=2)
    records = [
        (
            t.entity[i].encode(),
            orjson.dumps(
                {
                    "ts": int(t.timestamp_ms[i]),
                    **dict(zip(FEATURES_SYNTH, map(float, t.values[i]), strict=True)),
                }
            ),
        )
        for i in range(len(t.values))
    ]
    positions = produce(kafka_bootstrap, topic, records)
    d = start_detector(
        tmp_path,
        kafka_bootstrap,
        bundle.path,
        topic,
        f"g-{topic}",
        topics__scores=f"{topic}.scores",
        payload__time_from="field",
        payload__time_field="ts",
    )
    try:
        d.wait_ready()
        wait_for(
            lambda: committed_all(kafka_bootstrap, f"g-{topic}", topic), 90, "offsets committed"
        )
        assert d.metric("vigil_warmup_samples_total") == warm.sum()
        assert d.metric("vigil_late_samples_total") == 0
        assert d.metric("vigil_entities_tracked") == 4
    finally:
        assert d.terminate() == 0
    row_of = {pos: i for i, pos in enumerate(positions)}
    live = np.full(len(records), np.nan)
    for r in read_all(kafka_bootstrap, f"{topic}.scores"):
        s = orjson.loads(r.value)
        live[row_of[(s["source"]["partition"], s["source"]["offset"])]] = s["score"]
    assert np.isnan(live[warm]).all()  # warm-up rows are not scored, online or offline
    np.testing.assert_allclose(live[~warm], offline.scores.score[~warm], rtol=1e-5, atol=1e-7)
