import numpy as np
import onnx
import pytest
import torch

from detector.contract.bundle import load_bundle
from detector.model.scorer import Scorer
from trainer.build import build_bundle
from trainer.config import TrainConfig
from trainer.data import Dataset, time_split
from trainer.export import OPSET, ExportError, check_parity, export_onnx
from trainer.fit import fit, scaling_for
from trainer.model import Autoencoder, ScoringModel


def _data(n: int = 600, f: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    x = z @ rng.normal(size=(2, f)) + 0.1 * rng.normal(size=(n, f))
    return (x * 10 + 50).astype(np.float32)


def test_export_is_dynamic_and_matches_torch() -> None:
    x = _data()
    res = fit(x[:500], x[500:], TrainConfig(epochs=5), progress=False)
    data = export_onnx(res.model, x)
    proto = onnx.load_model_from_string(data)
    assert proto.opset_import[0].version >= 17 and OPSET >= 17
    assert [o.name for o in proto.graph.output] == [
        "score",
        "feature_error",
        "reconstruction",
        "latent",
    ]
    assert check_parity(data, res.model, x[:100]) < 1e-4
    import onnxruntime as ort

    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for n in (1, 2, 7):
        assert s.run(["score"], {"x": x[:n]})[0].shape == (n,)


def test_parity_check_fails_when_models_differ() -> None:
    x = _data()
    a = fit(x[:500], x[500:], TrainConfig(epochs=2, seed=1), progress=False).model
    b = fit(x[:500], x[500:], TrainConfig(epochs=2, seed=2), progress=False).model
    with pytest.raises(ExportError, match="disagree"):
        check_parity(export_onnx(a, x), b, x[:50])


def test_scaling_is_in_the_graph_and_constant_columns_are_safe() -> None:
    x = _data()
    x[:, 2] = 7.0  # constant column
    offset, scale = scaling_for(x, "mse")
    assert scale[2] == 1.0
    m = ScoringModel(Autoencoder(6, (8,), 2), offset, scale).eval()
    with torch.no_grad():
        score, _fe, recon, latent = m(torch.from_numpy(x[:4]))
    assert torch.isfinite(score).all() and recon.shape == (4, 6) and latent.shape == (4, 2)


def test_training_is_reproducible_on_cpu() -> None:
    x = _data()
    cfg = TrainConfig(epochs=4, device="cpu")
    a = fit(x[:500], x[500:], cfg, progress=False)
    b = fit(x[:500], x[500:], cfg, progress=False)
    assert a.val_loss == b.val_loss


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(variant="denoising", epochs=8),
        TrainConfig(variant="sparse", epochs=8),
        TrainConfig(variant="contractive", epochs=8),
        TrainConfig(loss="bce", epochs=8),
        TrainConfig(calibration="pot", pot_risk=1e-3, pot_level=0.9, epochs=8),
        TrainConfig(folds=3, epochs=8),
    ],
    ids=["denoising", "sparse", "contractive", "bce", "pot", "cross-fitted"],
)
def test_every_variant_writes_a_loadable_bundle(cfg: TrainConfig, tmp_path) -> None:
    x = _data(1200)
    ds = Dataset([f"f{i}" for i in range(6)], x, [], 0)
    b = build_bundle(ds, cfg, tmp_path / "b", progress=False)
    assert load_bundle(tmp_path / "b").manifest == b.manifest
    scorer = Scorer(b, provider="cpu")
    assert b.manifest.threshold.method == cfg.calibration
    assert b.manifest.training.config["variant"] == cfg.variant
    # A far-off point scores above the threshold, normal ones mostly below it.
    far = x[:1] + 100 * x.std(axis=0)
    assert scorer.score(far).score[0] > b.manifest.threshold.value
    assert np.mean(scorer.score(x[-200:]).score > b.manifest.threshold.value) < 0.1


def test_time_split_is_ordered_and_complete() -> None:
    tr, va, ca = time_split(100, 0.15, 0.15)
    assert (tr.start, tr.stop, va.stop, ca.stop) == (0, 70, 85, 100)


def test_latent_must_be_smaller_than_the_input() -> None:
    x = _data()
    with pytest.raises(ValueError, match="latent size"):
        fit(x[:500], x[500:], TrainConfig(latent=6), progress=False)


def test_whitened_scaling_scores_hotellings_t2() -> None:
    """Whitened inputs and a network that reconstructs nothing score T^2 / F, with the
    covariance of every normal row given to fit; the reconstruction stays in raw units."""
    x = _data()
    cfg = TrainConfig(epochs=3, device="cpu", scaling="whiten", whiten_floor=1e-12)
    model = fit(x[:500], x[500:], cfg, progress=False).model
    for p in model.autoencoder.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        score, fe, recon, _ = model(torch.from_numpy(x[:50]))
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    t2 = np.einsum("ij,jk,ik->i", z[:50], np.linalg.inv(np.cov(z, rowvar=False)), z[:50])
    np.testing.assert_allclose(score.numpy() * x.shape[1], t2, rtol=1e-3)
    np.testing.assert_allclose(fe.numpy().mean(axis=1), score.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        recon.numpy(), np.broadcast_to(x.mean(axis=0), recon.shape), rtol=1e-4
    )
    assert check_parity(export_onnx(model, x), model, x[:100]) < 1e-4


def test_whitening_refuses_bce() -> None:
    with pytest.raises(ValueError, match="--loss mse"):
        TrainConfig(scaling="whiten", loss="bce").check()
