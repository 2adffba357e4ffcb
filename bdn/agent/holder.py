"""The peer port's answer to a redirected chunk request: fan-out's holder side.

A request with ``X-BDN-Redirected: 1`` (:mod:`bdn.peer.fanout`) was sent here by
the chunk's owner. It is answered from what this node keeps or is reading
(:class:`~bdn.agent.relay.RelayStore`), never from origin or another peer: 404
at once when the node has neither, 503 when it already sends that chunk to K
redirected requesters. The headers go out at once (from memory), the body once
the bytes are verified, through the owner's response gate like any chunk.
"""

from __future__ import annotations

from aiohttp import web

from bdn.agent.chunks import OpenChunk
from bdn.agent.gate import Place, ResponseGate
from bdn.agent.metrics import AgentMetrics
from bdn.agent.protocol import ChunkRef
from bdn.agent.relay import RelayStore
from bdn.agent.sending import abandon, send_body, start_answer
from bdn.daemon.tokens import json_error


async def answer_as_holder(request: web.Request, ref: ChunkRef, relay: RelayStore,
                           gate: ResponseGate, metrics: AgentMetrics) -> web.StreamResponse:
    """A redirected request: the chunk from what this node keeps, or from its own read
    of it once that ends; 404 at once when it has neither, 503 at its per-chunk cap.

    Never origin, never another peer: the requester goes back to the owner instead.
    """
    counter, stats = metrics.peer_requests, relay.stats
    with relay.sending(ref) as slot:
        if not slot.ok:
            stats.holder_refusals += 1
            counter.labels("503").inc()
            return json_error(503, f"this holder already sends chunk {ref.index} of {ref.digest} "
                          f"to {relay.k} peers; ask its owner")
        # Headers first when memory says the chunk is here or coming; else look on disk.
        chunk = None if relay.known(ref) else await relay.open_now(ref)
        if chunk is None and not relay.known(ref):
            stats.holder_refusals += 1
            counter.labels("404").inc()
            return json_error(404, f"this node holds no chunk {ref.index} of {ref.digest} "
                          "with that xxh3; ask its owner")
        return await _send_held(request, ref, gate.place(), chunk, relay, metrics)


HOLDER_WAIT_S = 120.0
"""Longest a holder waits for its own read of a chunk before abandoning a redirected
request's answer (the requester's own bounds are shorter: it goes back to the owner)."""


async def _send_held(request: web.Request, ref: ChunkRef, place: Place, chunk: OpenChunk | None,
                     relay: RelayStore, metrics: AgentMetrics) -> web.StreamResponse:
    """The early answer of a holder: headers now (``cache``, or ``origin`` while its own
    read runs: waiting costs origin nothing), the body when the bytes are verified."""
    resp: web.StreamResponse | None = None
    try:
        reading = chunk is None and relay.in_flight(ref)
        resp = await start_answer(request, ref.end - ref.start,
                                  "origin" if reading else "cache")
        if chunk is None:
            chunk = await relay.open_when_read(ref, HOLDER_WAIT_S)
        if chunk is None:
            raise ConnectionAbortedError("this node's own read of the chunk failed, or "
                                         "its copy was evicted")
        async with place.slot():
            metrics.peer_requests.labels("200").inc()
            metrics.peer_bytes_served.inc(chunk.length)
            relay.stats.bytes_as_holder += chunk.length
            await send_body(request, resp, chunk)
        return resp
    except OSError as err:
        metrics.peer_requests.labels("502").inc()
        abandon(request, err)
        return resp if resp is not None else web.StreamResponse()
    finally:
        place.give_up()
        if chunk is not None:
            chunk.close()
