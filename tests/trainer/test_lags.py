"""Lag whitening (`--lags L`): each L consecutive samples of a window are z-scored, stacked
and ZCA-whitened together inside the graph; the score generalises the lagged Hotelling T^2."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from detector.contract.bundle import load_bundle
from detector.errors import BundleError
from detector.features.windows import entity_keys, table_windows
from detector.model.scorer import Scorer
from tests.conftest import FEATURES_SYNTH, assert_stages_agree
from trainer.build import build_bundle
from trainer.config import TrainConfig
from trainer.data import Dataset, Windows, group_codes
from trainer.export import check_parity, export_onnx
from trainer.fit import fit, lag_vectors, whitening_for
from trainer.model import ScoringModel, network_for, stack_lags
from trainer.synth import simulate

W, L, F = 6, 3, 4
P = W - L + 1  # lag vectors per window


pytestmark = pytest.mark.usefixtures("one_thread")


def _ar_rows(n: int = 400, seed: int = 0) -> np.ndarray:
    """Correlated, autocorrelated rows: lag whitening has cross-lag covariance to remove."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(F, F))
    x = np.zeros((n, F))
    for t in range(1, n):
        x[t] = 0.8 * x[t - 1] + rng.normal(size=F) @ mix
    return (x * np.array([1.0, 10.0, 0.1, 3.0]) + np.array([0.0, 50.0, -2.0, 7.0])).astype(
        np.float32
    )


def _np_lag_vectors(z: np.ndarray) -> np.ndarray:
    """[N, W, F] -> [N, P, L F], oldest sample first in each vector: the reference."""
    return np.stack([z[:, p : p + L].reshape(len(z), -1) for p in range(P)], axis=1)


