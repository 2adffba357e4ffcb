"""The owner side of the peer tier: hand out verified chunks, fetching each from origin once.

A node owns the chunks the ring assigns to it. Asked for one (by a peer, or by
its own pulls), it serves it from the node cache when it holds the whole blob
*and* the blob's admission is acceptable to this agent's own trust (its store
and trusted set, :mod:`bdn.cache.trust`), else from a bounded on-disk chunk
cache (LRU, ``diskcache``), else it fetches the chunk from origin — once,
however many callers ask at the same time (single-flight) — and keeps it.
This is what turns N nodes starting one model into ~1x the model's bytes at
origin.

Memory stays bounded whatever the chunk size: a chunk is never held whole.
:meth:`ChunkService.open` hands out an :class:`OpenChunk` (an open file and
the chunk's range in it) that the peer port sends with ``sendfile``; an
origin fetch streams into an unlinked temporary file, hashed as it lands.
A chunk's digest is checked exactly once, when it enters the chunk cache;
node-cache blobs were checked when they entered the node cache. Requesters
check every chunk against their manifest anyway (a peer is trusted no more
than origin), so a later disk fault costs them a fall-back to origin, not
bad bytes.

With fan-out on (``fanout`` K > 0, :mod:`bdn.peer.fanout`) the service is
also each owned chunk's tracker (:attr:`ChunkService.fanout`), and keeps the
chunks this node's pulls read elsewhere to pass them on
(:attr:`ChunkService.relay`, :mod:`bdn.agent.relay`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import diskcache
import xxhash

from bdn.agent.gate import DEFAULT_MAX_QUEUED, DEFAULT_MAX_RESPONSES, GateStats, ResponseGate
from bdn.agent.protocol import ChunkRef
from bdn.agent.relay import RelayStore, relay_key
from bdn.backends.base import BlobStore, RangeReader
from bdn.cache import NodeCache, Trust
from bdn.config.settings import store_identity
from bdn.digest import new_xxh3
from bdn.errors import IntegrityError, TransferError
from bdn.http import RETRY_DATA, RetryPolicy, retrying
from bdn.peer.chunks import ChunkOrigin
from bdn.peer.fanout import FanoutStats, FanoutTracker
from bdn.store import blob_key

log = logging.getLogger(__name__)

GiB = 1024**3
MiB = 1024**2
DEFAULT_CHUNK_CACHE_BYTES = 8 * GiB

WRITE_PIECE = 1 * MiB
"""Origin bytes gathered before one write to the temporary file (and one hash update)."""

MAX_ORIGIN_FETCHES = 8
"""Chunks an owner fetches from origin at once (the others wait their turn). Each
fetch holds the origin client's read buffers, so this bounds the owner's memory
on a cold start; 8 ranged GETs keep one owner's origin link busy."""

LOOKUP_THREADS = 2
"""Threads that only look up whether a chunk is kept (an early answer's headers wait
on it), apart from the shared pool that writes and copies chunks."""

RELAY_SHARE = 2
"""Chunks kept to pass on (fan-out) get ``1/RELAY_SHARE`` of the chunk cache's budget,
in a cache of their own beside it."""

READ_PIECE = 1 * MiB
"""Largest read of a chunk file into memory (the fall-back when sendfile is unavailable)."""


@dataclass(slots=True)
class ChunkStats:
    """What a :class:`ChunkService` did; the agent exports these as metrics.

    ``chunk_hashes`` counts xxh3-128 digests computed: one per chunk entering
    the chunk cache (per origin attempt), none per request.
    ``untrusted_blobs`` counts node-cache blobs passed over because their
    admission is not acceptable to this agent's trust. ``responses`` is the
    peer-response gate's (shared object).
    """

    origin_fetches: int = 0
    origin_bytes: int = 0
    coalesced_waiters: int = 0
    from_node_cache: int = 0
    from_chunk_cache: int = 0
    chunk_hashes: int = 0
    untrusted_blobs: int = 0
    responses: GateStats = field(default_factory=GateStats)
    fanout: FanoutStats = field(default_factory=FanoutStats)


