"""Windowed models: per-entity window assembly, each network type end to end through the
bundle and the detector's Scorer, offline scoring with warm-up rows, and the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from detector.contract.bundle import Bundle
from detector.errors import DataError
from detector.features.windows import entity_keys, gather, table_windows, window_ends
from detector.model.offline import score_file, write_csv
from detector.model.scorer import Scorer
from tests.conftest import FEATURES_SYNTH, assert_stages_agree
from trainer.build import build_bundle
from trainer.config import TrainConfig
from trainer.data import Dataset, Windows, group_codes
from trainer.model import Autoencoder, ScoringModel, network_for
from trainer.synth import simulate

W = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _interleaved(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of three entities in a random interleaving; each row holds (entity, time)."""
    rng = np.random.default_rng(seed)
    ent = rng.choice(np.array(["b", "a", "c"]), size=n)
    t = np.zeros(n)
    for e in np.unique(ent):
        t[ent == e] = np.arange((ent == e).sum())
    code = np.searchsorted(np.array(["a", "b", "c"]), ent)
    return np.stack([code, t], axis=1).astype(np.float32), ent


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_stay_within_one_entity_in_time_order(seed: int) -> None:
    x, ent = _interleaved(seed=seed)
    xw, newest = table_windows(x, ent, W)
    assert xw.shape[1:] == (W, 2)
    assert (np.diff(newest) > 0).all()  # in the rows' own order
    for win, row in zip(xw, newest, strict=True):
        assert (win[:, 0] == x[row, 0]).all()  # one entity
        assert (np.diff(win[:, 1]) == 1).all()  # consecutive samples, oldest first
        assert (win[-1] == x[row]).all()  # the newest sample is the row scored
    # Warm-up: exactly the first W-1 rows of each entity have no window.
    warm = np.setdiff1d(np.arange(len(x)), newest)
    assert sorted(warm.tolist()) == sorted(np.flatnonzero(x[:, 1] < W - 1).tolist())


def test_trainer_windows_match_the_shared_definition_and_respect_segments() -> None:
    x, ent = _interleaved(90)
    groups = group_codes(entity_keys(ent), len(x))
    whole = Windows.build(x, W, groups)
    xw, newest = table_windows(x, ent, W)
    back = np.argsort(whole.newest)
    assert np.array_equal(whole.take(back), xw) and np.array_equal(whole.newest[back], newest)
    # Mini-batches are gathered on demand, never more than `size // W` windows at a time.
    assert all(len(b) <= 4 for b in whole.batches(4 * W))
    assert sum(len(b) for b in whole.batches(4 * W)) == len(whole)
    # A part of the rows: its windows use its rows only (a held-out block).
    part = Windows.build(x, W, groups, slice(30, 60))
    assert part.newest.min() >= 30 + W - 1 and part.newest.max() < 60
    assert sorted(map(tuple, part.rows.tolist())) == sorted(map(tuple, x[30:60].tolist()))


def test_window_assembly_edge_cases() -> None:
    x = np.ones((3, 4), np.float32)
    order, ends = window_ends(None, 3, W)
    assert len(ends) == 0
    assert gather(x[order], ends, W).shape == (0, W, 4)  # fewer rows than W: no windows
    assert entity_keys(np.array([7, "7", "x"], dtype=object)).tolist() == ["7", "7", "x"]
    with pytest.raises(DataError, match="row 2: the entity column 'pump' is empty"):
        entity_keys(np.array(["a", None], dtype=object), "pump")


def test_sequence_models_need_a_window() -> None:
    with pytest.raises(ValueError, match="--window 2 or more"):
        TrainConfig(model="conv").check()
    TrainConfig(model="dense", window=1).check()


