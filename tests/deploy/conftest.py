"""The real tools the deployment tests run, found where scripts/install-deploy-tools put them.

A missing tool fails the test that needs it, saying how to install it: a deployment check
that silently skips is a check nobody runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HERE = Path(__file__).resolve().parent
TOOLS = Path(
    os.environ.get("VIGIL_TOOLS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vigil"
)
INSTALL = "run scripts/install-deploy-tools (make setup does)"


def system_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run scripts/install-tools (Debian package {package})")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return system_tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    return system_tool("systemd-analyze", "systemd")


@pytest.fixture(scope="session")
def kustomize() -> str:
    path = TOOLS / "bin" / "kustomize"
    if not os.access(path, os.X_OK):
        pytest.fail(f"kustomize is missing at {path}: {INSTALL}")
    return str(path)


@pytest.fixture(scope="session")
def grafana_node_modules() -> Path:
    """node_modules with TypeScript and @grafana/schema, as the lock file pins them."""
    dest = TOOLS / "node" / "grafana-check"
    lock = (HERE / "grafana_check" / "package-lock.json").read_bytes()
    stamp = dest / ".installed"
    if not stamp.is_file():
        pytest.fail(f"TypeScript and @grafana/schema are missing at {dest}: {INSTALL}")
    if stamp.read_text().strip() != hashlib.sha256(lock).hexdigest()[:16]:
        pytest.fail(f"{dest} predates tests/deploy/grafana_check/package-lock.json: {INSTALL}")
    if shutil.which("node") is None:
        pytest.fail("node is missing: the Grafana dashboard check runs the TypeScript compiler")
    return dest / "node_modules"


def detector_config(vigil_env: dict[str, str]) -> dict[str, Any]:
    """The effective configuration `vigil-detect config` prints for exactly these VIGIL_*
    variables (the test process's own are dropped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")} | vigil_env
    out = subprocess.run(
        [sys.executable, "-m", "detector", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"vigil-detect config rejects the settings:\n{out.stderr}"
    return json.loads(out.stdout)
