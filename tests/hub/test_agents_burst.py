"""4 agents x 4 clients: unmodified ``snapshot_download`` through every node's endpoint at once.

Four real ``bdn agent`` processes in one ring, each serving the Hub endpoint
on ``--hf-listen``, over MiniLM (mirrored in conftest) whose store a
:class:`FaultServer` serves over HTTP, so origin bytes are counted where they
leave the origin. Sixteen ``huggingface_hub`` clients, four per agent, are
released together by a barrier; origin must send the model about once
(≤ 1.05x) and every client must get the mirrored tree bit for bit.

Then the same agents' pull-through: two agents over one writable store, with
``--hf-upstream`` at our Hub test server, asked at once for a revision never
mirrored, mirror it once between them.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bdn.backends import open_store
from bdn.manifest import Manifest
from bdn.store import Store
from tests.e2e.agents import (
    AgentProcess,
    free_ports,
    origin_blob_bytes,
    publish_store,
    running,
    short_dir,
    start_agent,
    wait_ready,
)
from tests.hfserver import HfServer
from tests.httpserver import FaultServer
from tests.hub.conftest import REPO, Mirrored, model_dir

hf = pytest.importorskip("huggingface_hub")
pytestmark = pytest.mark.stress

AGENTS = 4
CLIENTS_PER_AGENT = 4


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads released at once by a barrier; results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait(60)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result(600) for f in [pool.submit(run, c) for c in calls]]


def tree_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


async def main_manifest(store: Path) -> Manifest:
    layout = Store(open_store(f"file://{store}"))
    try:
        found = await layout.get_hub_revision(REPO, "main")
        assert found is not None
        return await layout.get_manifest(next(iter(found.manifests.values()))[0])
    finally:
        await layout.backend.close()


def start_hub_agents(base: Path, store: str, n: int,
                     extra: list[str] | None = None) -> tuple[list[AgentProcess], list[str]]:
    """``n`` agents in one ring, each with ``--hf-listen``; returns them and their endpoints."""
    ports = free_ports(2 * n)
    peers = [f"127.0.0.1:{p}" for p in ports[:n]]
    agents = [start_agent(base, f"n{i}", ports[i], store=store, peers=peers,
                          extra=["--settle-timeout", "600", "--hf-listen",
                                 f"127.0.0.1:{ports[n + i]}", *(extra or [])])
              for i in range(n)]
    return agents, [f"http://127.0.0.1:{ports[n + i]}/hf" for i in range(n)]


async def test_four_agents_with_four_clients_each_read_the_model_from_origin_about_once(
        mirrored: Mirrored, fault_server: FaultServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    manifest = await main_manifest(mirrored.store)
    origin = publish_store(fault_server, mirrored.store)
    with short_dir() as base:
        agents, urls = start_hub_agents(base, origin, AGENTS)
        with running(agents):
            await wait_ready(agents, members=AGENTS)
            fault_server.reset_stats()
            folders = await asyncio.to_thread(together, [
                (lambda u=u, i=i: Path(hf.snapshot_download(
                    REPO, cache_dir=tmp_path / f"hf{i}", endpoint=u)))
                for i, u in enumerate(u for u in urls for _ in range(CLIENTS_PER_AGENT))])
            sent = origin_blob_bytes(fault_server)
    unique = sum({e.sha256: e.size for e in manifest.files}.values())
    print(f"4x4 origin blob bytes {sent} for a model of {unique}: {sent / unique:.3f}x")
    assert sent <= 1.05 * unique, (sent, unique)
    want = tree_digests(mirrored.model_dir)
    for folder in folders:
        assert tree_digests(folder) == want


async def test_two_agents_pull_an_unmirrored_revision_through_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    store = tmp_path / "store"
    with HfServer(tmp_path / "upstream") as upstream, short_dir() as base:
        upstream.commit_dir(REPO, model_dir())
        agents, urls = start_hub_agents(base, f"file://{store}", 2,
                                        ["--hf-upstream", upstream.endpoint])
        with running(agents):
            await wait_ready(agents, members=2)
            infos = await asyncio.to_thread(together, [
                (lambda u=u: hf.HfApi(endpoint=u).model_info(REPO))
                for u in urls for _ in range(2)])
            asked = Counter((s.method, s.path) for s in upstream.seen if s.host == "hub")
            lfs = sum(f.size for f in upstream.files(REPO).values() if f.is_lfs)
            assert upstream.bytes_served["cdn"] == lfs
            assert asked and max(asked.values()) == 1, asked
            assert len({i.sha for i in infos}) == 1
            path = await asyncio.to_thread(hf.hf_hub_download, REPO, "model.safetensors",
                                           cache_dir=tmp_path / "hf", endpoint=urls[0])
            want = (model_dir() / "model.safetensors").read_bytes()
            assert Path(path).read_bytes() == want
