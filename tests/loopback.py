"""aiohttp applications served on 127.0.0.1 by an event loop of their own, in a daemon
thread, so that synchronous test code and other event loops can reach them.

The test servers (:mod:`tests.hfserver`, :mod:`tests.httpserver`, the HttpStore
origin) all start, serve and stop the same way; this is that one way.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

import pytest
from aiohttp import web

__all__ = ["LoopbackApps", "listen", "parse_range", "server_fixtures"]


class _Resettable(Protocol):
    def reset(self) -> None: ...


_S = TypeVar("_S", bound=_Resettable)

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range of ``size`` bytes, or ``None`` if it
    is malformed or unsatisfiable (416), as a suffix of zero bytes is."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match[1], match[2]
    if first == "":
        if last == "" or int(last) == 0:
            return None
        return max(size - int(last), 0), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    return (start, end) if start < end else None


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


def server_fixtures(start: Callable[[], AbstractContextManager[_S]],
                    name: str) -> tuple[Any, Any]:
    """Two fixtures over one server for the whole session: ``<name>_session``, the
    server ``start()`` enters (stopped at the session's end), and ``<name>``, that
    server reset before and after each test. Bind them to those names in the module
    (and import them into a conftest.py) for pytest to find them."""

    @pytest.fixture(scope="session", name=f"{name}_session")
    def session() -> Iterator[_S]:
        """One server for the whole session."""
        with start() as server:
            yield server

    @pytest.fixture(name=name)
    def per_test(request: pytest.FixtureRequest) -> Iterator[_S]:
        """The session's server, reset before and after the test."""
        server: _S = request.getfixturevalue(f"{name}_session")
        server.reset()
        yield server
        server.reset()

    return session, per_test
