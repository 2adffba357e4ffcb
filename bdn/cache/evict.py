"""What the node cache holds, what it may drop, and dropping it in LRU order.

A blob may be evicted unless it is *referenced*:

* its file has more than one link (``st_nlink > 1``): a materialized tree
  hardlinks it, so removing the cache's name would free nothing anyway; or
* it belongs to a recorded ``copy`` or ``reflink`` tree whose directory still
  exists (such a tree shares no inode with the blob, so only the record says
  the model may be re-materialized from it at any time).

Eviction never corrupts a tree: a hardlinked tree keeps the inode, a copied
one has its own bytes. The worst a race can do is make a concurrent
materialize find a blob gone, which it reports as :class:`BlobNotFound`.

All functions here block; ``NodeCache`` runs them in worker threads from
async code. Evictions are serialized across threads and processes by the
``locks/evict.lock`` flock, so two evictors never both free the same bytes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from bdn.cache.index import CacheIndex
from bdn.cache.layout import PART_SUFFIX, CacheLayout, digest_of_name
from bdn.cache.lock import file_lock
from bdn.config.units import format_bytes
from bdn.digest import Digest
from bdn.errors import CacheError, InsufficientSpace

COPY_MODES = frozenset({"copy", "reflink"})
"""Tree modes whose files share no inode with their blobs (see module docstring)."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One complete blob in the cache.

    Attributes:
        digest: its identity.
        size: bytes.
        last_used: when a pull last used it (epoch seconds); the file's mtime
            when the index has no row for it.
        referenced: a live materialized tree holds it, so it is never evicted.
    """

    digest: Digest
    size: int
    last_used: float
    referenced: bool


@dataclass(frozen=True, slots=True)
class Usage:
    """Bytes the cache occupies and may use, measured in one pass.

    Attributes:
        blobs: every blob, least recently used first.
        blob_bytes: sum of blob sizes.
        partial_bytes: sizes of ``.part`` files of blobs not in ``keep``.
        keep_partial_allocated: disk blocks (bytes) already allocated to
            ``.part`` files of blobs in ``keep``; the caller's ``needed``
            counts them, so they are added back to the disk's free space.
        disk_free: ``f_bavail * f_frsize`` of the cache's filesystem.
    """

    blobs: list[BlobInfo]
    blob_bytes: int
    partial_bytes: int
    keep_partial_allocated: int
    disk_free: int

    def free(self, max_bytes: int | None) -> int:
        """Bytes a pull may add now: the smaller of disk and budget headroom, at least 0."""
        free = self.disk_free + self.keep_partial_allocated
        if max_bytes is not None:
            free = min(free, max_bytes - self.blob_bytes - self.partial_bytes)
        return max(free, 0)

    def evictable(self, keep: Collection[Digest]) -> list[BlobInfo]:
        """Blobs eviction may remove, least recently used first."""
        return [b for b in self.blobs if not b.referenced and b.digest not in keep]


def scan_blobs(layout: CacheLayout, index: CacheIndex) -> list[BlobInfo]:
    """Every blob on disk with its LRU time and whether it is referenced, LRU first."""
    rows = index.blobs()
    live: dict[Path, bool] = {}
    held_by_copies: set[str] = set()
    for hex_, trees in index.blob_trees().items():
        for tree in trees:
            if tree.mode not in COPY_MODES:
                continue
            if tree.path not in live:
                live[tree.path] = tree.path.is_dir()
            if live[tree.path]:
                held_by_copies.add(hex_)
                break
    blobs = []
    for digest, entry in layout.iter_blob_files():
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # Evicted by someone else while we listed.
        row = rows.get(digest.hex)
        last_used = row[1] if row is not None else st.st_mtime
        referenced = st.st_nlink > 1 or digest.hex in held_by_copies
        blobs.append(BlobInfo(digest, st.st_size, last_used, referenced))
    blobs.sort(key=lambda b: (b.last_used, b.digest))
    return blobs


def measure(layout: CacheLayout, index: CacheIndex, keep: Collection[Digest] = ()) -> Usage:
    """Scan blobs, partials and the disk in one pass (see :class:`Usage`)."""
    blobs = scan_blobs(layout, index)
    partial_bytes = keep_allocated = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(layout.incomplete) as it:
        for entry in it:
            digest = digest_of_name(entry.name, PART_SUFFIX)
            if digest is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if digest in keep:
                keep_allocated += st.st_blocks * 512
            else:
                partial_bytes += st.st_size
    layout.root.mkdir(parents=True, exist_ok=True)
    vfs = os.statvfs(layout.root)
    return Usage(blobs, sum(b.size for b in blobs), partial_bytes, keep_allocated,
                 vfs.f_bavail * vfs.f_frsize)


def ensure_space(layout: CacheLayout, index: CacheIndex, max_bytes: int | None, needed: int,
                 keep: Collection[Digest] = ()) -> int:
    """Make room for ``needed`` more bytes, evicting LRU blobs if the disk or budget is short.

    ``needed`` is what the caller is about to add, including any ``.part``
    files of blobs in ``keep`` it will resume (those are not counted twice).
    Nothing is evicted when even evicting everything evictable would not be
    enough. Best effort across concurrent pulls: each checks against what is on
    disk now, not against what the others are about to write.

    Returns:
        Bytes evicted (0 when it already fitted).

    Raises:
        InsufficientSpace: ``needed`` exceeds free plus evictable bytes.
        CacheError: the cache could not be scanned or a blob not removed.
    """
    keep = frozenset(keep)
    with _os_errors(layout.root, "make room in"), file_lock(layout.evict_lock()):
        usage = measure(layout, index, keep)
        free = usage.free(max_bytes)
        if needed <= free:
            return 0
        candidates = usage.evictable(keep)
        evictable = sum(b.size for b in candidates)
        if needed > free + evictable:
            raise InsufficientSpace(_no_space_message(layout.root, needed, free, evictable,
                                                      max_bytes),
                                    needed=needed, free=free, evictable=evictable,
                                    path=str(layout.root))
        return _remove(layout, index, candidates, needed - free)


def evict(layout: CacheLayout, index: CacheIndex, nbytes: int,
          keep: Collection[Digest] = ()) -> list[BlobInfo]:
    """Remove unreferenced blobs not in ``keep``, least recently used first, until at
    least ``nbytes`` are freed or none is left; returns the blobs removed.

    Raises:
        CacheError: the cache could not be scanned or a blob not removed.
    """
    if nbytes <= 0:
        return []
    keep = frozenset(keep)
    with _os_errors(layout.root, "evict from"), file_lock(layout.evict_lock()):
        removed: list[BlobInfo] = []
        _remove(layout, index, scan_blobs(layout, index), nbytes, keep, removed)
        return removed


def _remove(layout: CacheLayout, index: CacheIndex, blobs: list[BlobInfo], nbytes: int,
            keep: Collection[Digest] = (), removed: list[BlobInfo] | None = None) -> int:
    freed = 0
    gone: list[str] = []
    try:
        for blob in blobs:
            if freed >= nbytes:
                break
            if blob.referenced or blob.digest in keep:
                continue
            path = layout.blob(blob.digest)
            try:
                # Look again right before unlinking: a tree may have linked it
                # since the scan. (A link made after this check still keeps its
                # inode; see the module docstring.)
                if os.stat(path).st_nlink > 1:
                    continue
                path.unlink()
            except FileNotFoundError:
                pass  # Removed by an operator; nothing to free, drop the row.
            else:
                freed += blob.size
                if removed is not None:
                    removed.append(blob)
            gone.append(blob.digest.hex)
    finally:
        if gone:
            index.delete_blobs(gone)
    return freed


def _no_space_message(root: Path, needed: int, free: int, evictable: int,
                      max_bytes: int | None) -> str:
    budget = f"budget {format_bytes(max_bytes)}" if max_bytes is not None else "no byte budget"
    return (
        f"not enough space in node cache {root}: need {needed} bytes "
        f"({format_bytes(needed)}), free {free} ({format_bytes(free)}; disk and {budget}), "
        f"evictable {evictable} ({format_bytes(evictable)}; the rest is held by materialized "
        "trees or this pull); raise --max-cache-bytes / BDN_CACHE_MAX_BYTES, free disk space "
        "there, or run `bdn cache gc`"
    )


@contextlib.contextmanager
def _os_errors(root: Path, action: str) -> Iterator[None]:
    try:
        yield
    except CacheError:
        raise
    except OSError as err:
        raise CacheError(f"cannot {action} node cache {root}: {err}", path=str(root)) from err
