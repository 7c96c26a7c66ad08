"""How many CPUs this process may really use: its affinity and its cgroup's CPU quota.

ONNX Runtime sizes its thread pool to the host's physical cores, blind to both: a detector
limited to one CPU on a 64-core node (a Kubernetes CPU limit, systemd's CPUQuota=) would
run 32 threads against a quota of one, and be throttled in every batch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_quota", "cpu_budget"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_quota(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT
) -> float | None:
    """CPUs' worth of time the process's cgroup may use per period, or None without a
    quota. cgroup v2: the smallest `cpu.max` from the process's cgroup up to the root (a
    parent's limit binds its children); v1: the cpu controller's CFS quota."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2, the unified hierarchy
            d = root / path.lstrip("/")
            for where in (d, *d.parents):
                quotas += _v2_quota(where / "cpu.max")
                if where == root:
                    break
        elif "cpu" in controllers.split(","):
            d = root / controllers / path.lstrip("/")
            for where in (d, root / controllers):  # the cgroup, or a container's own root
                quotas += _v1_quota(where)
    return min(quotas) if quotas else None


def _v2_quota(cpu_max: Path) -> list[float]:
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return []
    return [] if quota == "max" else [int(quota) / int(period)]


def _v1_quota(d: Path) -> list[float]:
    try:
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []


def cpu_budget(quota: float | None = None) -> int | None:
    """Threads worth running: the CPUs in this process's affinity, at most its cgroup
    quota rounded up; None when that is the whole machine (ONNX Runtime's own default
    is right then)."""
    machine = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine
    quota = cgroup_quota() if quota is None else quota
    budget = min(allowed, math.ceil(quota)) if quota else allowed
    return max(1, budget) if budget < machine else None
