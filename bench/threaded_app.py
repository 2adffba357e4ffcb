"""An aiohttp app on loopback served from an event loop of its own, in a thread.

The relays that sit between real processes and are driven from sync code share
it: the bench's slow-owner relay (:mod:`bench.herd_delay`) and the e2e tests'
corrupting, holding and throttling relays (``tests/e2e``). This is the
start-in-a-thread and stop-it-cleanly part, so each keeps only what it relays
and how.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from aiohttp import web

__all__ = ["ThreadedApp"]


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
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        """Stop serving (on the app's loop); a subclass that opened more closes it here."""
        if self._runner is not None:
            await self._runner.cleanup()
