"""Hedged chunk reads (bdn/peer/race.py) and bounded peer requests (bdn/peer/client.py).

Slow sources are blocked on events, never on sleeps: a source that must lose
waits until it is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from bdn.agent.protocol import CHUNK_SOURCE_HEADER, EARLY_ANSWER_HEADER, ChunkRef
from bdn.digest import Digest, xxh3_128_hex
from bdn.errors import IntegrityError, TransferError
from bdn.http import HttpClient, HttpConfig
from bdn.peer.client import PeerClient, PeerGone
from bdn.peer.hedge import HedgeConfig, Hedging, OriginHedgeBudget, Prober
from bdn.peer.progress import ReadProgress
from bdn.peer.race import ORIGIN, ChunkRace, successor
from bdn.ring import Ring

DATA = b"chunk bytes " * 100
REF = ChunkRef(Digest.parse("sha256:" + "ab" * 32), 0, len(DATA), len(DATA), xxh3_128_hex(DATA))


class FakeSources:
    """Sources by name: ``fast`` answers, ``stuck`` never does, ``bad`` fails, ``liar`` corrupts."""

    def __init__(self, hedging: Hedging | None) -> None:
        self.hedging = hedging
        self.asked: list[str] = []
        self.cancelled: list[str] = []
        self.stuck_started = asyncio.Event()

    async def read_source(self, ref: ChunkRef, source: str,
                          progress: ReadProgress | None = None) -> bytes:
        self.asked.append(source)
        if source.startswith("stuck"):
            self.stuck_started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(source)
                raise
        if source == "bad":
            raise TransferError("refused")
        if source == "liar":
            raise IntegrityError("corrupt")
        return DATA


def hedging(**kwargs: float) -> Hedging:
    cfg = {"floor": 0.01, "cap": 0.01, "min_hedges": 1, **kwargs}
    return Hedging(HedgeConfig(**cfg))  # type: ignore[arg-type]


async def test_a_stuck_owner_is_hedged_to_origin_and_the_hedge_wins() -> None:
    src = FakeSources(hedging())
    data, winner = await ChunkRace(src, REF, ["stuck", ORIGIN]).run()
    assert (data, winner) == (DATA, ORIGIN)
    assert src.cancelled == ["stuck"]
    assert src.hedging is not None
    assert (src.hedging.stats.won, src.hedging.stats.lost) == (1, 0)
    assert src.hedging.budget.hedging == 0 and src.hedging.budget.in_flight == 0


async def test_a_fast_owner_is_not_hedged() -> None:
    h = hedging(floor=30.0, cap=30.0)
    src = FakeSources(h)
    assert await ChunkRace(src, REF, ["fast", ORIGIN]).run() == (DATA, "fast")
    assert src.asked == ["fast"] and (h.stats.won, h.stats.lost) == (0, 0)


async def test_at_most_one_hedge_per_chunk() -> None:
    h = hedging()
    src = FakeSources(h)
    # Both the owner and its replica are stuck: the hedge goes to the replica and
    # origin is not asked a third time at the deadline.
    task = asyncio.ensure_future(ChunkRace(src, REF, ["stuck-a", "stuck-b", ORIGIN]).run())
    for _ in range(1000):
        if len(src.asked) == 2:
            break
        await asyncio.sleep(0.005)
    assert src.asked == ["stuck-a", "stuck-b"]
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(src.cancelled) == ["stuck-a", "stuck-b"]
    assert h.budget.hedging == 0 and h.budget.in_flight == 0


async def test_a_failed_hedge_leaves_the_first_request_running() -> None:
    h = hedging()
    src = FakeSources(h)
    gate = asyncio.Event()

    async def slow_then_fine(ref: ChunkRef, source: str,
                             progress: ReadProgress | None = None) -> bytes:
        src.asked.append(source)
        if source == "slow":
            await gate.wait()
            return DATA
        gate.set()  # The hedge fails, then the first request answers.
        raise IntegrityError("corrupt")

    src.read_source = slow_then_fine  # type: ignore[method-assign]
    assert await ChunkRace(src, REF, ["slow", "liar"]).run() == (DATA, "slow")
    assert (h.stats.won, h.stats.lost) == (0, 1)


async def test_no_hedge_slot_means_waiting_for_the_owner() -> None:
    h = hedging(fraction=0.0, min_hedges=0)
    src = FakeSources(h)
    gate = asyncio.Event()

    async def slow(ref: ChunkRef, source: str, progress: ReadProgress | None = None) -> bytes:
        src.asked.append(source)
        await gate.wait()
        return DATA

    src.read_source = slow  # type: ignore[method-assign]
    task = asyncio.ensure_future(ChunkRace(src, REF, ["slow", ORIGIN]).run())
    for _ in range(1000):
        if h.stats.denied:
            break
        await asyncio.sleep(0.005)
    assert h.stats.denied == 1 and src.asked == ["slow"]
    gate.set()
    assert await task == (DATA, "slow")


async def test_failures_fall_through_in_order_without_hedging() -> None:
    src = FakeSources(None)
    assert await ChunkRace(src, REF, ["bad", "liar", ORIGIN]).run() == (DATA, ORIGIN)
    assert src.asked == ["bad", "liar", ORIGIN]
    src = FakeSources(None)
    with pytest.raises(IntegrityError):
        await ChunkRace(src, REF, ["bad", "liar"]).run()


# -- hedging on what the owner's early answer says ---------------------------------------


async def _until(cond: Callable[[], bool], what: str) -> None:
    """Poll ``cond()`` (bounded) until true; yields to the loop between polls."""
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


class AnsweringSources(FakeSources):
    """``filling``: the owner answers "filling from origin" at once, then the body when
    ``done`` is set; ``stalled``: "cache", one byte, then nothing; ``silent``: no headers."""

    def __init__(self, hedging: Hedging | None) -> None:
        super().__init__(hedging)
        self.done = asyncio.Event()

    async def read_source(self, ref: ChunkRef, source: str,
                          progress: ReadProgress | None = None) -> bytes:
        kind = source.split("-")[0]
        if kind not in ("filling", "stalled", "silent"):
            return await super().read_source(ref, source, progress)
        self.asked.append(source)
        assert progress is not None
        progress.tracked = True
        if kind == "filling":
            progress.answered("origin")
        elif kind == "stalled":
            progress.answered("cache")
            progress.received(1)
        await self.done.wait()
        return DATA


async def test_an_owner_filling_from_origin_is_not_hedged_to_origin() -> None:
    h = hedging()
    src = AnsweringSources(h)
    task = asyncio.ensure_future(ChunkRace(src, REF, ["filling", ORIGIN]).run())
    await _until(lambda: h.stats.withheld == 1, "the hedge to origin is held back")
    assert src.asked == ["filling"] and not task.done()
    src.done.set()
    assert await task == (DATA, "filling")
    assert (h.stats.won, h.stats.lost, h.stats.withheld) == (0, 0, 1)


async def test_an_owner_filling_from_origin_may_be_hedged_to_a_replica() -> None:
    h = hedging()  # cap = floor: the fill is past the cap at once.
    src = AnsweringSources(h)
    assert await ChunkRace(src, REF, ["filling", "fast", ORIGIN]).run() == (DATA, "fast")
    assert src.asked == ["filling", "fast"] and h.stats.won == 1


@pytest.mark.parametrize("owner", ["silent", "stalled"])
async def test_an_owner_without_headers_or_with_a_stalled_body_is_hedged(owner: str) -> None:
    h = hedging()
    src = AnsweringSources(h)
    assert await ChunkRace(src, REF, [owner, ORIGIN]).run() == (DATA, ORIGIN)
    assert src.asked == [owner, ORIGIN] and h.stats.won == 1


# -- where a hedge goes, and what it may cost ----------------------------------------------


async def test_a_hedge_goes_to_the_successor_before_origin() -> None:
    h = hedging()
    src = AnsweringSources(h)
    race = ChunkRace(src, REF, ["silent", "fast", ORIGIN], costly=["fast"])
    assert await race.run() == (DATA, "fast")
    assert src.asked == ["silent", "fast"] and h.stats.won == 1


async def test_a_successor_is_costly_so_a_filling_owner_is_not_hedged_to_it() -> None:
    h = hedging()  # cap = floor: a replica would be asked at once.
    src = AnsweringSources(h)
    task = asyncio.ensure_future(
        ChunkRace(src, REF, ["filling", "fast", ORIGIN], costly=["fast"]).run())
    await _until(lambda: h.stats.withheld == 1, "the hedge to the successor is held back")
    src.done.set()
    assert await task == (DATA, "filling") and src.asked == ["filling"]


async def test_a_hedge_straight_to_origin_needs_the_pulls_budget() -> None:
    h = hedging()
    src = AnsweringSources(h)
    budget = OriginHedgeBudget(left=len(DATA) - 1)  # One byte short of this chunk.
    task = asyncio.ensure_future(
        ChunkRace(src, REF, ["silent", ORIGIN], origin_budget=budget).run())
    await _until(lambda: h.stats.over_budget == 1, "the hedge is refused by the budget")
    assert src.asked == ["silent"] and h.budget.hedging == 0
    src.done.set()
    assert await task == (DATA, "silent")
    budget = OriginHedgeBudget(left=len(DATA))
    src = AnsweringSources(h)
    assert await ChunkRace(src, REF, ["silent", ORIGIN], origin_budget=budget).run() == \
        (DATA, ORIGIN)
    assert budget.left == 0


async def test_a_silent_owner_waits_while_no_peer_is_heard_and_is_hedged_once_one_is() -> None:
    h = hedging(floor=0.01, cap=60.0)
    src = AnsweringSources(h)
    task = asyncio.ensure_future(ChunkRace(src, REF, ["silent", ORIGIN]).run())
    await _until(lambda: h.stats.quiet == 1, "the silent owner is held: nobody answers")
    assert src.asked == ["silent"]
    h.liveness.heard("another-peer")  # The ring answers; this owner does not.
    assert await task == (DATA, ORIGIN)
    assert h.stats.won == 1


async def _silent_owner_with_a_costly_successor(
    prober: Prober,
) -> tuple[Hedging, AnsweringSources, asyncio.Future[tuple[bytes | bytearray | memoryview, str]]]:
    """A race for a silent owner, then a successor that may cost origin, then origin,
    with ``prober`` answering for the owner. Floor and cap are an hour, so only the
    learned deadline (from one probe round trip) and the probe can hedge it. Returns
    once the owner was asked and another peer was heard (this owner is the odd one out)."""
    h = hedging(floor=3600.0, cap=3600.0, min_deadline=0.01)
    h.prober = prober
    h.observe_probe("another-peer", 0.001)
    src = AnsweringSources(h)
    task = asyncio.ensure_future(ChunkRace(src, REF, ["silent", "fast", ORIGIN],
                                           costly=["fast"]).run())
    await _until(lambda: src.asked == ["silent"], "the owner is asked")
    h.liveness.heard("another-peer")  # The ring answers; this owner does not.
    return h, src, task


async def test_a_silent_owner_is_judged_by_the_learned_deadline_and_a_probe_not_the_floor(
) -> None:
    # Floor and cap an hour: only the learned deadline (from a probe round trip) and a
    # probe the owner fails can hedge it; the floor would hold the race for an hour.
    probed: list[str] = []

    async def frozen(peer: str, timeout: float) -> bool:
        probed.append(peer)
        await asyncio.Event().wait()  # Accepts, never answers.
        return True

    h, _, task = await _silent_owner_with_a_costly_successor(frozen)
    assert await task == (DATA, "fast")
    assert probed == ["silent"] and (h.stats.unresponsive, h.stats.won) == (1, 1)


async def test_a_silent_owner_that_answers_its_probe_is_not_hedged_at_a_cost() -> None:
    async def alive(peer: str, timeout: float) -> bool:
        return True

    h, src, task = await _silent_owner_with_a_costly_successor(alive)
    await _until(lambda: h.stats.alive == 1, "the probe says the owner is alive")
    assert src.asked == ["silent"] and not task.done()  # Waits the alive bound (an hour).
    src.done.set()
    assert await task == (DATA, "silent")
    await h.close()


def test_the_successor_is_the_owner_once_the_owner_leaves() -> None:
    members = [f"10.0.0.{i}:7070" for i in range(1, 6)]
    ring = Ring(members)
    for index in range(50):
        (owner,) = ring.owners(REF.digest, index)
        after = successor(ring, REF.digest, index, [owner])
        assert after != owner
        assert after == Ring(set(members) - {owner}).owner(REF.digest, index)
    assert successor(Ring(["a"]), REF.digest, 0, ["a"]) is None


async def test_an_owner_still_filling_when_the_answer_bound_ends_is_asked_again_once() -> None:
    h = hedging(floor=60.0, cap=60.0)
    src = FakeSources(h)
    calls: list[str] = []

    async def slow_fill(ref: ChunkRef, source: str,
                        progress: ReadProgress | None = None) -> bytes:
        calls.append(source)
        if source == ORIGIN:
            return DATA
        assert progress is not None
        progress.tracked = True
        progress.answered("origin")  # Filling from origin, then the bound runs out.
        if calls.count(source) == 1:
            raise TransferError("peer stalled after 0 of 1200 bytes")
        return DATA

    src.read_source = slow_fill  # type: ignore[method-assign]
    assert await ChunkRace(src, REF, ["owner", ORIGIN]).run() == (DATA, "owner")
    assert calls == ["owner", "owner"]
    # Once only; and a peer that left the ring is not asked again.
    calls.clear()

    async def always_times_out(ref: ChunkRef, source: str,
                               progress: ReadProgress | None = None) -> bytes:
        calls.append(source)
        if source == ORIGIN:
            return DATA
        assert progress is not None
        progress.tracked = True
        progress.answered("origin")
        raise (PeerGone("gone") if source == "gone" else TransferError("stalled"))

    src.read_source = always_times_out  # type: ignore[method-assign]
    assert await ChunkRace(src, REF, ["owner", ORIGIN]).run() == (DATA, ORIGIN)
    assert calls == ["owner", "owner", ORIGIN]
    calls.clear()
    assert await ChunkRace(src, REF, ["gone", ORIGIN]).run() == (DATA, ORIGIN)
    assert calls == ["gone", ORIGIN]


# -- the client's bounds ------------------------------------------------------------------


async def frozen_peer(gate: asyncio.Event, first_byte: bool) -> AsyncIterator[str]:
    """A peer that accepts, then (optionally after one body byte) sends nothing until ``gate``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if first_byte:
            resp.content_length = len(DATA)
            await resp.prepare(request)
            await resp.write(DATA[:1])
        await gate.wait()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        gate.set()
        await runner.cleanup()


