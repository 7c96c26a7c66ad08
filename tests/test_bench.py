"""The in-process benchmark still runs against the code it measures: a script that only
runs by hand breaks silently when an interface under it changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_hot_path_bench_measures_the_detectors_batch_work(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hot_path.py"), "--batch", "400", "--repeats", "2",
         "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    result = json.loads((tmp_path / "hot_path.json").read_text())
    assert result["batch"] == 400 and result["features"] == 8
    assert result["us_per_message"] > 0 and result["events_per_batch"] > 0
    assert (tmp_path / "hot_path.md").read_text().startswith("# Detector hot path")


def test_stages_bench_compares_a_windowed_models_two_graphs(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "stages.py"), "--batch", "400", "--seconds", "0.1",
         "--rounds", "1", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=600,
    )  # fmt: skip
    result = json.loads((tmp_path / "stages.json").read_text())
    assert result["batch"] == 400 and result["max_relative_score_difference"] < 1e-4
    assert all(v[0] > 0 for v in result["windows_per_s"].values())
    assert (tmp_path / "stages.md").read_text().startswith("# Windowed inference")
