"""Where the node cache keeps what, under one root directory.

::

    blobs/sha256/<2 hex>/<hex>     complete verified blobs, mode 0444
    incomplete/<hex>.part          a blob being fetched (named by digest, so it resumes)
    incomplete/<hex>.chunks        the record of its verified chunks (see bdn.cache.partial)
    locks/<hex>.lock               flock targets: single-flight per blob
    locks/tree-<sha256>.lock       flock targets: one materialize per mount path (hashed)
    locks/evict.lock               serializes eviction; locks/index.lock: index.db creation
    unflushed/<boot id>/<hex>      a blob committed without fsync during that boot
    index.db                       sqlite (WAL): LRU times and materialized trees

Nothing here does I/O except :meth:`CacheLayout.ensure_dirs` (``mkdir``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bdn.digest import Digest

BLOB_MODE = 0o444
"""Mode of a committed blob, and so of every hardlink into a materialized tree."""

TREE_DIR_MODE = 0o555
"""Mode of every directory of a materialized tree."""

PART_SUFFIX = ".part"
RECORD_SUFFIX = ".chunks"
LOCK_SUFFIX = ".lock"

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class CacheLayout:
    """The paths of a node cache rooted at ``root`` (absolute)."""

    root: Path

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def incomplete(self) -> Path:
        return self.root / "incomplete"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def unflushed(self) -> Path:
        return self.root / "unflushed"

    @property
    def index_db(self) -> Path:
        return self.root / "index.db"

    def blob(self, digest: Digest) -> Path:
        return self.blobs / digest.hex[:2] / digest.hex

    def part(self, digest: Digest) -> Path:
        return self.incomplete / (digest.hex + PART_SUFFIX)

    def record(self, digest: Digest) -> Path:
        return self.incomplete / (digest.hex + RECORD_SUFFIX)

    def blob_lock(self, digest: Digest) -> Path:
        return self.locks / (digest.hex + LOCK_SUFFIX)

    def tree_lock(self, mount: Path) -> Path:
        # Mount paths are arbitrary (long, any characters): name the lock by a hash.
        key = hashlib.sha256(os.fsencode(mount)).hexdigest()
        return self.locks / f"tree-{key}{LOCK_SUFFIX}"

    def evict_lock(self) -> Path:
        return self.locks / f"evict{LOCK_SUFFIX}"

    def ensure_dirs(self) -> None:
        """Create the cache's directories (idempotent)."""
        for directory in (self.blobs, self.incomplete, self.locks):
            directory.mkdir(parents=True, exist_ok=True)

    def iter_blob_files(self) -> Iterator[tuple[Digest, os.DirEntry[str]]]:
        """Every file in ``blobs/`` whose name is a digest in its right shard.

        Stray names (an editor's backup, a half-typed ``cp``) are skipped, never
        deleted: the cache only removes what it can name.
        """
        try:
            shards = sorted(os.scandir(self.blobs), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for shard in shards:
            if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                continue
            try:
                entries = list(os.scandir(shard.path))
            except FileNotFoundError:
                continue
            for entry in entries:
                digest = digest_of_name(entry.name)
                if (
                    digest is not None
                    and digest.hex[:2] == shard.name
                    and entry.is_file(follow_symlinks=False)
                ):
                    yield digest, entry


def current_boot_id() -> str | None:
    """This boot's id (Linux), or ``None`` where the kernel does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
    except OSError:
        return None
    return boot if boot and "/" not in boot else None


def digest_of_name(name: str, suffix: str = "") -> Digest | None:
    """The digest a cache file name ``<hex><suffix>`` stands for, or ``None``."""
    if suffix:
        if not name.endswith(suffix):
            return None
        name = name[: -len(suffix)]
    if len(name) != 64 or not _HEX.issuperset(name):
        return None
    return Digest(name)
