"""The herd: several real agents on loopback, one ring, one origin that counts its bytes.

Every agent is a ``bdn agent`` subprocess with its own node cache, listening
on its own 127.0.0.1 port, with the same static ``--peers`` list and peer
token. The origin is a :class:`FaultServer` serving a mirrored ``file://``
store over HTTP, so "origin bytes" are what that server actually sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from bdn.agent.client import AgentClient, request_for
from bdn.errors import TransferError
from bdn.manifest import Manifest
from tests.e2e.agents import (
    AgentProcess,
    CorruptingProxy,
    assert_same_tree,
    free_ports,
    http_json,
    mirrored_model,
    origin_blob_bytes,
    publish_store,
    running,
    short_dir,
    start_agent,
    unique_size,
    wait_ready,
)
from tests.fixtures import pattern_bytes
from tests.httpserver import FaultPlan, FaultServer

pytestmark = pytest.mark.stress

CHUNK = 256 * 1024
MODEL = {
    "config.json": b'{"architectures": ["Herd"]}',
    **{
        f"model-0000{i}-of-00004.safetensors": pattern_bytes(100 + i, 12 * CHUNK + 1000 * i)
        for i in range(1, 5)
    },
}
PULL_TIMEOUT = 180.0


def addr(port: int) -> str:
    return f"127.0.0.1:{port}"


async def pull_all(
    agents: Sequence[AgentProcess], manifest: Manifest, mounts: Path
) -> list[dict[str, Any] | BaseException]:
    """Every agent pulls the model into its own mount at once; results in agent order."""
    return await asyncio.wait_for(
        asyncio.gather(
            *(
                AgentClient(a.agent_address, poll_interval=0.1).pull(
                    request_for(manifest.id, mounts / a.name)
                )
                for a in agents
            ),
            return_exceptions=True,
        ),
        PULL_TIMEOUT,
    )


async def wait_for_origin(server: FaultServer, nbytes: int) -> None:
    """Until the origin has sent ``nbytes`` of blobs (the burst is under way)."""
    for _ in range(int(PULL_TIMEOUT * 50)):
        if origin_blob_bytes(server) >= nbytes:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the origin never got busy")


async def metric_sum(agents: Sequence[AgentProcess], name: str) -> float:
    return sum([(await a.metrics()).get(name, 0.0) for a in agents])


async def published_model(tmp_path: Path, server: FaultServer) -> tuple[str, Manifest]:
    """Mirror :data:`MODEL` and serve its store from ``server``: (origin URL, manifest)."""
    _, store_root, manifest = await mirrored_model(tmp_path, MODEL, CHUNK)
    return publish_store(server, store_root), manifest


def start_ring(base: Path, ports: Sequence[int], origin: str,
               peers: Sequence[str]) -> list[AgentProcess]:
    """Agents ``n0``, ``n1``... on ``ports``, each with the same ``peers`` list."""
    return [start_agent(base, f"n{i}", p, store=origin, peers=peers)
            for i, p in enumerate(ports)]


class Herd(NamedTuple):
    """What :func:`cold_herd` started: the agents and what a test needs to add one."""

    base: Path
    origin: str
    manifest: Manifest
    peers: list[str]
    spare_ports: list[int]
    agents: list[AgentProcess]


@contextlib.asynccontextmanager
async def cold_herd(
    tmp_path: Path, server: FaultServer, *, spare_ports: int = 0
) -> AsyncIterator[Herd]:
    """Four agents in one ring over :data:`MODEL` served from ``server``, each seeing
    all four members, with the origin's counters at zero; killed on the way out.

    ``spare_ports`` more ports are in every agent's peer list but not running yet
    (probes leave them out), for an agent that joins later.
    """
    origin, manifest = await published_model(tmp_path, server)
    ports = free_ports(4 + spare_ports)
    peers = [addr(p) for p in ports]
    with short_dir() as base, running(start_ring(base, ports[:4], origin, peers)) as agents:
        await wait_ready(agents, members=4)
        server.reset_stats()
        yield Herd(base, origin, manifest, peers, ports[4:], agents)


def assert_all_pulled(agents: Sequence[AgentProcess],
                      results: Sequence[dict[str, Any] | BaseException], mounts: Path) -> None:
    """Every pull succeeded and its tree is :data:`MODEL`, bit for bit."""
    for agent, result in zip(agents, results, strict=True):
        assert isinstance(result, dict), (result, agent.logs()[-2000:])
        assert result["state"] == "succeeded"
        assert_same_tree(mounts / agent.name, MODEL)


async def test_four_cold_agents_fetch_the_model_from_origin_about_once(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    async with cold_herd(tmp_path, fault_server) as herd:
        agents, manifest = herd.agents, herd.manifest
        results = await pull_all(agents, manifest, tmp_path / "models")
        assert_all_pulled(agents, results, tmp_path / "models")
        # Counted at the origin: every byte it sent, manifests included.
        assert fault_server.stats.bytes_served <= 1.05 * manifest.total_size, (
            fault_server.stats.bytes_served, manifest.total_size)
        assert origin_blob_bytes(fault_server) >= unique_size(manifest)
        peer_bytes = sum(r["bytes_from_peers"] for r in results if isinstance(r, dict))
        assert peer_bytes >= 2 * unique_size(manifest), "most chunks came from the owners"
        assert await metric_sum(agents, "bdn_peer_failures_total") == 0
        assert await metric_sum(agents, "bdn_corrupt_chunks_from_peers_total") == 0

        # The peer port, with a wrong token, serves none of those chunks.
        entry = manifest.files[1]
        chunk = (f"/v1/chunks/{entry.sha256.hex}/0?size={entry.size}&chunk_size={CHUNK}"
                 f"&xxh3={entry.chunks[0]}")
        code, body = await http_json(agents[0].url, "GET", chunk,
                                     headers={"Authorization": "Bearer not-the-token"})
        assert code == 401 and set(body) == {"error"}
        for agent in agents:
            assert await asyncio.to_thread(agent.stop) == 0


async def test_an_owner_killed_mid_burst_does_not_stop_the_others(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    async with cold_herd(tmp_path, fault_server) as herd:
        agents, manifest = herd.agents, herd.manifest
        # About a second per chunk from origin: the burst lasts long enough to cut into.
        fault_server.faults = FaultPlan(bytes_per_second=256 * 1024)
        burst = asyncio.ensure_future(pull_all(agents, manifest, tmp_path / "models"))
        await wait_for_origin(fault_server, unique_size(manifest) // 4)
        assert not burst.done()
        victim = agents[0]
        victim.proc.kill()  # SIGKILL: no drain, connections die mid-body.
        results = await burst
        assert isinstance(results[0], TransferError), results[0]
        assert_all_pulled(agents[1:], results[1:], tmp_path / "models")
        # The survivors saw the owner fail (or had already dropped it from the ring).
        await wait_ready(agents[1:], members=3)


async def test_a_membership_change_in_the_middle_of_a_pull(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    # A fifth agent is in every peer list but not running yet: probes leave it out.
    async with cold_herd(tmp_path, fault_server, spare_ports=1) as herd:
        agents, manifest = herd.agents, herd.manifest
        fault_server.faults = FaultPlan(bytes_per_second=256 * 1024)
        burst = asyncio.ensure_future(pull_all(agents, manifest, tmp_path / "models"))
        await wait_for_origin(fault_server, unique_size(manifest) // 5)
        # One joins and one leaves (gracefully) while the pulls run.
        joining = start_agent(herd.base, "n4", herd.spare_ports[0], store=herd.origin,
                              peers=herd.peers)
        agents.append(joining)
        leaving = agents[3]
        leaving.signal(signal.SIGTERM)
        results = await burst
        assert_all_pulled(agents[:4], results, tmp_path / "models")
        assert await asyncio.to_thread(leaving.proc.wait, 60) == 0, "drained, then exited 0"
        stayed = [*agents[:3], joining]
        await wait_ready(stayed, members=4)
        for agent in stayed:
            health = await agent.health()
            assert health is not None and leaving.advertise not in health["members"]
        # The newcomer pulls from the ring it joined.
        fault_server.faults = FaultPlan()
        late = await AgentClient(joining.agent_address).pull(
            request_for(manifest.id, tmp_path / "models" / joining.name)
        )
        assert late["bytes_from_peers"] > 0
        assert_same_tree(tmp_path / "models" / joining.name, MODEL)


async def test_a_peer_serving_corrupt_bytes_is_detected_counted_and_routed_around(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    origin, manifest = await published_model(tmp_path, fault_server)
    *honest_ports, liar_port, proxy_port = free_ports(5)
    # The liar is known to the ring by its proxy's address: every chunk the
    # others get from it has a flipped byte; its health probes pass untouched.
    peers = [addr(p) for p in honest_ports] + [addr(proxy_port)]
    with CorruptingProxy(upstream_port=liar_port, port=proxy_port) as proxy, short_dir() as base:
        agents = start_ring(base, honest_ports, origin, peers)
        agents.append(start_agent(base, "liar", liar_port, store=origin, peers=peers,
                                  advertise=addr(proxy_port)))
        with running(agents):
            await wait_ready(agents, members=4)
            fault_server.reset_stats()
            results = await pull_all(agents, manifest, tmp_path / "models")
            assert_all_pulled(agents, results, tmp_path / "models")
            assert proxy.flipped > 0
            corrupt = await metric_sum(agents[:3], "bdn_corrupt_chunks_from_peers_total")
            assert 0 < corrupt <= proxy.flipped
            # Each corrupt chunk cost one extra chunk from origin, no more.
            extra = origin_blob_bytes(fault_server) - unique_size(manifest)
            assert extra <= proxy.flipped * CHUNK
