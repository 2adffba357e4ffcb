"""The one transfer engine: fetch files chunk by chunk, in parallel, verified.

A file is cut into its manifest chunks; each chunk is one
:meth:`~bdn.backends.base.RangeReader.open_range` stream and the unit of
retry. Chunks of a file run in parallel (``max_connections_per_file``) under an
engine-wide cap (``max_connections``). Inside a chunk the received buffers are
gathered (by reference: the event loop copies nothing) into segments; each full
segment goes to a small thread pool that ``pwritev``\\ s it into the destination
and feeds the chunk's xxh3-128, while the loop already receives the next segment
(double buffering, so memory stays near ``2 * segment_size * max_connections``).
Gathering was measured against copying into preallocated buffers: the copy on
the loop thread cost about a third of the throughput on loopback.

A chunk is accepted only when its digest matches the expected one; otherwise it
is counted as corrupt and fetched again. SHA-256, when wanted, is computed by
an ordered hasher that re-reads each finished chunk from the page cache as soon
as all chunks before it are done, so it overlaps the download instead of
following it.

What landed of a chunk is kept: each segment extends the chunk's kept prefix
as soon as its write returns (reported through ``FileTask.on_chunk_progress``),
so a retry after a reset, or a later pull after a crash
(``FileTask.partial_chunks``), fetches only the rest of the chunk. The hash of
the kept prefix is read back from the destination, and the whole chunk is
verified; on a mismatch the prefix is dropped and the chunk fetched again.

Servers that ignore ``Range`` are detected on the first chunk of a file; the
file is then fetched as one sequential stream, still verified chunk by chunk,
and a retry of that stream skips the chunks already verified.

A reader with the :class:`~bdn.backends.base.LocalCopyReader` capability (a
file on this machine) is not streamed: each chunk is copied in the kernel and
hashed back from the destination. The engine knows readers only through that
seam, never a concrete backend.

This module schedules; the values it takes and returns are in
:mod:`bdn.transfer.task`, the positioned writes in :mod:`bdn.transfer.writes`,
the read-back hashing in :mod:`bdn.transfer.verify`, the one-stream path in
:mod:`bdn.transfer.sequential` and the worker lanes in :mod:`bdn.transfer.remote`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from bdn.backends.base import LocalCopyReader
from bdn.digest import new_xxh3
from bdn.errors import IntegrityError, TransferError
from bdn.http import retrying
from bdn.transfer.aio import closing, run_all
from bdn.transfer.context import reraise
from bdn.transfer.plane import Lane, ProcessPlane
from bdn.transfer.ratelimit import RateLimiter
from bdn.transfer.remote import RangesUnsupported as _RangesUnsupported
from bdn.transfer.remote import remote_chunk_once, spec_for
from bdn.transfer.sequential import fetch_sequential
from bdn.transfer.state import FileState as _File
from bdn.transfer.task import (
    DEFAULT_TRANSFER_CONFIG,
    FileResult,
    FileTask,
    TransferConfig,
    TransferStats,
    validate_task,
)
from bdn.transfer.verify import copy_and_hash, hash_range
from bdn.transfer.writes import ChunkWriter, IoPool, SharedFd, close_opened, fdatasync, open_dest

__all__ = [
    "DEFAULT_TRANSFER_CONFIG",
    "FileResult",
    "FileTask",
    "TransferConfig",
    "TransferEngine",
    "TransferStats",
]

log = logging.getLogger(__name__)


class TransferEngine:
    """Fetches files through :class:`~bdn.backends.base.RangeReader`\\ s; see the module docstring.

    Use it from one event loop, as an async context manager or by calling
    :meth:`close` (idempotent; stops the I/O threads). The engine never owns the
    readers or their :class:`~bdn.http.HttpClient`.

    ``on_progress(delta)`` is called on the loop with bytes as they are written;
    a failed chunk attempt reports a negative delta for what it had reported,
    so the running sum is always the bytes written and kept.
    """

    def __init__(
        self,
        config: TransferConfig = DEFAULT_TRANSFER_CONFIG,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.stats = TransferStats()
        self._on_progress = on_progress
        self._slots = asyncio.Semaphore(config.max_connections)
        self._limiter = RateLimiter(config.rate_limit) if config.rate_limit else None
        self._io = IoPool(config.io_threads)
        # The data plane's other lanes: worker processes (not with a rate cap,
        # which is one token bucket on this loop).
        workers = config.workers or 1  # None: not chosen, so this loop alone.
        self._plane = (ProcessPlane(workers - 1)
                       if workers > 1 and self._limiter is None else None)
        self._local_load = 0  # Network chunk attempts running on this loop.

    async def __aenter__(self) -> TransferEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the worker processes and I/O threads, waiting for running jobs (idempotent)."""
        if self._plane is not None:
            await self._plane.close()
        await self._io.close()

    def worker_pids(self) -> list[int]:
        """Process ids of the data plane's live worker processes (empty with ``workers=1``)."""
        return self._plane.pids() if self._plane is not None else []

    # ------------------------------------------------------------------ plumbing

    def _writer(self, f: _File, start: int, end: int) -> ChunkWriter:
        """A writer for bytes ``[start, end)`` of ``f``, reporting to ``on_progress``."""
        return ChunkWriter(
            self._io, f.shared, self.config.segment_size, self._progress, start, end
        )

    def _kept_writer(self, f: _File, index: int, begin: int) -> ChunkWriter:
        """A writer of chunk ``index`` from ``begin`` whose written prefix is kept.

        Each landed segment extends ``f.kept[index]`` and is reported to
        ``task.on_chunk_progress``, so a retry or a later pull resumes there.
        """
        start, end = f.bounds[index]

        def progress(delta: int) -> None:
            f.reported[index] += delta
            self._progress(delta)

        def written(pos: int) -> None:
            if pos < end:  # A whole chunk is kept only once verified (f.done).
                f.kept[index] = pos - start
                if f.task.on_chunk_progress is not None:
                    f.task.on_chunk_progress(index, pos - start)

        return ChunkWriter(
            self._io, f.shared, self.config.segment_size, progress, begin, end, written
        )

    def _forget(self, f: _File, index: int) -> None:
        """Drop chunk ``index``'s written prefix (it failed verification) and its progress."""
        self._progress(-f.reported[index])
        f.reported[index] = 0
        if f.kept[index]:
            f.kept[index] = 0
            if f.task.on_chunk_progress is not None:
                f.task.on_chunk_progress(index, 0)

    def _progress(self, delta: int) -> None:
        if delta and self._on_progress is not None:
            self._on_progress(delta)

    def _fetched(self, f: _File, n: int) -> None:
        self.stats.bytes_fetched += n
        f.bytes_fetched += n

    async def _throttle(self, n: int) -> None:
        if self._limiter is not None:
            await self._limiter.consume(n)

    def _retried(self, f: _File) -> Callable[[int, BaseException, float], None]:
        def hook(attempt: int, err: BaseException, delay: float) -> None:
            self.stats.retries += 1
            f.retries += 1
            log.info("%s: retry %d in %.2fs: %s", f.label, attempt, delay, err)

        return hook

    def _accept(self, f: _File, index: int, digest: str) -> None:
        expected = f.expected(index)
        if expected is not None and digest != expected:
            self.stats.corrupt_chunks += 1
            raise IntegrityError(
                f"xxh3-128 mismatch: expected {expected}, got {digest}; the bytes were "
                "corrupted in transit or the source changed",
                url=f.task.reader.describe(),
                expected=expected,
                actual=digest,
            )
        f.digests[index] = digest
        f.done[index] = True
        f.changed.set()
        if f.task.on_chunk_done is not None:
            f.task.on_chunk_done(index)

    # ------------------------------------------------------------------ public

    async def fetch(self, task: FileTask) -> FileResult:
        """Fetch one file into ``task.dest``; see :class:`FileTask` for the contract.

        Raises:
            ValueError: the task is inconsistent (sizes, digests, done_chunks).
            IntegrityError: a chunk kept failing its check, or SHA-256 mismatched.
            NotFound, AuthError, HTTPStatusError, TransferError, SourceError: from
                the reader, after retries, prefixed with ``"<label>: chunk i (bytes a-b)"``.
            OSError: the destination could not be created or written.
        """
        bounds = validate_task(task)
        label = task.label or task.reader.describe()
        fd = await self._open(task, label)
        n = len(bounds)
        f = _File(task, label, bounds, SharedFd(fd), [None] * n, [False] * n, [0] * n, [0] * n)
        f.spec = spec_for(self.config, task) if self._plane is not None else None
        want_sha = task.compute_sha256 or task.expected_sha256 is not None
        try:
            await self._resume(f)
            jobs: list[Coroutine[Any, Any, Any]] = [self._download_and_sync(f)]
            if want_sha:
                jobs.append(self._sha256(f))
            results = await run_all(jobs)
        except Exception as err:
            reraise(err, label, task.dest)
        finally:
            f.shared.close()
        if not all(f.done):  # A broken invariant must never pass as a complete file.
            missing = [i for i, ok in enumerate(f.done) if not ok]
            raise TransferError(f"{label}: internal error: chunks {missing[:10]} not fetched")
        sha = results[1] if want_sha else None
        if task.expected_sha256 is not None and sha != task.expected_sha256.lower():
            raise IntegrityError(
                f"{label}: sha256 mismatch: expected {task.expected_sha256}, got {sha}; "
                f"{task.dest} is not the expected content and should be deleted",
                url=task.reader.describe(),
                expected=task.expected_sha256,
                actual=sha,
            )
        return FileResult(
            size=task.size,
            sha256=sha,
            chunks=tuple(d for d in f.digests if d is not None),
            bytes_fetched=f.bytes_fetched,
            retries=f.retries,
        )

    async def _open(self, task: FileTask, label: str) -> int:
        """Open and preallocate ``task.dest`` in the pool; a cancelled open leaks no fd."""
        resuming = bool(task.done_chunks)
        opening = self._io.executor().submit(open_dest, task.dest, task.size, resuming)
        try:
            return await asyncio.wrap_future(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(close_opened)
            raise
        except OSError as err:
            reraise(err, f"{label}: preparing the destination", task.dest)

    async def fetch_all(self, tasks: Sequence[FileTask]) -> list[FileResult]:
        """Fetch many files concurrently; results in task order.

        At most ``max_connections`` files are in flight (their chunks share the
        engine-wide connection cap). The first failure cancels the others and is
        raised; their destination files are left for the caller to clean up.
        """
        files = asyncio.Semaphore(self.config.max_connections)

        async def one(task: FileTask) -> FileResult:
            async with files:
                return await self.fetch(task)

        return await run_all([one(t) for t in tasks])

    # ------------------------------------------------------------------ resume

    async def _resume(self, f: _File) -> None:
        for i, written in f.task.partial_chunks.items():
            f.kept[i] = written  # Verified with the rest of the chunk, once it is in.
        done = sorted(set(f.task.done_chunks))
        if not done:
            return
        if not self.config.verify_resumed_chunks:
            for i in done:
                f.digests[i] = f.expected(i)
                f.done[i] = True
            return
        hashers = await asyncio.gather(
            *(self._io.submit(hash_range, f.shared, new_xxh3(), *f.bounds[i]) for i in done)
        )
        for i, hasher in zip(done, hashers, strict=True):
            digest = hasher.hexdigest()
            if digest == f.expected(i):
                f.digests[i] = digest
                f.done[i] = True
                f.kept[i] = 0
            else:
                self.stats.corrupt_chunks += 1
                log.warning("%s: resumed data does not match; refetching", f.where(i))

    # ------------------------------------------------------------------ hashing

    async def _sha256(self, f: _File) -> str:
        """SHA-256 of the file, read back chunk by chunk as chunks complete in order."""
        sha = hashlib.sha256()
        for i, (start, end) in enumerate(f.bounds):
            while not f.done[i]:
                f.changed.clear()
                await f.changed.wait()
            await self._io.submit(hash_range, f.shared, sha, start, end)
        return sha.hexdigest()

    # ------------------------------------------------------------------ ranged

    async def _download_and_sync(self, f: _File) -> None:
        await self._download(f)
        if f.task.durable:
            await self._io.submit(fdatasync, f.shared)

    async def _download(self, f: _File) -> None:
        pending = deque(i for i, ok in enumerate(f.done) if not ok)
        if not pending:
            return
        start = f.task.first_chunk
        pending.rotate(-sum(1 for i in pending if i < start))  # First the chunks from ``start``.
        reader = f.task.reader
        if len(pending) > 1 and reader.supports_ranges is False:
            self.stats.range_fallbacks += 1
            await self._sequential(f)
            return
        workers = min(self.config.max_connections_per_file, len(pending),
                      f.task.chunks_in_flight or len(pending))
        jobs: list[Awaitable[None]] = []
        if len(pending) > 1 and reader.supports_ranges is None:
            # Probe: run the first chunk alone until its response shows whether
            # the server honours Range, so a server that ignores it is not sent
            # eight full-body GETs at once.
            probe: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            first = asyncio.ensure_future(self._worker(f, pending, probe))
            try:
                await asyncio.wait([first, probe], return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                first.cancel()
                await asyncio.gather(first, return_exceptions=True)
                raise
            if first.done() and first.exception() is not None:
                raise first.exception()  # type: ignore[misc]
            if reader.supports_ranges is False:
                await first  # It stops itself at the probe chunk's first piece.
                self.stats.range_fallbacks += 1
                await self._sequential(f)
                return
            jobs.append(first)
            workers -= 1
        jobs.extend(self._worker(f, pending) for _ in range(workers))
        await run_all(jobs)

    async def _worker(
        self, f: _File, pending: deque[int], probe: asyncio.Future[None] | None = None
    ) -> None:
        """Fetch chunks from ``pending`` until none is left; the first may be the probe."""
        while pending:
            if not await self._chunk(f, pending.popleft(), probe):
                return  # Ranges unsupported: the caller switches to one stream.
            probe = None

    async def _chunk(self, f: _File, index: int, probe: asyncio.Future[None] | None) -> bool:
        """Fetch chunk ``index`` with retries; False when the probe saw ranges ignored."""
        try:
            await retrying(
                self.config.retry,
                lambda: self._chunk_once(f, index, probe),
                describe=f.where(index),
                on_retry=self._retried(f),
            )
            return True
        except _RangesUnsupported:
            return False
        except Exception as err:
            reraise(err, f.where(index), f.task.dest)
        finally:
            if probe is not None and not probe.done():
                probe.set_result(None)

    async def _chunk_once(self, f: _File, index: int, probe: asyncio.Future[None] | None) -> None:
        reader = f.task.reader
        if isinstance(reader, LocalCopyReader):
            await self._local_chunk_once(f, index, reader)
            return
        async with self._slots:
            self.stats.requests += 1
            lane = (self._plane.pick(self._local_load)
                    if self._plane is not None and f.spec is not None else None)
            if lane is not None:
                await self._remote_chunk_once(f, index, probe, lane)
                return
            self._local_load += 1
            try:
                await self._network_chunk_once(f, index, probe)
            finally:
                self._local_load -= 1

    async def _network_chunk_once(
        self, f: _File, index: int, probe: asyncio.Future[None] | None
    ) -> None:
        """One attempt of a chunk streamed on this loop (the caller holds a slot)."""
        start, end = f.bounds[index]
        reader = f.task.reader
        begin = start + f.kept[index]
        writer = self._kept_writer(f, index, begin)
        try:
            if begin > start:  # Resume inside the chunk: its hash starts from disk.
                await self._io.submit(hash_range, f.shared, writer.hasher, start, begin)
            async with closing(reader.open_range(begin, end)) as stream:
                async for piece in stream:
                    self._fetched(f, len(piece))
                    await self._throttle(len(piece))
                    if probe is not None and not probe.done():
                        if reader.supports_ranges is False:
                            raise _RangesUnsupported
                        probe.set_result(None)
                    await writer.feed(piece)
            self._accept(f, index, await writer.finish())
        except BaseException as err:
            await writer.abort()  # What landed stays kept for the retry...
            if isinstance(err, IntegrityError):
                self._forget(f, index)  # ...unless the chunk failed: from its start.
            raise

    async def _remote_chunk_once(
        self, f: _File, index: int, probe: asyncio.Future[None] | None, lane: Lane
    ) -> None:
        """One attempt of a chunk in a worker process (:mod:`bdn.transfer.remote`)."""
        await remote_chunk_once(self, f, index, probe, lane)

    async def _local_chunk_once(self, f: _File, index: int, reader: LocalCopyReader) -> None:
        """A chunk of a local file: kernel copy plus a read-back check, no user-space copy.

        The digest is taken from the destination after the copy, so what is
        accepted is exactly what was written, as on the network path.
        """
        start, end = f.bounds[index]
        await self._throttle(end - start)
        async with self._slots:
            self.stats.requests += 1
            digest = await self._io.submit(copy_and_hash, f.shared, reader, start, end)
        self._fetched(f, end - start)
        self._progress(end - start)
        try:
            self._accept(f, index, digest)
        except IntegrityError:
            self._progress(-(end - start))
            raise

    # ------------------------------------------------------------------ sequential

    async def _sequential(self, f: _File) -> None:
        """Fetch every pending chunk from one stream (:mod:`bdn.transfer.sequential`)."""
        await fetch_sequential(self, f)
