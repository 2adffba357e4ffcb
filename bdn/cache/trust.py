"""Which cached blobs a pull may use: bytes proven by this node, or a trusted store's word.

A blob's name is its SHA-256, but a pull checks fetched chunks with xxh3-128
against the manifest, which is collision-prone and says nothing once the
manifest itself comes from a store an attacker writes. A node cache shared by
pulls of several stores must therefore remember *how* each blob file got in
(docs/DESIGN.md, "Blob"):

- ``proven``: this node hashed the bytes and they are the name;
- ``vouched_by``: a store's manifest said so, and that pull did not hash them.

The record is bound to the file's inode and mtime, so a file replaced behind
the index (evicted and refetched, removed by hand) is "unknown" again, never
credited with the old file's record. A pull may use a cached blob when it is
proven, or vouched by the pull's own store or a store in the node's trusted
set; anything else is proven (once) under the blob's lock before use, and a
blob that fails the proof is quarantined: removed from ``blobs/``, and every
recorded tree holding it marked for a rebuild (:data:`QUARANTINED`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bdn.cache.index import QUARANTINED, AdmissionRow, CacheIndex
from bdn.cache.layout import CacheLayout
from bdn.digest import Digest

log = logging.getLogger(__name__)

_HASH_BUFFER = 4 * 1024 * 1024

__all__ = ["QUARANTINED", "Trust", "admit", "prove", "sha256_file", "usable"]


@dataclass(frozen=True, slots=True)
class Trust:
    """Whose word one pull takes for a blob's identity.

    Attributes:
        store: identity of the store the pull reads (where its manifest and
            blobs come from; ``bdn.config.settings.store_identity``).
        trusted: stores this node trusts for every pull (``BDN_TRUSTED_STORES``;
            the agent adds its own store).
        strict: take no store's word: fetched blobs are hashed while they are
            written, cached ones that are not proven are hashed before use.
    """

    store: str
    trusted: frozenset[str]
    strict: bool = False

    @property
    def proves_fetches(self) -> bool:
        """True when blobs this pull fetches must be hashed (SHA-256) before admission."""
        return self.strict or self.store not in self.trusted

    def accepts(self, row: AdmissionRow | None, st: os.stat_result) -> bool:
        """True when the blob file ``st``, admitted as ``row`` says, may serve this pull."""
        if row is None or (row.ino, row.mtime_ns) != (st.st_ino, st.st_mtime_ns):
            return False  # No record, or a record of another file: unknown bytes.
        if row.proven:
            return True
        if self.strict or row.vouched_by is None:
            return False
        return row.vouched_by == self.store or row.vouched_by in self.trusted


def usable(layout: CacheLayout, index: CacheIndex, digests: list[Digest],
           trust: Trust) -> set[Digest]:
    """Those of ``digests`` whose cached file ``trust`` accepts as it stands."""
    rows = index.admissions(d.hex for d in digests)
    found: set[Digest] = set()
    for digest in digests:
        try:
            st = os.stat(layout.blob(digest))
        except OSError:
            continue
        if trust.accepts(rows.get(digest.hex), st):
            found.add(digest)
    return found


def admit(layout: CacheLayout, index: CacheIndex, digest: Digest, *, proven: bool,
          vouched_by: str | None) -> None:
    """Record how the blob file now at ``digest``'s path got in (call under its lock)."""
    st = os.stat(layout.blob(digest))
    index.admit(digest.hex, st.st_size, AdmissionRow(st.st_ino, st.st_mtime_ns, proven,
                                                     None if proven else vouched_by),
                time.time())


def prove(layout: CacheLayout, index: CacheIndex, digest: Digest) -> bool:
    """Hash cached blob ``digest``: mark it proven when it is its name, else quarantine it.

    Call under the blob's lock, so no commit replaces the file meanwhile.
    Returns False when the blob is not (or no longer) usable: it failed, or
    it vanished (evicted) while being hashed. Blocking: run it in a thread.
    """
    path = layout.blob(digest)
    try:
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            actual = _hash_open(f)
    except FileNotFoundError:
        return False
    if actual == digest.hex:
        index.admit(digest.hex, st.st_size,
                    AdmissionRow(st.st_ino, st.st_mtime_ns, True, None), time.time())
        return True
    trees = quarantine(layout, index, digest)
    log.warning(
        "cached blob %s hashes to sha256:%s: it was admitted on a store's word, unproven, and "
        "is not that content; removed it from the node cache and marked %d tree(s) that "
        "hold it for a rebuild on their next pull (%s)",
        digest, actual, len(trees), ", ".join(map(str, trees)) or "none",
    )
    return False


def quarantine(layout: CacheLayout, index: CacheIndex, digest: Digest) -> list[Path]:
    """Remove a blob whose bytes are not its name; returns the trees marked for rebuild.

    The file is a cache blob, nobody's data: it is unlinked from ``blobs/``.
    Trees already built from it keep their links (a pod may be reading them;
    they hold what their own store served), but their records are marked
    :data:`QUARANTINED`, so no pull finds them ``unchanged``: the next pull
    of each mount rebuilds it from blobs its own store's trust accepts.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(layout.blob(digest))
    index.delete_blobs([digest.hex])
    return index.quarantine_trees(digest.hex)


def sha256_file(path: Path) -> tuple[str | None, int, str | None] | None:
    """``(sha256 hex, bytes read, None)``, ``(None, bytes read, error)``, or ``None``
    when the file is gone."""
    try:
        with open(path, "rb", buffering=0) as f:
            return _hash_open(f), os.fstat(f.fileno()).st_size, None
    except FileNotFoundError:
        return None
    except OSError as err:
        return None, 0, str(err)


def _hash_open(f: io.FileIO) -> str:
    sha = hashlib.sha256()
    buf = bytearray(_HASH_BUFFER)
    view = memoryview(buf)
    while n := f.readinto(buf):
        sha.update(view[:n])  # Releases the GIL: blobs hash in parallel.
    return sha.hexdigest()
