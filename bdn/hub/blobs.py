"""Bytes of one blob for a Hub download: from the node cache, or streamed while it fills.

A blob the node cache holds (and the store's trust accepts) is sent from its
file. Any other is filled by :func:`bdn.pull.fill_blobs`, the pull's own path
(node cache, then the agent's peers, then origin; every chunk verified; one
fill per blob however many downloads ask), in a background task, and each
download streams **chunk by chunk as the fill verifies them**: the fill tells
the :class:`_Feed` of every verified chunk and where its partial file is, and
the download sends that chunk from the partial file. So the first bytes wait
for the first chunk, not the whole file. The fill runs in the download's order
(:class:`bdn.pull.InOrder`): from the chunk the first download asked for (not
the peer tier's node-specific start), at most :data:`STREAM_CHUNKS_IN_FLIGHT`
chunks at once, so the chunk a download waits on is always the oldest in
flight instead of one of eight sharing the bandwidth; then it wraps around to
the chunks before, for the node cache. A chunk is sent only once all of it is
verified (xxh3 per chunk: no smaller unit is checked). Chunks a download needs
out of order are waited for; once the blob is committed, the rest comes from
the cached file.

A download gets :class:`Span` s (an open file, an offset, a length) that the
endpoint hands to ``sendfile``, so no byte is copied through Python (reading a
64 MiB chunk into memory and writing it to the socket cost more than the fill
itself). Before a span of a partial file is handed out, its chunk's xxh3-128
is checked again through the same open file (about 3 ms per 64 MiB from the
page cache): chunks resumed from an earlier attempt are reported before the
engine has looked at them again, and a partial file may have been replaced
since the fill reported it. What was checked is what is sent: a verified chunk
of a partial file is never rewritten, and a replaced file is a new inode.

A download that disconnects leaves the fill running: the blob lands in the
node cache for the next caller. :meth:`BlobReader.close` cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bdn.backends.base import BlobStore
from bdn.cache import NodeCache
from bdn.digest import Digest, new_xxh3
from bdn.errors import CacheError, IntegrityError
from bdn.manifest import FileEntry, Manifest
from bdn.pull import DEFAULT_PULL_OPTIONS, InOrder, PullOptions, Tier, fill_blobs
from bdn.transfer.verify import hash_fd

log = logging.getLogger(__name__)

PIECE = 4 * 1024 * 1024
"""Bytes per piece when a span is read into memory (:meth:`BlobReader.read`)."""

STREAM_CHUNKS_IN_FLIGHT = 4
"""Chunks of one blob a streaming fill fetches at once (:class:`bdn.pull.InOrder`): the
download waits on the oldest, which shares the bandwidth with at most three later ones
(eight before). Not fewer: a lone download from an origin whose connections are slow one
by one (an object store, ~100 MB/s each) would be capped at that many streams."""

TOUCH_EVERY = 60.0
"""Seconds between LRU touches of one blob by downloads (each touch is an index commit)."""
TOUCHES_KEPT = 4096
"""Blobs whose last touch is remembered (the memo is cleared when it is full)."""


@dataclass(frozen=True, slots=True)
class Span:
    """``length`` verified bytes of ``file`` from ``offset``. The file stays open until the
    download asks for the next span (or stops), so an eviction meanwhile cannot cut it short."""

    file: BinaryIO
    offset: int
    length: int


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
                 options: PullOptions = DEFAULT_PULL_OPTIONS, tiers: Tier | None = None,
                 chunks_in_flight: int = STREAM_CHUNKS_IN_FLIGHT) -> None:
        self._store = store
        self._in_flight = chunks_in_flight
        self._cache = cache
        self._options = options
        self._tiers = tiers
        self._trust = options.trust_for(store.uri)
        self._feeds: dict[tuple[Digest, int], _Feed] = {}
        self._touched: dict[Digest, float] = {}

    async def spans(self, manifest: Manifest, entry: FileEntry, start: int,
                    end: int) -> AsyncGenerator[Span, None]:
        """Bytes ``[start, end)`` of ``entry``'s blob, verified, as open-file spans in order,
        each as soon as its chunk is verified. Close the iterator to close the last file.

        Raises:
            Whatever the fill raises (TransferError, InsufficientSpace, ...),
            before the first span or between spans.
        """
        if start >= end:
            return  # An empty file (its blob has no chunks): nothing to fetch or send.
        if await asyncio.to_thread(self._usable, entry, True):
            async for span in self._cached(entry, start, end):
                yield span
            return
        chunk_size = manifest.chunk_size
        first, last = start // chunk_size, (max(end, 1) - 1) // chunk_size
        for index in range(first, last + 1):
            lo = max(start, index * chunk_size)
            hi = min(end, (index + 1) * chunk_size)
            if index > first and self._cache.has_blob(entry.sha256, entry.size) and \
                    await asyncio.to_thread(self._usable, entry, False):
                # Committed meanwhile: the rest in one span of the cached file.
                async for span in self._cached(entry, lo, end):
                    yield span
                return
            f = await self._chunk(manifest, entry, index)
            try:
                yield Span(f, lo, hi - lo)
            finally:
                f.close()

    async def read(self, manifest: Manifest, entry: FileEntry, start: int,
                   end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` as :meth:`spans`, read into memory in pieces of at most
        :data:`PIECE` (for callers that cannot ``sendfile``)."""
        async for span in self.spans(manifest, entry, start, end):
            offset, stop = span.offset, span.offset + span.length
            while offset < stop:
                piece = await asyncio.to_thread(os.pread, span.file.fileno(),
                                                min(PIECE, stop - offset), offset)
                if not piece:
                    raise CacheError(f"{entry.path}: the cached file ended at byte {offset}, "
                                     f"expected {stop}; run `bdn cache check --fix`")
                offset += len(piece)
                yield piece

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

    def _usable(self, entry: FileEntry, touch: bool) -> bool:
        """True when the cache holds the blob admitted as this store's trust accepts; with
        ``touch``, marks it used (an index write: call in a thread)."""
        if not (self._cache.has_blob(entry.sha256, entry.size)
                and self._cache.usable([entry.sha256], self._trust)):
            return False
        now = time.monotonic()
        if touch and now - self._touched.get(entry.sha256, -TOUCH_EVERY) >= TOUCH_EVERY:
            # A touch is an index commit (fsynced): once a minute per blob is LRU enough.
            if len(self._touched) >= TOUCHES_KEPT:
                self._touched.clear()
            self._touched[entry.sha256] = now
            self._cache.touch([entry.sha256])
        return True

    async def _cached(self, entry: FileEntry, start: int, end: int) -> AsyncIterator[Span]:
        f = await asyncio.to_thread(open, self._cache.blob_path(entry.sha256), "rb")
        try:
            yield Span(f, start, end - start)
        finally:
            f.close()

    async def _chunk(self, manifest: Manifest, entry: FileEntry, index: int) -> BinaryIO:
        """An open file holding chunk ``index`` verified: the fill's partial file or the
        committed blob."""
        feed = self._feed(manifest, entry, index)
        refills = 0
        while True:
            if index in feed.done and feed.part is not None:
                f = await asyncio.to_thread(_open_chunk, feed.part, manifest.chunk_size,
                                            entry, index)
                if f is not None:
                    return f
                feed.done.discard(index)  # Not (yet) what the manifest says: wait.
            task = feed.task
            if task is not None and task.done():
                task.result()  # Raises the fill's error.
                if self._usable(entry, False):
                    f = await asyncio.to_thread(_open_chunk, self._cache.blob_path(entry.sha256),
                                                manifest.chunk_size, entry, index)
                    if f is not None:
                        return f
                refills += 1
                if refills > 2:
                    raise CacheError(
                        f"{entry.path}: blob {entry.sha256} left the node cache right after "
                        "each fill; the cache budget is too small for it, raise "
                        "--max-cache-bytes")
                feed = self._feed(manifest, entry, index)  # Evicted or damaged: fill again.
                continue
            await feed.changed()

    def _feed(self, manifest: Manifest, entry: FileEntry, index: int) -> _Feed:
        """The running fill of ``entry``'s blob, started (in order from chunk ``index``, the
        one the download needs first) if there is none."""
        key = (entry.sha256, manifest.chunk_size)
        feed = self._feeds.get(key)
        if feed is not None and feed.task is not None and not feed.task.done():
            return feed
        feed = _Feed()
        order = InOrder(index, self._in_flight)
        feed.task = asyncio.create_task(self._fill(manifest, entry, feed, key, order),
                                        name=f"bdn-hub-fill-{entry.sha256.hex[:12]}")
        # Retrieved here too, so a fill no download waits on any more is not logged as lost.
        feed.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._feeds[key] = feed
        return feed

    async def _fill(self, manifest: Manifest, entry: FileEntry, feed: _Feed,
                    key: tuple[Digest, int], order: InOrder) -> None:
        try:
            await fill_blobs(manifest, [entry], store=self._store, cache=self._cache,
                             options=self._options, tiers=self._tiers,
                             on_chunk=feed.chunk_done, order=order)
        except Exception as err:
            log.warning("%s: filling blob %s failed: %s", entry.path, entry.sha256, err)
            raise
        finally:
            if self._feeds.get(key) is feed:
                del self._feeds[key]
            feed.wake()


def _open_chunk(path: Path, chunk_size: int, entry: FileEntry, index: int) -> BinaryIO | None:
    """``path`` opened, if chunk ``index`` in it hashes to the manifest's digest; else None
    (missing, short or not those bytes)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it.
    except FileNotFoundError:
        return None
    start = index * chunk_size
    try:
        digest = hash_fd(f.fileno(), new_xxh3(), start, min(start + chunk_size, entry.size))
    except IntegrityError:  # Shorter than the chunk: not written yet.
        digest = None
    if digest is None or digest.hexdigest() != entry.chunks[index]:
        f.close()
        return None
    return f
