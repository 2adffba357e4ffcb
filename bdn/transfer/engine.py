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

Servers that ignore ``Range`` are detected on the first chunk of a file; the
file is then fetched as one sequential stream, still verified chunk by chunk,
and a retry of that stream skips the chunks already verified.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from bdn.backends.base import RangeReader
from bdn.backends.local.reader import LocalFileReader
from bdn.digest import chunk_bounds, new_xxh3
from bdn.errors import BdnError, IntegrityError, TransferError
from bdn.http import RETRY_DATA, RetryPolicy, retrying
from bdn.transfer.ratelimit import RateLimiter

__all__ = [
    "DEFAULT_TRANSFER_CONFIG",
    "FileResult",
    "FileTask",
    "TransferConfig",
    "TransferEngine",
    "TransferStats",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
MiB = 1024 * 1024
_HASH_READ_SIZE = 4 * MiB
"""Read size of the ordered SHA-256 hasher and of resumed-chunk checks."""


def _default_io_threads() -> int:
    return min(8, 2 * (os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """Limits of a :class:`TransferEngine`.

    Attributes:
        max_connections: engine-wide cap on concurrent range requests.
        max_connections_per_file: cap on concurrent range requests of one file.
        segment_size: write unit inside a chunk. Memory is about
            ``2 * segment_size * max_connections`` plus the HTTP client's read
            buffers. 4 MiB measured faster than 8 or 16 MiB on loopback.
        io_threads: threads for ``pwritev`` and hashing (both release the GIL);
            default ``min(8, 2 * CPUs)``, as more threads than that only contend.
        retry: retry policy of one chunk (and of a sequential fallback stream).
        verify_resumed_chunks: re-hash chunks listed in ``done_chunks`` before
            trusting them; a mismatch is refetched.
        max_bytes_per_second: cap on the engine's whole intake (a background
            fill that must not starve inference I/O); ``None``: as fast as it goes.
    """

    max_connections: int = 16
    max_connections_per_file: int = 8
    segment_size: int = 4 * MiB
    io_threads: int = field(default_factory=_default_io_threads)
    retry: RetryPolicy = RETRY_DATA
    verify_resumed_chunks: bool = True
    max_bytes_per_second: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_file", "segment_size", "io_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransferConfig.{name} must be >= 1")


DEFAULT_TRANSFER_CONFIG = TransferConfig()


@dataclass(slots=True)
class FileTask:
    """One file to fetch.

    Attributes:
        reader: where the bytes come from.
        size: the file's size in bytes.
        dest: the file to write. The engine creates it if needed, preallocates
            ``size`` bytes and writes with ``pwritev``; it never renames or deletes
            it (the caller names it, and commits or removes it afterwards).
        chunk_size: chunk size of the manifest (the unit of verification and retry).
        expected_chunks: xxh3-128 hex of every chunk; a chunk is accepted only
            when it matches. ``None``: digests are computed, not checked.
        expected_sha256: hex SHA-256 of the whole file, checked after the last
            chunk (mismatch -> :class:`IntegrityError`, ``dest`` left in place).
        compute_sha256: compute SHA-256 even without an expected value.
        done_chunks: indices of chunks already in ``dest`` (resume); requires
            ``expected_chunks``. They are not fetched (see
            ``TransferConfig.verify_resumed_chunks``).
        on_chunk_done: called on the event loop once chunk ``i`` is written and
            verified (not for resumed chunks accepted from disk).
        label: names the file in errors, e.g. its manifest path; defaults to
            ``reader.describe()``.
        durable: ``fdatasync`` the file once every chunk is written. It runs
            while the SHA-256 pass is still reading, so the disk flush that a
            store needs before publishing a name costs no extra wall time.
    """

    reader: RangeReader
    size: int
    dest: Path
    chunk_size: int
    expected_chunks: Sequence[str] | None = None
    expected_sha256: str | None = None
    compute_sha256: bool = False
    done_chunks: Collection[int] = ()
    on_chunk_done: Callable[[int], None] | None = None
    label: str = ""
    durable: bool = False


@dataclass(frozen=True, slots=True)
class FileResult:
    """What :meth:`TransferEngine.fetch` did for one file.

    Attributes:
        size: bytes in the file.
        sha256: hex SHA-256 when it was computed or checked, else ``None``.
        chunks: xxh3-128 hex of every chunk, in order.
        bytes_fetched: bytes read from the reader, failed attempts included.
        retries: chunk (or stream) attempts that were retried.
    """

    size: int
    sha256: str | None
    chunks: tuple[str, ...]
    bytes_fetched: int
    retries: int


@dataclass(slots=True)
class TransferStats:
    """Engine-wide counters, updated on the event loop as work happens.

    Attributes:
        requests: ``open_range`` streams started.
        bytes_fetched: bytes read from readers, failed attempts included.
        retries: attempts retried after a transient failure.
        corrupt_chunks: chunks whose xxh3-128 did not match (fetched or resumed).
        range_fallbacks: files fetched as one stream because ranges were ignored.
    """

    requests: int = 0
    bytes_fetched: int = 0
    retries: int = 0
    corrupt_chunks: int = 0
    range_fallbacks: int = 0


class _RangesUnsupported(Exception):
    """The probe chunk saw the server ignore Range; switch the file to one stream."""


# --------------------------------------------------------------------------- blocking I/O


class _SharedFd:
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
        with self._lock:
            if self._closing:
                raise RuntimeError("file descriptor already closed")
            self._users += 1
            return self.fd

    def leave(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            os.close(self.fd)

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            last = self._users == 0
        if last:
            os.close(self.fd)


def _open_dest(path: Path, size: int, resuming: bool) -> int:
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


Buffer = bytes | bytearray | memoryview

# pwritev takes at most IOV_MAX buffers per call (1024 on Linux).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16

# posix_fallocate errors meaning "this filesystem cannot", not "no space".
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})


def _close_opened(opening: concurrent.futures.Future[int]) -> None:
    """Close the fd of an open whose caller was cancelled before it returned."""
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result())


def _write_and_hash(shared: _SharedFd, pieces: list[Buffer], offset: int, hasher: Any) -> None:
    """pwritev all ``pieces`` at ``offset`` and feed them to ``hasher`` (pool thread)."""
    try:
        _pwritev_all(shared.fd, pieces, offset)
        for piece in pieces:
            hasher.update(piece)
    finally:
        shared.leave()


def _pwritev_all(fd: int, pieces: Sequence[Buffer], offset: int) -> None:
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


def _hash_range(shared: _SharedFd, hasher: Any, start: int, end: int) -> Any:
    """Feed ``[start, end)`` of the file to ``hasher`` (pool thread); return it."""
    try:
        return _hash_fd(shared.fd, hasher, start, end)
    finally:
        shared.leave()


def _hash_fd(fd: int, hasher: Any, start: int, end: int) -> Any:
    buf = bytearray(min(_HASH_READ_SIZE, end - start))
    view = memoryview(buf)
    offset = start
    while offset < end:
        want = min(len(buf), end - offset)
        got = os.preadv(fd, [view[:want]], offset)
        if got <= 0:
            raise IntegrityError(
                f"destination file ends at {offset}, expected {end} bytes or more; "
                "was it truncated by another process?"
            )
        hasher.update(view[:got])
        offset += got
    return hasher


def _fdatasync(shared: _SharedFd) -> None:
    try:
        os.fdatasync(shared.fd)
    finally:
        shared.leave()


def _copy_and_hash(shared: _SharedFd, reader: LocalFileReader, start: int, end: int) -> str:
    """Local fast path (pool thread): copy a chunk in the kernel, then xxh3 what landed."""
    try:
        reader.copy_to(shared.fd, start, end)
        return str(_hash_fd(shared.fd, new_xxh3(), start, end).hexdigest())
    finally:
        shared.leave()


# --------------------------------------------------------------------------- per file


@dataclass(slots=True)
class _File:
    """Mutable state of one :meth:`TransferEngine.fetch`."""

    task: FileTask
    label: str
    bounds: list[tuple[int, int]]
    shared: _SharedFd
    digests: list[str | None]
    done: list[bool]
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_fetched: int = 0
    retries: int = 0

    def where(self, index: int) -> str:
        start, end = self.bounds[index]
        return f"{self.label}: chunk {index} (bytes {start}-{end - 1})"

    def expected(self, index: int) -> str | None:
        exp = self.task.expected_chunks
        return None if exp is None else exp[index]


def _in_context(err: Exception, context: str, path: Path | None = None) -> Exception:
    """``err`` with ``context`` prefixed to its message, for ``raise`` by the caller.

    A BDN error is updated in place (its type and fields matter to callers); an
    ``OSError`` with an errno is rebuilt, which keeps its builtin subclass
    (``FileNotFoundError``, ...) and names ``path`` when it named no file;
    anything else gets ``context`` as a note.
    """
    if isinstance(err, BdnError):
        if err.args and isinstance(err.args[0], str) and not err.args[0].startswith(context):
            err.args = (f"{context}: {err.args[0]}", *err.args[1:])
        return err
    if isinstance(err, OSError) and err.errno is not None:
        filename = err.filename if err.filename is not None else path
        return OSError(err.errno, f"{context}: {err.strerror}", filename)
    err.add_note(context)
    return err


def _reraise(err: Exception, context: str, path: Path | None = None) -> NoReturn:
    new = _in_context(err, context, path)
    if new is err:
        raise err
    raise new from err


@dataclass(frozen=True, slots=True)
class _Job:
    """A pool job: the thread's own future (truthful about a running thread) and the
    loop's view of it (which reports 'done' as soon as it is cancelled)."""

    thread: concurrent.futures.Future[Any]
    future: asyncio.Future[Any]


class _ChunkWriter:
    """Receives one chunk's bytes; pwrites and xxh3-hashes them in order, in the pool.

    Received buffers are gathered by reference (no copy on the event loop) until
    ``segment_size`` bytes are held; the batch then goes to the pool as one
    ``pwritev`` plus the hash updates while the loop gathers the next batch
    (double buffering). At most one job per chunk is in flight, which keeps the
    hash updates in order and bounds memory to about two segments per chunk.
    """

    def __init__(self, engine: TransferEngine, f: _File, start: int, end: int) -> None:
        self._engine = engine
        self._f = f
        self._seg = engine.config.segment_size
        self._pieces: list[Buffer] = []
        self._fill = 0
        self._pos = start  # file offset of the first gathered byte
        self._end = end
        self._job: _Job | None = None
        self._job_bytes = 0
        self._reported = 0
        self.hasher = new_xxh3()

    async def feed(self, data: Buffer) -> None:
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
        self._job = self._engine._submit_job(
            _write_and_hash, self._f.shared, pieces, self._pos, self.hasher
        )
        self._job_bytes = size
        self._pos += size

    async def _wait_job(self) -> None:
        if self._job is not None:
            # Cleared only once done: abort() must see a job that may still be running.
            await self._job.future
            self._job = None
            self._reported += self._job_bytes
            self._engine._progress(self._job_bytes)

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
        if job is not None and not job.thread.done():
            # A retry must not race a stale pwrite of the same bytes, so wait for
            # the thread itself (the loop-side future may already be cancelled).
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(job.thread)
        if self._reported:
            self._engine._progress(-self._reported)
            self._reported = 0


# --------------------------------------------------------------------------- engine


class TransferEngine:
    """Fetches files through :class:`RangeReader`\\ s; see the module docstring.

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
        self._limiter = (RateLimiter(config.max_bytes_per_second)
                         if config.max_bytes_per_second else None)
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    async def __aenter__(self) -> TransferEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the I/O threads, waiting for running jobs (idempotent)."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)

    # ------------------------------------------------------------------ plumbing

    def _executor(self) -> ThreadPoolExecutor:
        if self._closed:
            raise RuntimeError("TransferEngine is closed")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.config.io_threads, thread_name_prefix="bdn-io"
            )
        return self._pool

    def _submit_job(self, fn: Callable[..., T], shared: _SharedFd, *args: Any) -> _Job:
        """Run ``fn(shared, *args)`` in the pool; ``fn`` must call ``shared.leave()``."""
        shared.enter()
        try:
            cf = self._executor().submit(fn, shared, *args)
        except BaseException:
            shared.leave()
            raise
        return _Job(cf, asyncio.wrap_future(cf))

    def _submit(self, fn: Callable[..., T], shared: _SharedFd, *args: Any) -> asyncio.Future[T]:
        return self._submit_job(fn, shared, *args).future

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
        bounds = _validate(task)
        label = task.label or task.reader.describe()
        opening = self._executor().submit(_open_dest, task.dest, task.size, bool(task.done_chunks))
        try:
            fd = await asyncio.wrap_future(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise
        except OSError as err:
            _reraise(err, f"{label}: preparing the destination", task.dest)
        n = len(bounds)
        f = _File(task, label, bounds, _SharedFd(fd), [None] * n, [False] * n)
        want_sha = task.compute_sha256 or task.expected_sha256 is not None
        try:
            await self._resume(f)
            jobs: list[Coroutine[Any, Any, Any]] = [self._download_and_sync(f)]
            if want_sha:
                jobs.append(self._sha256(f))
            results = await _run_all(jobs)
        except Exception as err:
            _reraise(err, label, task.dest)
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

        return await _run_all([one(t) for t in tasks])

    # ------------------------------------------------------------------ resume

    async def _resume(self, f: _File) -> None:
        done = sorted(set(f.task.done_chunks))
        if not done:
            return
        if not self.config.verify_resumed_chunks:
            for i in done:
                f.digests[i] = f.expected(i)
                f.done[i] = True
            return
        hashers = await asyncio.gather(
            *(self._submit(_hash_range, f.shared, new_xxh3(), *f.bounds[i]) for i in done)
        )
        for i, hasher in zip(done, hashers, strict=True):
            digest = hasher.hexdigest()
            if digest == f.expected(i):
                f.digests[i] = digest
                f.done[i] = True
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
            await self._submit(_hash_range, f.shared, sha, start, end)
        return sha.hexdigest()

    # ------------------------------------------------------------------ ranged

    async def _download_and_sync(self, f: _File) -> None:
        await self._download(f)
        if f.task.durable:
            await self._submit(_fdatasync, f.shared)

    async def _download(self, f: _File) -> None:
        pending = deque(i for i, ok in enumerate(f.done) if not ok)
        if not pending:
            return
        reader = f.task.reader
        if len(pending) > 1 and reader.supports_ranges is False:
            self.stats.range_fallbacks += 1
            await self._sequential(f)
            return
        workers = min(self.config.max_connections_per_file, len(pending))
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
        await _run_all(jobs)

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
            _reraise(err, f.where(index), f.task.dest)
        finally:
            if probe is not None and not probe.done():
                probe.set_result(None)

    async def _chunk_once(self, f: _File, index: int, probe: asyncio.Future[None] | None) -> None:
        start, end = f.bounds[index]
        reader = f.task.reader
        if isinstance(reader, LocalFileReader):
            await self._local_chunk_once(f, index, reader)
            return
        async with self._slots:
            self.stats.requests += 1
            writer = _ChunkWriter(self, f, start, end)
            try:
                async with _closing(reader.open_range(start, end)) as stream:
                    async for piece in stream:
                        self._fetched(f, len(piece))
                        await self._throttle(len(piece))
                        if probe is not None and not probe.done():
                            if reader.supports_ranges is False:
                                raise _RangesUnsupported
                            probe.set_result(None)
                        await writer.feed(piece)
                self._accept(f, index, await writer.finish())
            except BaseException:
                await writer.abort()  # Also takes back the progress of a corrupt chunk.
                raise

    async def _local_chunk_once(self, f: _File, index: int, reader: LocalFileReader) -> None:
        """A chunk of a local file: kernel copy plus a read-back check, no user-space copy.

        The digest is taken from the destination after the copy, so what is
        accepted is exactly what was written, as on the network path.
        """
        start, end = f.bounds[index]
        await self._throttle(end - start)
        async with self._slots:
            self.stats.requests += 1
            digest = await self._submit(_copy_and_hash, f.shared, reader, start, end)
        self._fetched(f, end - start)
        self._progress(end - start)
        try:
            self._accept(f, index, digest)
        except IntegrityError:
            self._progress(-(end - start))
            raise

    # ------------------------------------------------------------------ sequential

    async def _sequential(self, f: _File) -> None:
        """Fetch every pending chunk from one stream; see the module docstring.

        The retry budget restarts whenever an attempt verified at least one more
        chunk, so a long file over a flaky link still completes.
        """
        while not all(f.done):
            before = f.done.count(True)
            try:
                await retrying(
                    self.config.retry,
                    lambda: self._stream_once(f),
                    describe=f"{f.label}: single stream",
                    on_retry=self._retried(f),
                )
            except Exception as err:
                if f.done.count(True) > before and self.config.retry.should_retry(err):
                    continue
                _reraise(err, f"{f.where(f.done.index(False))} (single stream)", f.task.dest)

    async def _stream_once(self, f: _File) -> None:
        """One attempt of the single stream, from the first unverified chunk to the end.

        Verified chunks met on the way are skipped; a corrupt chunk does not stop
        the stream (later chunks may still verify) but fails the attempt at the end.
        """
        index = f.done.index(False)
        offset = f.bounds[index][0]
        writer: _ChunkWriter | None = None
        corrupt: IntegrityError | None = None
        async with self._slots:
            self.stats.requests += 1
            try:
                async with _closing(f.task.reader.open_range(offset, f.task.size)) as stream:
                    async for piece in stream:
                        self._fetched(f, len(piece))
                        await self._throttle(len(piece))
                        view = memoryview(piece)
                        while view:
                            if index == len(f.bounds):
                                raise TransferError("reader yielded more bytes than requested")
                            start, end = f.bounds[index]
                            take = min(len(view), end - offset)
                            if not f.done[index]:
                                writer = writer or _ChunkWriter(self, f, start, end)
                                await writer.feed(view[:take])
                            view = view[take:]
                            offset += take
                            if offset < end:
                                continue
                            if writer is not None:
                                digest = await writer.finish()
                                try:
                                    self._accept(f, index, digest)
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


# --------------------------------------------------------------------------- helpers


def _validate(task: FileTask) -> list[tuple[int, int]]:
    """Check a task's arithmetic; return its chunk bounds."""
    if task.size < 0:
        raise ValueError(f"{task.label or task.dest}: negative size {task.size}")
    if task.chunk_size <= 0:
        raise ValueError(f"{task.label or task.dest}: chunk_size must be positive")
    bounds = list(chunk_bounds(task.size, task.chunk_size))
    if task.expected_chunks is not None and len(task.expected_chunks) != len(bounds):
        raise ValueError(
            f"{task.label or task.dest}: {len(task.expected_chunks)} chunk digests for "
            f"{len(bounds)} chunks of {task.chunk_size} bytes"
        )
    if task.done_chunks:
        if task.expected_chunks is None:
            raise ValueError("done_chunks needs expected_chunks to verify against")
        bad = [i for i in task.done_chunks if not 0 <= i < len(bounds)]
        if bad:
            raise ValueError(f"done_chunks out of range: {bad[:5]}")
    return bounds


@contextlib.asynccontextmanager
async def _closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Like ``contextlib.aclosing`` for any async iterator (generators have ``aclose``)."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _run_all(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Await all concurrently; on the first failure cancel the rest and raise it.

    Unlike ``asyncio.gather`` nothing is left running after an error, and unlike
    ``TaskGroup`` the caller gets the error itself rather than an ExceptionGroup.
    """
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
    if failed is not None:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise failed.exception()  # type: ignore[misc]
    return [t.result() for t in tasks]
