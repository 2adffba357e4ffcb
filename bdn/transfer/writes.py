"""Positioned writes into the destination file, off the event loop.

A chunk's received buffers are gathered by reference and handed to a small
thread pool (:class:`IoPool`) as one ``pwritev`` plus the chunk's hash updates
(:class:`ChunkWriter`), so the event loop never blocks on the disk and never
copies the bytes. :class:`SharedFd` keeps a destination's descriptor open
until the last pool job using it has finished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bdn.digest import new_xxh3
from bdn.errors import TransferError

__all__ = [
    "Buffer",
    "ChunkWriter",
    "IoPool",
    "Job",
    "SharedFd",
    "close_opened",
    "fdatasync",
    "open_dest",
    "pwritev_all",
    "write_and_hash",
]

T = TypeVar("T")

Buffer = bytes | bytearray | memoryview

# pwritev takes at most IOV_MAX buffers per call (1024 on Linux).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16

# posix_fallocate errors meaning "this filesystem cannot", not "no space".
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})


class SharedFd:
    """A file descriptor closed only once no pool job is using it any more.

    A cancelled task cannot stop a thread that is in ``pwrite``/``pread``; closing
    the fd under it could let the number be reused by another file and written
    to by mistake, so the last user closes it.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    def enter(self) -> int:
        """Register one more user; the descriptor, for that user to work on."""
        with self._lock:
            if self._closing:
                raise RuntimeError("file descriptor already closed")
            self._users += 1
            return self.fd

    def leave(self) -> None:
        """Unregister a user; the last one out closes a descriptor already closing."""
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            os.close(self.fd)

    def close(self) -> None:
        """Close now, or once the last user leaves (idempotent)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            last = self._users == 0
        if last:
            os.close(self.fd)


def open_dest(path: Path, size: int, resuming: bool) -> int:
    """Open (creating) ``path`` and give it exactly ``size`` preallocated bytes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        current = os.fstat(fd).st_size
        if current > size:
            os.ftruncate(fd, size)
        if size and not resuming:
            # Real allocation up front: a full disk fails now, not 90% through.
            # glibc emulates fallocate by writing where the filesystem lacks it,
            # which is why a resumed file (data already in it) skips this.
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as err:
                if err.errno not in _NO_FALLOCATE:
                    raise
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd



def close_opened(opening: concurrent.futures.Future[int]) -> None:
    """Close the fd of an open whose caller was cancelled before it returned."""
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result())


def write_and_hash(shared: SharedFd, pieces: list[Buffer], offset: int, hasher: Any) -> None:
    """pwritev all ``pieces`` at ``offset`` and feed them to ``hasher`` (pool thread)."""
    try:
        pwritev_all(shared.fd, pieces, offset)
        for piece in pieces:
            hasher.update(piece)
    finally:
        shared.leave()


def pwritev_all(fd: int, pieces: Sequence[Buffer], offset: int) -> None:
    """Write every byte of ``pieces`` at ``offset``, resuming after short writes."""
    views = [memoryview(p) for p in pieces]
    first = 0
    while first < len(views):
        written = os.pwritev(fd, views[first : first + _IOV_MAX], offset)
        offset += written
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]



def fdatasync(shared: SharedFd) -> None:
    """Flush the file's data to disk (pool thread), so a store may publish its name."""
    try:
        os.fdatasync(shared.fd)
    finally:
        shared.leave()


@dataclass(frozen=True, slots=True)
class Job:
    """A pool job: the thread's own future (truthful about a running thread) and the
    loop's view of it (which reports 'done' as soon as it is cancelled)."""

    thread: concurrent.futures.Future[Any]
    future: asyncio.Future[Any]


