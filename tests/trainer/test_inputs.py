"""The one data path (`detector.features.inputs`): the inputs `fit` trains on are the
inputs the offline scorer gives a bundle, categorical text in, vocabularies kept or chosen
again, behaviour features and windows with the history of the earlier rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from detector.contract.bundle import Bundle
from detector.contract.categorical import Categorical, Encoder
from detector.errors import DataError
from detector.features.inputs import (
    InputSpec,
    ModelInputs,
    Vocabularies,
    categorical_text,
    model_inputs,
    read_inputs,
)
from detector.features.tables import Table
from detector.model.offline import score_file, score_inputs
from detector.model.scorer import Scorer
from tests.trainer.payments import BOUNDS, SPEC, fit_model, payments, table
from trainer.config import TrainConfig
from trainer.prepare import fit_dataset
from trainer.transactions import Transactions


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Transactions, Path, Bundle]:
    t = payments(days=20, seed=3, customers=100)
    d = tmp_path_factory.mktemp("payments")
    path = d / "payments.parquet"
    pq.write_table(table(t), path)
    return t, path, fit_model(path, d / "bundle", epochs=2)


def test_fit_trains_on_the_inputs_the_scorer_gives_the_bundle(
    fitted: tuple[Transactions, Path, Bundle],
) -> None:
    t, path, bundle = fitted
    m = bundle.manifest
    assert m.features[:2] == ["amount", "mcc"] and m.features[2:] == SPEC.names()
    assert m.behaviour == SPEC and m.bounds == BOUNDS
    assert m.categorical is not None and set(m.categorical["mcc"].values) == set(
        table(t)["mcc"].to_pylist()
    )
    # What fit trained on (legitimate rows, behaviour derived over every row) ...
    cfg = TrainConfig(folds=0, name="payments")
    trained = fit_dataset(
        [str(path)], cfg, features=["amount", "mcc"], categorical=["mcc"], behaviour=SPEC,
        time_column="ts", label_column="fraud", bounds=BOUNDS,
    ).dataset  # fmt: skip
    # ... is, bit for bit, what the manifest asks of the same file.
    spec = InputSpec.of(m, time_column="ts")
    inputs = model_inputs(read_inputs(path, spec), spec)
    assert inputs.names == m.features == trained.names
    assert inputs.categorical == m.categorical and inputs.behaviour == SPEC
    legit = t.tx_fraud == 0
    np.testing.assert_array_equal(inputs.values[legit], trained.values)
    # The golden rows the bundle checks itself with are among them.
    golden = np.asarray(m.golden.inputs, dtype=np.float32)
    assert all((trained.values == g).all(axis=1).any() for g in golden)
    # `vigil-detect score` on the file scores exactly these inputs.
    scorer = Scorer(bundle, provider="cpu")
    scored = score_file(scorer, path, time_column="ts")
    np.testing.assert_allclose(scored.scores.score, scorer.score(inputs.values).score, rtol=1e-6)


def test_vocabularies_are_kept_or_chosen_again_from_text(
    fitted: tuple[Transactions, Path, Bundle], tmp_path: Path
) -> None:
    t, _, bundle = fitted
    m = bundle.manifest
    assert m.categorical is not None
    later = table(t).to_pydict()
    mcc = np.array(later["mcc"], dtype=object)
    mcc[::3] = "7995"  # a category the model never saw
    later["mcc"] = mcc.tolist()
    path = tmp_path / "later.parquet"
    pq.write_table(type(table(t)).from_pydict(later), path)

    kept = InputSpec.of(m, time_column="ts")
    inputs = model_inputs(read_inputs(path, kept), kept)
    assert inputs.categorical == m.categorical  # the bundle's vocabulary, never the file's
    col = inputs.values[:, inputs.names.index("mcc")]
    assert (col[::3] == 0).all() and (col[1::3] > 0).all()  # unseen: the reserved code

    refit = InputSpec.of(m, time_column="ts", refit_vocabularies=True)
    first_half = np.arange(len(mcc) // 2)
    chosen = model_inputs(
        read_inputs(path, refit), refit, vocabularies=Vocabularies(min_count=5), fit_rows=first_half
    )
    assert chosen.categorical is not None
    vocabulary = chosen.categorical["mcc"].values
    assert vocabulary[0] == "7995" and set(m.categorical["mcc"].values) <= set(vocabulary)
    codes = chosen.values[:, chosen.names.index("mcc")]
    expected = Encoder("mcc", chosen.categorical["mcc"]).encode(mcc.tolist())
    np.testing.assert_array_equal(codes, expected)
    # The other features do not depend on the coding.
    other = [i for i, n in enumerate(chosen.names) if n != "mcc"]
    np.testing.assert_array_equal(chosen.values[:, other], inputs.values[:, other])
    with pytest.raises(DataError, match="no vocabulary"):
        model_inputs(read_inputs(path, refit), refit)


def test_categorical_text_reads_values_as_a_message_carries_them() -> None:
    assert categorical_text(np.array(["a", None, "b"], dtype=object)) == ["a", "", "b"]
    assert categorical_text(np.array([5411, 7995])) == ["5411", "7995"]
    # An integer column with gaps comes out of a table as floats: its values stay integers.
    assert categorical_text(np.array([5411.0, np.nan, 7995.0])) == ["5411", "", "7995"]
    assert categorical_text(np.array([1.5, np.nan])) == ["1.5", ""]


def test_columns_follow_the_model_feature_order() -> None:
    kind = Categorical(values=("x", "y"))
    spec = InputSpec(payload=("a", "k"), categorical={"k": kind}, features=("k", "a"))
    t = Table(
        names=["b", "a"],
        values=np.array([[9, 1], [9, 2], [9, 3]], dtype=np.float32),
        source="t",
        extra={"k": np.array(["y", "x", "z"], dtype=object)},
    )
    inputs = model_inputs(t, spec)
    assert inputs.names == ["k", "a"]
    np.testing.assert_array_equal(inputs.values, [[2, 1], [1, 2], [0, 3]])
    with pytest.raises(DataError, match=r"column\(s\) \['k'\] were not read"):
        model_inputs(Table(["a"], t.values[:, 1:], "t"), spec)


def test_held_out_rows_are_scored_with_the_history_of_the_earlier_ones(
    fitted: tuple[Transactions, Path, Bundle], tmp_path: Path
) -> None:
    t, path, bundle = fitted
    scorer = Scorer(bundle, provider="cpu")
    spec = InputSpec.of(bundle.manifest, time_column="ts")
    inputs = model_inputs(read_inputs(path, spec), spec)
    held = np.arange(len(inputs))[-len(inputs) // 5 :]
    gate = score_inputs(scorer, inputs, rows=held)
    whole = score_file(scorer, path, time_column="ts")
    np.testing.assert_allclose(gate.scores.score[held], whole.scores.score[held], rtol=1e-5)
    assert gate.warmup.sum() == len(inputs) - len(held)
    assert np.isnan(gate.scores.score[: -len(held)]).all()
    # Scored on their own, the same rows see empty card histories: other inputs and scores.
    alone = tmp_path / "held.parquet"
    pq.write_table(table(t, held), alone)
    fresh = score_file(scorer, alone, time_column="ts")
    assert not np.allclose(fresh.scores.score, gate.scores.score[held], rtol=1e-3)
    card_count = inputs.names.index("card_id.count_3d")
    assert (fresh.table.values[:, card_count] < inputs.values[held, card_count]).mean() > 0.9


def test_windows_per_entity_in_time_order_reach_back_into_earlier_rows() -> None:
    # Two entities, rows out of time order in the table.
    t_ms = np.array([5, 1, 2, 3, 4, 0, 6, 7], dtype=np.float64)
    ent = np.array(["a", "a", "b", "a", "b", "b", "a", "b"])
    x = np.arange(8, dtype=np.float32)[:, None]
    inputs = ModelInputs(["v"], x, None, None, None, entities=ent, times_ms=t_ms)
    windows, newest = inputs.windows(2)
    # a, in time order: rows 1 (t1), 3 (t3), 0 (t5), 6 (t6); b: 5 (t0), 2, 4, 7
    got = {int(n): windows.take(slice(i, i + 1))[0, :, 0].tolist() for i, n in enumerate(newest)}
    assert got == {3: [1, 3], 0: [3, 0], 6: [0, 6], 2: [5, 2], 4: [2, 4], 7: [4, 7]}
    # Only the windows whose newest row is among `rows`, still reaching back.
    w, newest = inputs.windows(3, rows=np.array([6, 7]))
    assert sorted(newest.tolist()) == [6, 7]
    assert {int(n): w.take(slice(i, i + 1))[0, :, 0].tolist() for i, n in enumerate(newest)} == {
        6: [3, 0, 6],
        7: [2, 4, 7],
    }
    assert inputs.take(np.array([1, 0])).values[:, 0].tolist() == [1, 0]


def test_bounds_are_carried_and_checked(fitted: tuple[Transactions, Path, Bundle]) -> None:
    _, path, bundle = fitted
    spec = InputSpec.of(bundle.manifest, time_column="ts")
    inputs = model_inputs(read_inputs(path, spec), spec)
    assert inputs.bounds == BOUNDS and inputs.outside_bounds() == {}
    values = inputs.values.copy()
    values[:3, 0] = -1.0
    assert ModelInputs(inputs.names, values, None, None, BOUNDS).outside_bounds() == {"amount": 3}


def test_a_behaviour_model_needs_its_time_column(fitted: tuple[Transactions, Path, Bundle]) -> None:
    _, path, bundle = fitted
    with pytest.raises(DataError, match="--time-column"):
        read_inputs(path, InputSpec.of(bundle.manifest))


def test_fit_warmup_rows_only_build_behaviour_history(
    fitted: tuple[Transactions, Path, Bundle],
) -> None:
    t, path, _ = fitted
    cfg = TrainConfig(folds=0)
    common = {"features": ["amount"], "categorical": [], "behaviour": SPEC, "time_column": "ts"}
    every = fit_dataset([str(path)], cfg, **common).dataset
    day = 86_400_000
    warm = fit_dataset([str(path)], cfg, **common, warmup_ms=6 * day)
    later = t.tx_time_ms >= t.tx_time_ms.min() + 6 * day
    # The same features for the rows kept: their history includes the warm-up's rows.
    np.testing.assert_array_equal(warm.dataset.values, every.values[later])
    assert f"left out {int((~later).sum())} rows of the warm-up" in warm.notes[-1]
    with pytest.raises(ValueError, match="needs --behaviour"):
        fit_dataset([str(path)], cfg, features=["amount"], warmup_ms=day)
