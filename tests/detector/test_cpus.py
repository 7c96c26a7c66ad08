"""The CPU budget that sizes ONNX Runtime's threads: cgroup quotas and affinity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detector.model.cpus import cgroup_quota, cpu_budget


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_v2_quota_is_the_tightest_from_the_cgroup_up(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "cg/cpu.max": "max 100000\n",
            "cg/kubepods/cpu.max": "400000 100000\n",
            "cg/kubepods/pod1/cpu.max": "150000 100000\n",
            "cg/kubepods/pod1/ctr/cpu.max": "max 100000\n",
            "self": "0::/kubepods/pod1/ctr\n",
        },
    )
    assert cgroup_quota(tmp_path / "self", tmp_path / "cg") == 1.5


def test_v2_without_a_limit_has_no_quota(tmp_path: Path) -> None:
    _tree(tmp_path, {"cg/cpu.max": "max 100000\n", "self": "0::/\n"})
    assert cgroup_quota(tmp_path / "self", tmp_path / "cg") is None


def test_v1_cfs_quota(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "cg/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cg/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "cg/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
            "cg/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "self": "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        },
    )
    assert cgroup_quota(tmp_path / "self", tmp_path / "cg") == 0.5


def test_no_cgroup_file_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_quota(tmp_path / "missing", tmp_path) is None


def test_budget_is_the_quota_rounded_up_and_never_zero() -> None:
    machine = os.cpu_count() or 1
    if len(os.sched_getaffinity(0)) < machine:
        pytest.skip("this process's affinity is already narrowed")
    assert cpu_budget(quota=0.2) == (1 if machine > 1 else None)
    assert cpu_budget(quota=float(machine)) is None  # the whole machine: ONNX Runtime's default


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs to narrow to one")
def test_a_scorer_pinned_to_one_cpu_runs_one_onnx_runtime_thread(bundle_dir: Path) -> None:
    """Under real affinity (as `taskset` or a cpuset sets it), the session's pool is sized
    to the one CPU, not to the machine."""
    code = (
        "import os; os.sched_setaffinity(0, {0})\n"
        "from detector.contract.bundle import load_bundle\n"
        "from detector.model.scorer import Scorer\n"
        f"s = Scorer(load_bundle({str(bundle_dir)!r}), provider='cpu')\n"
        "print(s.threads, s.session.get_session_options().intra_op_num_threads)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]
