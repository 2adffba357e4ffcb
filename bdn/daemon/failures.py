"""How BDN's HTTP servers answer a handler that failed: one line of JSON, never an HTML page.

Shared by the agent's two servers and the mirror service. Clients (the Python
API, ``bdn``, curl in a runbook) read ``{"error": ...}`` whatever went wrong; a
:class:`~bdn.errors.BdnError` says what failed in its own words, anything else
is logged with its traceback and answered by its type alone, so no internal
detail leaks into a response.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bdn.daemon.tokens import json_error
from bdn.errors import BdnError

__all__ = ["Handler", "answer_failures"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def answer_failures(
    request: web.Request,
    handler: Handler,
    *,
    service: str,
    logger: logging.Logger,
    http_errors_as_json: bool,
) -> web.StreamResponse:
    """``handler(request)``, or a JSON 500 when it raised.

    Args:
        service: names the daemon in the answer ("internal error in the agent: ...").
        logger: where the failure is logged (the server's own logger).
        http_errors_as_json: aiohttp's own HTTP exceptions (unknown path, wrong
            method) are answered as ``{"error": "GET /x: Not Found"}`` when True,
            and raised for aiohttp to answer when False.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not http_errors_as_json:
            raise
        return json_error(exc.status, f"{request.method} {request.path}: {exc.reason}")
    except BdnError as err:
        logger.warning("%s %s failed: %s", request.method, request.path, err)
        return json_error(500, str(err))
    except Exception as err:
        logger.exception("%s %s failed", request.method, request.path)
        return json_error(500, f"internal error in the {service}: {type(err).__name__}")
