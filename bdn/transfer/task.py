"""What the transfer engine is asked to do and what it reports.

:class:`TransferConfig` (the engine's limits), :class:`FileTask` (one file to
fetch), :class:`FileResult` (what was done for it) and :class:`TransferStats`
(engine-wide counters) are plain values, kept apart from the engine so callers
can build and read them without the scheduling code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bdn.backends.base import RangeReader
from bdn.digest import chunk_bounds
from bdn.http import RETRY_DATA, RetryPolicy
from bdn.transfer.ratelimit import RateCap

__all__ = [
    "DEFAULT_TRANSFER_CONFIG",
    "FileResult",
    "FileTask",
    "TransferConfig",
    "TransferStats",
    "validate_task",
]

MiB = 1024 * 1024


def _default_io_threads() -> int:
    return min(8, 2 * (os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """Limits of a :class:`~bdn.transfer.engine.TransferEngine`.

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
        rate_limit: cap on the engine's whole intake (a background fill that
            must not starve inference I/O), which its owner may lift while the
            engine runs; ``None``: as fast as it goes. A capped engine keeps
            its data plane in-process (the cap is one token bucket).
        workers: processes of the data plane. 1: every chunk is received on
            the engine's own event loop, as before; N > 1: the loop plus N - 1
            worker processes (:mod:`bdn.transfer.plane`) for readers that can be
            rebuilt in another process. ``None``: not chosen by the caller; the
            engine runs as with 1, and a pull (``PullOptions.with_workers``)
            resolves it from ``--workers`` / ``BDN_WORKERS`` (default: the CPUs
            it may use). A number set here is the caller's choice and sticks.
        worker_min_bytes: a file with fewer bytes left to fetch stays on the
            engine's loop (starting a worker costs ~0.3 CPU-s of imports).
    """

    max_connections: int = 16
    max_connections_per_file: int = 8
    segment_size: int = 4 * MiB
    io_threads: int = field(default_factory=_default_io_threads)
    retry: RetryPolicy = RETRY_DATA
    verify_resumed_chunks: bool = True
    rate_limit: RateCap | None = None
    workers: int | None = None
    worker_min_bytes: int = 64 * MiB

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_file", "segment_size", "io_threads",
                     "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TransferConfig.{name} must be >= 1")

    @property
    def max_bytes_per_second(self) -> float | None:
        """The cap of :attr:`rate_limit` in bytes per second (``None``: uncapped)."""
        return None if self.rate_limit is None else self.rate_limit.bytes_per_second


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
        partial_chunks: chunk index -> bytes from that chunk's start already in
            ``dest`` (resume inside a chunk); requires ``expected_chunks``. Only
            the rest of such a chunk is fetched; the whole chunk is then verified,
            and on a mismatch fetched again from its start.
        on_chunk_progress: called on the event loop as ``(i, n)`` once the first
            ``n`` bytes of chunk ``i`` are written (after their ``pwrite``
            returned), one call per segment; ``(i, 0)`` withdraws a prefix that
            failed verification. A caller records these to resume inside a chunk.
        label: names the file in errors, e.g. its manifest path; defaults to
            ``reader.describe()``.
        durable: ``fdatasync`` the file once every chunk is written. It runs
            while the SHA-256 pass is still reading, so the disk flush that a
            store needs before publishing a name costs no extra wall time.
        first_chunk: the chunk to start with; the rest follow in order and wrap
            around. Pulls on different nodes start at different chunks so that
            they do not all ask the same owners for the same chunks first.
        chunks_in_flight: at most this many chunks of the file are fetched at
            once (never more than ``max_connections_per_file``); as chunks are
            started in order from ``first_chunk``, the oldest one in flight is
            always the next one in order. A caller that reads the file in order
            while it fills (the Hub endpoint) sets it low, so the chunk it needs
            next does not share the bandwidth with many later ones. ``None``:
            ``max_connections_per_file``.
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
    partial_chunks: Mapping[int, int] = field(default_factory=dict)
    on_chunk_progress: Callable[[int, int], None] | None = None
    label: str = ""
    durable: bool = False
    first_chunk: int = 0
    chunks_in_flight: int | None = None


@dataclass(frozen=True, slots=True)
class FileResult:
    """What :meth:`~bdn.transfer.engine.TransferEngine.fetch` did for one file.

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


def validate_task(task: FileTask) -> list[tuple[int, int]]:
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
    if task.chunks_in_flight is not None and task.chunks_in_flight < 1:
        raise ValueError(f"{task.label or task.dest}: chunks_in_flight must be >= 1")
    if task.done_chunks:
        if task.expected_chunks is None:
            raise ValueError("done_chunks needs expected_chunks to verify against")
        bad = [i for i in task.done_chunks if not 0 <= i < len(bounds)]
        if bad:
            raise ValueError(f"done_chunks out of range: {bad[:5]}")
    if task.partial_chunks:
        if task.expected_chunks is None:
            raise ValueError("partial_chunks needs expected_chunks to verify against")
        bad = [
            i for i, n in task.partial_chunks.items()
            if not (0 <= i < len(bounds) and 0 <= n < bounds[i][1] - bounds[i][0])
        ]
        if bad:
            raise ValueError(f"partial_chunks out of range: {bad[:5]}")
    return bounds

