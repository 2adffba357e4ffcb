"""A real HTTP object server on loopback with fault injection, for tests.

:class:`FaultServer` runs an aiohttp web server in a background thread with its
own event loop on ``127.0.0.1:<free port>``. It serves named objects (bytes in
memory or files on disk) with ``HEAD``, ``Range``/``206``/``Content-Range`` and
``416``, counts what it serves, and misbehaves on demand::

    server.put("blob", data)
    server.faults = FaultPlan(status=503, status_count=2, retry_after="0.05")
    ... client code ...
    assert server.stats.get_requests == 3

Each fault is consumed by the requests it actually affects (a byte flip only by
a response that contains that byte, a reset only by a body longer than the
reset point), so tests stay deterministic with parallel range requests.

Fixtures: ``fault_server_session`` (one server per session) and
``fault_server`` (the same server, objects/faults/counters reset around each
test). Import both into a ``conftest.py`` to use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.loopback import LoopbackApps, listen, parse_range, server_fixtures

__all__ = ["FaultPlan", "FaultServer", "ServerStats", "fault_server", "fault_server_session"]

_WRITE_PIECE = 64 * 1024


@dataclass
class FaultPlan:
    """Misbehaviour for the next requests. Counts are decremented as faults fire.

    Attributes:
        status: status answered by the next ``status_count`` requests (GET or HEAD).
        status_count: how many requests get ``status`` (use a large number for
            a permanent error such as 403).
        retry_after: ``Retry-After`` value sent with ``status``.
        reset_after: reset the TCP connection (RST) after this many body bytes,
            for the next ``reset_count`` GETs whose body is longer than that.
        truncate_after: send only this many body bytes, then close cleanly while
            ``Content-Length`` promises more (next ``truncate_count`` GETs).
        flip_offset: object offset whose byte is inverted in the next
            ``flip_count`` responses that contain it.
        stall_after: body bytes sent before sleeping ``stall_seconds`` (next
            ``stall_count`` GETs with a longer body).
        ignore_range: answer every GET ``200`` with the whole object.
        wrong_range_count: the next N ranged GETs answer a ``Content-Range`` one
            byte off from the one asked for.
        content_encoding: label every body with this ``Content-Encoding``
            (the bytes are not actually encoded).
        path: restrict all faults to this object name (``None``: any object).
        bytes_per_second: throttle every GET body to this rate (per response;
            not consumed), so a test can kill a client mid-transfer.
        pause_after: a barrier: once this many GET body bytes have been served
            in all (since the plan was set), every response stops sending at its
            next write (so each sends at most one more piece), the server's
            ``paused`` event is set, and bodies resume only after
            :meth:`FaultServer.release` (or a reset). Not restricted by ``path``.
        stall_headers_count: the next N GETs send their headers and then no
            body byte until the client gives up (a persistent stall).
    """

    status: int = 503
    status_count: int = 0
    retry_after: str | None = None
    reset_after: int | None = None
    reset_count: int = 1
    truncate_after: int | None = None
    truncate_count: int = 1
    flip_offset: int | None = None
    flip_count: int = 1
    stall_after: int | None = None
    stall_seconds: float = 1.0
    stall_count: int = 1
    ignore_range: bool = False
    wrong_range_count: int = 0
    content_encoding: str | None = None
    path: str | None = None
    bytes_per_second: float | None = None
    pause_after: int | None = None
    stall_headers_count: int = 0


@dataclass
class ServerStats:
    """What the server saw.

    ``ranges`` lists ``(name, start, end_exclusive)`` per GET body sent;
    ``max_in_flight`` is the most GET bodies being sent at once;
    ``last_headers`` are the request headers of the latest request;
    ``connections`` holds the client address of every TCP connection used.
    """

    requests: int = 0
    get_requests: int = 0
    head_requests: int = 0
    bytes_served: int = 0
    faults_fired: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    connections: set[object] = field(default_factory=set)
    ranges: list[tuple[str, int, int]] = field(default_factory=list)
    bytes_by_object: dict[str, int] = field(default_factory=dict)


@dataclass
class _Decision:
    status: int | None = None
    retry_after: str | None = None
    reset_after: int | None = None
    truncate_after: int | None = None
    flip_offset: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    ignore_range: bool = False
    wrong_range: bool = False
    stall_headers: bool = False


class FaultServer:
    """The server; see the module docstring. Thread-safe from the test's side."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes | Path] = {}
        self._lock = threading.Lock()
        self.paused = threading.Event()
        self._released = threading.Event()
        self._generation = 0  # bumped by every new plan: releases responses held by the old
        self._plan_served = 0  # GET body bytes served under the current plan (pause_after)
        self._faults = FaultPlan()
        self.stats = ServerStats()
        self._apps = LoopbackApps()
        self._sock, self.port = listen(128)
        self.base_url = f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultServer:
        app = web.Application()
        app.router.add_route("GET", "/{name:.*}", self._handle)
        app.router.add_route("HEAD", "/{name:.*}", self._handle)
        self._apps.start([(app, self._sock)])
        return self

    def stop(self) -> None:
        self._apps.stop()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ objects

    def put(self, name: str, data: bytes | Path) -> str:
        """Serve ``data`` (bytes, or a file read at request time) as ``/name``; return its URL."""
        with self._lock:
            self._objects[name] = data
        return self.url(name)

    def remove(self, name: str) -> None:
        with self._lock:
            self._objects.pop(name, None)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def reset(self) -> None:
        """Forget objects, faults and counters (releasing a pause)."""
        with self._lock:
            self._objects.clear()
            self.stats = ServerStats()
        self.faults = FaultPlan()

    @property
    def faults(self) -> FaultPlan:
        """The plan in force; setting one releases a pause and restarts ``pause_after``."""
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        with self._lock:
            self._faults = plan
            self._plan_served = 0
            self._generation += 1
            self.paused.clear()
            self._released.clear()

    def release(self) -> None:
        """Let paused responses go on (a ``pause_after`` barrier that fired)."""
        self._released.set()

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = ServerStats()

    # ------------------------------------------------------------------ faults

    def _decide(self, name: str, method: str, start: int, end: int, ranged: bool) -> _Decision:
        """Consume the faults this response triggers (under the lock)."""
        plan = self.faults
        d = _Decision()
        if plan.path is not None and plan.path != name:
            return d
        fired = 0
        if plan.status_count > 0:
            plan.status_count -= 1
            self.stats.faults_fired += 1
            return _Decision(status=plan.status, retry_after=plan.retry_after)
        if method != "GET":
            return d
        d.ignore_range = plan.ignore_range
        if d.ignore_range:
            start, end, ranged = 0, -1, False  # Whole body follows; resolved by caller.
        if ranged and plan.wrong_range_count > 0:
            plan.wrong_range_count -= 1
            d.wrong_range = True
            fired += 1
        length = end - start
        if (
            plan.flip_offset is not None
            and plan.flip_count > 0
            and (d.ignore_range or start <= plan.flip_offset < end)
        ):
            plan.flip_count -= 1
            d.flip_offset = plan.flip_offset
            fired += 1
        for kind in ("reset", "truncate", "stall"):
            after = getattr(plan, f"{kind}_after")
            count = getattr(plan, f"{kind}_count")
            if after is not None and count > 0 and (d.ignore_range or length > after):
                setattr(plan, f"{kind}_count", count - 1)
                setattr(d, f"{kind}_after", after)
                fired += 1
        d.stall_seconds = plan.stall_seconds
        if plan.stall_headers_count > 0:
            plan.stall_headers_count -= 1
            d.stall_headers = True
            fired += 1
        self.stats.faults_fired += fired
        return d

    # ------------------------------------------------------------------ handler

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        with self._lock:
            self.stats.requests += 1
            self.stats.last_headers = dict(request.headers)
            if request.transport is not None:
                self.stats.connections.add(request.transport.get_extra_info("peername"))
            if request.method == "HEAD":
                self.stats.head_requests += 1
            else:
                self.stats.get_requests += 1
            obj = self._objects.get(name)
        if obj is None:
            with self._lock:
                d = self._decide(name, request.method, 0, 0, False)
            if d.status is not None:
                return _error(d)
            return web.Response(status=404, text="no such object\n")
        size = obj.stat().st_size if isinstance(obj, Path) else len(obj)
        header = request.headers.get("Range")
        ranged = False
        start, end = 0, size
        if header is not None:
            parsed = parse_range(header, size)
            if parsed is None:
                return web.Response(
                    status=416, headers={"Content-Range": f"bytes */{size}"}, text="bad range\n"
                )
            (start, end), ranged = parsed, True
        with self._lock:
            d = self._decide(name, request.method, start, end, ranged)
        if d.status is not None:
            return _error(d)
        if d.ignore_range:
            start, end, ranged = 0, size, False
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start)}
        if self.faults.content_encoding is not None:
            headers["Content-Encoding"] = self.faults.content_encoding
        if ranged:
            cr_start, cr_end = (start + 1, end) if d.wrong_range else (start, end - 1)
            headers["Content-Range"] = f"bytes {cr_start}-{cr_end}/{size}"
        resp = web.StreamResponse(status=206 if ranged else 200, headers=headers)
        if request.method == "HEAD":
            await resp.prepare(request)
            return resp
        with self._lock:
            self.stats.ranges.append((name, start, end))
        body = _read(obj, start, end)
        if d.flip_offset is not None and start <= d.flip_offset < end:
            flipped = bytearray(body)
            flipped[d.flip_offset - start] ^= 0xFF
            body = bytes(flipped)
        await resp.prepare(request)
        with self._lock:
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        try:
            await self._send(request, resp, name, body, d)
        finally:
            with self._lock:
                self.stats.in_flight -= 1
        return resp

    async def _send(
        self, request: web.Request, resp: web.StreamResponse, name: str, body: bytes, d: _Decision
    ) -> None:
        limit = len(body)
        for cut in (d.reset_after, d.truncate_after, d.stall_after):
            if cut is not None:
                limit = min(limit, cut)
        sent = 0
        try:
            if d.stall_headers:  # prepare() has sent the headers.
                await self._until_released()  # The client gives up first (or a reset).
                return
            while sent < limit:
                await self._barrier()
                piece = body[sent : min(sent + _WRITE_PIECE, limit)]
                await resp.write(piece)
                sent += len(piece)
                self._count(name, len(piece))
                await self._throttle(len(piece))
            if d.reset_after is not None:
                await asyncio.sleep(0.01)  # Let the bytes leave before the RST.
                _reset(request)
                return
            if d.truncate_after is not None:
                await asyncio.sleep(0.01)  # Let the bytes leave before the FIN.
                if request.transport is not None:
                    request.transport.close()
                return
            if d.stall_after is not None:
                await asyncio.sleep(d.stall_seconds)
            while sent < len(body):
                await self._barrier()
                piece = body[sent : sent + _WRITE_PIECE]
                await resp.write(piece)
                sent += len(piece)
                self._count(name, len(piece))
                await self._throttle(len(piece))
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError, RuntimeError):
            # The client went away (expected after a stall timeout or a reset).
            return

    async def _barrier(self) -> None:
        """Hold this response while a ``pause_after`` barrier is up (see FaultPlan)."""
        after = self.faults.pause_after
        if after is None or self._plan_served < after:
            return
        self.paused.set()
        await self._until_released()

    async def _until_released(self) -> None:
        """Wait for :meth:`release` or a new plan (polled: both come from the test's thread)."""
        generation = self._generation
        while not self._released.is_set() and self._generation == generation:
            await asyncio.sleep(0.005)

    async def _throttle(self, n: int) -> None:
        rate = self.faults.bytes_per_second
        if rate:
            await asyncio.sleep(n / rate)

    def _count(self, name: str, n: int) -> None:
        with self._lock:
            self.stats.bytes_served += n
            self._plan_served += n
            self.stats.bytes_by_object[name] = self.stats.bytes_by_object.get(name, 0) + n


def _error(d: _Decision) -> web.Response:
    headers = {"x-amz-request-id": "test-request-id"}
    if d.retry_after is not None:
        headers["Retry-After"] = d.retry_after
    assert d.status is not None
    return web.Response(status=d.status, headers=headers, text=f"injected {d.status}\n")


def _read(obj: bytes | Path, start: int, end: int) -> bytes:
    if isinstance(obj, bytes):
        return obj[start:end]
    with obj.open("rb") as fh:
        fh.seek(start)
        return fh.read(end - start)


def _reset(request: web.Request) -> None:
    """Abort the connection with an RST (SO_LINGER 0), as a crashed peer would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# ``fault_server_session``: one :class:`FaultServer` for the whole session;
# ``fault_server``: that server, with objects, faults and counters reset around the test.
fault_server_session, fault_server = server_fixtures(FaultServer, "fault_server")
