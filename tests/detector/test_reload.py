"""Registry and model watcher, without Kafka: publish, rollback, verify, refuse, swap."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.contract.bundle import load_bundle
from detector.errors import BundleError
from detector.features.decode import Mapping
from detector.model.registry import (
    list_versions,
    publish,
    read_current,
    resolve,
    rollback,
    set_current,
)
from detector.model.scorer import Scorer
from detector.model.watcher import ModelWatcher, check_compatible
from tests.conftest import FEATURES_SYNTH, copy_as_version


def _retrained(src: Path, tmp: Path, version: str) -> Path:
    return copy_as_version(src, tmp / version, version)


@pytest.fixture
def registry(bundle_dir: Path, tmp_path: Path) -> Path:
    reg = tmp_path / "registry"
    publish(bundle_dir, reg)
    return reg


def test_publish_is_atomic_listed_and_rolled_back(
    registry: Path, bundle_dir: Path, tmp_path: Path
) -> None:
    model_dir = registry / "synth-test"
    first = read_current(model_dir)
    newer = _retrained(bundle_dir, tmp_path, "29990101T000000Z-00000001")
    publish(newer, registry)
    assert read_current(model_dir) == "29990101T000000Z-00000001"
    assert resolve(model_dir) == model_dir / "29990101T000000Z-00000001"
    assert [e.live for e in list_versions(registry)] == [False, True]
    assert not any(p.name.startswith(".") for p in model_dir.iterdir())  # no temporaries left
    # Readable by detectors running as another user, as the umask allows: not mkdtemp's 0700.
    mask = os.umask(0o022)
    os.umask(mask)
    assert (model_dir / "29990101T000000Z-00000001").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (model_dir / "CURRENT").stat().st_mode & 0o777 == 0o666 & ~mask
    assert rollback(model_dir) == first
    assert read_current(model_dir) == first
    with pytest.raises(BundleError, match="no version older"):
        rollback(model_dir)
    assert rollback(model_dir, to="29990101T000000Z-00000001") == "29990101T000000Z-00000001"


def test_publish_refuses_a_broken_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    bad = _retrained(bundle_dir, tmp_path, "29990101T000000Z-00000002")
    (bad / "model.onnx").write_bytes(b"truncated")
    with pytest.raises(BundleError, match="sha256"):
        publish(bad, tmp_path / "reg")


def _watcher(model_path: Path, results: list[tuple[str, str]], mapping: Mapping) -> ModelWatcher:
    live = Scorer(load_bundle(resolve(model_path)), provider="cpu")
    return ModelWatcher(
        model_path, live, mapping, "cpu", None, 0.1, lambda r, v, _: results.append((r, v))
    )


def test_watcher_swaps_good_versions_and_refuses_bad_ones_once(
    registry: Path, bundle_dir: Path, tmp_path: Path
) -> None:
    model_dir = registry / "synth-test"
    mapping = Mapping(features=tuple(FEATURES_SYNTH))
    results: list[tuple[str, str]] = []
    w = _watcher(model_dir, results, mapping)
    w.observe([orjson.dumps(dict.fromkeys(FEATURES_SYNTH, 1.0))] * 5)
    w.poll_once()
    assert w.take() is None and results == []  # nothing new

    good = _retrained(bundle_dir, tmp_path, "29990101T000000Z-0000000a")
    publish(good, registry)
    w.poll_once()
    swapped = w.take()
    assert swapped is not None and swapped.bundle.manifest.version == good.name
    assert results == [("ok", good.name)]

    broken = copy_as_version(
        good, model_dir / "29990101T000000Z-0000000b", "29990101T000000Z-0000000b"
    )
    (broken / "model.onnx").write_bytes(b"\x00" * 10)
    set_current(model_dir, broken.name)
    w.poll_once()
    w.poll_once()  # refused versions are not retried in a loop
    assert w.take() is None
    assert results[1:] == [("failed", broken.name)]


def test_incompatible_features_are_refused_on_live_traffic(bundle_dir: Path) -> None:
    mapping = Mapping(features=tuple(FEATURES_SYNTH))
    bundle = load_bundle(bundle_dir)
    traffic = [orjson.dumps(dict.fromkeys(FEATURES_SYNTH, 1.0))] * 3
    check_compatible(mapping, bundle, traffic)  # same features: fine
    other = Mapping(features=("a", "b"))
    with pytest.raises(BundleError, match="3 of 3 recent messages"):
        check_compatible(other, bundle, [orjson.dumps({"a": 1, "b": 2})] * 3)
    with pytest.raises(BundleError, match="positions would be misread"):
        check_compatible(Mapping(features=("a",), features_at="array"), bundle, [])


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_memory_does_not_grow_across_swaps(bundle_dir: Path) -> None:
    """Generous bound; bench/swap_memory.py measures 50 swaps precisely."""
    bundle = load_bundle(bundle_dir)
    x = np.ones((256, len(FEATURES_SYNTH)), dtype=np.float32)
    for _ in range(5):  # warm up allocators
        Scorer(bundle, provider="cpu").score(x)
    gc.collect()
    before = _rss_mb()
    for _ in range(40):
        s = Scorer(bundle, provider="cpu")
        s.score(x)
        del s
    gc.collect()
    assert _rss_mb() - before < 100, (
        f"RSS grew from {before:.0f} MB to {_rss_mb():.0f} MB over 40 swaps"
    )
