"""The herd: several real agents on loopback, one ring, one origin that counts its bytes.

Every agent is a ``bdn agent`` subprocess with its own node cache, listening
on its own 127.0.0.1 port, with the same static ``--peers`` list and peer
token. The origin is a :class:`FaultServer` serving a mirrored ``file://``
store over HTTP, so "origin bytes" are what that server actually sent.

Where the ring changes under a burst (a node joins, an owner dies) origin may
serve more than the model once; the tests then bound the excess by what the
agents' metrics say moved (chunks that changed owner, reads after a failed
owner, hedges), so every extra byte is explained.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest

from bdn.agent.client import AgentClient, request_for
from bdn.errors import TransferError
from bdn.fleet import wait_answering
from bdn.manifest import Manifest
from bdn.peer.client import DEFAULT_PEER_TIMEOUT
from bdn.ring import Ring
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


SETTLE_FLAGS = ("--settle-timeout", "600")
"""Agents started together wait for each other however loaded the machine is:
the bound of that wait is not what these tests measure."""


def start_ring(base: Path, ports: Sequence[int], origin: str,
               peers: Sequence[str], extra: Sequence[str] = SETTLE_FLAGS) -> list[AgentProcess]:
    """Agents ``n0``, ``n1``... on ``ports``, each with the same ``peers`` list."""
    return [start_agent(base, f"n{i}", p, store=origin, peers=peers, extra=extra)
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
    # Spare ports never answer until a test starts them: nobody waits for them.
    extra = ("--settle-timeout", "0") if spare_ports else SETTLE_FLAGS
    with short_dir() as base, \
            running(start_ring(base, ports[:4], origin, peers, extra)) as agents:
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


# -- the ring under change: agents started with their pulls, joining, dying ---------------


async def wait_peer_port(agent: AgentProcess) -> None:
    """Until ``agent``'s peer port answers ``/healthz``: it is up and waiting for its ring."""
    for _ in range(int(PULL_TIMEOUT * 50)):
        assert agent.proc.poll() is None, agent.logs()[-2000:]
        with contextlib.suppress(OSError, aiohttp.ClientError):
            if (await http_json(agent.url, "GET", "/healthz"))[0] == 200:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{agent.name}'s peer port never answered")


async def pull_when_open(agent: AgentProcess, manifest: Manifest,
                         mounts: Path) -> dict[str, Any]:
    """``agent``'s pull, sent the moment its pod socket answers (as a pod on its node would)."""
    await wait_answering(agent, timeout=PULL_TIMEOUT, interval=0.01)
    return await AgentClient(agent.agent_address, poll_interval=0.1).pull(
        request_for(manifest.id, mounts / agent.name))


def moved_bytes(manifest: Manifest, before: Sequence[str], after: Sequence[str]) -> int:
    """Bytes of the chunks whose owner differs between the rings over ``before`` and ``after``."""
    old, new = Ring(before), Ring(after)
    moved = 0
    for f in {f.sha256: f for f in manifest.files}.values():
        for i in range(len(f.chunks)):
            if old.owner(f.sha256, i) != new.owner(f.sha256, i):
                moved += min(CHUNK, f.size - i * CHUNK)
    return moved


async def explained_extra(agents: Sequence[AgentProcess]) -> int:
    """Origin bytes the agents' metrics account for beyond one copy, at most: a chunk
    per read after a failed owner and per hedged read (either may have gone to origin)."""
    reads = await metric_sum(agents, "bdn_peer_failures_total")
    for outcome in ("won", "lost"):
        reads += await metric_sum(agents, f'bdn_peer_hedges_total{{outcome="{outcome}"}}')
    return int(reads) * CHUNK


DEFAULT_HEDGING = (*SETTLE_FLAGS, "--peer-timeout", f"{DEFAULT_PEER_TIMEOUT:g}",
                   "--hedge-after", f"{DEFAULT_PEER_TIMEOUT:g}")
"""The agent's default peer timeout, and hedging at its most eager floor (one peer
timeout; the deployed default is five): the fixture's longer timeout would all but
switch hedging off, and an eager floor is where hedges could herd origin."""


