"""The agent's two HTTP faces: thin aiohttp handlers over :mod:`bdn.agent.pulls` and bdn.

Pod-facing (a unix socket, 0660, so only the node's pods that mount it reach it)::

    POST /v1/pulls          {"manifest_id": ...} or {"source": ..., ...} + "mount_location"
                            -> 202 {"id", "state"}; 400 bad body; 409 mount busy; 503 draining
    GET  /v1/pulls/{id}     -> 200 progress (a PullStatus body); 404 unknown id
    GET  /healthz           -> 200 {"status": "ok", ...}; 503 {"status": "draining"}
    GET  /metrics           -> Prometheus text

Peer-facing (TCP, the cluster network)::

    GET /v1/chunks/{sha256 hex}/{index}?size=<blob size>&chunk_size=<n>&xxh3=<32 hex>
        Authorization: Bearer <token>
        X-BDN-Early-Answer: 1   (optional: answer the headers at once)
        -> 200 the chunk's bytes; 401 missing/wrong token (nothing served);
           400 malformed parameters (chunk_size above 256 MiB, an index outside the
               blob, a size that is not the blob's at origin); 404 origin lacks the
               blob; 502 origin failed; 503 + Retry-After: the owner is busy (its
               response queue is full), read the chunk from origin
        With X-BDN-Early-Answer: 1, a request past the token, the parameters and the
        queue check gets its 200 headers at once, with X-BDN-Chunk-Source: cache|origin,
        and the body when the chunk is ready; a failure then (origin lacks or fails
        the chunk) aborts the connection instead of answering 404/502.
        Fan-out (bdn.peer.fanout): with X-BDN-Peer: host:port, an owner whose first K
        requesters of the chunk are served answers 307 + X-BDN-Redirect: host:port (a
        holder); with X-BDN-Failed-Holder it serves the request itself. A request with
        X-BDN-Redirected: 1 is answered by a holder from what it keeps or is reading
        (early answer as above), never from origin: 404 when it holds nothing, 503
        when it already sends that chunk to K redirected requesters.
    GET /healthz, GET /metrics  (no token: for probes and scrapers)
    POST /v1/pulls, GET /v1/pulls/{id}  (as above, behind the bearer token; 403 when
                                         the agent has no token)

Paths, bodies and error names are those of :mod:`bdn.agent.protocol`.

A chunk request is answered only from this agent's own
:class:`~bdn.agent.chunks.ChunkService` (node cache, chunk cache, origin),
which never asks another peer. So a forwarded request (``X-BDN-Forwarded: 1``,
sent by every :class:`~bdn.peer.client.PeerClient`) is never forwarded again,
and a ring that disagrees between two nodes cannot make a request loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from bdn.agent.chunks import ChunkService
from bdn.agent.gate import GateFull, Place
from bdn.agent.holder import answer_as_holder
from bdn.agent.metrics import CONTENT_TYPE, AgentMetrics
from bdn.agent.protocol import (
    CHUNK_ROUTE,
    EARLY_ANSWER_HEADER,
    HEALTH_PATH,
    METRICS_PATH,
    PULL_ROUTE,
    PULLS_PATH,
    ChunkRef,
    parse_chunk_ref,
    parse_pull_request,
    pull_path,
    status_for,
)
from bdn.agent.pulls import PullRegistry
from bdn.agent.sending import abandon, send_body, send_chunk, start_answer
from bdn.daemon.address import format_hostport, parse_hostport
from bdn.daemon.failures import Handler, answer_failures
from bdn.daemon.tokens import authorized, json_error, unauthorized
from bdn.errors import (
    AuthError,
    BdnError,
    ConfigError,
    MountConflict,
    NotFound,
    SourceError,
    StoreError,
    TransferError,
)
from bdn.peer.fanout import (
    FAILED_HOLDER_HEADER,
    PEER_HEADER,
    PEER_LOAD_HEADER,
    REDIRECT_HEADER,
    REDIRECTED_HEADER,
)
from bdn.store import blob_key

log = logging.getLogger(__name__)

BUSY_RETRY_AFTER = "1"
"""``Retry-After`` seconds of a 503 from a busy owner (its requester reads origin meanwhile)."""


@dataclass(frozen=True, slots=True)
class ServerContext:
    """What the handlers need; built by :mod:`bdn.agent.main`.

    Attributes:
        pulls: the pull registry.
        chunks: this agent's chunk service (the owner side).
        metrics: the agent's collectors.
        token: the peer bearer token; ``None`` accepts every peer (loopback only).
        health: the ``/healthz`` body; its ``status`` is ``ok`` or ``draining``.
    """

    pulls: PullRegistry
    chunks: ChunkService
    metrics: AgentMetrics
    token: str | None
    health: Callable[[], dict[str, Any]]


CONTEXT = web.AppKey("bdn_context", ServerContext)


def pod_app(ctx: ServerContext) -> web.Application:
    """The pod-facing application (serve it on the unix socket)."""
    return _app(ctx, [
        web.post(PULLS_PATH, post_pull),
        web.get(PULL_ROUTE, get_pull),
    ])


def peer_app(ctx: ServerContext) -> web.Application:
    """The peer-facing application (serve it on ``--listen``)."""
    return _app(ctx, [
        web.get(CHUNK_ROUTE, get_chunk),
        web.post(PULLS_PATH, _with_token(post_pull)),
        web.get(PULL_ROUTE, _with_token(get_pull)),
    ])


def _app(ctx: ServerContext, routes: list[web.RouteDef]) -> web.Application:
    """An application of ``routes``, plus the unguarded ``/healthz`` and ``/metrics``
    (for probes and scrapers) that both faces serve."""
    app = web.Application(middlewares=[_json_errors])
    app[CONTEXT] = ctx
    app.add_routes([*routes, web.get(HEALTH_PATH, healthz), web.get(METRICS_PATH, metrics)])
    return app


# -- handlers -------------------------------------------------------------------------


async def post_pull(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if ctx.health().get("status") != "ok":
        return _error(503, "the agent is shutting down; retry on the restarted agent")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "request: the body is not valid JSON")
    try:
        job = ctx.pulls.submit(parse_pull_request(body))
    except (ConfigError, MountConflict) as err:
        return _error(status_for(err), str(err))
    return web.json_response(
        {"id": job.id, "state": job.state},
        status=202,
        headers={"Location": pull_path(job.id)},
    )


async def get_pull(request: web.Request) -> web.Response:
    job = request.app[CONTEXT].pulls.get(request.match_info["id"])
    if job is None:
        return _error(
            404,
            f"no pull {request.match_info['id']!r} on this agent (it may have restarted "
            "since); post the request again",
        )
    return web.json_response(job.status().to_dict())


async def healthz(request: web.Request) -> web.Response:
    body = request.app[CONTEXT].health()
    return web.json_response(body, status=200 if body.get("status") == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    data = request.app[CONTEXT].metrics.render()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE})


async def get_chunk(request: web.Request) -> web.StreamResponse:
    """Serve one chunk to a peer; see the module docstring for the contract.

    Cheap checks first; then the request takes a slot of the owner's response
    gate (FIFO), or is refused with 503 when too many already wait, so its
    requester reads origin at once instead of queueing. A request that takes an
    early answer goes through :func:`_answer_early`.
    """
    ctx = request.app[CONTEXT]
    counter = ctx.metrics.peer_requests
    if not authorized(request, ctx.token):
        counter.labels("401").inc()
        return _unauthorized()
    try:
        match = request.match_info
        ref = parse_chunk_ref(match["digest"], match["index"], request.query)
    except ValueError as err:
        counter.labels("400").inc()
        return _error(400, str(err))
    relay = ctx.chunks.relay
    try:
        if request.headers.get(REDIRECTED_HEADER) == "1":
            if relay is None:  # Fan-out off here: never read origin for a redirect.
                counter.labels("404").inc()
                return _error(404, "this node does not pass chunks on (--fanout 0); "
                              "ask the chunk's owner")
            return await answer_as_holder(request, ref, relay, ctx.chunks.gate,
                                          ctx.metrics)
        holder = ctx.chunks.fanout.route(ref.key, _peer(request, PEER_HEADER),
                                         failed=_peer(request, FAILED_HOLDER_HEADER),
                                         load=_count(request, PEER_LOAD_HEADER))
        if holder is not None:
            counter.labels("307").inc()
            return _redirect(request, holder)
        if request.headers.get(EARLY_ANSWER_HEADER) == "1":
            return await _answer_early(request, ctx, ref, ctx.chunks.gate.place())
        async with ctx.chunks.gate.slot():
            return await _serve_chunk(request, ctx, ref)
    except GateFull as err:
        counter.labels("503").inc()
        resp = _error(503, f"this owner is busy ({err}); read the chunk from origin")
        resp.headers["Retry-After"] = BUSY_RETRY_AFTER
        return resp


def _peer(request: web.Request, header: str) -> str | None:
    """A fan-out header's ``host:port``, normalized; ``None`` when absent or malformed
    (the request is then served as one that named no peer)."""
    value = request.headers.get(header)
    if not value:
        return None
    try:
        return format_hostport(*parse_hostport(value, field=header))
    except ConfigError:
        return None


def _count(request: web.Request, header: str) -> int | None:
    """A small whole number from a header (``None``: absent or not one)."""
    value = request.headers.get(header, "")
    return int(value) if value.isdigit() and len(value) <= 6 else None


def _redirect(request: web.Request, holder: str) -> web.Response:
    """307 to ``holder``: the requester reads the chunk there (``Location`` for any
    HTTP client; ours reads ``X-BDN-Redirect``)."""
    return web.Response(status=307, headers={
        REDIRECT_HEADER: holder, "Location": f"http://{holder}{request.path_qs}"})


async def _answer_early(request: web.Request, ctx: ServerContext, ref: ChunkRef,
                        place: Place) -> web.StreamResponse:
    """The 200 headers now, saying whether the chunk is held (``cache``) or being
    filled from origin (``origin``); the body once the chunk is ready and a response
    slot is free. So the requester learns at once that this owner is alive and
    whether waiting costs origin anything, and hedges on that (:mod:`bdn.peer.race`).

    The wait for the chunk holds ``place`` in the gate's queue, not a slot. A
    failure after the headers aborts the connection: the requester reads elsewhere.
    """
    counter = ctx.metrics.peer_requests
    chunk = None
    resp: web.StreamResponse | None = None
    try:
        chunk = await ctx.chunks.open_if_kept(ref)
        resp = await start_answer(request, ref.end - ref.start,
                                  "origin" if chunk is None else "cache")
        if chunk is None:
            chunk = await ctx.chunks.open(ref)  # Fills it from origin, or joins that fill.
        async with place.slot():
            counter.labels("200").inc()
            ctx.metrics.chunks_served.labels(chunk.origin).inc()
            ctx.metrics.peer_bytes_served.inc(chunk.length)
            ctx.chunks.stats.fanout.bytes_as_owner += chunk.length
            await send_body(request, resp, chunk)
        return resp
    except Exception as err:  # Headers may be out: only the connection can say it failed.
        counter.labels("404" if isinstance(err, NotFound) else "502").inc()
        if not isinstance(err, OSError):  # Not origin or the peer's socket: a bug.
            log.exception("chunk %d of %s: early answer failed", ref.index, ref.digest)
        elif not isinstance(err, ConnectionError):
            log.warning("chunk %d of %s: origin failed: %s", ref.index, ref.digest, err)
        abandon(request, err)
        return resp if resp is not None else web.StreamResponse()
    finally:
        place.give_up()
        if chunk is not None:
            chunk.close()


async def _serve_chunk(request: web.Request, ctx: ServerContext,
                       ref: ChunkRef) -> web.StreamResponse:
    counter = ctx.metrics.peer_requests
    try:
        # Served here whether or not X-BDN-Forwarded is set: the chunk service
        # reads node cache, chunk cache and origin only, never another peer, so
        # a forwarded request is never forwarded again.
        chunk = await ctx.chunks.open(ref)
    except NotFound as err:
        counter.labels("404").inc()
        return _error(404, str(err))
    except (TransferError, AuthError, SourceError, StoreError) as err:
        wrong = await _wrong_size(ctx.chunks, ref)
        if wrong is not None:
            counter.labels("400").inc()
            return _error(400, wrong)
        counter.labels("502").inc()
        log.warning("chunk %d of %s: origin failed: %s", ref.index, ref.digest, err)
        return _error(502, f"origin failed: {err}")
    try:
        counter.labels("200").inc()
        ctx.metrics.chunks_served.labels(chunk.origin).inc()
        ctx.metrics.peer_bytes_served.inc(chunk.length)
        ctx.chunks.stats.fanout.bytes_as_owner += chunk.length
        return await send_chunk(request, chunk)
    finally:
        chunk.close()


async def _wrong_size(chunks: ChunkService, ref: ChunkRef) -> str | None:
    """After origin failed to deliver a chunk: the 400 message when the request's
    ``size`` is not the blob's (the request was wrong, not origin), else None.

    Asked only on failure, so a good request costs origin no extra call.
    """
    try:
        actual = await chunks.origin.size(blob_key(ref.digest))
    except BdnError:
        return None
    if actual == ref.blob_size:
        return None
    return (f"size={ref.blob_size} is not the size of blob {ref.digest} at origin "
            f"({actual} bytes); send the size the manifest records")


# -- auth and errors -------------------------------------------------------------------


def _unauthorized() -> web.Response:
    return unauthorized("missing or wrong bearer token; peers share the agent's --token-file")


def _with_token(handler: Handler) -> Handler:
    """Guard a pod route on the peer port: it needs the peers' token, so without one
    configured it is closed (any local user can reach a loopback port; the unix
    socket's 0660 is what limits pods)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        token = request.app[CONTEXT].token
        if token is None:
            return _error(403, "pulls over TCP need a peer token (--token-file); "
                          "use the agent's unix socket")
        if not authorized(request, token):
            return _unauthorized()
        return await handler(request)

    return guarded


def _error(status: int, message: str) -> web.Response:
    return json_error(status, message)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unexpected failures answer a one-line JSON error rather than an HTML page."""
    return await answer_failures(request, handler, service="agent", logger=log,
                                 http_errors_as_json=False)


# -- the unix socket ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnixSocket:
    """A listening unix socket and the identity of its file (to remove only ours)."""

    sock: socket.socket
    path: Path
    inode: tuple[int, int]


def bind_unix_socket(path: Path, *, mode: int = 0o660) -> UnixSocket:
    """Bind a listening unix socket at ``path``, atomically and with ``mode``.

    The socket is bound under a temporary name, given its mode, and renamed
    into place, so a pod never sees it with the umask's permissions or
    half-made. A stale socket left by a crashed agent is replaced; a live one
    (something accepts connections on it) is not.

    Raises:
        ConfigError: another process serves ``path``, or ``path`` is not a socket.
        OSError: the directory cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(f"{path} exists and is not a socket; remove it or pass another "
                              "--socket", field="--socket")
        if _answers(path):
            raise ConfigError(f"another agent is already serving {path}; stop it first or pass "
                              "another --socket", field="--socket")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, mode)
        sock.listen(128)
        os.replace(tmp, path)
        st = path.lstat()
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    sock.setblocking(False)
    return UnixSocket(sock, path, (st.st_dev, st.st_ino))


def remove_unix_socket(bound: UnixSocket) -> None:
    """Remove the socket file if it is still the one we bound (idempotent)."""
    with contextlib.suppress(OSError):
        st = bound.path.lstat()
        if (st.st_dev, st.st_ino) == bound.inode:
            bound.path.unlink()
    with contextlib.suppress(OSError):
        bound.sock.close()


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
