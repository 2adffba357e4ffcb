"""``bdn pull --workers`` / ``BDN_WORKERS``: bad values are one-line errors; a pull over
HTTP with worker processes materializes the same tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import assert_one_line_error
from tests.e2e.agents import mirrored_model, publish_store
from tests.fixtures import pattern_bytes, run_bdn
from tests.httpserver import FaultServer

MANIFEST = "sha256:" + "0" * 64


@pytest.mark.parametrize("bad", ["0", "many", "-1"])
def test_a_bad_workers_flag_is_a_one_line_error(tmp_path: Path, bad: str) -> None:
    res = run_bdn("pull", MANIFEST, "--to", str(tmp_path / "m"), f"--workers={bad}",
                  home=tmp_path)
    assert_one_line_error(res, "--workers", "whole number from 1 to 256")


def test_a_bad_bdn_workers_is_a_one_line_error(tmp_path: Path) -> None:
    res = run_bdn("pull", MANIFEST, "--to", str(tmp_path / "m"), home=tmp_path,
                  env={"BDN_WORKERS": "x2"})
    assert_one_line_error(res, "BDN_WORKERS", "'auto'")


async def test_a_pull_with_worker_processes_is_bit_exact(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    chunk = 1024 * 1024
    files = {"a.safetensors": pattern_bytes(1, 70 * chunk + 5), "b.json": b"{}"}
    _, store_root, manifest = await mirrored_model(tmp_path / "src", files, chunk)
    base = publish_store(fault_server, store_root)
    mount = tmp_path / "mount"
    res = run_bdn("-v", "pull", str(manifest.id), "--to", str(mount), "--workers", "2", "--json",
                  home=tmp_path, env={"BDN_STORE": base, "BDN_CACHE_DIR": str(tmp_path / "c")})
    assert res.code == 0, res.stderr
    for rel, data in files.items():
        assert (mount / rel).read_bytes() == data
    assert "started data-plane worker process" in res.stderr
