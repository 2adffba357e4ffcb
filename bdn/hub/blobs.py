"""Bytes of one blob for a Hub download: from the node cache, or streamed while it fills.

A blob the node cache holds (and the store's trust accepts) is read from its
file. Any other is filled by :func:`bdn.pull.fill_blobs`, the pull's own path
(node cache, then the agent's peers, then origin; every chunk verified; one
fill per blob however many downloads ask), in a background task, and each
download streams **chunk by chunk as the fill verifies them**: the fill tells
the :class:`_Feed` of every verified chunk and where its partial file is, and
the download reads that chunk from the partial file (re-checking its xxh3-128
first, since chunks resumed from an earlier attempt are reported before the
engine has looked at them again). So the first bytes wait for the first chunk,
not the whole file. Chunks a download needs out of order are waited for; once
the blob is committed, the rest is read from the cached file.

A download that disconnects leaves the fill running: the blob lands in the
node cache for the next caller. :meth:`BlobReader.close` cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from bdn.backends.base import BlobStore
from bdn.cache import NodeCache
from bdn.digest import Digest, xxh3_128_hex
from bdn.errors import CacheError
from bdn.manifest import FileEntry, Manifest
from bdn.pull import DEFAULT_PULL_OPTIONS, PullOptions, Tier, fill_blobs

log = logging.getLogger(__name__)

PIECE = 4 * 1024 * 1024
"""Bytes read from a cached file per write to the client."""


@dataclass(slots=True)
class _Feed:
    """One blob being filled: the verified chunks so far and the partial file holding them."""

    done: set[int] = field(default_factory=set)
    part: Path | None = None
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def chunk_done(self, entry: FileEntry, part: Path, index: int) -> None:
        self.part = part
        self.done.add(index)
        self.wake()

    def wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


class BlobReader:
    """Reads byte ranges of manifest blobs for the Hub endpoint. Use from one event loop."""

    def __init__(self, store: BlobStore, cache: NodeCache, *,
                 options: PullOptions = DEFAULT_PULL_OPTIONS, tiers: Tier | None = None) -> None:
        self._store = store
        self._cache = cache
        self._options = options
        self._tiers = tiers
        self._trust = options.trust_for(store.uri)
        self._feeds: dict[tuple[Digest, int], _Feed] = {}

    async def read(self, manifest: Manifest, entry: FileEntry, start: int,
                   end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of ``entry``'s blob, verified, as they become available.

        Raises:
            Whatever the fill raises (TransferError, InsufficientSpace, ...),
            before the first byte or between pieces.
        """
        if self._usable(entry):
            self._cache.touch([entry.sha256])
            async for piece in _file_range(self._cache.blob_path(entry.sha256), start, end):
                yield piece
            return
        chunk_size = manifest.chunk_size
        first, last = start // chunk_size, (max(end, 1) - 1) // chunk_size
        for index in range(first, last + 1):
            lo = max(start, index * chunk_size)
            hi = min(end, (index + 1) * chunk_size)
            if self._usable(entry):  # Committed meanwhile: read the rest from the cache.
                async for piece in _file_range(self._cache.blob_path(entry.sha256), lo, end):
                    yield piece
                return
            data = await self._chunk(manifest, entry, index)
            offset = lo - index * chunk_size
            yield data[offset:offset + hi - lo]

    async def settle(self) -> None:
        """Wait until the fills running now have ended (committed or failed)."""
        tasks = [f.task for f in list(self._feeds.values()) if f.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the fills still running (their verified chunks stay for the next pull)."""
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            # Cancelled or failed: either way it is gone (its error was logged).
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        self._feeds.clear()

    def _usable(self, entry: FileEntry) -> bool:
        return (self._cache.has_blob(entry.sha256, entry.size)
                and bool(self._cache.usable([entry.sha256], self._trust)))

    async def _chunk(self, manifest: Manifest, entry: FileEntry, index: int) -> bytes:
        """Chunk ``index``, verified: from the fill's partial file or the committed blob."""
        feed = self._feed(manifest, entry)
        refills = 0
        while True:
            if index in feed.done and feed.part is not None:
                data = await asyncio.to_thread(_read_chunk, feed.part, manifest.chunk_size,
                                               index, entry.chunks[index])
                if data is not None:
                    return data
                feed.done.discard(index)  # Not (yet) what the manifest says: wait.
            task = feed.task
            if task is not None and task.done():
                task.result()  # Raises the fill's error.
                if self._usable(entry):
                    path = self._cache.blob_path(entry.sha256)
                    data = await asyncio.to_thread(_read_chunk, path, manifest.chunk_size,
                                                   index, entry.chunks[index])
                    if data is not None:
                        return data
                refills += 1
                if refills > 2:
                    raise CacheError(
                        f"{entry.path}: blob {entry.sha256} left the node cache right after "
                        "each fill; the cache budget is too small for it, raise "
                        "--max-cache-bytes")
                feed = self._feed(manifest, entry)  # Evicted or damaged: fill again.
                continue
            await feed.changed()

    def _feed(self, manifest: Manifest, entry: FileEntry) -> _Feed:
        """The running fill of ``entry``'s blob, started if there is none."""
        key = (entry.sha256, manifest.chunk_size)
        feed = self._feeds.get(key)
        if feed is not None and feed.task is not None and not feed.task.done():
            return feed
        feed = _Feed()
        feed.task = asyncio.create_task(self._fill(manifest, entry, feed, key),
                                        name=f"bdn-hub-fill-{entry.sha256.hex[:12]}")
        # Retrieved here too, so a fill no download waits on any more is not logged as lost.
        feed.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._feeds[key] = feed
        return feed

    async def _fill(self, manifest: Manifest, entry: FileEntry, feed: _Feed,
                    key: tuple[Digest, int]) -> None:
        try:
            await fill_blobs(manifest, [entry], store=self._store, cache=self._cache,
                             options=self._options, tiers=self._tiers,
                             on_chunk=feed.chunk_done)
        except Exception as err:
            log.warning("%s: filling blob %s failed: %s", entry.path, entry.sha256, err)
            raise
        finally:
            if self._feeds.get(key) is feed:
                del self._feeds[key]
            feed.wake()


def _read_chunk(path: Path, chunk_size: int, index: int, expected: str) -> bytes | None:
    """Chunk ``index`` of the file at ``path`` if it hashes to ``expected``; else None."""
    try:
        with open(path, "rb") as f:
            data = os.pread(f.fileno(), chunk_size, index * chunk_size)
    except FileNotFoundError:
        return None
    return data if xxh3_128_hex(data) == expected else None


async def _file_range(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes ``[start, end)`` of a cached blob, in pieces; the file is held open throughout,
    so an eviction meanwhile does not cut the answer short."""
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        offset = start
        while offset < end:
            piece = await asyncio.to_thread(os.pread, fd, min(PIECE, end - offset), offset)
            if not piece:
                raise OSError(f"{path} ended at byte {offset}, expected {end}")
            offset += len(piece)
            yield piece
    finally:
        os.close(fd)