@dataclass(slots=True)
class OpenChunk:
    """A verified chunk ready to send: ``length`` bytes of ``file`` from ``offset``,
    or, for a small chunk the chunk cache keeps in its database, ``data``.

    The caller closes it (:meth:`close`); the open file keeps the bytes
    readable even if the cache evicts them meanwhile.
    """

    file: BinaryIO | None
    offset: int
    length: int
    origin: ChunkOrigin
    data: bytes | None = None

    def read_all(self) -> bytes:
        """The chunk's bytes in memory (blocking; for this node's own pulls)."""
        if self.data is not None:
            return self.data
        assert self.file is not None
        return os.pread(self.file.fileno(), self.length, self.offset)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class ChunkService:
    """Serves chunks this node owns (a :class:`~bdn.peer.chunks.LocalChunks` for its
    own pulls, and what the peer port answers with). Coroutine-safe within one event loop.

    Args:
        trust: whose word this owner takes for node-cache blobs (default: its
            origin store's alone). A blob admitted otherwise is not served;
            the chunk comes from the chunk cache or origin instead.
        max_responses, max_queued: the peer-response gate (:attr:`gate`).
        fanout: K of :mod:`bdn.peer.fanout` (0: off; :attr:`relay` is then ``None``).
    """

    def __init__(
        self,
        cache: NodeCache,
        origin: BlobStore,
        *,
        chunk_cache_dir: Path,
        chunk_cache_bytes: int = DEFAULT_CHUNK_CACHE_BYTES,
        retry: RetryPolicy = RETRY_DATA,
        trust: Trust | None = None,
        max_responses: int = DEFAULT_MAX_RESPONSES,
        max_queued: int = DEFAULT_MAX_QUEUED,
        fanout: int = 0,
    ) -> None:
        self.cache = cache
        self.origin = origin
        self.retry = retry
        own = store_identity(origin.uri)
        self.trust = trust if trust is not None else Trust(own, frozenset([own]))
        self.gate = ResponseGate(max_responses, max_queued)
        self.stats = ChunkStats(responses=self.gate.stats)
        chunk_cache_dir.mkdir(parents=True, exist_ok=True)
        self._incoming = chunk_cache_dir / "incoming"
        self._incoming.mkdir(exist_ok=True)
        # Values above ~32 KiB are stored as files by diskcache, so chunks cost
        # no database bloat; the size limit makes it an LRU of chunk bytes.
        self._chunks = diskcache.Cache(
            str(chunk_cache_dir),
            size_limit=chunk_cache_bytes,
            eviction_policy="least-recently-used",
        )
        self._inflight: dict[str, asyncio.Future[ChunkOrigin]] = {}
        self._origin_slots = asyncio.Semaphore(MAX_ORIGIN_FETCHES)
        self._lookups = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="bdn-chunk-lookup")
        self.fanout = FanoutTracker(fanout, stats=self.stats.fanout)
        self.relay: RelayStore | None = None
        self._relays: diskcache.Cache | None = None
        if fanout:
            # Copies kept to pass on have a budget of their own: they must never
            # evict the chunks this node owns (an owner would read those from origin
            # again), only each other.
            self._relays = diskcache.Cache(
                str(chunk_cache_dir / "relay"),
                size_limit=max(1, chunk_cache_bytes // RELAY_SHARE),
                eviction_policy="least-recently-used",
            )
            self.relay = RelayStore(self._keep_relay, self._open_held, fanout, self.stats.fanout)

    async def read(self, ref: ChunkRef) -> bytes:
        """The chunk's verified bytes (see :meth:`read_with_origin`)."""
        data, _ = await self.read_with_origin(ref)
        return data

    async def read_with_origin(self, ref: ChunkRef) -> tuple[bytes, ChunkOrigin]:
        """The chunk's verified bytes in memory and where they came from (this node's
        own pulls; peers are sent :meth:`open`'s file instead)."""
        chunk = await self.open(ref)
        try:
            data = await asyncio.to_thread(chunk.read_all)
        finally:
            chunk.close()
        return data, chunk.origin

    async def open(self, ref: ChunkRef) -> OpenChunk:
        """The verified chunk, open on disk; close it when sent.

        Raises:
            NotFound: origin does not have the blob.
            IntegrityError: origin's bytes keep failing the chunk digest.
            TransferError / AuthError: origin could not be read.
        """
        # A joiner finds the chunk kept once the flight it joined ends; only if
        # the chunk cache evicted it at once (a cache smaller than the chunks in
        # flight) does it look a second time, then as the flight's owner.
        for _ in range(2):
            waiting = self._inflight.get(ref.key)
            if waiting is None:
                return await self._fly(ref)
            self.stats.coalesced_waiters += 1
            found_at = await asyncio.shield(waiting)
            chunk = await asyncio.to_thread(self._open_kept, ref)
            if chunk is not None:
                chunk.origin = "coalesced" if found_at == "origin" else found_at
                return chunk
        raise TransferError(f"chunk {ref.index} of {ref.digest} left the chunk cache as soon "
                            "as it was fetched; make the chunk cache larger")

    async def open_if_kept(self, ref: ChunkRef) -> OpenChunk | None:
        """The chunk if this node holds it now (node or chunk cache), else ``None``
        without reading origin: the chunk is missing, or a fetch of it is in flight.

        What an early answer says before its body (``cache`` or ``origin``);
        :meth:`open` then fills a missing chunk, single-flight as ever.
        """
        if ref.key in self._inflight:
            return None
        # Its own threads: behind the shared pool's queue of 1 MiB writes and chunk
        # copies, a lookup took 5.5 s in a loaded bdn demo, and the requester hedged
        # the silent owner (a second origin read at the successor).
        chunk = await asyncio.get_running_loop().run_in_executor(
            self._lookups, self._open_kept, ref)
        if chunk is not None:
            if chunk.origin == "node_cache":
                self.stats.from_node_cache += 1
            else:
                self.stats.from_chunk_cache += 1
        return chunk

    async def _fly(self, ref: ChunkRef) -> OpenChunk:
        # Registered before the first await: a caller arriving while this one
        # looks in the caches or fetches waits for it, never fetches a second time.
        future: asyncio.Future[ChunkOrigin] = asyncio.get_running_loop().create_future()
        self._inflight[ref.key] = future
        try:
            chunk = await asyncio.to_thread(self._open_kept, ref)
            if chunk is None:
                async with self._origin_slots:
                    chunk = await self._fetch(ref)
            elif chunk.origin == "node_cache":
                self.stats.from_node_cache += 1
            else:
                self.stats.from_chunk_cache += 1
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # Retrieved: waiters get it; no "never retrieved" warning.
            raise
        else:
            future.set_result(chunk.origin)
        finally:
            del self._inflight[ref.key]
        return chunk

    # -- what this node keeps (blocking: run in a thread) ---------------------------------

    def _open_kept(self, ref: ChunkRef) -> OpenChunk | None:
        return self._open_node_blob(ref) or self._open_cached_chunk(ref)

    def _open_node_blob(self, ref: ChunkRef) -> OpenChunk | None:
        """The chunk inside a node-cache blob, if the blob is whole and its admission is
        one this agent's trust accepts (it was checked then, so it is not hashed now)."""
        path = self.cache.blob_path(ref.digest)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - the OpenChunk owns it.
        except FileNotFoundError:
            return None  # Not cached, or evicted: use the other tiers.
        try:
            st = os.fstat(f.fileno())
            if st.st_size == ref.blob_size and self._trusted(ref, st):
                return OpenChunk(f, ref.start, ref.end - ref.start, "node_cache")
        except OSError:
            pass
        f.close()
        return None

    def _trusted(self, ref: ChunkRef, opened: os.stat_result) -> bool:
        if ref.digest not in self.cache.usable([ref.digest], self.trust):
            self.stats.untrusted_blobs += 1
            log.info("blob %s in the node cache was not admitted on this agent's trust; "
                     "serving chunk %d from the chunk cache or origin", ref.digest, ref.index)
            return False
        # The judged file must be the one we opened (not replaced in between).
        try:
            st = os.stat(self.cache.blob_path(ref.digest))
        except OSError:
            return False
        return (st.st_ino, st.st_mtime_ns) == (opened.st_ino, opened.st_mtime_ns)

    def _open_held(self, ref: ChunkRef) -> OpenChunk | None:
        """What a fan-out holder may send: a copy its pull verified against ``ref.xxh3``,
        or what it keeps anyway (never origin)."""
        assert self._relays is not None
        return self._open_cached_chunk(ref, self._relays, relay_key(ref)) or \
            self._open_kept(ref)

    def _keep_relay(self, key: str, reader: object) -> None:
        """Store a verified chunk to pass on (the cache reads ``reader`` in pieces)."""
        assert self._relays is not None
        self._relays.set(key, reader, read=True)

    def _open_cached_chunk(self, ref: ChunkRef, cache: diskcache.Cache | None = None,
                           key: str | None = None) -> OpenChunk | None:
        length = ref.end - ref.start
        value = (cache or self._chunks).get(ref.key if key is None else key, read=True)
        if value is None:
            return None
        if isinstance(value, bytes):  # A small chunk kept in diskcache's database.
            return OpenChunk(None, 0, length, "chunk_cache", value) if len(value) == length \
                else None
        f: BinaryIO = value
        if os.fstat(f.fileno()).st_size != length:
            f.close()
            return None
        return OpenChunk(f, 0, length, "chunk_cache")

    # -- origin -------------------------------------------------------------------------

    async def _fetch(self, ref: ChunkRef) -> OpenChunk:
        """Fetch the chunk from origin into an unlinked temporary file, verifying it as
        it lands; keep a copy in the chunk cache and return the file itself."""
        f = await asyncio.to_thread(_temp_file, self._incoming)
        reader = self.origin.reader(blob_key(ref.digest), ref.blob_size)
        try:
            self.stats.origin_fetches += 1
            await retrying(self.retry, lambda: self._download(ref, reader, f),
                           describe=f"chunk {ref.index} of {ref.digest} from origin")
            await asyncio.to_thread(self._keep, ref, f)
        except BaseException:
            f.close()
            raise
        finally:
            await reader.close()
        return OpenChunk(f, 0, ref.end - ref.start, "origin")

    async def _download(self, ref: ChunkRef, reader: RangeReader, f: BinaryIO) -> None:
        """One attempt: the chunk's bytes from origin into ``f``, hashed on the way."""
        expected = ref.end - ref.start
        hasher = new_xxh3()
        await asyncio.to_thread(_rewind, f)
        got, pending_len = 0, 0
        pending: list[bytes] = []
        async for piece in reader.open_range(ref.start, ref.end):
            got += len(piece)
            if got > expected:
                break
            pending.append(bytes(piece))
            pending_len += len(piece)
            if pending_len >= WRITE_PIECE:
                await asyncio.to_thread(_land, f, hasher, pending)
                pending, pending_len = [], 0
        self.stats.origin_bytes += got
        if got != expected:
            raise TransferError(f"origin sent {got} bytes for chunk {ref.index} of "
                                f"{ref.digest}, expected {expected}")
        await asyncio.to_thread(_land, f, hasher, pending)
        self.stats.chunk_hashes += 1
        actual = hasher.hexdigest()
        if actual != ref.xxh3:
            raise IntegrityError(
                f"chunk {ref.index} of {ref.digest} from origin fails its xxh3-128 check",
                expected=ref.xxh3,
                actual=actual,
            )

    def _keep(self, ref: ChunkRef, f: BinaryIO) -> None:
        """Copy the verified chunk in ``f`` into the chunk cache (diskcache copies in
        bounded pieces); a full disk only costs the cache entry."""
        f.flush()
        f.seek(0)
        try:
            self._chunks.set(ref.key, f, read=True)
        except OSError as err:
            log.warning("could not keep chunk %d of %s in the chunk cache: %s",
                        ref.index, ref.digest, err)

    async def close(self) -> None:
        """Close the chunk cache (idempotent), once copies being kept are written."""
        if self.relay is not None:
            await self.relay.close()
        if self._relays is not None:
            await asyncio.to_thread(self._relays.close)
        await asyncio.to_thread(self._lookups.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(self._chunks.close)


def _temp_file(directory: Path) -> BinaryIO:
    """An unlinked file in ``directory``: nothing to clean up after a crash."""
    return tempfile.TemporaryFile("w+b", dir=directory)


def _rewind(f: BinaryIO) -> None:
    f.seek(0)
    f.truncate()


def _land(f: BinaryIO, hasher: xxhash.xxh3_128, pieces: list[bytes]) -> None:
    """Write ``pieces`` to ``f`` and feed them to ``hasher`` (both release the GIL)."""
    for piece in pieces:
        hasher.update(piece)
        f.write(piece)

