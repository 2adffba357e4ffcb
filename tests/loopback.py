"""aiohttp applications served on 127.0.0.1 by an event loop of their own, in a daemon
thread, so that synchronous test code and other event loops can reach them.

The test servers (:mod:`tests.hfserver`, :mod:`tests.httpserver`, the HttpStore
origin) all start, serve and stop the same way; this is that one way.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Sequence

from aiohttp import web

__all__ = ["LoopbackApps", "listen"]


def listen(backlog: int = 256) -> tuple[socket.socket, int]:
    """A socket listening on 127.0.0.1 at a free port, and that port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock, sock.getsockname()[1]


class LoopbackApps:
    """Serves ``(app, listening socket)`` pairs from a private loop in a daemon thread.

    :meth:`stop` cleans every app up, stops the loop and closes the sockets; it is
    idempotent. Handlers are cancelled with their client and shut down within half
    a second, so a test's abandoned request never holds the server up.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self._socks: list[socket.socket] = []

    def start(self, sites: Sequence[tuple[web.Application, socket.socket]]) -> None:
        """Start the loop and serve every app on its socket (the sockets are ours from now)."""
        self._socks.extend(sock for _, sock in sites)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(sites), self._loop).result(10)

    async def _serve(self, sites: Sequence[tuple[web.Application, socket.socket]]) -> None:
        for app, sock in sites:
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                   shutdown_timeout=0.5)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self._runners.append(runner)

    def stop(self) -> None:
        """Clean up the apps, stop and close the loop, close the sockets; idempotent."""
        if self._loop.is_closed():
            return
        for runner in self._runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
        self._runners.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        for sock in self._socks:
            sock.close()
