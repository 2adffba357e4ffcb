"""The owner's response gate: at most N chunk responses at once, FIFO waiting, and a
bounded queue past which peers get 503 at once (so they read origin instead)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from aiohttp import web

from bdn.agent.chunks import ChunkService
from bdn.agent.gate import GateFull, Place, ResponseGate
from bdn.agent.metrics import AgentMetrics
from bdn.agent.protocol import CHUNK_SOURCE_HEADER, EARLY_ANSWER_HEADER
from bdn.agent.pulls import PullRegistry
from bdn.agent.server import ServerContext, peer_app
from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.fleet import free_ports
from bdn.http import RetryPolicy
from bdn.manifest import FileEntry, Manifest
from tests.e2e.agents import TOKEN, mirrored_model, publish_store
from tests.fixtures import pattern_bytes
from tests.httpserver import FaultPlan, FaultServer

CHUNK = 64 * 1024
MODEL = {f"shard-{i}.safetensors": pattern_bytes(40 + i, 4 * CHUNK) for i in range(3)}
LIMIT, QUEUE = 2, 3
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _until(cond: Callable[[], bool], what: str) -> None:
    """Poll ``cond()`` (bounded) until true; yields to the loop between polls."""
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


async def test_the_gate_is_fifo_and_bounded() -> None:
    gate = ResponseGate(limit=1, max_queued=2)
    order: list[str] = []
    hold = asyncio.Event()

    async def user(name: str) -> None:
        async with gate.slot():
            order.append(name)
            await hold.wait()

    first = asyncio.create_task(user("a"))
    await _until(lambda: gate.stats.in_flight == 1, "a holds the slot")
    waiting = [asyncio.create_task(user(n)) for n in ("b", "c")]
    await _until(lambda: gate.stats.queued == 2, "b and c wait")
    with pytest.raises(GateFull):
        async with gate.slot():
            pass
    hold.set()
    await asyncio.gather(first, *waiting)
    assert order == ["a", "b", "c"]
    s = gate.stats
    assert (s.peak_in_flight, s.in_flight, s.queued, s.rejected) == (1, 0, 0, 1)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = ResponseGate(limit=1, max_queued=1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with gate.slot():
            await hold.wait()

    task = asyncio.create_task(holder())
    await _until(lambda: gate.stats.in_flight == 1, "the slot is held")
    waiter = asyncio.create_task(holder())
    await _until(lambda: gate.stats.queued == 1, "one waits")
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert gate.stats.queued == 0
    hold.set()
    await task
    assert gate.stats.in_flight == 0


class Owner:
    """An owner's peer port in this process, over a slow origin the test can hold."""

    def __init__(self, url: str, service: ChunkService, manifest: Manifest) -> None:
        self.url = url
        self.service = service
        self.manifest = manifest

    def path(self, entry: FileEntry, index: int) -> str:
        return (f"/v1/chunks/{entry.sha256.hex}/{index}?size={entry.size}"
                f"&chunk_size={self.manifest.chunk_size}&xxh3={entry.chunks[index]}")

    def chunks(self) -> list[tuple[FileEntry, int]]:
        return [(f, i) for f in self.manifest.files for i in range(len(f.chunks))]


@pytest.fixture
async def owner(tmp_path: Path, fault_server: FaultServer) -> AsyncIterator[Owner]:
    _, store_root, manifest = await mirrored_model(tmp_path, MODEL, CHUNK)
    origin = open_store(publish_store(fault_server, store_root))
    (port,) = free_ports(1)
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks",
                               retry=RetryPolicy(max_attempts=2, base_delay=0.01),
                               max_responses=LIMIT, max_queued=QUEUE)
        ctx = ServerContext(cast(PullRegistry, None), service, AgentMetrics(), TOKEN,
                            lambda: {"status": "ok"})
        runner = web.AppRunner(peer_app(ctx))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield Owner(f"http://127.0.0.1:{port}", service, manifest)
        finally:
            await runner.cleanup()
            await service.close()
    await origin.close()


