"""Chunk verification: hashing what is in the destination file, off the event loop.

Digests are taken from the destination itself wherever the bytes did not pass
through a hasher on their way in (resumed chunks, kernel-side copies, the
ordered SHA-256 pass), so what is accepted is exactly what was written. These
functions block and run in the engine's :class:`~bdn.transfer.writes.IoPool`.
"""

from __future__ import annotations

import os
from typing import Any

from bdn.backends.base import LocalCopyReader
from bdn.digest import new_xxh3
from bdn.errors import IntegrityError
from bdn.transfer.writes import SharedFd

__all__ = ["HASH_READ_SIZE", "copy_and_hash", "hash_fd", "hash_range"]

MiB = 1024 * 1024
HASH_READ_SIZE = 4 * MiB
"""Read size of the ordered SHA-256 hasher and of resumed-chunk checks."""


def hash_range(shared: SharedFd, hasher: Any, start: int, end: int) -> Any:
    """Feed ``[start, end)`` of the file to ``hasher`` (pool thread); return it."""
    try:
        return hash_fd(shared.fd, hasher, start, end)
    finally:
        shared.leave()


def hash_fd(fd: int, hasher: Any, start: int, end: int) -> Any:
    """Feed ``[start, end)`` of ``fd`` to ``hasher``; a file shorter than that is corrupt."""
    buf = bytearray(min(HASH_READ_SIZE, end - start))
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


def copy_and_hash(shared: SharedFd, reader: LocalCopyReader, start: int, end: int) -> str:
    """Local fast path (pool thread): copy a chunk in the kernel, then xxh3 what landed."""
    try:
        reader.copy_to(shared.fd, start, end)
        return str(hash_fd(shared.fd, new_xxh3(), start, end).hexdigest())
    finally:
        shared.leave()
