"""Shared fixtures: one real Kafka broker per test session, one small trained bundle."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detector.contract.bundle import Bundle
from detector.features.windows import Windows, window_ends
from detector.model.scorer import Scorer
from trainer.synth import CHANNELS

ROOT = Path(__file__).resolve().parents[1]
# A copy of the Tennessee Eastman runs the tests use, with its LICENSE: nothing outside the clone.
TEP_DIR = Path(os.environ.get("VIGIL_TEP_DIR", ROOT / "data" / "tep"))
FEATURES_SYNTH = list(CHANNELS)  # the synthetic plant's channels, in order


def copy_as_version(src: Path, dst: Path, version: str) -> Path:
    """A copy of a bundle under another version name (a stand-in for a retrained model)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["version"] = version
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def assert_stages_agree(bundle: Bundle, x: np.ndarray, entity: np.ndarray) -> None:
    """A windowed bundle's stages (each row prepared once, then the network) give the
    outputs of its model.onnx, for windows out of row order (as the daemon's are), whole and
    in parts of three windows."""
    assert bundle.stage_bytes is not None and bundle.manifest.stages is not None
    w = bundle.manifest.window
    order, ends = window_ends(entity, len(x), w)
    windows = Windows(x[order], np.random.default_rng(0).permutation(ends), w)
    whole_graph = Scorer(replace(bundle, stage_bytes=None), provider="cpu")
    assert whole_graph._stages is None
    want = whole_graph.score(windows.take(slice(None)), latent=True)
    for chunk in (None, 3 * w * x.shape[1]):
        staged = Scorer(bundle, provider="cpu", **({"chunk_values": chunk} if chunk else {}))
        assert staged._stages is not None
        got = staged.score(windows, latent=True)
        for name in ("score", "feature_error", "reconstruction", "latent"):
            np.testing.assert_allclose(
                getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6, err_msg=name
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node KRaft broker started by the project's own script."""
    port, cport = free_port(), free_port()
    d = tmp_path_factory.mktemp("kafka")
    script = ROOT / "scripts" / "kafka-dev"
    proc = subprocess.run(
        [
            str(script),
            "start",
            "--port",
            str(port),
            "--controller-port",
            str(cport),
            "--dir",
            str(d),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"kafka-dev start failed:\n{proc.stderr}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(script), "stop", "--dir", str(d)], capture_output=True, timeout=60)


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """A fresh, uniquely named topic per call."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)

    def create(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(name, partitions, 1)])
        return name

    yield create
    admin.close()


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from trainer.synth import simulate

    d = tmp_path_factory.mktemp("synth")
    out = {}
    for name, steps, seed, rate in (("normal", 1440, 0, 0.0), ("faulty", 480, 7, 0.1)):
        t = simulate(steps, 4, seed=seed, fault_rate=rate)
        out[name] = d / f"{name}.csv"
        pacsv.write_csv(pa.table(t.columns()), out[name])
    return out


@pytest.fixture(scope="session")
def bundle_dir(synth_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dense bundle trained on synthetic normal telemetry (seconds)."""
    from trainer import data
    from trainer.build import build_bundle
    from trainer.config import TrainConfig

    ds = data.load([str(synth_data["normal"])], features=FEATURES_SYNTH)
    cfg = TrainConfig(epochs=60, patience=15, name="synth-test")
    out = tmp_path_factory.mktemp("bundles") / "synth"
    build_bundle(ds, cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tep_dir() -> Path:
    if not (TEP_DIR / "d00.dat").is_file():
        pytest.fail(f"Tennessee Eastman data not found at {TEP_DIR} (set VIGIL_TEP_DIR)")
    return TEP_DIR
