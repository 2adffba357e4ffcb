"""The shared HTTP client: the only place that builds aiohttp sessions.

One session per running event loop, with BDN's limits, timeouts and headers,
plus the small metadata calls (:meth:`HttpClient.get_bytes`,
:meth:`HttpClient.head`) that retry by a :class:`~bdn.http.RetryPolicy`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from bdn.errors import BdnError
from bdn.http.policy import DEFAULT_HTTP_CONFIG, RETRY_METADATA, HttpConfig, RetryPolicy, retrying
from bdn.http.status import FOREIGN_ERRORS, raise_for_status, raise_translated, redact_url

__all__ = ["HttpClient", "widen_reads"]

_T = TypeVar("_T")


class HttpClient:
    """Shared HTTP client: one aiohttp session per running event loop, made lazily.

    Coroutine-safe. The session is bound to the loop it was created on, so a
    client may be used from several ``asyncio.run`` calls in turn; call
    :meth:`close` on each loop before that loop ends. :meth:`close` is
    idempotent, and a closed client opens a fresh session when used again.
    """

    def __init__(self, config: HttpConfig = DEFAULT_HTTP_CONFIG) -> None:
        self.config = config
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()

    async def session(self) -> aiohttp.ClientSession:
        """The running loop's session, created on first use."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for other in [lp for lp in self._sessions if lp.is_closed()]:
                # That loop is gone and its sockets with it; forget the session.
                self._sessions.pop(other).detach()
            session = self._new_session()
            self._sessions[loop] = session
        return session

    def _new_session(self) -> aiohttp.ClientSession:
        cfg = self.config
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.max_connections, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.stall_timeout
            ),
            # Bytes must arrive exactly as stored: ranges and digests are over
            # the object itself, and auto_decompress is off.
            headers={"User-Agent": cfg.user_agent, "Accept-Encoding": "identity"},
            auto_decompress=False,
            read_bufsize=cfg.read_bufsize,
            trust_env=cfg.trust_env,
        )

    async def close(self) -> None:
        """Close the running loop's session (idempotent)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - close() is a coroutine
            return
        session = self._sessions.pop(loop, None)
        if session is not None and not session.closed:
            await session.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get_bytes(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        policy: RetryPolicy = RETRY_METADATA,
    ) -> bytes:
        """GET ``url`` and return the whole body; for small objects (manifests, JSON).

        Raises the :func:`~bdn.http.raise_for_status` errors (``BlobNotFound`` for
        404) and :class:`TransferError` subclasses after ``policy`` is exhausted.
        """

        async def body(resp: aiohttp.ClientResponse) -> bytes:
            raise_for_status(resp.status, url, resp.headers)
            return await resp.read()

        return await self._retried("GET", url, body, policy, headers=headers)

    async def head(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        policy: RetryPolicy = RETRY_METADATA,
    ) -> dict[str, str] | None:
        """HEAD ``url``: its response headers (names lowercased), or ``None`` on 404/410.

        Other failures raise as :meth:`get_bytes` does.
        """

        async def answer(resp: aiohttp.ClientResponse) -> dict[str, str] | None:
            if resp.status in (404, 410):
                return None
            raise_for_status(resp.status, url, resp.headers)
            return {k.lower(): v for k, v in resp.headers.items()}

        return await self._retried("HEAD", url, answer, policy, headers=headers,
                                   allow_redirects=True)

    async def _retried(
        self,
        method: str,
        url: str,
        answer: Callable[[aiohttp.ClientResponse], Awaitable[_T]],
        policy: RetryPolicy,
        **options: Any,
    ) -> _T:
        """``answer(resp)`` to one ``method url`` request, retried by ``policy``; aiohttp's
        and the OS's errors become :mod:`bdn.errors` types, so the policy sees ours."""

        async def once() -> _T:
            session = await self.session()
            try:
                async with session.request(method, url, **options) as resp:
                    return await answer(resp)
            except BdnError:
                raise
            except FOREIGN_ERRORS as err:
                raise_translated(err, url, method)
                raise  # pragma: no cover - raise_translated always raises

        return await retrying(policy, once, describe=f"{method} {redact_url(url)}")


def widen_reads(resp: aiohttp.ClientResponse, size: int) -> None:
    """Let the socket under ``resp`` return up to ``size`` bytes per read.

    asyncio's selector transport reads at most 256 KiB per event-loop turn, so
    a fast body costs one wake-up, one parser call and one buffer per 256 KiB.
    Reading up to 4 MiB when that much is waiting cut a loopback fetch's CPU
    per GB by about a third (docs/DESIGN.md, "Data plane: cost per byte"). The read size is a
    plain attribute of CPython's selector transport; a transport without one
    (TLS, another event loop) is left as it is.
    """
    connection = resp.connection
    transport = connection.transport if connection is not None else None
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = size  # type: ignore[attr-defined]

