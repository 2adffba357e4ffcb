"""A slow chunk owner for ``bdn bench herd --owner-fault slow``: a delaying relay.

The relay listens on its own loopback port, which the slow agent advertises
(``--advertise``) and every agent lists in ``--peers``, so every peer request
to that agent goes through it. A chunk request (``/v1/chunks/...``) waits
``delay`` seconds before it is forwarded; everything else (health probes,
metrics) is forwarded at once. So the owner stays in the ring and answers its
probes, but each chunk it serves is late by ``delay``: the owner of a GC pause
or a queue of disk work, with no test hook in the agent itself.

The relay runs its own event loop in a thread and streams bodies through in
pieces (a chunk is never held whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from bench.threaded_app import ThreadedApp

CHUNK_PREFIX = "/v1/chunks/"
"""Requests under this path are delayed (the peer wire of :mod:`bdn.agent.protocol`)."""

PIECE = 1024 * 1024
"""Body bytes relayed per read."""

HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "host",
                         "content-length"})
"""Headers of one hop, not forwarded (aiohttp sets its own)."""


@dataclass
class DelayRelay(ThreadedApp):
    """Forwards HTTP to ``upstream`` (``host:port``), chunk requests ``delay`` seconds
    late; ``with DelayRelay(...) as relay`` serves on ``relay.address`` until the end.
    ``delayed`` counts the chunk requests it held."""

    upstream: str
    delay: float
    port: int = 0
    delayed: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _closing: asyncio.Event | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        return app

    async def _start(self) -> None:
        self._closing = asyncio.Event()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False)
        await super()._start()

    async def _stop(self) -> None:
        if self._closing is not None:
            self._closing.set()  # Held requests end now, not after their delay.
        await super()._stop()
        if self._session is not None:
            await self._session.close()

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CHUNK_PREFIX):
            self.delayed += 1
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.delay)
            if self._closing.is_set():
                return web.Response(status=503, text="the relay is closing")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        url = f"http://{self.upstream}{request.path_qs}"
        try:
            async with self._session.request(request.method, url, headers=headers,
                                             data=await request.read() or None,
                                             allow_redirects=False) as up:
                resp = web.StreamResponse(status=up.status, headers={
                    k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS})
                if up.content_length is not None:
                    resp.content_length = up.content_length
                await resp.prepare(request)
                while piece := await up.content.read(PIECE):
                    await resp.write(piece)
                await resp.write_eof()
                return resp
        except (aiohttp.ClientError, OSError):
            # The upstream failed mid-answer: drop the connection, as an owner would.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=502, text="the relayed agent did not answer")
