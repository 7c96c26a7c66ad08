"""Retraining a payments model (behaviour and categorical features) without a broker:
`collect` through a `PartitionReader` writes the raw fields the one input path needs, and
`retrain` keeps the live model's vocabularies (or chooses them again), behaviour spec and
bounds, and gates the candidate on held-out rows scored with the earlier rows' history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detector.contract.bundle import Bundle, load_bundle
from detector.contract.events import iso_ms
from detector.errors import DataError
from detector.kafka.memory import MemoryLog
from detector.model.offline import score_file
from detector.model.registry import publish, read_current
from detector.model.scorer import Scorer
from detector.ops.settings import Settings, load_settings
from tests.trainer.memory_reader import MemoryReader
from tests.trainer.payments import (
    BOUNDS,
    SPEC,
    WARMUP_DAYS,
    columns,
    fit_model,
    payments,
    record,
    table,
)
from trainer.collect import ENTITY_COLUMN, EPISODE, LEFT_OUT_COLUMN, TIME_COLUMN, collect
from trainer.config import Gate
from trainer.retrain import retrain
from trainer.transactions import Transactions

TRAIN_DAYS = 15
SENT_MS = 1_800_000_000_000  # when the stream was sent (Kafka timestamps)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Transactions, Bundle]:
    t = payments(days=30, seed=7, customers=120)
    d = tmp_path_factory.mktemp("first")
    pq.write_table(table(t, t.tx_time_days < TRAIN_DAYS), d / "train.parquet")
    return t, fit_model(d / "train.parquet", d / "payments", epochs=3)


def _registry(bundle: Bundle, tmp_path: Path) -> Path:
    publish(bundle.path, tmp_path / "registry")
    return tmp_path / "registry" / bundle.manifest.name


def _settings(model_dir: Path) -> Settings:
    return load_settings(
        model={"path": str(model_dir)},
        topics={"input": ["pay"], "anomalies": "pay.anomalies", "dlq": "pay.dlq"},
        payload={"time_from": "field", "time_field": "ts"},
    )


def _collected(t: Transactions, rows: np.ndarray, path: Path) -> Path:
    """A file as `collect` writes it for the payments model (without `left_out`, as an
    older collect wrote it: every row may be trained on)."""
    c = columns(t, rows)
    pq.write_table(
        pa.table(
            {
                TIME_COLUMN: pa.array(c["ts"], pa.int64()),
                ENTITY_COLUMN: c["card_id"],
                "card_id": c["card_id"],
                "terminal_id": c["terminal_id"],
                "amount": pa.array(c["amount"], pa.float32()),
                "mcc": c["mcc"],
            }
        ),
        path,
    )
    return path


def test_collect_then_retrain_keeps_vocabularies_behaviour_and_bounds(
    first: tuple[Transactions, Bundle], tmp_path: Path
) -> None:
    t, live = first
    model_dir = _registry(live, tmp_path)
    log = MemoryLog()
    log.create("pay")
    legit = np.flatnonzero(t.tx_fraud == 0)
    for j, i in enumerate(legit):
        r = record(t, int(i))
        log.append("pay", orjson.dumps(r), str(r["card_id"]).encode(), timestamp_ms=SENT_MS + j)
    bad = [{"card_id": "C00001", "terminal_id": "T00001", "amount": "abc", "mcc": "5411"}]
    bad += [{"card_id": "C00002", "terminal_id": "T00001", "amount": -5.0, "mcc": "5411", "ts": 1}]
    for b in bad:
        log.append("pay", orjson.dumps(b), b"k", timestamp_ms=SENT_MS + len(legit))
    # The live model alarmed on one card's payment: its rows around it are left out.
    alarmed = record(t, int(legit[len(legit) // 2]))
    log.create("pay.anomalies")
    event = {"key": alarmed["card_id"], "event_time": iso_ms(int(alarmed["ts"])), "episode": {}}
    log.append("pay.anomalies", orjson.dumps(event), timestamp_ms=SENT_MS + len(legit))

    out = tmp_path / "recent.parquet"
    reader = MemoryReader(log)
    until = SENT_MS + len(legit) + 10
    got = collect(
        _settings(model_dir), out, SENT_MS, until, margin_ms=60_000, reader=reader, progress=False
    )
    assert got.messages == len(legit) + 2
    assert got.dropped["dead-lettered: wrong_type"] == 1
    assert got.dropped["dead-lettered: out_of_range"] == 1
    assert got.dropped["inside an anomaly episode"] >= 1
    assert not reader.closed  # a reader handed in is the caller's to close

    written = pq.read_table(out)
    # The raw fields: both entity fields, the category as text, the time, the amount; and
    # why a row must not be trained on. Left-out rows are written: they are card history.
    assert written.column_names == [
        TIME_COLUMN, ENTITY_COLUMN, LEFT_OUT_COLUMN, "card_id", "terminal_id", "amount", "mcc",
    ]  # fmt: skip
    assert written.schema.field("mcc").type == pa.string()
    assert written.num_rows == got.written == len(legit)
    reasons = written[LEFT_OUT_COLUMN].to_pylist()
    assert reasons.count(None) == got.kept == len(legit) - got.dropped[EPISODE]
    assert set(reasons) == {None, EPISODE}
    by_time = {int(ts): i for i, ts in enumerate(t.tx_time_ms)}
    rows = [by_time[ts] for ts in written[TIME_COLUMN].to_pylist()]
    assert written["mcc"].to_pylist() == columns(t, np.array(rows))["mcc"].tolist()
    assert written["terminal_id"].to_pylist() == columns(t, np.array(rows))["terminal_id"].tolist()

    report = tmp_path / "report"
    warmup = WARMUP_DAYS * 86_400_000
    outcome = retrain(
        model_dir, out, report, Gate(), dry_run=False, progress=False, warmup_ms=warmup
    )
    c = outcome.comparison
    assert outcome.published and c["passed"], c["reasons"]
    m = load_bundle(outcome.candidate.path).manifest
    assert m.features == live.features
    assert m.categorical == live.manifest.categorical and m.behaviour == SPEC
    assert m.bounds == BOUNDS
    assert c["inputs"]["vocabularies"] == "kept" and c["inputs"]["behaviour"]
    assert read_current(model_dir) == m.version != live.manifest.version

    # The gate scored the held-out rows after the training rows, as a detector would have:
    # exactly the live model's scores of those rows in one offline pass over the whole file.
    whole = score_file(Scorer(live, provider="cpu"), out, time_column=TIME_COLUMN)
    in_time = np.argsort(written[TIME_COLUMN].to_numpy(), kind="stable")
    warm = written[TIME_COLUMN].to_numpy() >= written[TIME_COLUMN].to_numpy().min() + warmup
    normal = np.array([r is None for r in reasons])
    held = in_time[(warm & normal)[in_time]][-c["rows"]["holdout"] :]
    share = float(np.mean(whole.scores.score[held] > live.manifest.threshold.value))
    assert c["models"]["live"]["alert_ratio"] == pytest.approx(share)
    # ... and the candidate alarms there about as often as the live model.
    cand, old = c["models"]["candidate"]["alert_ratio"], c["models"]["live"]["alert_ratio"]
    assert cand <= Gate().max_alert_ratio * max(old, 0.01), (cand, old)


def test_retrain_can_choose_the_vocabularies_again(
    first: tuple[Transactions, Bundle], tmp_path: Path
) -> None:
    t, live = first
    model_dir = _registry(live, tmp_path)
    data = _collected(t, np.flatnonzero(t.tx_fraud == 0), tmp_path / "recent.parquet")
    merchants = pq.read_table(data)
    mcc = np.array(merchants["mcc"].to_pylist(), dtype=object)
    mcc[mcc == "7011"] = "7995"  # hotels recoded as casinos: a value the live model never saw
    at = merchants.column_names.index("mcc")
    pq.write_table(merchants.set_column(at, "mcc", pa.array(mcc.tolist(), pa.string())), data)
    outcome = retrain(
        model_dir, data, tmp_path / "r", Gate(), dry_run=True, progress=False,
        refit_vocabularies=True,
    )  # fmt: skip
    m = outcome.candidate.manifest
    assert m.categorical is not None and live.manifest.categorical is not None
    assert "7995" in m.categorical["mcc"].values
    assert "7995" not in live.manifest.categorical["mcc"].values
    assert m.behaviour == SPEC and m.bounds == BOUNDS
    assert outcome.comparison["inputs"]["vocabularies"] == "refit"
    assert not outcome.published and read_current(model_dir) == live.manifest.version


def test_collected_files_without_the_raw_fields_say_collect_again(
    first: tuple[Transactions, Bundle], tmp_path: Path
) -> None:
    t, live = first
    model_dir = _registry(live, tmp_path)
    data = _collected(t, np.flatnonzero(t.tx_fraud == 0), tmp_path / "recent.parquet")
    full = pq.read_table(data)
    cases = {
        "no_terminal": full.drop(["terminal_id"]),
        "codes": full.set_column(
            full.column_names.index("mcc"), "mcc", pa.array(np.ones(full.num_rows), pa.float32())
        ),
        "no_time": full.drop([TIME_COLUMN]),
    }
    messages = {
        "no_terminal": "collect it again",
        "codes": "older collect wrote codes",
        "no_time": f"no {TIME_COLUMN} column",
    }
    for name, bad in cases.items():
        pq.write_table(bad, tmp_path / f"{name}.parquet")
        with pytest.raises(DataError, match=messages[name]):
            retrain(
                model_dir, tmp_path / f"{name}.parquet", tmp_path / name, Gate(),
                dry_run=True, progress=False,
            )  # fmt: skip
