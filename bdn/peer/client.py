"""The asking side of the peer tier: read a chunk from the node that owns it.

The request (path, query, headers) is the peer wire of
:mod:`bdn.agent.protocol`, served by :mod:`bdn.agent.server`. 200 carries
exactly the chunk's bytes. The owner answers from its node cache, its chunk
cache or origin, and never forwards the request to another peer (the
``X-BDN-Forwarded: 1`` header says so explicitly, for any future proxy in
between).

Every request takes an early answer (``X-BDN-Early-Answer: 1``): the owner
sends the headers at once, with ``X-BDN-Chunk-Source`` saying whether it
holds the chunk or is filling it from origin, and the body when it can. A
:class:`~bdn.peer.progress.ReadProgress` passed in records both as they come,
for the hedging decision (:mod:`bdn.peer.race`). An older owner ignores the
request header and answers once it holds the chunk; the bounds cover both.

With fan-out (:mod:`bdn.peer.fanout`) an owner may answer ``307`` with
``X-BDN-Redirect`` naming a holder of the chunk: :meth:`PeerClient.read_chunk`
raises :class:`Redirected` and the caller (:mod:`bdn.peer.tiered`) decides
whether to follow it. Redirects are never followed here.

Every bound of a request derives from ``--peer-timeout`` (``timeout``): the
connect, the wait for the *answer* (the headers and the first body byte,
``ANSWER_FACTOR`` times it: the owner may first read the chunk from origin)
and every later read of the body (``STALL_FACTOR`` times it: the owner
holds the chunk by then). A peer that
accepts connections but never answers (a frozen process) therefore costs a
bounded wait, and :meth:`PeerClient.drop_peers` cuts even that short when
membership takes the peer off the ring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from bdn.agent.protocol import (
    CHUNK_SOURCE_HEADER,
    EARLY_ANSWER_HEADER,
    FORWARDED_HEADER,
    ChunkRef,
    chunk_path,
)
from bdn.errors import TransferError
from bdn.http import HttpClient, raise_for_status, translate_client_error, widen_reads
from bdn.peer.fanout import REDIRECT_HEADER
from bdn.peer.progress import ReadProgress

DEFAULT_PEER_TIMEOUT = 2.0
"""Seconds to connect to a peer before counting it as down and going to origin."""

ANSWER_FACTOR = 15.0
"""The answer (headers and first body byte) may take this many peer timeouts (30 s
at 2 s): the owner may first fetch the whole chunk from origin (64 MiB over a shared link takes
seconds, more with a queue). Hedging (:mod:`bdn.peer.hedge`) routes around a
slow owner long before this; this bound only frees the request."""

STALL_FACTOR = 2.0
"""The body may go silent for this many peer timeouts (the owner sends from memory)."""


class PeerGone(TransferError):
    """The peer left the ring while a request to it was in flight."""


class Redirected(Exception):  # An answer, not a failure: not a TransferError.
    """The owner answered ``307``: read the chunk from ``holder`` (``host:port``) instead
    (fan-out, :mod:`bdn.peer.fanout`)."""

    def __init__(self, peer: str, holder: str) -> None:
        super().__init__(f"peer {peer} redirected the request to {holder}")
        self.holder = holder


class PeerClient:
    """Reads chunks from peers over HTTP. Coroutine-safe within one loop; does not own ``http``.

    A peer that does not connect within ``timeout`` seconds, send its headers and
    first body byte within ``answer_timeout`` or a later body piece within ``stall_timeout``
    counts as down for that request: the caller then reads the chunk elsewhere.
    """

    def __init__(
        self,
        http: HttpClient,
        token: str | None,
        *,
        timeout: float = DEFAULT_PEER_TIMEOUT,
        answer_timeout: float | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        self.http = http
        self.timeout = timeout
        self.answer_timeout = ANSWER_FACTOR * timeout if answer_timeout is None else answer_timeout
        self.stall_timeout = STALL_FACTOR * timeout if stall_timeout is None else stall_timeout
        self._headers = {FORWARDED_HEADER: "1", EARLY_ANSWER_HEADER: "1"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._in_flight: dict[str, set[asyncio.Task[bytearray]]] = {}
        self._dropped: set[asyncio.Task[bytearray]] = set()

    def drop_peers(self, live: Iterable[str]) -> int:
        """Cancel every request in flight to a peer not in ``live``; returns how many.

        Each cancelled :meth:`read_chunk` raises :class:`PeerGone`, so its pull
        moves on at once instead of waiting out the answer timeout.
        """
        keep = set(live)
        n = 0
        for peer, tasks in self._in_flight.items():
            if peer in keep:
                continue
            for task in tasks:
                if not task.done():
                    self._dropped.add(task)
                    task.cancel()
                    n += 1
        return n

    async def read_chunk(self, peer: str, ref: ChunkRef,
                         progress: ReadProgress | None = None, *,
                         headers: Mapping[str, str] | None = None,
                         headers_within: float | None = None) -> bytearray:
        """The chunk's bytes from ``peer`` (``host:port``), whole (not yet verified);
        ``progress`` (if given) records the answer and the body as they arrive.

        ``headers`` are added to the request (fan-out's, :mod:`bdn.peer.fanout`);
        ``headers_within`` bounds the wait for the response headers (default: the
        answer timeout; a fan-out holder answers at once, so it gets less).

        Raises:
            Redirected: the owner sent the request to a holder of the chunk.
            TransferError (incl. PeerGone, StallError, HTTPStatusError): the peer is
                down, slow, left the ring, refused, or sent a short or long body.
            AuthError: the peer rejected our token.
        """
        watch = progress if progress is not None else ReadProgress()
        watch.tracked = True
        sent = {**self._headers, **headers} if headers else self._headers
        within = self.answer_timeout if headers_within is None else headers_within
        task = asyncio.ensure_future(self._read(peer, ref, watch, sent, within))
        tasks = self._in_flight.setdefault(peer, set())
        tasks.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task in self._dropped and (current is None or not current.cancelling()):
                raise PeerGone(f"peer {peer} left the ring during the request") from None
            raise
        finally:
            tasks.discard(task)
            self._dropped.discard(task)
            if not tasks:
                self._in_flight.pop(peer, None)

    async def _read(self, peer: str, ref: ChunkRef, progress: ReadProgress,
                    headers: Mapping[str, str], within: float) -> bytearray:
        url = f"http://{peer}{chunk_path(ref)}"
        answer_by = time.monotonic() + self.answer_timeout
        session = await self.http.session()
        # The session's timeouts are replaced, not merged: the bounds are the wait_fors here.
        limits = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
        try:
            resp = await asyncio.wait_for(
                session.get(url, headers=headers, allow_redirects=False, timeout=limits),
                within,
            )
        except TimeoutError:
            raise TransferError(f"peer {peer} did not answer within {within}s", url=url) from None
        except aiohttp.ClientError as err:
            raise translate_client_error(err, url, "chunk request to a peer") from None
        async with resp:
            holder = resp.headers.get(REDIRECT_HEADER)
            if resp.status == 307 and holder:
                raise Redirected(peer, holder)
            raise_for_status(resp.status, url, resp.headers)
            progress.answered(resp.headers.get(CHUNK_SOURCE_HEADER))
            widen_reads(resp, self.http.config.socket_read_size)
            return await self._body(resp, peer, ref.end - ref.start, url,
                                    _Bounds(answer_by, self.stall_timeout), progress)

    async def _body(
        self, resp: aiohttp.ClientResponse, peer: str, expected: int, url: str,
        bounds: _Bounds, progress: ReadProgress,
    ) -> bytearray:
        """Exactly ``expected`` bytes of ``resp``'s body: the first piece by the answer
        deadline (the owner may be filling the chunk), each later one within the stall
        timeout."""
        data = bytearray(expected)
        got = 0
        try:
            while True:
                piece = await asyncio.wait_for(resp.content.readany(), bounds.next_read(got))
                if not piece:
                    break
                progress.received(len(piece))
                if got + len(piece) > expected:
                    raise TransferError(
                        f"peer {peer} sent more than the chunk's {expected} bytes", url=url
                    )
                data[got : got + len(piece)] = piece
                got += len(piece)
        except TimeoutError:
            raise TransferError(
                f"peer {peer} stalled after {got} of {expected} bytes (answer bound "
                f"{self.answer_timeout}s, stall bound {self.stall_timeout}s)", url=url,
            ) from None
        except aiohttp.ClientError as err:
            raise translate_client_error(err, url, "chunk body from a peer") from None
        if got != expected:
            raise TransferError(f"peer {peer} sent {got} of {expected} bytes", url=url)
        return data


@dataclass(frozen=True, slots=True)
class _Bounds:
    """The time bounds of one response body."""

    answer_by: float  # Monotonic time by which the first body byte is due.
    stall: float

    def next_read(self, got: int) -> float:
        """Seconds the next read may take, ``got`` bytes in."""
        if got:
            return self.stall
        return max(self.stall, self.answer_by - time.monotonic())
