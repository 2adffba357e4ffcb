"""An owner that stops answering: frozen (SIGSTOP) or slow (held by a relay).

Real agents on loopback, as in :mod:`tests.e2e.test_herd`. What is asserted is
where the bytes came from and what was counted, never how long it took.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from bdn.peer.client import DEFAULT_PEER_TIMEOUT
from bench.threaded_app import ThreadedApp
from tests.e2e.agents import (
    AgentProcess,
    free_ports,
    origin_blob_bytes,
    running,
    short_dir,
    start_agent,
    unique_size,
    wait_ready,
)
from tests.e2e.test_herd import (
    addr,
    assert_all_pulled,
    cold_herd,
    explained_extra,
    metric_sum,
    published_model,
    pull_all,
)
from tests.e2e.threaded_app import UPSTREAM_DOWN, answer, forward
from tests.httpserver import FaultServer

pytestmark = pytest.mark.stress

HEDGES_WON = 'bdn_peer_hedges_total{outcome="won"}'


@pytest.mark.parametrize("hedging", [
    ("--hedge-after", "off"),
    ("--peer-timeout", f"{DEFAULT_PEER_TIMEOUT:g}"),  # Hedging as deployed.
], ids=["hedging-off", "hedging-on"])
async def test_a_frozen_owner_costs_a_fallback_not_a_stalled_pull(
    tmp_path: Path, fault_server: FaultServer, hedging: tuple[str, str]
) -> None:
    # Hedging off: what must save the pulls is membership dropping the frozen
    # peer (in-flight requests fall back at once) or the bounded answer wait.
    # Hedging on: a request the frozen owner never answers is hedged too.
    async with cold_herd(tmp_path, fault_server) as herd:
        frozen, pullers = herd.agents[0], herd.agents[1:]
        for agent in pullers:  # Flags are read at start: the pullers start again with ours.
            agent.proc.kill()
            agent.proc.wait()
        restarted = [start_agent(herd.base, a.name, a.port, store=herd.origin, peers=herd.peers,
                                 extra=[*hedging, "--trees-root", str(tmp_path / "models")])
                     for a in pullers]
        with running(restarted):
            await wait_ready([frozen, *restarted], members=4)
            frozen.signal(signal.SIGSTOP)
            try:
                results = await pull_all(restarted, herd.manifest, tmp_path / "models")
            finally:
                frozen.signal(signal.SIGCONT)
            assert_all_pulled(restarted, results, tmp_path / "models")
            # It cost little: beyond one copy, at most a chunk per failed or hedged read.
            extra = origin_blob_bytes(fault_server) - unique_size(herd.manifest)
            assert extra <= await explained_extra(restarted), extra
            if hedging[1] == "off":
                assert await metric_sum(restarted, "bdn_peer_failures_total") > 0
                assert await metric_sum(restarted, HEDGES_WON) == 0
                logs = "".join(a.logs() for a in restarted)
                assert "left the ring during the request" in logs or \
                    "did not answer within" in logs


@dataclass
class HoldingRelay(ThreadedApp):
    """Relays HTTP to ``127.0.0.1:upstream_port``; holds every chunk request until
    :meth:`release` (an owner that answers its health probes but serves chunks
    arbitrarily slowly). ``held`` counts chunk requests that arrived."""

    upstream_port: int
    port: int = 0
    held: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    _gate: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._gate.set)

    def __exit__(self, *exc: object) -> None:
        self.release()
        super().__exit__(*exc)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        return app

    async def _relay(self, request: web.Request) -> web.Response:
        if request.path.startswith("/v1/chunks/"):
            self.held += 1
            await self._gate.wait()
        got = await forward(request, self.upstream_port)
        if got is None:
            return web.Response(status=502, text=UPSTREAM_DOWN)
        status, body, ctype = got
        return answer(status, body, ctype)


async def test_a_slow_owner_is_hedged_and_the_pulls_finish(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    origin, manifest = await published_model(tmp_path, fault_server)
    *ports, slow_port, relay_port = free_ports(5)
    peers = [addr(p) for p in ports] + [addr(relay_port)]
    hedge = ["--hedge-after", "0.2", "--trees-root", str(tmp_path / "models")]
    with HoldingRelay(upstream_port=slow_port, port=relay_port) as relay, short_dir() as base:
        agents: list[AgentProcess] = [
            start_agent(base, f"n{i}", p, store=origin, peers=peers, extra=hedge)
            for i, p in enumerate(ports)
        ]
        agents.append(start_agent(base, "slow", slow_port, store=origin, peers=peers,
                                  advertise=addr(relay_port), extra=hedge))
        with running(agents):
            await wait_ready(agents, members=4)
            results = await pull_all(agents, manifest, tmp_path / "models")
            relay.release()
            assert_all_pulled(agents, results, tmp_path / "models")
            assert relay.held > 0
            # The slow owner answered nothing before the pulls ended: every chunk it
            # was asked for went to origin through a hedge that won. (Hedges to fast
            # owners busy reading origin may lose; that is the budget's business.)
            assert await metric_sum(agents, HEDGES_WON) >= 1
            assert await metric_sum(agents, "bdn_peer_failures_total") == 0
            # Nobody waited out the answer bound of a request to it.
            assert "did not answer within" not in "".join(a.logs() for a in agents)
