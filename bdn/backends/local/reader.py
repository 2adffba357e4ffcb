"""A :class:`~bdn.backends.base.RangeReader` over a file on this machine.

Used for ``file://`` stores and local-directory sources, so local copies run
through the same engine (verification, resume, progress) as network ones.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

from bdn.errors import NotFound, SourceError

MiB = 1024 * 1024

# copy_file_range errors meaning "not between these files", not "I/O failed".
_NO_COPY_FILE_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                 errno.EBADF})


class LocalFileReader:
    """Streams byte ranges of a local file whose size is known in advance.

    Reads use ``os.pread`` in a worker thread, ``piece_size`` bytes at a time, so
    the event loop never blocks on the disk. The file is opened per range, so
    many ranges may be read concurrently and :meth:`close` has nothing to do.

    It also offers the :class:`~bdn.backends.base.LocalCopyReader` capability
    (:meth:`copy_to`), so the engine can copy chunks in the kernel.

    Errors: a missing file raises :class:`NotFound`; a file whose size differs
    from ``size`` or that returns fewer bytes than asked (it was truncated or
    replaced while being read) raises :class:`SourceError`; any other ``OSError``
    is raised as :class:`SourceError` chained to it.
    """

    supports_ranges: bool | None

    def __init__(self, path: Path, size: int, *, piece_size: int = 8 * MiB) -> None:
        if size < 0:
            raise ValueError(f"negative file size {size}")
        if piece_size <= 0:
            raise ValueError(f"piece_size must be positive, got {piece_size}")
        self.path = Path(path)
        self.size = size
        self.piece_size = piece_size
        self.supports_ranges = True

    def describe(self) -> str:
        """The file's path."""
        return str(self.path)

    async def close(self) -> None:
        """Nothing to release: files are opened per range."""

    def _changed(self, detail: str) -> SourceError:
        return SourceError(
            f"{self.path} changed while being read ({detail}); it must not be modified "
            "during a transfer: re-run once it is stable"
        )

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as err:
            raise NotFound(f"{self.path}: no such file; was it moved or deleted?") from err
        except OSError as err:
            raise SourceError(f"{self.path}: cannot open: {err.strerror or err}") from err
        try:
            actual = os.fstat(fd).st_size
        except OSError as err:
            os.close(fd)
            raise SourceError(f"{self.path}: cannot stat: {err.strerror or err}") from err
        if actual != self.size:
            os.close(fd)
            raise self._changed(f"size is {actual} bytes, expected {self.size}")
        return fd

    def _pread(self, fd: int, length: int, offset: int) -> bytes:
        try:
            data = os.pread(fd, length, offset)
        except OSError as err:
            raise SourceError(
                f"{self.path}: read at offset {offset} failed: {err.strerror or err}"
            ) from err
        if len(data) != length:
            raise self._changed(f"short read at offset {offset}: got {len(data)} of {length} bytes")
        return data

    def copy_to(self, dst_fd: int, start: int, end: int) -> None:
        """Copy ``[start, end)`` into ``dst_fd`` at the same offsets (blocking).

        The :class:`~bdn.backends.base.LocalCopyReader` fast path:
        ``copy_file_range`` keeps the bytes in the kernel (and lets filesystems
        that can share extents do so), which halves the memory traffic of a
        pread + pwrite through user space. Where the kernel cannot (other
        filesystem on old kernels, special files), it falls back to pread + pwrite.

        Raises:
            NotFound: the file does not exist.
            SourceError: the file changed size or could not be read.
            OSError: writing ``dst_fd`` failed (e.g. ENOSPC).
        """
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"range [{start}, {end}) outside file of {self.size} bytes")
        src = self._open()
        try:
            offset = start
            while offset < end:
                try:
                    done = os.copy_file_range(src, dst_fd, end - offset, offset, offset)
                except OSError as err:
                    if err.errno not in _NO_COPY_FILE_RANGE:
                        raise
                    self._copy_by_pread(src, dst_fd, offset, end)
                    return
                if done == 0:
                    raise self._changed(f"file ends at offset {offset}, expected {end}")
                offset += done
        finally:
            os.close(src)

    def _copy_by_pread(self, src: int, dst_fd: int, offset: int, end: int) -> None:
        while offset < end:
            data = self._pread(src, min(self.piece_size, end - offset), offset)
            view = memoryview(data)
            while view:
                written = os.pwrite(dst_fd, view, offset)
                view = view[written:]
                offset += written

    async def open_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield ``[start, end)`` in pieces of at most ``piece_size`` bytes.

        Raises:
            ValueError: the range is outside ``[0, size]``.
            NotFound: the file does not exist.
            SourceError: the file changed size or could not be read.
        """
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"range [{start}, {end}) outside file of {self.size} bytes")
        if start == end:
            return
        opening = asyncio.ensure_future(asyncio.to_thread(self._open))
        try:
            fd = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_if_opened)
            raise
        read: asyncio.Future[bytes] | None = None
        try:
            offset = start
            while offset < end:
                length = min(self.piece_size, end - offset)
                read = asyncio.ensure_future(asyncio.to_thread(self._pread, fd, length, offset))
                data = await asyncio.shield(read)
                offset += length
                yield data
        finally:
            if read is not None and not read.done():
                # Cancelled mid-read: the thread still uses fd, so close it only
                # once that read has finished (a reused fd number would be read).
                read.add_done_callback(lambda done: _close_after_read(fd, done))
            else:
                os.close(fd)


def _close_after_read(fd: int, read: asyncio.Future[bytes]) -> None:
    if not read.cancelled():
        read.exception()  # Retrieved so asyncio does not log it; the consumer has gone.
    os.close(fd)


def _close_if_opened(opening: asyncio.Future[int]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result())
