"""Fan-out in real agents: owners redirect later requesters to holders (bdn.peer.fanout).

Real ``bdn agent`` processes on loopback, as in :mod:`tests.e2e.test_herd`,
over the same small model (256 KiB chunks, so there are many). With
``--fanout 1`` every owner sends each chunk itself to one requester and
redirects the others down a chain of holders: redirects must happen, origin
must still serve the model about once, every tree must be bit-exact, and a
holder that is frozen or sends corrupt bytes must cost a trip back to the
owner, not a read from origin. What is asserted is where bytes came from and
what was counted, never how long anything took.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bdn.agent.client import AgentClient, request_for
from bdn.manifest import Manifest
from bdn.peer.fanout import REDIRECT_HEADER, REDIRECTED_HEADER
from tests.e2e.agents import (
    AgentProcess,
    CorruptingProxy,
    free_ports,
    origin_blob_bytes,
    running,
    short_dir,
    start_agent,
    unique_size,
    wait_ready,
)
from tests.e2e.test_herd import (
    CHUNK,
    SETTLE_FLAGS,
    addr,
    assert_all_pulled,
    explained_extra,
    metric_sum,
    moved_bytes,
    published_model,
    pull_all,
)
from tests.e2e.threaded_app import UPSTREAM_DOWN
from tests.httpserver import FaultPlan, FaultServer

pytestmark = pytest.mark.stress

ISSUED = 'bdn_fanout_redirects_total{side="issued"}'
FOLLOWED = 'bdn_fanout_redirects_total{side="followed"}'
FAILED = 'bdn_fanout_redirects_total{side="failed"}'
AS_OWNER = 'bdn_fanout_bytes_served_total{role="owner"}'
AS_HOLDER = 'bdn_fanout_bytes_served_total{role="holder"}'


def fanout_flags(k: int) -> tuple[str, ...]:
    return (*SETTLE_FLAGS, "--fanout", str(k))


def start_fleet(base: Path, ports: list[int], origin: str, peers: list[str],
                flags: tuple[str, ...]) -> list[AgentProcess]:
    return [start_agent(base, f"n{i}", p, store=origin, peers=peers, extra=flags)
            for i, p in enumerate(ports)]


def slow_origin() -> FaultPlan:
    """About a tenth of a second per chunk: requesters of a chunk meet at its owner
    while it fills the chunk, so the owner has later ones to redirect."""
    return FaultPlan(bytes_per_second=10 * CHUNK)


@pytest.mark.parametrize("n", [4, 8])
async def test_fanout_redirects_and_origin_serves_the_model_once(
    tmp_path: Path, fault_server: FaultServer, n: int
) -> None:
    origin, manifest = await published_model(tmp_path, fault_server)
    ports = free_ports(n)
    peers = [addr(p) for p in ports]
    with short_dir() as base, \
            running(start_fleet(base, ports, origin, peers, fanout_flags(1))) as agents:
        await wait_ready(agents, members=n)
        fault_server.reset_stats()
        fault_server.faults = slow_origin()
        results = await pull_all(agents, manifest, tmp_path / "m")
        assert_all_pulled(agents, results, tmp_path / "m")
        assert fault_server.stats.bytes_served <= 1.05 * manifest.total_size, (
            fault_server.stats.bytes_served, manifest.total_size)
        assert await metric_sum(agents, ISSUED) > 0
        assert await metric_sum(agents, FOLLOWED) > 0
        assert await metric_sum(agents, AS_HOLDER) > 0
        # K = 1: an owner sends each of its chunks itself about once, however many ask;
        # the rest went holder to holder (a failed holder or a hedge adds a send).
        owner_bytes = await metric_sum(agents, AS_OWNER)
        retries = await metric_sum(agents, FAILED) + await explained_extra(agents) / CHUNK
        assert owner_bytes <= unique_size(manifest) + retries * CHUNK, owner_bytes


async def test_fanout_zero_never_redirects(tmp_path: Path, fault_server: FaultServer) -> None:
    origin, manifest = await published_model(tmp_path, fault_server)
    ports = free_ports(4)
    peers = [addr(p) for p in ports]
    with short_dir() as base, \
            running(start_fleet(base, ports, origin, peers, fanout_flags(0))) as agents:
        await wait_ready(agents, members=4)
        fault_server.reset_stats()
        fault_server.faults = slow_origin()
        results = await pull_all(agents, manifest, tmp_path / "m")
        assert_all_pulled(agents, results, tmp_path / "m")
        assert fault_server.stats.bytes_served <= 1.05 * manifest.total_size
        assert await metric_sum(agents, ISSUED) == 0
        assert await metric_sum(agents, FOLLOWED) == 0
        assert await metric_sum(agents, AS_HOLDER) == 0
        # Every requester read every chunk from its owner: N - 1 copies.
        assert await metric_sum(agents, AS_OWNER) >= 3 * unique_size(manifest) - \
            await explained_extra(agents)


async def pull_one(agent: AgentProcess, manifest: Manifest, mounts: Path) -> None:
    """``agent`` pulls the model alone (it becomes the first holder of every chunk)."""
    result = await AgentClient(agent.agent_address, poll_interval=0.1).pull(
        request_for(manifest.id, mounts / agent.name))
    assert result["state"] == "succeeded"


async def test_a_frozen_holder_costs_a_trip_back_to_the_owner_not_origin(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    origin, manifest = await published_model(tmp_path, fault_server)
    ports = free_ports(4)
    peers = [addr(p) for p in ports]
    # A short peer timeout: a redirected request's headers are due within it.
    flags = (*fanout_flags(1), "--peer-timeout", "1", "--hedge-after", "off")
    with short_dir() as base, \
            running(start_fleet(base, ports, origin, peers, flags)) as agents:
        await wait_ready(agents, members=4)
        fault_server.reset_stats()
        holder, others = agents[3], agents[:3]
        await pull_one(holder, manifest, tmp_path / "m")
        # Every owner has sent each chunk to the holder: its K is spent, so it names it.
        holder.signal(signal.SIGSTOP)
        try:
            results = await pull_all(others, manifest, tmp_path / "m")
        finally:
            holder.signal(signal.SIGCONT)
        assert_all_pulled(others, results, tmp_path / "m")
        assert await metric_sum(others, FAILED) > 0
        # Beyond one copy: only what the ring's own change explains (the frozen
        # holder is also an owner, and membership may drop it), and reads after a
        # failed owner. No origin read for a failed holder.
        extra = origin_blob_bytes(fault_server) - unique_size(manifest)
        survivors = [a.advertise for a in others]
        allowed = await explained_extra(others)
        if await metric_sum(others, 'bdn_ring_changes_total{reason="left"}') > 0:
            allowed += moved_bytes(manifest, peers, survivors)
        assert extra <= allowed, (extra, allowed)


@dataclass
class LyingHolder(CorruptingProxy):
    """Relays to an agent, flipping a byte of every chunk it passes on as a *holder*
    (redirected requests only): as an owner it is honest, and its redirects reach
    the requester as sent (the relay does not follow them)."""

    async def _relay(self, request: web.Request) -> web.Response:
        url = f"http://127.0.0.1:{self.upstream_port}{request.path_qs}"
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        try:
            async with aiohttp.ClientSession() as s, s.request(
                request.method, url, headers=headers, allow_redirects=False
            ) as up:
                status, body = up.status, await up.read()
                kept = {k: v for k, v in up.headers.items()
                        if k in ("Content-Type", REDIRECT_HEADER, "Location")}
        except aiohttp.ClientError:
            return web.Response(status=502, text=UPSTREAM_DOWN)
        if request.headers.get(REDIRECTED_HEADER) == "1" and status == 200 and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
            self.flipped += 1
        return web.Response(status=status, body=body, headers=kept)


async def test_a_holder_sending_corrupt_bytes_is_routed_around_without_origin(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    origin, manifest = await published_model(tmp_path, fault_server)
    *honest_ports, liar_port, proxy_port = free_ports(5)
    # The liar is known to the ring, and names itself to owners, by its proxy's address.
    peers = [addr(p) for p in honest_ports] + [addr(proxy_port)]
    flags = fanout_flags(1)
    with LyingHolder(upstream_port=liar_port, port=proxy_port) as proxy, short_dir() as base:
        agents = start_fleet(base, honest_ports, origin, peers, flags)
        liar = start_agent(base, "liar", liar_port, store=origin, peers=peers,
                           advertise=addr(proxy_port), extra=flags)
        with running([*agents, liar]):
            await wait_ready([*agents, liar], members=4)
            fault_server.reset_stats()
            await pull_one(liar, manifest, tmp_path / "m")
            results = await pull_all(agents, manifest, tmp_path / "m")
            assert_all_pulled(agents, results, tmp_path / "m")
            assert proxy.flipped > 0
            assert await metric_sum(agents, FAILED) >= 1
            assert await metric_sum(agents, "bdn_corrupt_chunks_from_peers_total") >= 1
            # Every corrupt chunk came from the holder: each was read from its owner
            # again, never from origin.
            assert fault_server.stats.bytes_served <= 1.05 * manifest.total_size
            assert origin_blob_bytes(fault_server) - unique_size(manifest) <= \
                await explained_extra(agents)
