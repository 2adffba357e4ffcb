"""``file://`` blob store: keys are files under a root directory.

Write path (after kraken's CAStore): bytes go to a unique temp file in
``<root>/.incomplete/``, are fsynced, then ``os.replace``-d onto the key's
path. A reader therefore sees a whole file or none, and a rename onto an
existing blob is simply success. Blobs (``blobs/...``) are made read-only so a
stray writer, or a hardlinked materialized tree, cannot change stored content.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from bdn.backends.base import RangeReader
from bdn.backends.keys import BLOB_PREFIX, blob_digest, check_key, check_prefix
from bdn.backends.local.reader import LocalFileReader
from bdn.backends.staging import dead_local_writer, staging_name
from bdn.errors import BdnError, BlobNotFound, ConfigError, StoreError

STAGING_DIRNAME = ".incomplete"
BLOB_MODE = 0o444

_T = TypeVar("_T")

# What an operator should do about the OS errors a store write commonly hits.
# Policy as data: one line per errno, looked up by _os_error().
_ERRNO_HINTS: dict[int, str] = {
    errno.ENOSPC: "no space left on device; free space there or point --store/BDN_STORE "
    "at a larger volume",
    errno.EDQUOT: "disk quota exceeded; free space or raise the quota for this user",
    errno.EACCES: "permission denied; make the store directory writable by this user "
    "or point --store/BDN_STORE elsewhere",
    errno.EPERM: "operation not permitted; check ownership of the store directory "
    "or point --store/BDN_STORE elsewhere",
    errno.EROFS: "the filesystem is read-only; mount it read-write or point "
    "--store/BDN_STORE elsewhere",
}


class FileStore:
    """A :class:`~bdn.backends.base.BlobStore` on a local (or NFS) directory.

    Safe for many tasks, processes and hosts writing the same root at once: no
    locks are taken, each writer owns a unique temp file and publishes it with
    one atomic rename. Blocking filesystem calls run in worker threads.

    Args:
        root: absolute directory (``~`` is expanded); created on first write.

    Raises:
        ConfigError: ``root`` is relative.
    """

    read_only = False

    def __init__(self, root: Path) -> None:
        root = Path(root).expanduser()
        if not root.is_absolute():
            raise ConfigError(f"file store root must be an absolute path, got {str(root)!r}")
        self.root = root
        self.uri = f"file://{root}"
        self._cleaned = False

    # -- reads ---------------------------------------------------------------
    async def exists(self, key: str) -> bool:
        """True when ``key`` is a stored file."""
        path = self._path(key)
        return await self._run(path, "check", path.is_file)

    async def size(self, key: str) -> int:
        """Size of ``key`` in bytes; ``BlobNotFound`` when absent."""
        path = self._path(key)

        def stat_size() -> int:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                raise self._missing(key) from None
            if not stat.S_ISREG(st.st_mode):
                raise self._missing(key)
            return st.st_size

        return await self._run(path, "stat", stat_size)

    async def get_bytes(self, key: str) -> bytes:
        """Whole content of ``key``; ``BlobNotFound`` when absent."""
        path = self._path(key)

        def read() -> bytes:
            try:
                return path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise self._missing(key) from None

        return await self._run(path, "read", read)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """Yield keys starting with ``prefix`` in sorted order, skipping the staging area."""
        check_prefix(prefix, store=self.uri)
        # Walk from the deepest directory the prefix names in full; a partial
        # last segment ("blobs/sha256/a") is a filter on that directory.
        start = prefix.rstrip("/") if prefix.endswith("/") else prefix.rpartition("/")[0]
        async for key in self._walk(start, prefix):
            yield key

    async def _walk(self, dir_key: str, prefix: str) -> AsyncIterator[str]:
        directory = self.root / dir_key if dir_key else self.root
        entries = await self._run(directory, "list", lambda: _scan(directory))
        for name, is_dir in entries:
            key = f"{dir_key}/{name}" if dir_key else name
            if is_dir:
                if key == STAGING_DIRNAME:
                    continue
                if key.startswith(prefix) or prefix.startswith(key + "/"):
                    async for sub in self._walk(key, prefix):
                        yield sub
            elif key.startswith(prefix):
                yield key

    def reader(self, key: str, size: int) -> RangeReader:
        """A :class:`LocalFileReader` of ``key``; ``BlobNotFound`` when absent."""
        path = self._path(key)
        if not path.is_file():
            raise self._missing(key)
        return LocalFileReader(path, size)

    def local_path(self, key: str) -> Path:
        """The file that holds (or will hold) ``key``."""
        return self._path(key)

    # -- writes --------------------------------------------------------------
    async def put_bytes(self, key: str, data: bytes) -> None:
        """Atomically store ``data`` under ``key`` (replacing any previous content)."""
        target = self._path(key)

        def write() -> None:
            tmp = self._new_temp_checked()
            try:
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self._publish(tmp, target, key)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        await self._run(target, "write", write)

    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        """Store the file at ``path`` under ``key``.

        With ``move=True`` the file is renamed into place when it lies on the
        store's filesystem (see :meth:`staging_dir`), else copied and then
        removed; with ``move=False`` it is copied and left untouched.
        """
        target = self._path(key)
        source = Path(path)

        def store() -> None:
            self._maybe_cleanup()
            if move:
                try:
                    _fsync_file(source)
                    self._publish(source, target, key)
                    return
                except OSError as err:
                    # EXDEV: another filesystem, so fall back to copy + rename.
                    if err.errno != errno.EXDEV:
                        raise
            tmp = self._new_temp_checked()
            try:
                shutil.copyfile(source, tmp)
                _fsync_file(tmp)
                self._publish(tmp, target, key)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if move:
                source.unlink(missing_ok=True)

        await self._run(target, "write", store)

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        path = self._path(key)
        await self._run(path, "delete", lambda: path.unlink(missing_ok=True))

    def staging_dir(self) -> Path:
        """``<root>/.incomplete`` (created): temp files here can be moved in by ``put_file``."""
        staging = self.root / STAGING_DIRNAME
        try:
            staging.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _os_error(err, staging, "create") from err
        return staging

    def new_temp_path(self) -> Path:
        """A fresh, unused path in :meth:`staging_dir` named by :func:`staging_name`."""
        return self.staging_dir() / staging_name()

    def cleanup_stale(self, *, max_age_s: float | None = None) -> builtins.list[Path]:
        """Remove temp files in the staging area whose writer is gone; returns them.

        A temp file is stale when it was written by a process of this host (and
        pid namespace) that no longer runs. Files of other hosts are only
        removed with ``max_age_s``, when older than that, since their pids
        cannot be checked from here. A live writer's file is never removed.
        Blocking (it lists a directory); call it via ``asyncio.to_thread`` from
        async code.
        """
        staging = self.root / STAGING_DIRNAME
        try:
            with os.scandir(staging) as it:
                entries = builtins.list(it)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise _os_error(err, staging, "list") from err
        now = time.time()
        removed: builtins.list[Path] = []
        for entry in entries:
            stale = dead_local_writer(entry.name)
            if stale is None:
                stale = max_age_s is not None and _age(entry, now) > max_age_s
            if stale and _unlink_quietly(Path(entry.path)):
                removed.append(Path(entry.path))
        return removed

    async def close(self) -> None:
        """Nothing to release; idempotent."""

    # -- helpers -------------------------------------------------------------
    def _path(self, key: str) -> Path:
        check_key(key, store=self.uri)
        if key.split("/", 1)[0] == STAGING_DIRNAME:
            raise StoreError(f"invalid key {key!r} for store {self.uri}: {STAGING_DIRNAME} "
                             "is the store's staging area")
        return self.root / key

    def _missing(self, key: str) -> BlobNotFound:
        return BlobNotFound(f"{key} is not in store {self.uri}", digest=blob_digest(key))

    def _new_temp_checked(self) -> Path:
        self._maybe_cleanup()
        return self.new_temp_path()

    def _maybe_cleanup(self) -> None:
        # The first write of each store object sweeps what crashed writers of
        # this host left behind; later writes do not pay for the listing.
        if self._cleaned:
            return
        self._cleaned = True
        with contextlib.suppress(OSError):  # A failed sweep must not fail the write.
            self.cleanup_stale()

    def _publish(self, tmp: Path, target: Path, key: str) -> None:
        if key.startswith(BLOB_PREFIX):
            os.chmod(tmp, BLOB_MODE)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    async def _run(self, path: Path, action: str, fn: Callable[[], _T]) -> _T:
        try:
            return await asyncio.to_thread(fn)
        except BdnError:
            raise
        except OSError as err:
            raise _os_error(err, path, action) from err


def _scan(directory: Path) -> list[tuple[str, bool]]:
    try:
        with os.scandir(directory) as it:
            found = [(e.name, e.is_dir(follow_symlinks=False)) for e in it
                     if e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found)


def _os_error(err: OSError, path: Path, action: str) -> StoreError:
    """Translate an OSError into a StoreError that names the path and the next step."""
    reason = _ERRNO_HINTS.get(err.errno or 0) or err.strerror or str(err)
    # The OS names the file it failed on (a source being copied in, a parent
    # directory); prefer that over the key's path.
    where = err.filename if isinstance(err.filename, str) else str(path)
    wrapped = StoreError(f"cannot {action} {where}: {reason}")
    wrapped.errno = err.errno  # Lets callers still branch on ENOSPC and friends.
    return wrapped


def _fsync_file(path: Path) -> None:
    # Flush data before the rename publishes the name, so a power loss cannot
    # leave a complete-looking but empty or short file under a real key.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




def _age(entry: os.DirEntry[str], now: float) -> float:
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def _unlink_quietly(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False  # Another sweeper got there first.
    except IsADirectoryError:
        return False
    return True
