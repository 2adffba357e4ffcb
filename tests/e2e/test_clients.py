"""The client side of the agent: `bdn pull --agent` and the Python API with BDN_AGENT."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import bdn
from bdn.errors import ConfigError, TransferError
from tests.e2e.agents import (
    assert_same_tree,
    free_ports,
    mirrored_model,
    running,
    short_dir,
    start_agent,
    wait_ready,
)
from tests.fixtures import pattern_bytes, run_bdn

FILES = {
    "config.json": b'{"n": 1}',
    "model.safetensors": pattern_bytes(9, 700_000),
    "tokenizer/vocab.json": b"{}",
}


async def test_cli_and_api_pull_through_a_running_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, store_root, manifest = await mirrored_model(tmp_path, FILES, 256 * 1024)
    with short_dir() as base:
        agent = start_agent(base, "a0", free_ports(1)[0], store=f"file://{store_root}")
        with running([agent]):
            await wait_ready([agent])
            res = run_bdn("pull", manifest.id, "--to", str(tmp_path / "cli"), "--agent",
                          agent.agent_address, "--json", home=tmp_path)
            assert res.code == 0, res.stderr
            out = json.loads(res.stdout)
            assert out["bytes_from_origin"] == sum(len(v) for v in FILES.values())
            assert_same_tree(tmp_path / "cli", FILES)

            monkeypatch.setenv("BDN_AGENT", agent.agent_address)
            seen: list[tuple[int, int]] = []
            # The source was mirrored into the agent's store: found by config hash.
            path = bdn.ensure_weights(f"file://{src}", tmp_path / "api",
                                      on_progress=lambda d, t: seen.append((d, t)))
            assert path == tmp_path / "api"
            assert_same_tree(path, FILES)
            with pytest.raises(ConfigError, match="mount_location"):
                bdn.ensure_weights(f"file://{src}")


def test_a_dead_agent_is_a_one_line_error(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "nobody.sock"
    res = run_bdn("pull", "sha256:" + "a" * 64, "--to", str(tmp_path / "m"), "--agent",
                  f"unix://{sock}", home=tmp_path)
    assert res.code == 1 and "Traceback" not in res.stderr
    assert str(sock) in res.stderr and len(res.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("BDN_AGENT", f"unix://{sock}")
    with pytest.raises(TransferError, match=os.fspath(sock)):
        bdn.ensure_weights(str(tmp_path), tmp_path / "m")
