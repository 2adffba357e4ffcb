"""The node cache's write path: lock -> recheck -> partial -> fetch -> commit.

A pull decides where a blob's bytes come from; this module decides how they
land in the cache. :func:`fill_blob` takes the blob's cross-process lock (so
concurrent pulls on one node, in any task, thread or process, fetch each blob
once), checks again whether whoever held the lock before committed it, resumes
the blob's partial file, hands it to the caller's fetch callable, and commits
it. Filesystem failures become :class:`CacheError` with a message that says
what to do; a disk that fills up mid-fetch keeps the verified chunks for the
next pull. :func:`recheck_after_reboot` re-verifies blobs committed without
fsync in an earlier boot before a pull trusts them (``Partial.commit``).

Given the pull's :class:`~bdn.cache.trust.Trust`, it also keeps the cache
correct across trust domains: a cached blob the pull may not take on its
record is proven (SHA-256) under the lock before it counts as a hit, and one
that fails is quarantined and fetched; every commit records how the blob got
in (proven, or vouched for by the pull's store).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from bdn.cache.index import disk_full
from bdn.cache.layout import CacheLayout
from bdn.cache.node import NodeCache
from bdn.cache.partial import Partial
from bdn.cache.trust import Trust
from bdn.digest import xxh3_128_hex
from bdn.errors import InsufficientSpace, IntegrityError
from bdn.manifest import FileEntry

log = logging.getLogger(__name__)

FetchInto = Callable[[Partial], Awaitable[int]]
"""Fetch a blob's missing chunks into ``partial.path``; returns the bytes read.

The callable skips ``partial.done_chunks`` (verified by an earlier attempt),
verifies every chunk it writes and calls ``partial.mark_done`` for each, so a
crash or an error leaves a partial the next attempt resumes. It raises what
its source raises; :class:`IntegrityError` only when the whole file failed
its SHA-256 (``strict`` in :func:`fill_blob`).
"""


async def fill_blob(
    cache: NodeCache,
    entry: FileEntry,
    chunk_size: int,
    fetch: FetchInto,
    *,
    strict: bool = False,
    fsync: bool = False,
    trust: Trust | None = None,
    on_proof: Callable[[int], None] | None = None,
) -> int | None:
    """Put ``entry``'s blob into ``cache`` through ``fetch``, once per node.

    Returns the bytes ``fetch`` read, or ``None`` when the cache holds a blob
    this pull may use (another task, thread or process committed it while
    this one waited for its lock, or it was proven here): nothing was
    fetched. ``strict``: ``fetch`` also checks the whole file's SHA-256, so
    the blob is admitted as proven, and its :class:`IntegrityError` condemns
    the partial, which is discarded (chunk mismatches are retried inside the
    fetch and never get here). ``fsync``: flush the blob before committing
    it, instead of marking it unflushed for this boot. ``trust``: whose word
    the pull takes; a held blob it does not accept is proven first (and
    quarantined, then fetched, when it fails); without it, held blobs are
    used as they are and commits record nothing (so they count as unknown).
    ``on_proof(nbytes)`` is told of every SHA-256 this call computed on a
    held blob.

    Raises:
        InsufficientSpace: the cache's disk filled up during the fetch or the
            commit (need/have in the message; verified chunks are kept), or as
            raised by the fetch's space accounting.
        CacheError: another filesystem failure of the cache.
        Whatever ``fetch`` raises.
    """
    async with cache.lock(entry.sha256):
        # Single-flight: whoever held the lock before us may have committed it.
        if cache.has_blob(entry.sha256, entry.size) and (
            trust is None or await _vet(cache, entry, trust, on_proof)
        ):
            return None
        try:
            partial = cache.open_partial(entry.sha256, entry.size, chunk_size, entry.chunks)
            fetched = await fetch(partial)
        except IntegrityError:
            # A whole-file SHA-256 mismatch: the partial cannot be trusted.
            if strict:
                partial.discard()
            raise
        except OSError as err:
            _raise_if_disk_full(err, cache, entry, "fetching")
            raise
        try:
            await asyncio.to_thread(partial.commit, sync=fsync)
        except OSError as err:
            _raise_if_disk_full(err, cache, entry, "committing")
            raise
        if trust is not None or strict:
            cache.admit(entry.sha256, proven=strict,
                        vouched_by=trust.store if trust is not None else None)
        return fetched


async def _vet(cache: NodeCache, entry: FileEntry, trust: Trust,
               on_proof: Callable[[int], None] | None) -> bool:
    """True when held blob ``entry`` may serve a pull of ``trust`` (proving it if
    need be); False when it was quarantined and must be fetched. Under its lock."""
    if cache.usable([entry.sha256], trust):
        return True  # Admitted in a way this pull accepts (maybe proven meanwhile).
    proven = await asyncio.to_thread(cache.prove, entry.sha256)
    if on_proof is not None:
        on_proof(entry.size)
    if not proven:
        log.warning("%s: refetching blob %s from %s", entry.path, entry.sha256, trust.store)
        await cache.ensure_space(entry.size, keep=[entry.sha256])
    return proven


async def recheck_after_reboot(
    cache: NodeCache, blobs: Iterable[FileEntry], chunk_size: int
) -> None:
    """Verify held blobs committed without fsync in an earlier boot.

    Their bytes may never have reached the disk before a power cut. The chunk
    digests are the check (xxh3-128, several GB/s); a blob that passes is
    trusted again, one that fails is removed so the pull fetches it again.
    """
    held = [e for e in blobs if cache.has_blob(e.sha256, e.size)]
    suspects = cache.unflushed_earlier(e.sha256 for e in held)
    for entry in (e for e in held if e.sha256 in suspects):
        path = cache.blob_path(entry.sha256)
        if await asyncio.to_thread(_chunks_match, path, chunk_size, entry.chunks):
            cache.mark_verified(entry.sha256)
        else:
            log.warning(
                "%s: cached blob %s was damaged by an unclean shutdown; refetching",
                entry.path,
                entry.sha256,
            )
            cache.remove_blob(entry.sha256)


def _raise_if_disk_full(err: OSError, cache: NodeCache, entry: FileEntry, doing: str) -> None:
    """Raise the disk-full error (need/have, never "delete the index") for ENOSPC; else return.

    Someone else filled the disk after the pull's space check. The partial
    keeps its verified chunks, so a later pull resumes from there. ``needed``
    is what the blob's partial file still lacks on disk.
    """
    if not _disk_full(err) or isinstance(err, InsufficientSpace):
        return
    part = CacheLayout(cache.root).part(entry.sha256)
    try:
        held = min(os.stat(part).st_blocks * 512, entry.size)
    except OSError:
        held = 0
    raise disk_full(cache.root, max(entry.size - held, 1),
                    f"{entry.path}: the node cache's disk filled up while {doing}") from err


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC, directly or as the cause of a wrapped cache error."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        err = err.__cause__
    return False


def _chunks_match(path: Path, chunk_size: int, chunks: tuple[str, ...]) -> bool:
    """True when the file at ``path`` is exactly the chunks ``chunks`` names."""
    try:
        with open(path, "rb") as f:
            for expected in chunks:
                if xxh3_128_hex(f.read(chunk_size)) != expected:
                    return False
            return f.read(1) == b""
    except OSError:
        return False
