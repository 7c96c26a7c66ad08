"""The README's first command, shortened: the demo must train, detect and stop cleanly."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_demo_trains_streams_alerts_and_stops(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            "--bootstrap",
            kafka_bootstrap,
            "--workdir",
            str(tmp_path),
            "--metrics-port",
            str(free_port()),
            "--train-steps",
            "1000",
            "--normal-steps",
            "150",
            "--rate",
            "300",
            "--duration",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "detector ready" in out.stdout
    assert "now injecting faults" in out.stdout
    assert out.stdout.count("ALERT") >= 5
    assert "detector stopped (exit 0)" in out.stdout
    assert (tmp_path / "model" / "manifest.json").is_file()