class _Nothing(nn.Module):
    """An autoencoder that reconstructs nothing (always the mean, 0): the score is then the
    bare lagged T^2 / (L F)."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(z), z[:, -1, :2]


def _reference_parts() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = _ar_rows()
    off, sc = x.mean(axis=0), x.std(axis=0)
    stacked = Windows.build((x - off) / sc, L).take(slice(None)).reshape(-1, L * F)
    return x, off, sc, stacked


def test_stack_lags_matches_the_numpy_reference() -> None:
    z = np.random.default_rng(1).normal(size=(5, W, F)).astype(np.float32)
    got = stack_lags(torch.from_numpy(z), L).numpy()
    assert got.shape == (5, P, L * F)
    assert np.array_equal(got, _np_lag_vectors(z))
    assert np.array_equal(got[:, -1, -F:], z[:, -1])  # the newest vector ends with the newest row


@pytest.mark.parametrize("score", ["window-mean", "newest"])
def test_graph_scores_the_lagged_t2_of_whitened_stacked_vectors(score: str) -> None:
    x, off, sc, stacked = _reference_parts()
    whiten = whitening_for(stacked, 1e-9)
    model = ScoringModel(
        _Nothing(), torch.from_numpy(off), torch.from_numpy(sc), whiten, score, lags=L
    ).eval()  # type: ignore[arg-type]
    xw = Windows.build(x[300:], W).take(slice(None))
    with torch.no_grad():
        s, fe, rec, _ = (t.numpy() for t in model(torch.from_numpy(xw)))
        net_in = model.scale_inputs(torch.from_numpy(xw)).numpy()
    # The network's input: the whitened stacked z-scores of every position, oldest first.
    vectors = _np_lag_vectors((xw - off) / sc)
    assert np.allclose(net_in, vectors @ whiten[0].numpy().T, atol=1e-4)
    # Reconstructing nothing: each position scores its lagged Hotelling T^2 / (L F).
    precision = np.linalg.inv(np.cov(stacked.astype(np.float64), rowvar=False))
    t2 = np.einsum("npi,ij,npj->np", vectors, precision, vectors) / (L * F)
    want = t2.mean(axis=1) if score == "window-mean" else t2[:, -1]
    assert np.allclose(s, want, rtol=1e-3)
    # feature_error: each feature's L whitened coordinates averaged; its mean is the score.
    per_coord = (vectors @ whiten[0].numpy().T) ** 2  # [N, P, L F]
    per_coord = per_coord.mean(axis=1) if score == "window-mean" else per_coord[:, -1]
    assert np.allclose(fe, per_coord.reshape(-1, L, F).mean(axis=1), rtol=1e-3, atol=1e-5)
    assert np.allclose(s, fe.mean(axis=1), rtol=1e-5)
    # Reconstruction: the newest sample's expectation in raw units (here: the mean).
    assert rec.shape == (len(xw), F) and np.allclose(rec, off, rtol=1e-5, atol=1e-4)


def test_fit_whitens_the_lag_vectors_of_its_windows_with_their_own_covariance() -> None:
    x = _ar_rows()
    cfg = TrainConfig(window=W, lags=L, hidden=(16,), latent=2, epochs=2, device="cpu")
    result = fit(x[:300], x[300:], cfg, progress=False)
    m = result.model
    assert m.lags == L and m.whiten.shape == (L * F, L * F)
    # Estimated on the lag vectors of the training and validation windows, none across the
    # two parts, with the same z-scores: those vectors come out white.
    z = lambda rows: (rows - m.offset.numpy()) / m.scale.numpy()  # noqa: E731
    parts = [Windows.build(z(x[:300]), L), Windows.build(z(x[300:]), L)]
    vectors = np.concatenate([p.take(slice(None)).reshape(-1, L * F) for p in parts])
    white = vectors @ m.whiten.numpy()
    assert np.allclose(np.cov(white, rowvar=False), np.eye(L * F), atol=1e-3)
    # The network sees P lag vectors of L F values.
    r, h = m.autoencoder(torch.zeros(2, P, L * F))
    assert r.shape == (2, P, L * F) and h.shape == (2, 2)


def test_lag_vectors_never_join_two_entities() -> None:
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    groups = group_codes(np.array(list("aaaaabbbbb")), 10)
    w = Windows.build(rows, 4, groups)
    vec = lag_vectors(w, 2)  # 4 per entity: (0,1) (1,2) (2,3) (3,4), (5,6) ...
    assert vec.shape == (8, 4)
    newest = vec[:, 2] // 2
    assert sorted(newest.tolist()) == [1, 2, 3, 4, 6, 7, 8, 9]
    assert (vec[:, 2] - vec[:, 0] == 2).all()  # consecutive samples, oldest first


@pytest.mark.parametrize("model", ["dense", "conv", "gru"])
def test_lag_whitened_export_passes_parity(model: str) -> None:
    torch.manual_seed(0)
    _, off, sc, stacked = _reference_parts()
    cfg = TrainConfig(model=model, window=W, lags=L, hidden=(8, 4), latent=2)  # type: ignore[arg-type]
    net = network_for(cfg, F).eval()
    whiten = whitening_for(stacked, 1e-6)
    for score in ("window-mean", "newest"):
        m = ScoringModel(net, torch.from_numpy(off), torch.from_numpy(sc), whiten, score, L)  # type: ignore[arg-type]
        m = m.eval()
        xw = Windows.build(_ar_rows(60, seed=3), W).take(slice(None))
        graph = export_onnx(m, xw)
        assert check_parity(graph, m, xw) < 1e-4
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        out = session.run(None, {"x": xw})
        assert [o.shape for o in out] == [(len(xw),), (len(xw), F), (len(xw), F), (len(xw), 2)]
        with torch.no_grad():
            want = [t.numpy() for t in m(torch.from_numpy(xw))]
        assert np.allclose(out[2], want[2], rtol=1e-4, atol=1e-4)  # reconstruction too


def test_lags_are_refused_where_they_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--lags 3 stacks 3 consecutive.*--window 3 or more"):
        TrainConfig(window=2, lags=3).check()
    with pytest.raises(ValueError, match="--window 3 or more"):
        TrainConfig(lags=3).check()  # rows: window 1
    with pytest.raises(ValueError, match="needs --scaling whiten"):
        TrainConfig(window=20, lags=3, scaling="standard").check()
    with pytest.raises(ValueError, match="needs --scaling whiten"):
        TrainConfig(window=20, lags=3, loss="bce").check()
    with pytest.raises(ValueError, match="--lags must be 1 or more"):
        TrainConfig(window=20, lags=0).check()
    TrainConfig(window=20, lags=3).check()  # auto scaling with MSE: whitened
    TrainConfig(window=3, lags=3, scaling="whiten").check()  # one lag vector per window
    with pytest.raises(ValueError, match="lags must be 1, or more with whitening"):
        ScoringModel(_Nothing(), torch.zeros(F), torch.ones(F), None, "newest", lags=2)

    from trainer.cli import _parser
    from trainer.cli import main as train
    from trainer.commands import train_config as _config

    args = ["fit", "--data", "x.csv", "--out", "b", "--window", "20", "--lags", "3"]
    assert _config(_parser().parse_args(args)).lags == 3
    assert _config(_parser().parse_args(args[:-2])).lags == 1
    # Refused before any data is read (x.csv does not exist).
    out = str(tmp_path / "b")
    assert train(["fit", "--data", "x.csv", "--out", out, "--window", "2", "--lags", "3"]) == 2
    assert train(["fit", "--data", "x.csv", "--out", out, "--window", "9", "--lags", "3",
                  "--scaling", "standard"]) == 2  # fmt: skip


def test_lag_whitened_bundle_end_to_end(tmp_path: Path) -> None:
    t = simulate(250, 2, seed=0, fault_rate=0.0)
    ds = Dataset(FEATURES_SYNTH, t.values, [], 0, entity_keys(t.entity))
    cfg = TrainConfig(
        window=W,
        lags=L,
        score="window-mean",
        entity_column="entity",
        hidden=(16,),
        latent=2,
        epochs=3,
        folds=3,
        device="cpu",
        name="lags",
    )
    b = build_bundle(ds, cfg, tmp_path / "b", progress=False)
    m = b.manifest
    assert m.window == W and m.training.config["lags"] == L
    assert "lags 3" in m.score and "across lags" in m.score and "window-mean" in m.score
    assert m.validation["onnx_parity_max_error"] < 1e-4
    session = ort.InferenceSession(b.model_bytes, providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["vigil.lags"]) == L
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [W, len(FEATURES_SYNTH)]  # the detector's contract is unchanged
    scorer = Scorer(b, provider="cpu")  # golden self-test
    f = simulate(40, 2, seed=5, fault_rate=0.2)
    xw, _ = table_windows(f.values, f.entity, W)
    s = scorer.score(xw, latent=True)
    n = len(FEATURES_SYNTH)
    assert s.feature_error.shape == s.reconstruction.shape == (len(xw), n)
    assert s.latent is not None and s.latent.shape == (len(xw), 2)
    assert np.allclose(s.score, s.feature_error.mean(axis=1), rtol=1e-5, atol=1e-7)
    # The stages: each run of L samples whitened once, not once per window holding it.
    assert m.stages is not None and m.stages.lags == L and b.stage_bytes is not None
    prepare = ort.InferenceSession(b.stage_bytes[0], providers=["CPUExecutionProvider"])
    (inp,), (out,) = prepare.get_inputs(), prepare.get_outputs()
    assert inp.shape[1:] == [n] and out.shape[1:] == [L * n]
    assert_stages_agree(b, f.values, f.entity)
    # A stage file that is missing or not the one the manifest names is refused.
    broken = Path(shutil.copytree(b.path, tmp_path / "missing"))
    (broken / "network.onnx").unlink()
    with pytest.raises(BundleError, match=r"network\.onnx: missing"):
        load_bundle(broken)
    broken = Path(shutil.copytree(b.path, tmp_path / "swapped"))
    (broken / "prepare.onnx").write_bytes(b.stage_bytes[1])
    with pytest.raises(BundleError, match=r"prepare\.onnx: sha256 .* does not match"):
        load_bundle(broken)
    swapped = replace(b, stage_bytes=b.stage_bytes[::-1])  # past the hashes: the graphs' names
    with pytest.raises(BundleError, match=r"prepare\.onnx: expected one input named 'samples'"):
        Scorer(swapped, provider="cpu")
