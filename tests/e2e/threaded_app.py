"""An aiohttp app on loopback served from an event loop of its own, in a thread.

The e2e relays (:class:`~tests.e2e.agents.CorruptingProxy`,
``ThrottledRelay`` of ``test_mirror_server``) sit between real processes and
are driven from sync test code; this is the start-in-a-thread and stop-it-cleanly
part they share, so each keeps only what it relays and how.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self

import aiohttp
from aiohttp import web


class ThreadedApp:
    """Serves :meth:`_app` on ``127.0.0.1:port`` while in a ``with`` block.

    A subclass (a dataclass) declares ``port`` (0 picks a free one, which is
    written back on start), ``_loop`` (a new event loop), ``_runner`` and
    ``_thread`` (both None), and implements :meth:`_app`.
    """

    port: int
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner | None
    _thread: threading.Thread | None

    def _app(self) -> web.Application:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]


async def forward(request: web.Request, upstream_port: int) -> tuple[int, bytes, str | None] | None:
    """Send ``request`` on to ``127.0.0.1:upstream_port`` and read the whole answer:
    its status, body and content type, or ``None`` when upstream is unreachable."""
    url = f"http://127.0.0.1:{upstream_port}{request.path_qs}"
    headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
    try:
        async with aiohttp.ClientSession() as s, s.request(
            request.method, url, headers=headers, data=await request.read()
        ) as up:
            return up.status, await up.read(), up.headers.get("Content-Type")
    except aiohttp.ClientError:
        return None


def answer(status: int, body: bytes, ctype: str | None) -> web.Response:
    """The relay's answer: upstream's status and body, with its content type."""
    return web.Response(status=status, body=body,
                        headers={"Content-Type": ctype} if ctype else None)


UPSTREAM_DOWN = "upstream down\n"
"""What a relay answers (502) when its upstream cannot be reached."""
