"""What the e2e relays share besides :class:`bench.threaded_app.ThreadedApp`: passing
one request on to the upstream agent and giving back its answer."""

from __future__ import annotations

import aiohttp
from aiohttp import web


async def forward(request: web.Request, upstream_port: int) -> tuple[int, bytes, str | None] | None:
    """Send ``request`` on to ``127.0.0.1:upstream_port`` and read the whole answer:
    its status, body and content type, or ``None`` when upstream is unreachable."""
    url = f"http://127.0.0.1:{upstream_port}{request.path_qs}"
    headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
    try:
        async with aiohttp.ClientSession() as s, s.request(
            request.method, url, headers=headers, data=await request.read()
        ) as up:
            return up.status, await up.read(), up.headers.get("Content-Type")
    except aiohttp.ClientError:
        return None


def answer(status: int, body: bytes, ctype: str | None) -> web.Response:
    """The relay's answer: upstream's status and body, with its content type."""
    return web.Response(status=status, body=body,
                        headers={"Content-Type": ctype} if ctype else None)


UPSTREAM_DOWN = "upstream down\n"
"""What a relay answers (502) when its upstream cannot be reached."""
