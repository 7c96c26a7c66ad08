"""Mixed numeric and categorical features: vocabularies, the mixed autoencoder, and the
commands a user runs on a file with text columns."""

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

from detector.contract.bundle import load_bundle
from detector.contract.categorical import Encoder
from detector.errors import DataError
from detector.model.offline import score_file
from detector.model.scorer import Scorer, decide
from tests.trainer.test_cli import run
from trainer.categorical import fit_categorical
from trainer.config import TrainConfig
from trainer.model import Categories, MixedAutoencoder

KINDS = np.array(["alpha", "beta", "gamma", "delta", "eps"])


def test_vocabulary_keeps_frequent_values_and_hashes_huge_ones() -> None:
    cfg = TrainConfig(min_count=3, vocabulary_max=5, hash_buckets=16)
    text = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + [""] * 9
    spec = fit_categorical("f", text, cfg)
    assert spec.values == ("a", "b")  # most frequent first; "c" too rare, "" never listed
    np.testing.assert_array_equal(Encoder("f", spec).encode(["b", "c", ""]), [2, 0, 0])
    huge = fit_categorical("f", [f"v{i}" for i in range(6)], cfg)
    assert huge.buckets == 16 and not huge.values
    with pytest.raises(DataError, match="no value occurs 3 times"):
        fit_categorical("f", ["x", "y"], cfg)


def test_mixed_errors_are_squared_errors_and_weighted_cross_entropy() -> None:
    cats = Categories.fit(np.array([[1], [2], [1], [2]]), [1], [3], floor=0.5)
    assert cats.weights == pytest.approx((1 / np.log(2),))  # two codes, equally often
    ae = MixedAutoencoder(3, cats, (8,), 2, "gelu", onehot_max=16)
    z = torch.tensor([[0.5, 2.0, -1.0]])
    r, _ = ae(z)
    fe = ae.errors(r, z)[0]
    logits = r[0, 2:5]
    ce = torch.logsumexp(logits, 0) - logits[2]
    torch.testing.assert_close(fe[1], ce / np.log(2))
    torch.testing.assert_close(fe[[0, 2]], (r[0, :2] - z[0, [0, 2]]) ** 2)
    expected = ae.expected(r)[0]
    assert expected[1] == logits.argmax()  # the most likely code, in the feature's column


def _rows(rng: np.random.Generator, n: int, mismatched: int = 0) -> pa.Table:
    """x and y follow the kind (kind k: x ~ 2k, y ~ -3k). Of the `mismatched` first rows,
    half carry another kind than their x and y say, half a kind never seen in training."""
    k = rng.integers(0, 5, n)
    x = k * 2.0 + rng.normal(0, 0.3, n)
    y = k * -3.0 + rng.normal(0, 0.4, n)
    shown = KINDS[k]
    shown[:mismatched] = KINDS[(k[:mismatched] + 2) % 5]
    shown[mismatched // 2 : mismatched] = "zeta"  # never seen in training
    return pa.table({"x": x, "kind": shown, "y": y, "site": rng.integers(1, 4, n)})


def test_fit_infers_text_columns_and_scores_unusual_categories(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pacsv.write_csv(_rows(rng, 5000), tmp_path / "train.csv")
    pacsv.write_csv(_rows(rng, 400, mismatched=80), tmp_path / "test.csv")
    b = tmp_path / "bundle"
    fit = run(
        "trainer", "fit", "--data", str(tmp_path / "train.csv"), "--out", str(b),
        "--categorical", "kind,site", "--epochs", "120", "--no-progress",
    )  # fmt: skip
    assert json.loads(fit.stdout)["features"] == 4
    bundle = load_bundle(b)
    m = bundle.manifest
    assert m.features == ["x", "y", "kind", "site"]  # numeric first, then categorical
    assert set(m.categorical or {}) == {"kind", "site"}
    assert set(m.categorical["kind"].values) == set(KINDS)
    assert m.categorical["site"].values and set(m.categorical["site"].values) == {"1", "2", "3"}
    assert "cross-entropy" in m.score

    # Without --categorical the text column is found and reported; 'site' (integers) is not.
    inferred = run(
        "trainer", "fit", "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "b2"),
        "--epochs", "2", "--no-progress",
    )  # fmt: skip
    assert "categorical features (text columns): kind" in inferred.stderr
    assert load_bundle(tmp_path / "b2").manifest.categorical.keys() == {"kind"}

    # Offline scoring reads the text and codes it; a wrong kind for its x stands out, named.
    scorer = Scorer(bundle, provider="cpu")
    scored = score_file(scorer, tmp_path / "test.csv")
    found = scored.decisions.anomaly
    assert found[:80].mean() >= 0.9, found[:80].mean()
    assert found[80:].mean() <= 0.03, found[80:].mean()
    kind = m.features.index("kind")
    # A value never seen in training is blamed on the field itself. (A known value that x and
    # y contradict is found as surely, but which side is "wrong" is the model's guess.)
    named = (scored.decisions.top_index[40:80, 0] == kind).mean()
    assert named >= 0.9, scored.decisions.top_index[40:80]
    # The same rows coded by hand score the same through the scorer directly.
    table = pacsv.read_csv(tmp_path / "test.csv")
    coded = np.stack(
        [
            table["x"].to_numpy(),
            table["y"].to_numpy(),
            Encoder("kind", m.categorical["kind"]).encode(table["kind"].to_pylist()),
            Encoder("site", m.categorical["site"]).encode(
                [str(v) for v in table["site"].to_pylist()]
            ),
        ],
        axis=1,
    ).astype(np.float32)
    direct = scorer.score(coded)
    np.testing.assert_allclose(direct.score, scored.scores.score, rtol=1e-5)
    # The expected value of a categorical is a code the vocabulary names.
    d = decide(direct, scorer.threshold)
    assert d.anomaly.sum() == found.sum()
    assert set(np.unique(direct.reconstruction[:, kind])) <= set(range(1, 6))

    out = run("detector", "score", "--model", str(b), "--data", str(tmp_path / "test.csv"),
              "--out", str(tmp_path / "s.csv"))  # fmt: skip
    assert json.loads(out.stdout.splitlines()[-1])["anomalies"] == int(found.sum())
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert rows[40]["top_features"].startswith("kind:") and rows[40]["anomaly"] == "1"


def test_categoricals_need_a_dense_single_row_model(tmp_path: Path) -> None:
    pacsv.write_csv(_rows(np.random.default_rng(0), 300), tmp_path / "t.csv")
    out = run(
        "trainer", "fit", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "b"),
        "--window", "4", "--model", "conv", "--epochs", "2", "--no-progress", ok=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "categorical features are for dense single-row models" in out.stderr
