"""``strict`` through the node agent: the agent proves what it uses, as an in-process pull does.

The gap this closes: ``bdn pull --strict --agent ...`` sent no strict to the
agent, so the agent used a cache entry admitted on its store's word alone
(never hashed) and served whatever bytes it held. Here the agent's cached blob
is changed in place (same inode, same mtime: what a bit flip on disk or a
tamperer leaves), the non-strict pull shows the poison is served, and the
strict one, through the CLI and the pod API, proves it, drops it and fetches
the real bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bdn.agent.client import AgentClient
from bdn.agent.metrics import AgentMetrics
from bdn.agent.protocol import PullStatus, parse_pull_request, request_for
from bdn.agent.pulls import PullContext, PullRegistry
from bdn.cache import NodeCache
from bdn.errors import ConfigError, MountConflict
from bdn.manifest import Manifest
from bdn.pull import PullOptions
from tests.e2e.agents import (
    AgentProcess,
    assert_same_tree,
    free_ports,
    mirrored_model,
    running,
    short_dir,
    start_agent,
    wait_ready,
)
from tests.fixtures import pattern_bytes, run_bdn

ID = "sha256:" + "a" * 64
SHARD = "model.safetensors"
FILES = {SHARD: pattern_bytes(5, 600_000), "config.json": b'{"n": 2}'}
POISON = pattern_bytes(77, len(FILES[SHARD]))


# -- the request ---------------------------------------------------------------------------


def test_strict_is_part_of_a_pull_request_and_checked() -> None:
    body = request_for(ID, "/m", strict=True)
    assert body["strict"] is True and parse_pull_request(body).strict is True
    assert "strict" not in request_for(ID, "/m")
    assert parse_pull_request(request_for(ID, "/m")).strict is False
    with pytest.raises(ConfigError, match="strict"):
        parse_pull_request({"manifest_id": ID, "mount_location": "/m", "strict": "yes"})


def test_a_strict_request_runs_with_strict_options_background_or_not() -> None:
    fields: dict[str, Any] = dict(store=None, cache=None, secrets=None, tiers=None)
    ctx = PullContext(options=PullOptions(), background_fill_rate=200e6, **fields)
    fg = parse_pull_request(request_for(ID, "/m", strict=True))
    bg = parse_pull_request(request_for(ID, "/m", strict=True, background=True))
    assert ctx.options_for(fg).strict and ctx.options_for(bg).strict
    assert not ctx.options_for(parse_pull_request(request_for(ID, "/m"))).strict


def test_the_status_carries_the_bytes_proven() -> None:
    status = PullStatus.from_dict({"mount_location": "/m", "bytes_proven": 7})
    assert status.bytes_proven == 7 and status.to_dict()["bytes_proven"] == 7


# -- against a real agent ------------------------------------------------------------------


def poison_in_place(agent: AgentProcess, manifest: Manifest) -> None:
    """Overwrite the agent's cached shard with other bytes, keeping its inode and mtime:
    the admission record (on the store's word, never proven) still holds."""
    sha = next(f.sha256 for f in manifest.files if f.path == SHARD)
    cache = NodeCache(agent.cache)
    try:
        blob = cache.blob_path(sha)
    finally:
        cache.close()
    st = blob.stat()
    os.chmod(blob, st.st_mode | stat.S_IWUSR)
    with blob.open("r+b") as f:
        f.write(POISON)
    os.chmod(blob, stat.S_IMODE(st.st_mode))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert blob.stat().st_ino == st.st_ino


@pytest.mark.parametrize("via", ["cli", "pod-api"])
async def test_a_strict_pull_through_the_agent_proves_a_vouched_cache_entry(
    tmp_path: Path, via: str
) -> None:
    _, store_root, manifest = await mirrored_model(tmp_path, FILES, 256 * 1024)
    with short_dir() as base:
        agent = start_agent(base, "a0", free_ports(1)[0], store=f"file://{store_root}")
        with running([agent]):
            await wait_ready([agent])
            client = AgentClient(agent.agent_address, poll_interval=0.05)
            first = await client.pull(request_for(manifest.id, tmp_path / "first"))
            assert first["state"] == "succeeded" and first["bytes_proven"] == 0
            poison_in_place(agent, manifest)

            # The gap, reproduced: without strict the agent takes its store's word
            # for the cached entry and serves what the disk holds.
            plain = await client.pull(request_for(manifest.id, tmp_path / "plain"))
            assert plain["state"] == "succeeded"
            assert (tmp_path / "plain" / SHARD).read_bytes() == POISON

            # Strict: the hit is proven, found wrong, dropped and fetched again.
            mount = tmp_path / "strict"
            if via == "cli":
                res = run_bdn("pull", manifest.id, "--to", str(mount), "--agent",
                              agent.agent_address, "--strict", "--json", home=tmp_path)
                assert res.code == 0, res.stderr
                out = json.loads(res.stdout)
            else:
                out = await client.pull(request_for(manifest.id, mount, strict=True))
                assert out["state"] == "succeeded"
                # It hashed the poisoned hit, then the blob it fetched again.
                assert out["bytes_proven"] >= 2 * len(FILES[SHARD])
            assert_same_tree(mount, FILES)

            # Every blob is now proven by this node: a strict pull hashes and
            # fetches nothing more (as an in-process strict pull).
            again = await client.pull(request_for(manifest.id, tmp_path / "again", strict=True))
            assert again["state"] == "succeeded"
            assert (again["bytes_proven"], again["bytes_from_origin"]) == (0, 0)
            assert_same_tree(tmp_path / "again", FILES)


async def test_a_strict_request_does_not_join_a_pull_that_proves_nothing(
    tmp_path: Path,
) -> None:
    # While a plain pull of the same tree runs (it cannot have run a step yet: the
    # second request comes in the same loop turn), a strict caller is refused
    # rather than handed an unproven tree; the other way round joins.
    fields: dict[str, Any] = dict(store=None, cache=None, secrets=None, tiers=None)
    registry = PullRegistry(PullContext(options=PullOptions(), trees_roots=(tmp_path,),
                                        **fields), AgentMetrics())
    mount = str(tmp_path / "m")
    plain = registry.submit(parse_pull_request(request_for(ID, mount)))
    with pytest.raises(MountConflict, match="pull again with strict"):
        registry.submit(parse_pull_request(request_for(ID, mount, strict=True)))
    assert plain.task is not None
    await asyncio.wait([plain.task])  # It fails (this context has no store): it ended.
    strict = registry.submit(parse_pull_request(request_for(ID, mount, strict=True)))
    assert registry.submit(parse_pull_request(request_for(ID, mount))) is strict
    assert strict.task is not None
    await asyncio.wait([strict.task])