async def test_the_owner_caps_responses_and_refuses_past_its_queue(
    owner: Owner, fault_server: FaultServer
) -> None:
    fault_server.faults = FaultPlan(pause_after=0)  # Origin holds every body: fetches hang.
    stats = owner.service.gate.stats
    wanted = owner.chunks()
    assert len(wanted) >= LIMIT + QUEUE + 4
    async with aiohttp.ClientSession(headers=AUTH) as s:

        async def get(entry: FileEntry, index: int) -> tuple[int, bytes, str | None]:
            async with s.get(owner.url + owner.path(entry, index)) as resp:
                return resp.status, await resp.read(), resp.headers.get("Retry-After")

        served = [asyncio.create_task(get(*c)) for c in wanted[:LIMIT]]
        await _until(lambda: stats.in_flight == LIMIT and fault_server.paused.is_set(),
                     "two responses wait for origin")
        served += [asyncio.create_task(get(*c)) for c in wanted[LIMIT:LIMIT + QUEUE]]
        await _until(lambda: stats.queued == QUEUE, "three requests queue")
        # The queue is full: four more are refused at once, while the others still wait.
        refused = await asyncio.gather(*(get(*c) for c in wanted[LIMIT + QUEUE:][:4]))
        assert [(code, after) for code, _, after in refused] == [(503, "1")] * 4
        assert not any(t.done() for t in served)
        assert stats.in_flight == LIMIT and stats.rejected == 4
        fault_server.release()
        answers = await asyncio.gather(*served)
    for (code, body, _), (entry, index) in zip(answers, wanted, strict=False):
        start = index * CHUNK
        assert code == 200 and body == MODEL[entry.path][start : start + CHUNK]
    assert stats.peak_in_flight == LIMIT and stats.in_flight == 0 and stats.queued == 0


# -- early answers: headers at once, the body when the chunk is ready ---------------------


async def test_a_place_is_refused_when_the_queue_is_full_and_becomes_a_fifo_slot() -> None:
    gate = ResponseGate(limit=1, max_queued=2)
    hold = asyncio.Event()
    order: list[str] = []

    async def holder() -> None:
        async with gate.slot():
            await hold.wait()

    first = asyncio.create_task(holder())
    await _until(lambda: gate.stats.in_flight == 1, "the slot is held")
    a, b = gate.place(), gate.place()  # Waiting for their chunks: they count as queued.
    assert gate.stats.queued == 2
    with pytest.raises(GateFull):
        gate.place()
    with pytest.raises(GateFull):
        async with gate.slot():
            pass

    async def send(place: Place, name: str) -> None:
        async with place.slot():
            order.append(name)

    # b's chunk is ready first: it queues for the slot ahead of a.
    sending = [asyncio.create_task(send(b, "b"))]
    await _until(lambda: len(gate._waiters) == 1, "b waits for the slot")
    sending.append(asyncio.create_task(send(a, "a")))
    await _until(lambda: len(gate._waiters) == 2, "a waits behind it")
    hold.set()
    await asyncio.gather(first, *sending)
    assert order == ["b", "a"]
    c = gate.place()
    c.give_up()
    c.give_up()  # Idempotent.
    s = gate.stats
    assert (s.in_flight, s.queued, s.rejected) == (0, 0, 2)


async def test_an_early_answer_comes_before_origin_does_and_holds_no_slot(
    owner: Owner, fault_server: FaultServer
) -> None:
    fault_server.faults = FaultPlan(pause_after=0)  # Origin holds every body.
    stats = owner.service.gate.stats
    entry, index = owner.chunks()[0]
    early = {**AUTH, EARLY_ANSWER_HEADER: "1"}
    want = MODEL[entry.path][index * CHUNK : (index + 1) * CHUNK]
    async with aiohttp.ClientSession(headers=early) as s:
        async with s.get(owner.url + owner.path(entry, index)) as resp:
            # The headers while origin holds the chunk: the owner is filling it.
            assert resp.status == 200 and resp.content_length == len(want)
            assert resp.headers[CHUNK_SOURCE_HEADER] == "origin"
            assert stats.in_flight == 0 and stats.queued == 1
            fault_server.release()
            assert await resp.read() == want
        async with s.get(owner.url + owner.path(entry, index)) as resp:
            assert resp.headers[CHUNK_SOURCE_HEADER] == "cache"
            assert await resp.read() == want
    assert stats.in_flight == 0 and stats.queued == 0
    assert owner.service.stats.origin_fetches == 1


async def test_an_early_answer_whose_fill_fails_is_cut_short(owner: Owner) -> None:
    entry, _ = owner.chunks()[0]
    # A blob origin does not have: after the headers, only the connection can say so.
    path = owner.path(entry, 0).replace(entry.sha256.hex, "0" * 64)
    async with aiohttp.ClientSession(headers={**AUTH, EARLY_ANSWER_HEADER: "1"}) as s, \
            s.get(owner.url + path) as resp:
        assert resp.status == 200 and resp.headers[CHUNK_SOURCE_HEADER] == "origin"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert owner.service.gate.stats.queued == 0
