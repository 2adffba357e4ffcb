"""The engine's worker lanes: which files may go to worker processes, and one chunk
attempt run in one of them (:mod:`bdn.transfer.plane`).

The worker receives, writes and hashes; the engine's loop keeps the books
exactly as for a chunk received on the loop itself: each landed segment extends
the chunk's kept prefix and the progress, and the digest is accepted there.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bdn.backends.base import LocalCopyReader, ReaderSpec, ReopenableReader
from bdn.errors import IntegrityError
from bdn.transfer.plane import Lane, RangesIgnored
from bdn.transfer.state import FileState
from bdn.transfer.task import FileTask, TransferConfig
from bdn.transfer.worker import Job

if TYPE_CHECKING:
    from bdn.transfer.engine import TransferEngine

__all__ = ["RangesUnsupported", "remote_chunk_once", "spec_for"]


class RangesUnsupported(Exception):
    """The probe chunk saw the server ignore Range; switch the file to one stream."""


def spec_for(config: TransferConfig, task: FileTask) -> ReaderSpec | None:
    """How worker processes rebuild ``task``'s reader, when they may fetch its chunks:
    the file is big enough and its reader can be rebuilt (the caller has workers)."""
    if task.size < config.worker_min_bytes:
        return None
    reader = task.reader
    if isinstance(reader, LocalCopyReader) or not isinstance(reader, ReopenableReader):
        return None
    return reader.reopen_spec()


async def remote_chunk_once(
    engine: TransferEngine, f: FileState, index: int, probe: asyncio.Future[None] | None,
    lane: Lane,
) -> None:
    """One attempt of chunk ``index`` of ``f`` in ``lane`` (the caller holds a slot).

    Raises:
        RangesUnsupported: the probe saw the server ignore ``Range``.
        IntegrityError: the digest did not match (the kept prefix is dropped).
        What the worker raised (rebuilt), or a retryable ``TransferError`` when
        the worker died.
    """
    plane, spec = engine._plane, f.spec
    assert plane is not None and spec is not None
    dest = str(f.task.dest)
    start, end = f.bounds[index]
    begin = start + f.kept[index]
    last = begin
    reader = f.task.reader

    def landed(pos: int, fetched: int) -> None:
        nonlocal last
        engine._fetched(f, fetched)
        delta, last = pos - last, pos
        f.reported[index] += delta
        engine._progress(delta)
        if pos < end:  # A whole chunk is kept only once verified (f.done).
            f.kept[index] = pos - start
            if f.task.on_chunk_progress is not None:
                f.task.on_chunk_progress(index, pos - start)

    def ranges(supported: bool | None) -> None:
        reader.supports_ranges = supported
        if probe is not None and not probe.done() and supported is not False:
            probe.set_result(None)

    def job(job_id: int) -> Job:
        return Job(job_id, spec, dest, start, begin, end, engine.config.segment_size,
                   probe is not None)

    try:
        digest = await plane.run(lane, job, landed, ranges)
    except RangesIgnored:
        raise RangesUnsupported from None
    try:
        engine._accept(f, index, digest)
    except IntegrityError:
        engine._forget(f, index)  # The chunk failed: from its start next time.
        raise
