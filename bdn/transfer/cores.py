"""How many data-plane workers a pull may use: the CPUs this process may run on.

The count is the smaller of the CPUs in the process's affinity mask and the
cgroup's CPU limit (cgroup v2 ``cpu.max``; v1 ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us``), so a container limited to 2 CPUs on a 64-core node gets
2 workers, not 64. ``--workers`` and ``BDN_WORKERS`` override it.

>>> available_cpus() >= 1
True
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from bdn.config.settings import MAX_WORKERS, parse_workers

__all__ = ["MAX_WORKERS", "available_cpus", "cgroup_cpu_limit", "parse_workers", "resolve_workers"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup(proc_cgroup: Path) -> str:
    """This process's cgroup path (v2 line ``0::/path``), or ``""``."""
    with contextlib.suppress(OSError):
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].strip().lstrip("/")
    return ""


def cgroup_cpu_limit(
    root: Path = CGROUP_ROOT, *, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The cgroup's CPU limit in CPUs, or ``None`` when unlimited or unknown.

    cgroup v2: ``cpu.max`` (``"150000 100000"`` = 1.5 CPUs, ``"max ..."`` =
    none) in this process's cgroup, else at ``root``. cgroup v1:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under ``root/cpu`` (or
    ``cpu,cpuacct``); a quota of -1 means none.
    """
    own = _own_cgroup(proc_cgroup)
    for base in dict.fromkeys([root / own, root]):
        with contextlib.suppress(OSError, ValueError):
            quota, period = (base / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        with contextlib.suppress(OSError, ValueError):
            quota_us = int((root / sub / "cpu.cfs_quota_us").read_text())
            period_us = int((root / sub / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def available_cpus(root: Path = CGROUP_ROOT, *, proc_cgroup: Path = Path("/proc/self/cgroup")
                   ) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup limit
    (rounded up: 1.5 CPUs of quota keep two workers busy part of the time)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup=proc_cgroup)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, min(cpus, MAX_WORKERS))


def resolve_workers(requested: int | None) -> int:
    """``requested``, or :func:`available_cpus` when it is ``None`` ("auto")."""
    return available_cpus() if requested is None else requested