def _synth(steps: int, seed: int, fault_rate: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    t = simulate(steps, 3, seed=seed, fault_rate=fault_rate)
    return t.values, t.entity


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    x, ent = _synth(300, seed=0)
    ds = Dataset(FEATURES_SYNTH, x, [], 0, entity_keys(ent))
    out = {}
    for model in ("dense", "conv", "lstm"):  # gru shares lstm's code: see the test below
        cfg = TrainConfig(
            model=model,  # type: ignore[arg-type]
            window=W,
            entity_column="entity",
            hidden=(16, 8),
            epochs=3,
            device="cpu",
            name=f"w-{model}",
        )
        out[model] = build_bundle(ds, cfg, tmp_path_factory.mktemp(model) / "b", progress=False)
    return out


@pytest.mark.parametrize("model", ["dense", "conv", "lstm"])
def test_each_model_writes_a_windowed_bundle_the_detector_accepts(
    bundles: dict[str, Bundle], model: str
) -> None:
    b = bundles[model]
    m = b.manifest
    assert m.window == W and "newest sample" in m.score
    assert m.training.config["model"] == model and m.training.config["entity_column"] == "entity"
    assert m.training.epochs == 3 and m.validation["onnx_parity_max_error"] < 1e-4
    assert np.asarray(m.golden.inputs).shape == (8, W, len(FEATURES_SYNTH))
    scorer = Scorer(b, provider="cpu")  # runs the golden-sample self-test
    session = ort.InferenceSession(b.model_bytes, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "x" and inp.shape[1:] == [W, len(FEATURES_SYNTH)]
    assert [o.name for o in session.get_outputs()] == [
        "score",
        "feature_error",
        "reconstruction",
        "latent",
    ]
    x, ent = _synth(40, seed=3)
    xw, _ = table_windows(x, ent, W)
    whole = scorer.score(xw, latent=True)
    k = b.manifest.training.config["latent"] or 2
    assert whole.feature_error.shape == whole.reconstruction.shape == (len(xw), 8)
    assert whole.latent is not None and whole.latent.shape == (len(xw), k)
    for n in (1, 3, 17):  # dynamic batch: the same answer whatever the batch
        assert np.allclose(scorer.score(xw[:n]).score, whole.score[:n], rtol=1e-5, atol=1e-6)
    # In chunks (CPU memory: see scorer.CHUNK_VALUES) every output is the same, in order.
    chunked = Scorer(b, provider="cpu", chunk_values=7 * W * len(FEATURES_SYNTH))
    assert chunked._chunk_rows == 7 and len(xw) > 7
    got = chunked.score(xw, latent=True)
    for name in ("score", "feature_error", "reconstruction", "latent"):
        np.testing.assert_allclose(getattr(got, name), getattr(whole, name), rtol=1e-5, atol=1e-6)
    # The reconstruction is that of the newest sample, in raw units.
    assert np.abs(whole.reconstruction - xw[:, -1]).mean() < np.abs(xw[:, -1]).mean()
    assert m.stages is not None and m.stages.lags == 1
    assert_stages_agree(b, x, ent)


def test_every_network_maps_windows_to_windows_and_a_code() -> None:
    z = torch.randn(7, W, 6)
    for model in ("dense", "conv", "lstm", "gru"):
        cfg = TrainConfig(model=model, window=W, hidden=(8, 4), latent=3)  # type: ignore[arg-type]
        r, h = network_for(cfg, 6)(z)
        assert r.shape == z.shape and h.shape == (7, 3), model


def test_cross_fitted_pot_calibration_with_windows(tmp_path: Path) -> None:
    x, ent = _synth(200, seed=1)
    cfg = TrainConfig(
        window=4,
        entity_column="entity",
        hidden=(16,),
        epochs=3,
        folds=3,
        calibration="pot",
        pot_risk=1e-3,
        pot_level=0.9,
        device="cpu",
    )
    b = build_bundle(Dataset(FEATURES_SYNTH, x, [], 0, entity_keys(ent)), cfg, tmp_path / "b")
    assert b.manifest.threshold.method == "pot" and b.manifest.window == 4
    # Every fold's held-out block loses each entity's warm-up (3 rows) and nothing more.
    assert b.manifest.training.config["windows"]["calibration"] == len(x) - 3 * 3 * 3


def test_offline_scoring_per_entity_with_warmup_rows(
    bundles: dict[str, Bundle], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    t = simulate(30, 3, seed=4, fault_rate=0.0)
    path = tmp_path / "d.csv"
    pacsv.write_csv(pa.table(t.columns()), path)
    scorer = Scorer(bundles["conv"], provider="cpu")
    res = score_file(scorer, path, entity_column="entity", latent=True)
    n = len(t.values)
    # The first W-1 samples of each entity (interleaved: rows 1..3(W-1)) are warm-up.
    assert res.warmup.tolist() == [i < 3 * (W - 1) for i in range(n)]
    assert np.isnan(res.scores.score[res.warmup]).all()
    assert not res.decisions.anomaly[res.warmup].any()
    # Every other row is scored as the newest sample of its own entity's last W rows.
    xw, newest = table_windows(t.values, t.entity, W)
    assert np.array_equal(np.flatnonzero(~res.warmup), newest)
    assert np.allclose(res.scores.score[newest], scorer.score(xw).score, rtol=1e-5)
    out = tmp_path / "s.csv"
    assert write_csv(res, out) == n
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["warmup"] == "1" and rows[0]["score"] == "" and rows[0]["anomaly"] == "0"
    assert rows[-1]["warmup"] == "0" and float(rows[-1]["score"]) >= 0
    assert rows[0]["latent_0"] == "" and rows[-1]["latent_0"] != ""
    # Without an entity column all rows are one entity: only the first W-1 rows warm up.
    one = score_file(scorer, path)
    assert one.warmup.sum() == W - 1


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, env=env
    )
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def test_cli_fit_conv_per_entity_then_score_and_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    normal, faulty, b = tmp_path / "x.csv", tmp_path / "f.csv", tmp_path / "bundle"
    run("trainer", "synth", "--out", str(normal), "--steps", "300", "--entities", "3")
    run("trainer", "synth", "--out", str(faulty), "--steps", "200", "--entities", "3",
        "--fault-rate", "0.1", "--seed", "5")  # fmt: skip
    fit = run(
        "trainer",
        "fit",
        "--data",
        str(normal),
        "--out",
        str(b),
        "--drop",
        "timestamp_ms,fault,label",  # the entity column is never a feature anyway
        "--window",
        "5",
        "--model",
        "conv",
        "--entity-column",
        "entity",
        "--hidden",
        "16,8",
        "--epochs",
        "3",
        "--no-progress",
    )
    summary = json.loads(fit.stdout)
    assert summary["window"] == 5 and summary["model"] == "conv" and summary["features"] == 8
    m = json.loads((b / "manifest.json").read_text())
    assert m["features"] == FEATURES_SYNTH and m["window"] == 5
    assert m["training"]["config"]["entity_column"] == "entity"

    out = tmp_path / "s.csv"
    score = run(
        "detector", "score", "--model", str(b), "--data", str(faulty), "--out", str(out),
        "--entity-column", "entity",
    )  # fmt: skip
    res = json.loads(score.stdout)
    assert res["rows"] == 600 and res["rows_warmup"] == 3 * 4
    assert sum(r["warmup"] == "1" for r in csv.DictReader(out.open())) == 12
    ev = json.loads(
        run(
            "trainer", "evaluate", "--model", str(b), "--data", str(faulty),
            "--label-column", "label", "--entity-column", "entity",
            "--plot", str(tmp_path / "t.png"),
        ).stdout
    )  # fmt: skip
    assert ev["rows"] == 600 - 12 and ev["rows_warmup"] == 12
    # The model was trained per entity: scoring without saying so is allowed but warned about.
    from detector.app.cli import main as detect
    from trainer.cli import main as train

    assert detect(["score", "--model", str(b), "--data", str(faulty), "--out", str(out)]) == 0
    assert "--entity-column entity" in capsys.readouterr().err
    assert (
        train(["fit", "--data", str(normal), "--out", str(tmp_path / "c"), "--model", "lstm"]) == 2
    )
    assert "--window 2 or more" in capsys.readouterr().err


# -- the score definition: the newest sample's error, or the mean over the window -----------


def _scoring_pair(window: int = W) -> tuple[ScoringModel, ScoringModel, torch.Tensor]:
    torch.manual_seed(0)
    cfg = TrainConfig(model="conv", window=window, hidden=(8, 4), latent=2)
    net = network_for(cfg, 6).eval()
    offset, scale = torch.linspace(-1, 1, 6), torch.linspace(0.5, 2, 6)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    whiten = (q * 0.5, q.T * 2.0)  # any invertible pair: W, W^-1
    newest = ScoringModel(net, offset, scale, whiten).eval()
    x = torch.randn(9, window, 6) * 3
    return newest, newest.scoring("window-mean"), x


def test_window_mean_score_is_the_mean_of_the_per_sample_errors() -> None:
    newest, mean, x = _scoring_pair()
    assert newest.score == "newest" and mean.score == "window-mean"
    assert mean.autoencoder is newest.autoencoder  # same network: no refit for a definition
    with torch.no_grad():
        z = newest.scale_inputs(x)
        r, _ = newest.autoencoder(z)
        per_sample = (r - z) ** 2  # [N, W, F]
        s_new, fe_new, rec_new, lat_new = newest(x)
        s_mean, fe_mean, rec_mean, lat_mean = mean(x)
    assert torch.allclose(fe_new, per_sample[:, -1], atol=1e-6)
    assert torch.allclose(fe_mean, per_sample.mean(dim=1), atol=1e-6)
    assert torch.allclose(s_mean, per_sample.mean(dim=(1, 2)), atol=1e-6)
    # The score is always the mean of feature_error: the detector's shares explain it.
    for s, fe in ((s_new, fe_new), (s_mean, fe_mean)):
        assert s.shape == (len(x),) and torch.allclose(s, fe.mean(dim=1), atol=1e-6)
    # Reconstruction (the newest sample's expectation, raw units) and code do not change.
    assert torch.equal(rec_new, rec_mean) and torch.equal(lat_new, lat_mean)
    # The mean of the per-sample scores of every window position, e.g. of W one-step shifts.
    scores_by_position = per_sample.mean(dim=2)  # [N, W]
    assert torch.allclose(s_mean, scores_by_position.mean(dim=1), atol=1e-6)


def test_rows_score_the_same_under_either_definition() -> None:
    m = ScoringModel(Autoencoder(6, (8,), 2), torch.zeros(6), torch.ones(6)).eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        a, b = m(x), m.scoring("window-mean")(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert TrainConfig(score="window-mean").resolved(100).score == "newest"  # 1-sample window
    with pytest.raises(ValueError, match="score must be one of"):
        m.scoring("median")  # type: ignore[arg-type]


def test_window_mean_survives_onnx_export_with_parity() -> None:
    from trainer.export import check_parity, export_onnx

    newest, mean, x = _scoring_pair()
    xs = x.numpy()
    graph = export_onnx(mean, xs)
    assert check_parity(graph, mean, xs) < 1e-4
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    got = dict(zip(["score", "feature_error", "reconstruction", "latent"],
                   session.run(None, {"x": xs}), strict=True))  # fmt: skip
    assert got["score"].shape == (len(xs),) and got["feature_error"].shape == (len(xs), 6)
    assert got["reconstruction"].shape == (len(xs), 6) and got["latent"].shape == (len(xs), 2)
    with torch.no_grad():
        z = newest.scale_inputs(x)
        r, _ = newest.autoencoder(z)
        want = ((r - z) ** 2).mean(dim=(1, 2)).numpy()
    assert np.allclose(got["score"], want, rtol=1e-4, atol=1e-6)
    # A graph of the other definition scores differently: the parity check would catch a
    # bundle whose definition is not the one its manifest claims.
    other = ort.InferenceSession(export_onnx(newest, xs), providers=["CPUExecutionProvider"])
    assert not np.allclose(other.run(["score"], {"x": xs})[0], got["score"])


def test_window_mean_bundle_says_so_and_shares_the_newest_bundles_network(
    tmp_path: Path,
) -> None:
    x, ent = _synth(200, seed=2)
    ds = Dataset(FEATURES_SYNTH, x, [], 0, entity_keys(ent))
    bundles = {}
    for score in ("window-mean", "newest"):
        cfg = TrainConfig(
            model="dense",
            window=W,
            entity_column="entity",
            hidden=(16,),
            epochs=3,
            folds=3,
            score=score,  # type: ignore[arg-type]
            device="cpu",
        )
        bundles[score] = build_bundle(ds, cfg, tmp_path / score, progress=False)
    m = bundles["window-mean"].manifest
    assert "window-mean" in m.score and "all samples of each window" in m.score
    assert "newest sample" in bundles["newest"].manifest.score
    assert m.training.config["score"] == "window-mean"
    assert m.validation["onnx_parity_max_error"] < 1e-4
    session = ort.InferenceSession(
        bundles["window-mean"].model_bytes, providers=["CPUExecutionProvider"]
    )
    assert json.loads(session.get_modelmeta().custom_metadata_map["vigil.score"]) == "window-mean"
    # Training does not depend on the definition: same weights, so the same expectation and
    # code, and only the score and feature errors differ. The detector's Scorer (golden
    # self-test included) reads the same outputs of either graph.
    xw, _ = table_windows(*_synth(30, seed=6), W)
    mean, newest = (Scorer(bundles[k], provider="cpu").score(xw, latent=True) for k in bundles)
    assert np.allclose(mean.reconstruction, newest.reconstruction, rtol=1e-5, atol=1e-5)
    assert mean.latent is not None and newest.latent is not None
    assert np.allclose(mean.latent, newest.latent, rtol=1e-5, atol=1e-5)
    assert not np.allclose(mean.score, newest.score)
    for s in (mean, newest):
        assert np.allclose(s.score, s.feature_error.mean(axis=1), rtol=1e-5, atol=1e-7)
    # Averaging W errors: less spread than the newest sample's error alone.
    assert mean.score.std() < newest.score.std()


def test_cli_takes_the_score_definition() -> None:
    from trainer.cli import _parser
    from trainer.commands import train_config as _config

    args = ["fit", "--data", "x.csv", "--out", "b", "--window", "5", "--score", "window-mean"]
    assert _config(_parser().parse_args(args)).score == "window-mean"
    assert _config(_parser().parse_args(args[:-2])).score == TrainConfig().score
    with pytest.raises(SystemExit):
        _parser().parse_args([*args[:-1], "last"])