@pytest.mark.parametrize("n", [4, 8])
async def test_agents_started_with_their_pulls_read_the_model_from_origin_once(
    tmp_path: Path, fault_server: FaultServer, n: int
) -> None:
    origin, manifest = await published_model(tmp_path, fault_server)
    ports = free_ports(n)
    peers = [addr(p) for p in ports]
    fault_server.reset_stats()
    # Every chunk takes twice the hedge deadline's floor to come from origin, so an
    # owner's fill outlasts its requesters' deadline.
    fault_server.faults = FaultPlan(bytes_per_second=CHUNK / (2 * DEFAULT_PEER_TIMEOUT))
    # The worst order for a ring that forms by probing: n0 is up, and its pod could
    # pull, before any other agent even runs. Hedging is on, as deployed: owners
    # busy filling their chunks from origin must not be hedged to origin.
    with short_dir() as base, \
            running(start_ring(base, ports[:1], origin, peers, DEFAULT_HEDGING)) as agents:
        await wait_peer_port(agents[0])
        first = asyncio.ensure_future(pull_when_open(agents[0], manifest, tmp_path / "m"))
        agents += [start_agent(base, f"n{i}", p, store=origin, peers=peers,
                               extra=DEFAULT_HEDGING) for i, p in enumerate(ports) if i]
        rest = [pull_when_open(a, manifest, tmp_path / "m") for a in agents[1:]]
        results = await asyncio.wait_for(
            asyncio.gather(first, *rest, return_exceptions=True), PULL_TIMEOUT)
        assert_all_pulled(agents, results, tmp_path / "m")
        assert fault_server.stats.bytes_served <= 1.05 * manifest.total_size, (
            fault_server.stats.bytes_served, manifest.total_size)
        assert await metric_sum(agents, "bdn_ring_start_unanswered") == 0
        assert await metric_sum(agents, 'bdn_ring_changes_total{reason="joined"}') == 0
        # The owners' early answers said "filling from origin": hedges were held back.
        assert await metric_sum(agents, 'bdn_peer_hedges_total{outcome="withheld"}') > 0


async def test_a_node_joining_mid_burst_costs_at_most_the_chunks_it_takes_over(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    async with cold_herd(tmp_path, fault_server, spare_ports=1) as herd:
        agents, manifest, mounts = herd.agents, herd.manifest, tmp_path / "models"
        fault_server.faults = FaultPlan(bytes_per_second=1024 * 1024)
        burst = asyncio.ensure_future(pull_all(agents, manifest, mounts))
        await wait_for_origin(fault_server, unique_size(manifest) // 4)
        joining = start_agent(herd.base, "n4", herd.spare_ports[0], store=herd.origin,
                              peers=herd.peers, extra=SETTLE_FLAGS)
        agents.append(joining)
        late = await asyncio.wait_for(pull_when_open(joining, manifest, mounts), PULL_TIMEOUT)
        results = [*(await burst), late]
        assert_all_pulled(agents, results, mounts)
        extra = origin_blob_bytes(fault_server) - unique_size(manifest)
        if extra > 0.05 * unique_size(manifest):
            # The metric says why: the ring changed under the burst.
            assert await metric_sum(agents[:4], 'bdn_ring_changes_total{reason="joined"}') >= 1
        # The newcomer reads from origin only the chunks it now owns, each once.
        assert extra <= moved_bytes(manifest, herd.peers[:4], herd.peers) + await explained_extra(
            agents), extra


async def test_an_owner_killed_mid_burst_costs_what_the_metrics_say(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    async with cold_herd(tmp_path, fault_server) as herd:
        agents, manifest, mounts = herd.agents, herd.manifest, tmp_path / "models"
        fault_server.faults = FaultPlan(bytes_per_second=1024 * 1024)
        burst = asyncio.ensure_future(pull_all(agents, manifest, mounts))
        await wait_for_origin(fault_server, unique_size(manifest) // 4)
        victim, survivors = agents[0], agents[1:]
        victim.proc.kill()
        results = await burst
        assert_all_pulled(survivors, results[1:], mounts)
        await wait_ready(survivors, members=3)
        assert await metric_sum(survivors, 'bdn_ring_changes_total{reason="left"}') >= 3
        # Beyond one copy: the victim's chunks once more (their new owners read them),
        # and one chunk per read a survivor made after the owner failed (the metric).
        extra = origin_blob_bytes(fault_server) - unique_size(manifest)
        survivors_ring = [a.advertise for a in survivors]
        assert extra <= moved_bytes(manifest, herd.peers[:4], survivors_ring) + \
            await explained_extra(survivors), extra
