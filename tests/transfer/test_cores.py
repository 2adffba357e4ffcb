"""The automatic worker count: affinity capped by the cgroup CPU limit (v2 and v1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bdn.config.settings import Settings, parse_workers
from bdn.errors import ConfigError
from bdn.pull import PullOptions
from bdn.transfer import TransferConfig, TransferEngine
from bdn.transfer.cores import available_cpus, cgroup_cpu_limit, resolve_workers

AFFINITY = len(os.sched_getaffinity(0))


def fake_cgroup(tmp: Path, files: dict[str, str], own: str = "") -> tuple[Path, Path]:
    root = tmp / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp / "proc-self-cgroup"
    proc.write_text(f"0::/{own}\n")
    return root, proc


@pytest.mark.parametrize(("text", "limit"), [
    ("150000 100000\n", 1.5), ("100000 100000", 1.0), ("max 100000\n", None),
])
def test_cgroup_v2_cpu_max(tmp_path: Path, text: str, limit: float | None) -> None:
    root, proc = fake_cgroup(tmp_path, {"cpu.max": text})
    assert cgroup_cpu_limit(root, proc_cgroup=proc) == limit


def test_cgroup_v2_of_the_process_own_group_wins(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {"cpu.max": "max 100000", "pod/x/cpu.max": "100000 100000"},
                             own="pod/x")
    assert cgroup_cpu_limit(root, proc_cgroup=proc) == 1.0
    assert available_cpus(root, proc_cgroup=proc) == 1


@pytest.mark.parametrize(("quota", "limit"), [("250000", 2.5), ("-1", None)])
def test_cgroup_v1_cfs_quota(tmp_path: Path, quota: str, limit: float | None) -> None:
    root, proc = fake_cgroup(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": quota,
                                        "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root, proc_cgroup=proc) == limit


def test_no_cgroup_means_the_affinity_mask(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {})
    assert cgroup_cpu_limit(root, proc_cgroup=proc) is None
    assert available_cpus(root, proc_cgroup=proc) == AFFINITY


def test_a_fractional_limit_rounds_up_and_never_exceeds_the_mask(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {"cpu.max": "50000 100000"})
    assert available_cpus(root, proc_cgroup=proc) == 1
    root, proc = fake_cgroup(tmp_path / "big", {"cpu.max": "6400000 100000"})
    assert available_cpus(root, proc_cgroup=proc) == AFFINITY


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", "", "257"])
def test_bad_worker_counts_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_workers(bad, field="--workers")
    assert "\n" not in str(err.value) and str(err.value).startswith("--workers: ")


def test_bdn_workers_is_read_once_and_auto_resolves() -> None:
    assert Settings.from_env({"BDN_WORKERS": "3"}).workers == 3
    assert Settings.from_env({"BDN_WORKERS": "auto"}).workers is None
    assert Settings.from_env({}).workers is None
    assert resolve_workers(None) == available_cpus() and resolve_workers(5) == 5
    with pytest.raises(ConfigError, match="BDN_WORKERS"):
        Settings.from_env({"BDN_WORKERS": "lots"})


def test_pull_options_take_the_setting_unless_the_caller_chose() -> None:
    assert PullOptions().with_workers(4).transfer.workers == 4
    assert PullOptions().with_workers(None).transfer.workers == available_cpus()
    assert PullOptions().with_workers(1).transfer.workers == 1
    chosen = PullOptions(transfer=TransferConfig(workers=2))
    assert chosen.with_workers(8).transfer.workers == 2


def test_an_explicit_single_worker_sticks() -> None:
    """``transfer.workers == 1`` is a choice (in-process only), not "unset": neither the
    automatic count nor ``BDN_WORKERS`` overrides it; ``None`` is what "unset" means."""
    alone = PullOptions(transfer=TransferConfig(workers=1))
    assert alone.with_workers(None).transfer.workers == 1
    assert alone.with_workers(8).transfer.workers == 1
    assert TransferConfig().workers is None
    assert PullOptions().with_workers(None).transfer.workers == available_cpus()
    with pytest.raises(ValueError, match="workers must be >= 1"):
        TransferConfig(workers=0)


async def test_an_engine_whose_workers_were_not_chosen_stays_in_process() -> None:
    async with TransferEngine(TransferConfig()) as engine:
        assert engine._plane is None
