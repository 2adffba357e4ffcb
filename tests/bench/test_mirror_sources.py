"""``bdn bench mirror --source https|azure`` at toy sizes: every row has a figure, the
CPU note, and the unchanged re-mirror moves nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.harness import MiB
from bench.mirror import MirrorBenchOptions
from bench.mirror_sources import run_mirror_source_bench
from tests.backends.azure.azurite import azurite_binary


@pytest.mark.parametrize("source", ["https", "azure"])
def test_source_bench_runs_and_remirror_moves_nothing(source: str, tmp_path: Path) -> None:
    if source == "https" and (shutil.which("nginx") is None or shutil.which("curl") is None):
        pytest.skip("nginx and curl are needed for --source https")
    if source == "azure" and azurite_binary() is None:
        pytest.skip("azurite is not installed: run `npm install --prefix .ci/node azurite`")
    report = run_mirror_source_bench(
        source, MirrorBenchOptions(shards=2, shard_size=2 * MiB, repeat=1, workdir=tmp_path))
    [section] = report.sections
    rows = {r.key: r for r in section.results}
    assert rows["bdn"].seconds and rows["ref"].seconds and not rows["ref"].failed
    assert "CPU" in rows["bdn"].note and "CPU" in rows["ref"].note
    assert rows["again"].note == "bytes_transferred 0"
    assert list(tmp_path.iterdir()) == []  # the work directory is removed
