import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from detector.contract.bundle import load_bundle
from detector.errors import BundleError, ConfigError
from detector.model.scorer import Scorer, decide, gpu_present, top_features


@pytest.fixture
def copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "b"))


def _edit_manifest(path: Path, **changes: object) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_round_trip_and_self_test(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    s = Scorer(b, provider="cpu")
    assert s.provider == "CPUExecutionProvider"
    assert (bundle_dir / "report.png").stat().st_size > 1000
    m = b.manifest
    assert m.window == 1 and len(m.features) == 8 and m.threshold.value > 0
    props = {p.key: p.value for p in onnx.load(bundle_dir / "model.onnx").metadata_props}
    assert json.loads(props["vigil.version"]) == m.version
    assert json.loads(props["vigil.features"]) == m.features
    x = np.asarray(m.golden.inputs, dtype=np.float32)
    np.testing.assert_allclose(s.score(x).score, m.golden.scores, rtol=1e-5)
    for n in (1, 3, 1000):  # the batch dimension is dynamic
        assert s.score(np.repeat(x[:1], n, axis=0)).score.shape == (n,)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda p: (p / "model.onnx").unlink(), "model.onnx is missing"),
        (lambda p: (p / "manifest.json").write_text("{oops"), "not valid JSON"),
        (lambda p: (p / "model.onnx").write_bytes((p / "model.onnx").read_bytes()[:500]), "sha256"),
        (lambda p: _edit_manifest(p, schema_version=99), "schema version 99"),
        (lambda p: _edit_manifest(p, features=["a"] * 8), "unique"),
        (lambda p: _edit_manifest(p, name="../../etc"), "name"),
        (
            lambda p: _edit_manifest(
                p, threshold={"value": -1, "method": "quantile", "params": {}}
            ),
            "threshold",
        ),
        (lambda p: _edit_manifest(p, features=[f"f{i}" for i in range(200_000)]), "features"),
        (lambda p: _edit_manifest(p, unexpected=1), "unexpected"),
        (lambda p: _edit_manifest(p, bounds={"nope": [0, None]}), "not a payload feature"),
        (  # behaviour features the model does not take
            lambda p: _edit_manifest(p, behaviour={"entities": [{"entity": "card"}]}),
            "behaviour features",
        ),
        (  # a dense model has no stages: its rows are prepared once already
            lambda p: _edit_manifest(
                p, stages={"lags": 1, "prepare_sha256": "0" * 64, "network_sha256": "0" * 64}
            ),
            "stages with 1 lags need a window",
        ),
    ],
)
def test_damaged_bundles_are_refused_with_a_reason(copy: Path, damage, message: str) -> None:
    damage(copy)
    with pytest.raises(BundleError, match=message):
        Scorer(load_bundle(copy), provider="cpu")


def test_golden_sample_mismatch_is_refused(copy: Path) -> None:
    m = json.loads((copy / "manifest.json").read_text())
    m["golden"]["scores"] = [s * 3 + 1 for s in m["golden"]["scores"]]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="golden sample"):
        Scorer(load_bundle(copy), provider="cpu")


def _replace_model(path: Path, model: onnx.ModelProto) -> None:
    import hashlib

    data = model.SerializeToString()
    (path / "model.onnx").write_bytes(data)
    _edit_manifest(path, model_sha256=hashlib.sha256(data).hexdigest())


def test_model_whose_inputs_do_not_match_the_manifest_is_refused(copy: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 5])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["score"])], "g", [x], [y])
    _replace_model(
        copy, helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    )
    with pytest.raises(BundleError, match=r"shape \['N', 5\].*8 features"):
        Scorer(load_bundle(copy), provider="cpu")


def test_model_missing_outputs_is_refused(copy: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 8])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["score"])], "g", [x], [y])
    _replace_model(
        copy, helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    )
    with pytest.raises(BundleError, match="missing"):
        Scorer(load_bundle(copy), provider="cpu")


def test_garbage_model_bytes_are_refused(copy: Path) -> None:
    _replace_model_bytes = b"\x08\x07garbage" * 100
    import hashlib

    (copy / "model.onnx").write_bytes(_replace_model_bytes)
    _edit_manifest(copy, model_sha256=hashlib.sha256(_replace_model_bytes).hexdigest())
    with pytest.raises(BundleError, match="cannot load"):
        Scorer(load_bundle(copy), provider="cpu")


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_bundle(tmp_path / "nope")


def test_cuda_provider_only_when_a_gpu_is_really_there(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    if gpu_present():
        assert Scorer(b, provider="cuda").provider == "CUDAExecutionProvider"
    else:
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            Scorer(b, provider="cuda")
        assert Scorer(b, provider="auto").provider == "CPUExecutionProvider"


def test_decide_ranks_features_by_share_of_error() -> None:
    from detector.model.scorer import Scores

    rng = np.random.default_rng(3)
    fe = rng.random((200, 7)).astype(np.float32)
    s = Scores(score=fe.mean(axis=1), feature_error=fe, reconstruction=fe)
    d = decide(s, threshold=0.5, top_k=3)
    want = np.argsort(-fe, axis=1)[:, :3]
    np.testing.assert_array_equal(d.top_index, want)
    np.testing.assert_allclose(
        d.top_share, np.take_along_axis(fe / fe.sum(1, keepdims=True), want, 1), rtol=1e-5
    )
    np.testing.assert_array_equal(d.anomaly, s.score > 0.5)
    assert decide(s, 0.5, top_k=50).top_index.shape == (200, 7)
    # The daemon ranks only the rows that publish an event: the same ranking, row by row.
    bare = decide(s, 0.5, top_k=0)
    assert bare.top_index.shape == bare.top_share.shape == (200, 0)
    np.testing.assert_array_equal(bare.anomaly, d.anomaly)
    rows = np.flatnonzero(d.anomaly)
    top, share = top_features(fe[rows], 3)
    np.testing.assert_array_equal(top, d.top_index[rows])
    np.testing.assert_array_equal(share, d.top_share[rows])


def test_onnx_runtime_threads_do_not_spin_between_batches_unless_asked() -> None:
    """Spinning pool threads burnt 82% of a core at 500 msg/s (15% without): off by default."""
    from detector.model.scorer import _session_options

    off, on = _session_options(None, spinning=False), _session_options(2, spinning=True)
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert off.get_session_config_entry(key) == "0"
        with pytest.raises(Exception, match="does not have"):  # unset: the default, spin
            on.get_session_config_entry(key)
    assert on.intra_op_num_threads == 2
