"""The asking side of the peer tier: read a chunk from the node that owns it.

The request (path, query, headers) is the peer wire of
:mod:`bdn.agent.protocol`, served by :mod:`bdn.agent.server`. 200 carries
exactly the chunk's bytes. The owner answers from its node cache, its chunk
cache or origin, and never forwards the request to another peer (the
``X-BDN-Forwarded: 1`` header says so explicitly, for any future proxy in
between).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from bdn.agent.protocol import FORWARDED_HEADER, ChunkRef, chunk_path
from bdn.errors import TransferError
from bdn.http import HttpClient, raise_for_status, translate_client_error

DEFAULT_PEER_TIMEOUT = 2.0
"""Seconds to connect to a peer before counting it as down and going to origin."""

DEFAULT_ANSWER_TIMEOUT = 120.0
"""Seconds an owner may take to answer: it may first fetch the whole chunk from
origin (64 MiB over a shared 100 MB/s link is seconds, more with a queue), and
giving up early would send the asker to origin too, bringing the herd back."""


class PeerClient:
    """Reads chunks from peers over HTTP. Coroutine-safe; does not own ``http``.

    A peer that does not connect within ``timeout`` seconds, or answer within
    ``answer_timeout``, counts as down for that request: the caller then reads
    the chunk from origin.
    """

    def __init__(
        self,
        http: HttpClient,
        token: str | None,
        *,
        timeout: float = DEFAULT_PEER_TIMEOUT,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
    ) -> None:
        self.http = http
        self.timeout = timeout
        self.answer_timeout = answer_timeout
        self._headers = {FORWARDED_HEADER: "1"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    async def open_chunk(self, peer: str, ref: ChunkRef) -> AsyncIterator[bytes]:
        """Stream the chunk's bytes from ``peer`` (``host:port``).

        Raises:
            TransferError (incl. StallError, HTTPStatusError, RetryableHTTPError):
                the peer is down, slow, refused, or sent a short body.
            AuthError: the peer rejected our token.
        """
        url = f"http://{peer}{chunk_path(ref)}"
        session = await self.http.session()
        limits = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
        try:
            resp = await asyncio.wait_for(
                session.get(url, headers=self._headers, allow_redirects=False, timeout=limits),
                self.answer_timeout,
            )
        except TimeoutError:
            raise TransferError(
                f"peer {peer} did not answer within {self.answer_timeout}s", url=url
            ) from None
        except aiohttp.ClientError as err:
            raise translate_client_error(err, url, "chunk request to a peer") from None
        async with resp:
            raise_for_status(resp.status, url, resp.headers)
            expected = ref.end - ref.start
            got = 0
            try:
                async for piece in resp.content.iter_any():
                    got += len(piece)
                    if got > expected:
                        raise TransferError(
                            f"peer {peer} sent more than the chunk's {expected} bytes", url=url
                        )
                    yield piece
            except (aiohttp.ClientError, TimeoutError) as err:
                raise translate_client_error(err, url, "chunk body from a peer") from None
            if got != expected:
                raise TransferError(f"peer {peer} sent {got} of {expected} bytes", url=url)