@pytest.mark.parametrize("first_byte", [False, True], ids=["no-answer", "stalled-body"])
async def test_a_silent_peer_counts_as_down_after_the_bounds(first_byte: bool) -> None:
    gate = asyncio.Event()
    http = HttpClient(HttpConfig())
    try:
        async for peer in frozen_peer(gate, first_byte):
            client = PeerClient(http, None, timeout=0.05, answer_timeout=0.1, stall_timeout=0.1)
            with pytest.raises(TransferError, match="stalled" if first_byte else "did not answer"):
                await client.read_chunk(peer, REF)
    finally:
        await http.close()


def test_bounds_derive_from_the_peer_timeout() -> None:
    client = PeerClient(HttpClient(HttpConfig()), None, timeout=2.0)
    assert (client.answer_timeout, client.stall_timeout) == (30.0, 4.0)


async def test_a_peer_dropped_from_the_ring_fails_its_requests_at_once() -> None:
    gate = asyncio.Event()
    http = HttpClient(HttpConfig())
    try:
        async for peer in frozen_peer(gate, first_byte=False):
            client = PeerClient(http, None, timeout=5.0)  # Bounds far beyond this test.
            reading = asyncio.ensure_future(client.read_chunk(peer, REF))
            for _ in range(1000):
                if client._in_flight:
                    break
                await asyncio.sleep(0.005)
            assert client.drop_peers([peer]) == 0  # Still a member: left alone.
            assert client.drop_peers(["other:1"]) == 1
            with pytest.raises(PeerGone):
                await reading
            assert not client._in_flight
    finally:
        await http.close()


async def test_the_client_takes_an_early_answer_and_reports_it() -> None:
    gate = asyncio.Event()

    async def filling_owner(request: web.Request) -> web.StreamResponse:
        assert request.headers.get(EARLY_ANSWER_HEADER) == "1"
        resp = web.StreamResponse(headers={CHUNK_SOURCE_HEADER: "origin"})
        resp.content_length = len(DATA)
        await resp.prepare(request)  # Headers now; the body once "origin" delivered.
        await gate.wait()
        await resp.write(DATA)
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", filling_owner)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    http = HttpClient(HttpConfig())
    try:
        client = PeerClient(http, None, timeout=5.0)
        progress = ReadProgress()
        reading = asyncio.ensure_future(
            client.read_chunk(f"127.0.0.1:{runner.addresses[0][1]}", REF, progress))
        await _until(lambda: progress.answered_at is not None, "the headers arrive")
        assert progress.tracked and progress.filling and not reading.done()
        gate.set()
        assert await reading == DATA
        assert progress.got == len(DATA) and not progress.filling
    finally:
        gate.set()
        await http.close()
        await runner.cleanup()
