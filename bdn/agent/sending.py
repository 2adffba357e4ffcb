"""Send a chunk from disk to a peer without holding it in memory.

The body of a chunk response is exactly the chunk's bytes with a
``Content-Length`` (the wire of :mod:`bdn.agent.protocol`); how they leave
is this module's business. With a plain TCP transport the kernel copies them
from the file to the socket (``sendfile``), so a response costs the owner a
file descriptor and no buffer; elsewhere (a transport without sendfile) the
file is read and written in pieces of :data:`~bdn.agent.chunks.READ_PIECE`,
each written only once the previous one has drained.

An early answer (:data:`~bdn.agent.protocol.EARLY_ANSWER_HEADER`) is sent in
two steps: :func:`start_answer` when the request arrives, :func:`send_body`
once the chunk is ready, or :func:`abandon` if it never will be.
"""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web

from bdn.agent.chunks import READ_PIECE, OpenChunk
from bdn.agent.protocol import CHUNK_SOURCE_HEADER, ChunkSource

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/octet-stream"


async def send_chunk(request: web.Request, chunk: OpenChunk) -> web.StreamResponse:
    """Answer ``request`` with ``chunk``'s bytes (200). The caller closes ``chunk``.

    A peer that hangs up mid-body, or a file that cannot be read, abandons the
    response and closes the connection: the peer sees a short body and reads
    the chunk elsewhere.
    """
    resp = _answer(chunk.length, None)
    try:
        await resp.prepare(request)  # Sends the headers now (StreamResponse does).
    except OSError as err:
        abandon(request, err)
        return resp
    await send_body(request, resp, chunk)
    return resp


async def start_answer(request: web.Request, length: int,
                       source: ChunkSource | None = None) -> web.StreamResponse:
    """Send the 200 and its headers now: ``Content-Length`` is the chunk's ``length``
    (the request determines it), and ``source`` goes in ``X-BDN-Chunk-Source``.

    Raises:
        OSError: the peer hung up.
    """
    resp = _answer(length, source)
    await resp.prepare(request)
    return resp


def _answer(length: int, source: ChunkSource | None) -> web.StreamResponse:
    headers = {"Content-Type": CONTENT_TYPE}
    if source is not None:
        headers[CHUNK_SOURCE_HEADER] = source
    resp = web.StreamResponse(headers=headers)
    resp.content_length = length
    return resp


async def send_body(request: web.Request, resp: web.StreamResponse, chunk: OpenChunk) -> None:
    """Send ``chunk``'s bytes as the body of ``resp`` (started by :func:`start_answer`);
    on a failure, abandon the response (:func:`abandon`)."""
    try:
        if chunk.data is not None:
            await resp.write(chunk.data)
        else:
            await _send_file(request, resp, chunk)
        await resp.write_eof()
    except OSError as err:  # The peer hung up, or the file could not be read.
        abandon(request, err)


def abandon(request: web.Request, why: object) -> None:
    """Close the connection of a response whose headers are out: the peer sees a
    short body (a failure) and reads the chunk elsewhere, never waits for the rest."""
    log.info("chunk response %s abandoned: %s", request.path, why)
    if request.transport is not None:
        request.transport.close()


async def _send_file(request: web.Request, resp: web.StreamResponse, chunk: OpenChunk) -> None:
    assert chunk.file is not None
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the peer's connection is gone")
    loop = asyncio.get_running_loop()
    try:
        # The headers are on the transport already; sendfile waits for them to drain.
        await loop.sendfile(transport, chunk.file, chunk.offset, chunk.length, fallback=False)
        return
    except (NotImplementedError, asyncio.SendfileNotAvailableError):
        pass
    fd = chunk.file.fileno()
    offset, end = chunk.offset, chunk.offset + chunk.length
    while offset < end:
        piece = await asyncio.to_thread(os.pread, fd, min(READ_PIECE, end - offset), offset)
        if not piece:
            raise OSError(f"chunk file ended at {offset}, expected {end}")
        await resp.write(piece)  # Waits for the transport to drain before the next read.
        offset += len(piece)
