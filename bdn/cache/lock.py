"""Cross-task, cross-thread, cross-process locks on files in ``locks/``.

Every acquisition opens the lock file afresh. ``flock`` locks belong to an open
file description, so two acquisitions, even from two threads or two asyncio
tasks of one process, exclude each other exactly as two processes do. (POSIX
``fcntl`` record locks would not: they belong to the process, so a second
thread would "get" a lock its process already holds.)

After the lock is granted the holder checks that the path still names the
inode it locked. That lets :func:`try_remove_lock_file` (used by ``gc``) delete
idle lock files: a waiter that raced with the removal finds itself holding a
lock on a deleted inode, lets go and retries on the new file.

flock is local to a host; the node cache is node-local disk by design, never
NFS, where flock may be emulated or missing (huggingface_hub hit this on
Lustre, which is why the origin ``FileStore`` never locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

POLL_START_S = 0.002
"""First wait between two tries of a contended lock."""

POLL_MAX_S = 0.05
"""Longest wait between two tries: a waiter notices a release within ~50 ms."""

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


def _open(path: Path) -> int:
    try:
        return os.open(path, _OPEN_FLAGS, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, _OPEN_FLAGS, 0o644)


def _try_flock(fd: int, path: Path) -> bool:
    """Try to lock ``fd`` without blocking; True once it holds the live lock file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    if _still_linked(fd, path):
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    raise _Stale


class _Stale(Exception):
    """The locked inode was unlinked by gc; open the path again."""


def _still_linked(fd: int, path: Path) -> bool:
    try:
        on_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_path.st_dev, on_path.st_ino) == (held.st_dev, held.st_ino)


def _release(fd: int) -> None:
    """Unlock and close ``fd``, a held lock.

    Closing the last descriptor of the open file description drops the lock;
    the explicit unlock only makes the release independent of any inherited
    copy of the descriptor.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def async_file_lock(path: Path) -> AsyncIterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the body runs.

    Waits by polling ``LOCK_NB`` with short ``asyncio.sleep`` s, so the event
    loop is never blocked and the wait is cancellable: a cancelled waiter
    closes its descriptor and holds (and so releases) nothing. Not reentrant:
    a task that takes the same lock twice waits for itself forever.

    Raises:
        OSError: the lock file cannot be created or locked (not contention).
    """
    delay = POLL_START_S
    while True:
        fd = _open(path)
        try:
            while not _try_flock(fd, path):
                await asyncio.sleep(delay)
                delay = min(delay * 2, POLL_MAX_S)
        except _Stale:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        break
    try:
        yield
    finally:
        _release(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Blocking twin of :func:`async_file_lock`, for code already in a worker thread."""
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_linked(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # Closing releases the lock on the unlinked inode.
    try:
        yield
    finally:
        _release(fd)


@contextlib.contextmanager
def try_file_lock(path: Path, *, create: bool = False) -> Iterator[bool]:
    """Take the lock on ``path`` if it is free; yields whether it is held.

    Never waits. Without ``create`` a missing file yields False (no one can
    hold a lock on it) and is not created.
    """
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = _open(path) if create else os.open(path, flags)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            held = _try_flock(fd, path)
        except _Stale:
            held = False
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def try_remove_lock_file(path: Path) -> bool:
    """Delete the lock file ``path`` unless someone holds its lock; True when removed.

    Safe against a concurrent locker: the unlink happens while we hold the
    lock, and a waiter that then gets the orphaned inode notices and retries.
    """
    with try_file_lock(path) as held:
        if not held:
            return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True
