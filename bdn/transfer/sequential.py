"""The engine's path for a server that ignores ``Range``: one stream per file.

:class:`~bdn.transfer.engine.TransferEngine` switches a file here once its
probe chunk (or an earlier file of the same reader) showed that ranges are
ignored. The file is then read as one sequential stream from its first
unverified chunk to the end, cut at chunk boundaries and still verified chunk
by chunk; a retry of the stream skips the chunks already verified. It always
runs on the engine's own loop (never in a worker process), and books its bytes
through the engine exactly as a ranged chunk does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bdn.errors import IntegrityError, TransferError
from bdn.http import retrying
from bdn.transfer.aio import closing
from bdn.transfer.context import reraise
from bdn.transfer.state import FileState
from bdn.transfer.writes import ChunkWriter

if TYPE_CHECKING:
    from bdn.transfer.engine import TransferEngine

__all__ = ["fetch_sequential"]


async def fetch_sequential(engine: TransferEngine, f: FileState) -> None:
    """Fetch every pending chunk of ``f`` from one stream; see the module docstring.

    The retry budget restarts whenever an attempt verified at least one more
    chunk, so a long file over a flaky link still completes.

    Raises:
        What the reader raised after retries (prefixed with the chunk it was
        at), or :class:`IntegrityError` for a chunk that kept failing its check.
    """
    while not all(f.done):
        before = f.done.count(True)
        try:
            await retrying(
                engine.config.retry,
                lambda: _stream_once(engine, f),
                describe=f"{f.label}: single stream",
                on_retry=engine._retried(f),
            )
        except Exception as err:
            if f.done.count(True) > before and engine.config.retry.should_retry(err):
                continue
            reraise(err, f"{f.where(f.done.index(False))} (single stream)", f.task.dest)


async def _stream_once(engine: TransferEngine, f: FileState) -> None:
    """One attempt of the single stream, from the first unverified chunk to the end.

    Verified chunks met on the way are skipped; a corrupt chunk does not stop
    the stream (later chunks may still verify) but fails the attempt at the end.
    """
    index = f.done.index(False)
    offset = f.bounds[index][0]
    writer: ChunkWriter | None = None
    corrupt: IntegrityError | None = None
    async with engine._slots:
        engine.stats.requests += 1
        try:
            async with closing(f.task.reader.open_range(offset, f.task.size)) as stream:
                async for piece in stream:
                    engine._fetched(f, len(piece))
                    await engine._throttle(len(piece))
                    view = memoryview(piece)
                    while view:
                        if index == len(f.bounds):
                            raise TransferError("reader yielded more bytes than requested")
                        start, end = f.bounds[index]
                        take = min(len(view), end - offset)
                        if not f.done[index]:
                            writer = writer or engine._writer(f, start, end)
                            await writer.feed(view[:take])
                        view = view[take:]
                        offset += take
                        if offset < end:
                            continue
                        if writer is not None:
                            digest = await writer.finish()
                            try:
                                engine._accept(f, index, digest)
                            except IntegrityError as err:
                                await writer.abort()  # Undo its progress.
                                corrupt = corrupt or err
                            writer = None
                        index += 1
        except BaseException:
            if writer is not None:
                await writer.abort()
            raise
    if offset != f.task.size:
        raise TransferError(f"stream ended at byte {offset} of {f.task.size}")
    if corrupt is not None:
        raise corrupt