class IoPool:
    """The engine's worker threads for blocking file work (pwritev, preadv, hashing).

    Both ``pwritev`` and the hashers release the GIL, so a few threads keep the
    disk and the CPUs busy while the event loop keeps receiving. The threads are
    started on first use and stopped by :meth:`close`.
    """

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def executor(self) -> ThreadPoolExecutor:
        """The running pool, started on first use; ``RuntimeError`` once closed."""
        if self._closed:
            raise RuntimeError("TransferEngine is closed")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self._threads, thread_name_prefix="bdn-io"
            )
        return self._pool

    def submit_job(self, fn: Callable[..., T], shared: SharedFd, *args: Any) -> Job:
        """Run ``fn(shared, *args)`` in the pool; ``fn`` must call ``shared.leave()``."""
        shared.enter()
        try:
            cf = self.executor().submit(fn, shared, *args)
        except BaseException:
            shared.leave()
            raise
        return Job(cf, asyncio.wrap_future(cf))

    def submit(self, fn: Callable[..., T], shared: SharedFd, *args: Any) -> asyncio.Future[T]:
        """Like :meth:`submit_job`, for callers that only await the result."""
        return self.submit_job(fn, shared, *args).future

    async def close(self) -> None:
        """Stop the threads, waiting for running jobs (idempotent)."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)


class ChunkWriter:
    """Receives one chunk's bytes; pwrites and xxh3-hashes them in order, in the pool.

    Received buffers are gathered by reference (no copy on the event loop) until
    ``segment_size`` bytes are held; the batch then goes to the pool as one
    ``pwritev`` plus the hash updates while the loop gathers the next batch
    (double buffering). At most one job per chunk is in flight, which keeps the
    hash updates in order and bounds memory to about two segments per chunk.

    A segment counts as soon as its job returned: a done callback on the loop
    reports its progress and, with ``on_written``, the file offset up to which
    the chunk is now written, without waiting for the next segment to fill. So
    after a crash the written but unrecorded bytes of a chunk are at most the
    job still in the pool; the bytes being gathered were never written. With
    ``on_written`` the written prefix is *kept* by the caller: :meth:`abort`
    does not take its progress back (the caller does, if it later drops the
    prefix).
    """

    def __init__(
        self,
        io: IoPool,
        shared: SharedFd,
        segment_size: int,
        progress: Callable[[int], None],
        start: int,
        end: int,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self._io = io
        self._shared = shared
        self._seg = segment_size
        self._progress = progress
        self._pieces: list[Buffer] = []
        self._fill = 0
        self._pos = start  # file offset of the first gathered byte
        self._end = end
        self._job: Job | None = None
        self._job_bytes = 0
        self._unsettled: Job | None = None  # The job whose landing is not yet counted.
        self._callback_error: BaseException | None = None
        self._reported = 0
        self._on_written = on_written
        self.hasher = new_xxh3()

    async def feed(self, data: Buffer) -> None:
        """Take the next received buffer; a full segment goes to the pool."""
        self._raise_callback_error()
        if not isinstance(data, bytes):
            view = memoryview(data)
            if not view.readonly:
                data = bytes(view)  # The reader may reuse a mutable buffer: keep a copy.
            elif view.ndim != 1 or view.itemsize != 1:
                data = view.cast("B")
        size = len(data)
        if self._pos + self._fill + size > self._end:
            raise TransferError(
                f"reader yielded more bytes than the {self._end - self._pos - self._fill} "
                "left in its range"
            )
        self._pieces.append(data)
        self._fill += size
        if self._fill >= self._seg:
            await self._flush()

    async def _flush(self) -> None:
        await self._wait_job()
        pieces, size = self._pieces, self._fill
        self._pieces, self._fill = [], 0
        job = self._io.submit_job(write_and_hash, self._shared, pieces, self._pos, self.hasher)
        self._pos += size
        self._job = self._unsettled = job
        self._job_bytes = size
        job.future.add_done_callback(lambda fut: self._landed(job, fut))

    def _landed(self, job: Job, fut: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> None:
        """Count ``job`` once, if its write returned.

        Runs as the loop-side future's done callback, from :meth:`_wait_job`, or
        from :meth:`abort` with the thread's own future (the loop-side one may be
        cancelled while the thread still lands the bytes). Only the newest job
        can be unsettled (one in flight), so it holds ``_job_bytes`` up to ``_pos``.
        """
        if job is not self._unsettled or not fut.done() or fut.cancelled():
            return  # Counted already, or not (yet) written.
        if fut.exception() is not None:
            return  # Not written; the error is raised by whoever awaits the job.
        self._unsettled = None
        self._reported += self._job_bytes
        try:
            self._progress(self._job_bytes)
            if self._on_written is not None:
                self._on_written(self._pos)
        except BaseException as err:  # A callback's error fails the chunk, as if inline.
            self._callback_error = self._callback_error or err

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            err, self._callback_error = self._callback_error, None
            raise err

    async def _wait_job(self) -> None:
        if self._job is not None:
            # Cleared only once done: abort() must see a job that may still be running.
            job = self._job
            await job.future
            self._job = None
            self._landed(job, job.future)  # Normally counted by its callback already.
        self._raise_callback_error()

    async def finish(self) -> str:
        """Write what is gathered; return the chunk's xxh3-128 hex."""
        if self._fill:
            await self._flush()
        await self._wait_job()
        if self._pos != self._end:
            raise TransferError(f"stream ended {self._end - self._pos} bytes early")
        return self.hasher.hexdigest()

    async def abort(self) -> None:
        """After a failure: let the in-flight write land, undo reported progress."""
        self._pieces, self._fill = [], 0
        job, self._job = self._job, None
        if job is not None:
            if not job.thread.done():
                # A retry must not race a stale pwrite of the same bytes, so wait for
                # the thread itself (the loop-side future may already be cancelled).
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(job.thread)
            if self._on_written is not None:
                self._landed(job, job.thread)  # If it landed, the caller keeps it too.
        self._unsettled = None  # A late callback must not count anything now.
        self._callback_error = None
        if self._reported and self._on_written is None:
            self._progress(-self._reported)
        self._reported = 0
