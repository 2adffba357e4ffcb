"""``NodeCache``: the node-local content-addressed cache that pulls go through.

One object per cache root and process is enough; several processes (agent,
CLI, in-process ``ensure_weights``) may share one root at once. See
:mod:`bdn.cache.layout` for what lives where.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from bdn.cache import evict as _evict
from bdn.cache import trust as _trust
from bdn.cache.evict import BlobInfo
from bdn.cache.index import CacheIndex
from bdn.cache.layout import LOCK_SUFFIX, CacheLayout, current_boot_id
from bdn.cache.lock import async_file_lock, try_file_lock, try_remove_lock_file
from bdn.cache.materialize import Materialized, materialize, try_sweep_leftovers
from bdn.cache.partial import Partial, PartialInfo, discard_files, list_partials, open_partial
from bdn.cache.trust import Trust
from bdn.config.units import format_bytes
from bdn.digest import Digest
from bdn.errors import BdnError, CacheError, ConfigError
from bdn.manifest import Manifest

log = logging.getLogger(__name__)

DEFAULT_PARTIAL_MAX_AGE_S = 7 * 24 * 3600.0
"""``gc`` removes partials untouched this long (and not being fetched)."""


def _default_verify_threads() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass(slots=True)
class GcReport:
    """What :meth:`NodeCache.gc` did.

    Attributes:
        evicted: blobs evicted to get under ``max_bytes``.
        bytes_freed: their total size.
        trees_dropped: tree records whose directory no longer exists.
        partials_removed: stale partials (older than the age limit, not locked).
        index_rows_swept: blob rows whose file had vanished.
        leftovers_removed: temp trees of crashed materializes removed.
        locks_removed: idle lock files removed.
    """

    evicted: list[Digest] = field(default_factory=list)
    bytes_freed: int = 0
    trees_dropped: list[Path] = field(default_factory=list)
    partials_removed: list[Digest] = field(default_factory=list)
    index_rows_swept: int = 0
    leftovers_removed: int = 0
    locks_removed: int = 0

    def describe(self) -> str:
        """A one-line summary for people."""
        return (
            f"evicted {len(self.evicted)} blobs ({format_bytes(self.bytes_freed)}), "
            f"dropped {len(self.trees_dropped)} records of deleted trees, removed "
            f"{len(self.partials_removed)} stale partials, {self.leftovers_removed} "
            f"leftover temp trees and {self.locks_removed} idle lock files, swept "
            f"{self.index_rows_swept} index rows of vanished blobs"
        )


@dataclass(frozen=True, slots=True)
class CorruptBlob:
    """A blob whose content does not hash to its name.

    Attributes:
        digest: the name (expected SHA-256).
        path: its file.
        actual: the SHA-256 hex it has, or ``None`` when it could not be read.
        error: why it could not be read, else ``None``.
        trees: recorded hardlink trees that share its (corrupt) inode; pull
            them again after ``verify(fix=True)``.
    """

    digest: Digest
    path: Path
    actual: str | None
    error: str | None
    trees: tuple[Path, ...]


@dataclass(slots=True)
class VerifyReport:
    """What :meth:`NodeCache.verify` found; ``ok`` when nothing is corrupt."""

    checked: int = 0
    bytes_checked: int = 0
    corrupt: list[CorruptBlob] = field(default_factory=list)
    removed: list[Digest] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt

    def describe(self) -> str:
        """A summary for people: one line, plus one per corrupt blob."""
        lines = []
        for bad in self.corrupt:
            found = f"hashes to sha256:{bad.actual}" if bad.actual else f"unreadable: {bad.error}"
            state = "removed" if bad.digest in self.removed else "still cached"
            trees = f"; trees sharing it: {', '.join(map(str, bad.trees))}" if bad.trees else ""
            lines.append(f"corrupt: {bad.digest} at {bad.path} {found} ({state}){trees}")
        summary = f"verified {self.checked} blobs ({format_bytes(self.bytes_checked)}): "
        if self.ok:
            summary += "all intact"
        elif len(self.removed) == len(self.corrupt):
            summary += (
                f"{len(self.corrupt)} corrupt, removed; pull the affected models "
                "again to refetch them and rebuild their trees"
            )
        else:
            summary += (
                f"{len(self.corrupt)} corrupt; run `bdn cache verify --fix` to remove "
                "them, then pull the affected models again"
            )
        return "\n".join([*lines, summary])


class NodeCache:
    """The node cache at ``root``: blobs, resumable partials, LRU eviction, trees.

    Every method is safe to call from several asyncio tasks, threads and
    processes sharing one root. Synchronous methods block on file I/O (they
    are cheap except :meth:`materialize`, :meth:`gc` and :meth:`verify`: run
    those in a worker thread from async code). Filesystem failures surface as
    :class:`CacheError` (an ``OSError``), except where a method says otherwise.

    Args:
        root: the cache directory (``BDN_CACHE_DIR``, resolved by the caller);
            created on first write, never at construction.
        max_bytes: byte budget for blobs plus partial files; ``None``: only
            the disk's free space limits the cache.

    Raises:
        ConfigError: ``max_bytes`` is negative.
    """

    def __init__(self, root: Path, *, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ConfigError(
                f"the cache byte budget must be >= 0, got {max_bytes}", field="max_cache_bytes"
            )
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self.max_bytes = max_bytes
        self._layout = CacheLayout(self.root)
        self._index = CacheIndex(self._layout.index_db, self._layout.locks / f"index{LOCK_SUFFIX}")
        self._warn_lock = threading.Lock()
        self._warned_copy = False

    def __enter__(self) -> NodeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blobs -------------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        """Where blob ``digest`` lives when cached (whether or not it is)."""
        return self._layout.blob(digest)

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        """True when the blob is cached (and, if ``size`` is given, has that size)."""
        try:
            st = os.stat(self._layout.blob(digest))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and (size is None or st.st_size == size)

    def touch(self, digests: Iterable[Digest]) -> None:
        """Mark cached blobs as used now (LRU), in one index transaction.

        Digests not in the cache are ignored.
        """
        now = time.time()
        rows = []
        for digest in set(digests):
            with contextlib.suppress(OSError):
                rows.append((digest.hex, os.stat(self._layout.blob(digest)).st_size, now))
        if rows:
            self._index.put_blobs(rows)

    def unflushed_earlier(self, digests: Iterable[Digest]) -> set[Digest]:
        """Those of ``digests`` committed without fsync during an earlier boot.

        Their bytes may not have reached the disk before a power cut, so they
        must be re-verified (:meth:`mark_verified`) or refetched
        (:meth:`remove_blob`) before they are trusted. Markers of this boot
        are fine: the page cache still holds what was written.
        """
        current = current_boot_id()
        try:
            boots = [
                e.path
                for e in os.scandir(self._layout.unflushed)
                if e.is_dir(follow_symlinks=False) and e.name != current
            ]
        except FileNotFoundError:
            return set()
        wanted = {d.hex: d for d in digests}
        found: set[Digest] = set()
        for boot in boots:
            with contextlib.suppress(FileNotFoundError):
                found.update(wanted[n] for n in os.listdir(boot) if n in wanted)
        return found

    def mark_verified(self, digest: Digest) -> None:
        """Forget ``digest``'s unflushed markers: its bytes were read back from disk intact."""
        with contextlib.suppress(FileNotFoundError):
            for boot in os.scandir(self._layout.unflushed):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(boot.path, digest.hex))

    def remove_blob(self, digest: Digest) -> None:
        """Drop a blob that failed verification, so the next pull fetches it again.

        Trees that hardlink it keep their (bad) copy until re-materialized,
        which a pull does since the new blob is a different file.
        """
        with self._os_errors("remove a blob"):
            self.blob_path(digest).unlink(missing_ok=True)
        self._index.delete_blobs([digest.hex])
        self.mark_verified(digest)

    # -- admission (bdn.cache.trust) -------------------------------------------------
    def usable(self, digests: Iterable[Digest], trust: Trust) -> set[Digest]:
        """Those of ``digests`` cached and admitted in a way ``trust`` accepts (as is)."""
        with self._os_errors("read admissions of"):
            return _trust.usable(self._layout, self._index, list(set(digests)), trust)

    def admit(self, digest: Digest, *, proven: bool, vouched_by: str | None) -> None:
        """Record how the blob just committed got in; call under :meth:`lock`."""
        with self._os_errors("record the admission of a blob in"):
            _trust.admit(self._layout, self._index, digest, proven=proven, vouched_by=vouched_by)

    def prove(self, digest: Digest) -> bool:
        """SHA-256 a cached blob under :meth:`lock`: proven, or quarantined (False).

        Blocking (it reads the whole blob): run it in a thread.
        """
        with self._os_errors("prove a blob of"):
            return _trust.prove(self._layout, self._index, digest)

    def lock(self, digest: Digest) -> AbstractAsyncContextManager[None]:
        """Single-flight lock of one blob, across tasks, threads and processes.

        ``async with cache.lock(d):`` waits (cancellably, polling) until no one
        else holds it; released on exit. Not reentrant. Hold it from
        :meth:`open_partial` until the partial's ``commit``/``discard``.
        """
        return async_file_lock(self._layout.blob_lock(digest))

    def open_partial(
        self, digest: Digest, size: int, chunk_size: int, chunks: Sequence[str]
    ) -> Partial:
        """Start or resume fetching blob ``digest``; call only under :meth:`lock`.

        ``done_chunks`` of the result lists the chunks a previous attempt
        verified, provided it was for the same size, chunk size and chunk
        digests; otherwise the old partial is discarded.

        Raises:
            ValueError: ``chunks`` does not match ``size`` and ``chunk_size``.
            CacheError: ``incomplete/`` cannot be written.
        """
        return open_partial(self._layout, self._index, digest, size, chunk_size, chunks)

    # -- space -------------------------------------------------------------------
    async def ensure_space(self, needed: int, *, keep: Collection[Digest] = ()) -> None:
        """Make room for ``needed`` more bytes, evicting LRU blobs if necessary.

        The disk (``statvfs`` free blocks) and the byte budget must both fit
        ``needed``. Evicts least recently used blobs that are neither
        referenced by a live tree nor in ``keep``, and nothing at all when
        that could not make enough room. ``.part`` files of blobs in ``keep``
        are taken to be part of ``needed`` (a resumed pull's sizes). Best
        effort against concurrent pulls: each checks what is on disk now.

        Raises:
            InsufficientSpace: even evicting everything evictable leaves too
                little; carries ``needed``, ``free`` and ``evictable``.
            CacheError: the cache could not be scanned or a blob not removed.
        """
        await asyncio.to_thread(
            _evict.ensure_space, self._layout, self._index, self.max_bytes, needed, keep
        )

    def evict(self, nbytes: int, *, keep: Collection[Digest] = ()) -> int:
        """Evict unreferenced blobs not in ``keep``, LRU first, until ``nbytes`` are
        freed or none is left; returns the bytes freed."""
        return sum(b.size for b in _evict.evict(self._layout, self._index, nbytes, keep))

    # -- maintenance ---------------------------------------------------------------
    def ls(self) -> list[BlobInfo]:
        """Every cached blob, least recently used first."""
        with self._os_errors("list"):
            return _evict.scan_blobs(self._layout, self._index)

    def ls_partials(self) -> list[PartialInfo]:
        """Every partial (fetch in progress or abandoned), by digest."""
        with self._os_errors("list partials of"):
            return list_partials(self._layout)

    def gc(self, *, partial_max_age_s: float = DEFAULT_PARTIAL_MAX_AGE_S) -> GcReport:
        """Tidy the cache; safe while pulls run. Returns what was done.

        Drops tree records whose directory is gone (and temp trees crashed
        materializes left), removes partials untouched for
        ``partial_max_age_s`` whose blob is not locked, sweeps index rows of
        vanished blobs and idle lock files, then evicts LRU blobs down to
        ``max_bytes`` (when set).
        """
        report = GcReport()
        with self._os_errors("collect garbage in"):
            self._gc_trees(report)
            self._gc_partials(report, time.time() - partial_max_age_s)
            rows = self._index.blobs()
            vanished = [h for h in rows if not self._layout.blob(Digest(h)).exists()]
            if vanished:
                self._index.delete_blobs(vanished)
            report.index_rows_swept = len(vanished)
            self._gc_locks(report)
            if self.max_bytes is not None:
                usage = _evict.measure(self._layout, self._index)
                over = usage.blob_bytes + usage.partial_bytes - self.max_bytes
                evicted = _evict.evict(self._layout, self._index, over)
                report.evicted = [b.digest for b in evicted]
                report.bytes_freed = sum(b.size for b in evicted)
        return report

    def _gc_trees(self, report: GcReport) -> None:
        gone = []
        for tree in self._index.trees():
            report.leftovers_removed += try_sweep_leftovers(self._layout, tree.path)
            if not tree.path.is_dir():
                gone.append(tree.path)
        if gone:
            self._index.delete_trees(gone)
        report.trees_dropped = gone

    def _gc_partials(self, report: GcReport, cutoff: float) -> None:
        for info in list_partials(self._layout):
            if info.modified >= cutoff:
                continue
            with try_file_lock(self._layout.blob_lock(info.digest), create=True) as held:
                if held:
                    discard_files(self._layout, info.digest)
                    report.partials_removed.append(info.digest)

    def _gc_locks(self, report: GcReport) -> None:
        with contextlib.suppress(FileNotFoundError), os.scandir(self._layout.locks) as it:
            names = [e.name for e in it if e.name.endswith(LOCK_SUFFIX)]
            for name in names:
                report.locks_removed += try_remove_lock_file(self._layout.locks / name)

    def verify(self, *, fix: bool = False, threads: int | None = None) -> VerifyReport:
        """Re-hash every blob with SHA-256 and report those that do not match their name.

        Blobs are hashed in parallel (``threads``, default ``min(8, CPUs)``),
        each one streamed. ``fix=True`` removes corrupt blobs, so the next pull
        fetches them again (and re-materializes trees that linked them).
        """
        report = VerifyReport()
        with self._os_errors("verify"):
            blobs = [(d, Path(e.path)) for d, e in self._layout.iter_blob_files()]
            with ThreadPoolExecutor(
                threads or _default_verify_threads(), thread_name_prefix="bdn-verify"
            ) as pool:
                results = list(pool.map(lambda b: _trust.sha256_file(b[1]), blobs))
            trees = self._index.blob_trees()
            bad: list[str] = []
            for (digest, path), result in zip(blobs, results, strict=True):
                if result is None:
                    continue  # Evicted while we hashed: nothing left to check.
                actual, size, error = result
                report.checked += 1
                report.bytes_checked += size
                if actual == digest.hex:
                    continue
                linked = tuple(
                    t.path
                    for t in trees.get(digest.hex, ())
                    if t.mode == "hardlink" and t.path.is_dir()
                )
                report.corrupt.append(CorruptBlob(digest, path, actual, error, linked))
                if fix:
                    path.unlink(missing_ok=True)
                    report.removed.append(digest)
                    bad.append(digest.hex)
                    # Copied trees pass the "unchanged" check by size: rebuild them too.
                    self._index.quarantine_trees(digest.hex)
            if bad:
                self._index.delete_blobs(bad)
        return report

    # -- trees ---------------------------------------------------------------------
    def materialize(self, manifest: Manifest, mount: Path) -> Materialized:
        """Make ``mount`` hold exactly ``manifest``'s files, read-only, from cached blobs.

        Returns at once (``mode="unchanged"``) when the mount already holds
        this manifest. Otherwise builds the tree beside the mount (hardlinks;
        reflinks or copies when the cache is on another filesystem; files 0444,
        directories 0555) and swaps it in atomically, replacing a previous tree
        of ours or an empty directory; a mount point is rebuilt in place (not
        atomic). Zero-byte files need no blob. Blocking: run it in a thread.

        Raises:
            BlobNotFound: a non-empty file's blob is not cached.
            MountConflict: ``mount`` is a non-empty directory (or a file) that
                no recorded tree put there.
            ConfigError: ``mount`` is a filesystem root.
            CacheError: a blob has the wrong size, or a filesystem call failed.
        """
        with self._os_errors(f"materialize manifest {manifest.id[:19]}… at {mount} from"):
            return materialize(self._layout, self._index, manifest, mount, self._warn_copy)

    def _warn_copy(self, path: str) -> None:
        with self._warn_lock:
            if self._warned_copy:
                return
            self._warned_copy = True
        log.warning(
            "node cache %s is on another filesystem than %s, so trees are copied (or "
            "reflinked) instead of hardlinked, costing disk space and time; put "
            "BDN_CACHE_DIR on the same filesystem as the mount locations",
            self.root,
            path,
        )

    def close(self) -> None:
        """Close the index connection; idempotent (a later call reopens it)."""
        self._index.close()

    @contextlib.contextmanager
    def _os_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except BdnError:
            raise
        except OSError as err:
            where = err.filename if isinstance(err.filename, str) else str(self.root)
            wrapped = CacheError(
                f"cannot {action} node cache {self.root}: {where}: {err.strerror or err}",
                path=where,
            )
            wrapped.errno = err.errno
            raise wrapped from err
