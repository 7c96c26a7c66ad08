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


def test_fraud_demo_replays_payments_and_shows_alerts_with_the_truth(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = subprocess.run(
        [
            sys.executable, str(ROOT / "scripts" / "demo.py"), "--scenario", "fraud",
            "--bootstrap", kafka_bootstrap, "--workdir", str(tmp_path),
            "--metrics-port", str(free_port()), "--stream-days", "10", "--rate", "500",
            "--duration", "25",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "training the autoencoder on amount + per-card" in out.stdout
    alerts = [ln for ln in out.stdout.splitlines() if "ALERT" in ln]
    assert len(alerts) >= 5, out.stdout
    assert all("card" in ln and "[truth:" in ln for ln in alerts)
    assert any("fraud:" in ln for ln in alerts)
    assert "on fraudulent transactions" in out.stdout
    assert "detector stopped (exit 0)" in out.stdout
