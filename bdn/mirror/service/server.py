"""The mirror service's HTTP API: thin aiohttp handlers over its :class:`JobManager`.

JSON throughout::

    POST /v1/mirrors[?force=1]  {"weights": [<entries exactly as Truss writes them>]}
        -> 202 {"id", "state", "outcome"}  queued, or joined an identical queued/running job
        -> 200 {"id", "state": "succeeded", "outcome"}  identical to a finished job
        -> 400 {"error"}  one line naming the field and the fix (unknown keys too: a
                          body cannot set an upstream endpoint, the server's settings do)
        -> 403 {"error"}  a source no --allow-source rule allows; nothing is read
        -> 503 {"error"}  draining
    GET  /v1/mirrors/{id}  -> 200 {"id", "state", "manifests": [{"mount_location",
                              "manifest_id"}], "bytes_total", "bytes_done", "error", ...}
                           -> 404 unknown id (finished jobs are forgotten after
                              --job-retention)
    GET  /healthz          -> 200 {"status": "ok", "jobs"}; 503 {"status": "draining"}
    GET  /metrics          -> Prometheus text

Every request but ``/healthz`` (which probes use) needs ``Authorization:
Bearer <token>``; without it the answer is 401 and nothing else, not even
whether the path exists. Each request gets a ``request_id`` (an incoming
``X-Request-Id`` if it is sane, else a new one), echoed in the response's
``X-Request-Id`` and carried by every log line the request causes.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bdn.daemon.failures import Handler, answer_failures
from bdn.daemon.jsonlog import bind_log_context, reset_log_context
from bdn.daemon.tokens import authorized, json_error, unauthorized
from bdn.errors import ConfigError
from bdn.mirror.service.jobs import parse_submission
from bdn.mirror.service.metrics import CONTENT_TYPE
from bdn.mirror.service.scheduler import Draining, JobManager
from bdn.mirror.service.sources import SourceNotAllowed, SourcePolicy

__all__ = ["CONTEXT", "ServerContext", "make_app"]

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_OPEN_PATHS = frozenset({"/healthz"})
# Scrapes, probes and progress polls arrive every few seconds; their lines are DEBUG
# (failed polls stay INFO, as do submissions).
_QUIET_PATHS = frozenset({"/healthz", "/metrics"})
_TRUE = frozenset({"1", "true", "yes"})


@dataclass(frozen=True, slots=True)
class ServerContext:
    """What the handlers need; built by :mod:`bdn.mirror.service.main`.

    Attributes:
        jobs: the job manager.
        token: the bearer token; ``None`` only for a loopback server started
            with ``--insecure-no-token``.
        health: the ``/healthz`` body; its ``status`` is ``ok`` or ``draining``.
        sources: the operator's allowlist; a submission outside it is refused (403).
    """

    jobs: JobManager
    token: str | None
    health: Callable[[], dict[str, Any]]
    sources: SourcePolicy


CONTEXT = web.AppKey("bdn_mirror_context", ServerContext)


def make_app(ctx: ServerContext) -> web.Application:
    """The mirror service's application."""
    app = web.Application(middlewares=[_request_scope])
    app[CONTEXT] = ctx
    app.router.add_post("/v1/mirrors", post_mirror)
    app.router.add_get("/v1/mirrors/{id}", get_mirror)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


# -- handlers -------------------------------------------------------------------------


async def post_mirror(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_error(400, 'request: the body is not valid JSON; send {"weights": [...]}')
    try:
        entries = parse_submission(body)
        # Before the job exists: a refused source is never read, listed or queued.
        ctx.sources.check(entries)
        submission = await ctx.jobs.submit(entries, force=request.query.get("force") in _TRUE)
    except SourceNotAllowed as err:
        log.warning("submission refused: source not allowed", extra={"source": err.source})
        return json_error(403, str(err))
    except ConfigError as err:
        return json_error(400, str(err))
    except Draining as err:
        return json_error(503, str(err))
    job = submission.job
    return web.json_response(
        {"id": job.id, "state": job.state, "outcome": submission.outcome},
        status=200 if submission.outcome == "succeeded" else 202,
        headers={"Location": f"/v1/mirrors/{job.id}"},
    )


async def get_mirror(request: web.Request) -> web.Response:
    jid = request.match_info["id"]
    job = request.app[CONTEXT].jobs.get(jid)
    if job is None:
        return json_error(404, f"no mirror job {jid!r} (finished jobs are forgotten after "
                          "the server's --job-retention); submit the weights with "
                          "POST /v1/mirrors to get an id")
    return web.json_response(job.to_public())


async def healthz(request: web.Request) -> web.Response:
    body = request.app[CONTEXT].health()
    return web.json_response(body, status=200 if body.get("status") == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    data = request.app[CONTEXT].jobs.metrics.render()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE})


# -- middleware -----------------------------------------------------------------------


@web.middleware
async def _request_scope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, bearer token, JSON errors and one log line per request."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)
    token = bind_log_context(request_id=request_id)
    started = time.monotonic()
    try:
        resp = await _answer(request, handler)
        resp.headers["X-Request-Id"] = request_id
        quiet = request.path in _QUIET_PATHS or (request.method == "GET" and resp.status < 400)
        level = logging.DEBUG if quiet else logging.INFO
        log.log(level, "%s %s %d", request.method, request.path, resp.status,
                extra={"method": request.method, "path": request.path, "status": resp.status,
                       "ms": round((time.monotonic() - started) * 1000, 1)})
        return resp
    finally:
        reset_log_context(token)


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    if request.path not in _OPEN_PATHS and not authorized(request, ctx.token):
        return unauthorized("missing or wrong bearer token; send Authorization: Bearer "
                            "<the token in the server's --token-file>")
    # Unknown path, wrong method: JSON like the rest.
    return await answer_failures(request, handler, service="mirror service", logger=log,
                                 http_errors_as_json=True)
