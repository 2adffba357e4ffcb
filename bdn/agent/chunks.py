"""The owner side of the peer tier: hand out verified chunks, fetching each from origin once.

A node owns the chunks the ring assigns to it. Asked for one (by a peer, or by
its own pulls), it serves it from the node cache when it holds the whole blob,
else from a bounded on-disk chunk cache (LRU, ``diskcache``), else it fetches
the chunk from origin — once, however many callers ask at the same time
(single-flight) — verifies it against the chunk digest and keeps it. This is
what turns N nodes starting one model into ~1x the model's bytes at origin.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import diskcache

from bdn.agent.protocol import ChunkRef
from bdn.backends.base import BlobStore
from bdn.cache import NodeCache
from bdn.digest import xxh3_128_hex
from bdn.errors import IntegrityError, TransferError
from bdn.http import RETRY_DATA, RetryPolicy, retrying
from bdn.peer.chunks import ChunkOrigin
from bdn.store import blob_key

log = logging.getLogger(__name__)

GiB = 1024**3
DEFAULT_CHUNK_CACHE_BYTES = 8 * GiB


@dataclass(slots=True)
class ChunkStats:
    """What a :class:`ChunkService` did; the agent exports these as metrics."""

    origin_fetches: int = 0
    origin_bytes: int = 0
    coalesced_waiters: int = 0
    from_node_cache: int = 0
    from_chunk_cache: int = 0


class ChunkService:
    """Serves chunks this node owns (a :class:`~bdn.peer.chunks.LocalChunks` for its
    own pulls, and what the peer port answers with). Coroutine-safe within one event loop.

    ``read`` never returns bytes that fail the chunk digest: origin bytes are
    verified before they are kept or handed out, and chunk-cache bytes are
    verified again when read (the disk under the cache may lie).
    """

    def __init__(
        self,
        cache: NodeCache,
        origin: BlobStore,
        *,
        chunk_cache_dir: Path,
        chunk_cache_bytes: int = DEFAULT_CHUNK_CACHE_BYTES,
        retry: RetryPolicy = RETRY_DATA,
    ) -> None:
        self.cache = cache
        self.origin = origin
        self.retry = retry
        self.stats = ChunkStats()
        chunk_cache_dir.mkdir(parents=True, exist_ok=True)
        # Values above ~32 KiB are stored as files by diskcache, so chunks cost
        # no database bloat; the size limit makes it an LRU of chunk bytes.
        self._chunks = diskcache.Cache(
            str(chunk_cache_dir),
            size_limit=chunk_cache_bytes,
            eviction_policy="least-recently-used",
        )
        self._inflight: dict[str, asyncio.Future[tuple[bytes, ChunkOrigin]]] = {}

    async def read(self, ref: ChunkRef) -> bytes:
        """The chunk's verified bytes (see :meth:`read_with_origin`)."""
        data, _ = await self.read_with_origin(ref)
        return data

    async def read_with_origin(self, ref: ChunkRef) -> tuple[bytes, ChunkOrigin]:
        """The chunk's verified bytes and where they came from.

        Raises:
            NotFound: origin does not have the blob.
            IntegrityError: origin's bytes keep failing the chunk digest.
            TransferError / AuthError: origin could not be read.
        """
        # Join or register the flight before the first await: a caller that
        # arrives while another looks in the caches or fetches must wait for
        # that one, never start a second origin fetch.
        waiting = self._inflight.get(ref.key)
        if waiting is not None:
            self.stats.coalesced_waiters += 1
            data, _ = await asyncio.shield(waiting)
            return data, "coalesced"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bytes, ChunkOrigin]] = loop.create_future()
        self._inflight[ref.key] = future
        try:
            found = await self._resolve(ref)
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # Retrieved: waiters get it; no "never retrieved" warning.
            raise
        else:
            future.set_result(found)
        finally:
            del self._inflight[ref.key]
        return found

    async def _resolve(self, ref: ChunkRef) -> tuple[bytes, ChunkOrigin]:
        if self.cache.has_blob(ref.digest, ref.blob_size):
            data = await asyncio.to_thread(self._read_blob, ref)
            if data is not None:
                self.stats.from_node_cache += 1
                return data, "node_cache"
        cached = await asyncio.to_thread(self._chunks.get, ref.key)
        if isinstance(cached, bytes) and xxh3_128_hex(cached) == ref.xxh3:
            self.stats.from_chunk_cache += 1
            return cached, "chunk_cache"
        return await self._fetch(ref), "origin"

    def _read_blob(self, ref: ChunkRef) -> bytes | None:
        try:
            fd = os.open(self.cache.blob_path(ref.digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # Evicted between the check and the open: use the other tiers.
        try:
            return os.pread(fd, ref.end - ref.start, ref.start)
        finally:
            os.close(fd)

    async def _fetch(self, ref: ChunkRef) -> bytes:
        reader = self.origin.reader(blob_key(ref.digest), ref.blob_size)

        async def once() -> bytes:
            parts = [bytes(p) async for p in reader.open_range(ref.start, ref.end)]
            data = b"".join(parts)
            self.stats.origin_bytes += len(data)
            if len(data) != ref.end - ref.start:
                raise TransferError(
                    f"origin sent {len(data)} bytes for chunk {ref.index} of "
                    f"{ref.digest}, expected {ref.end - ref.start}"
                )
            actual = await asyncio.to_thread(xxh3_128_hex, data)
            if actual != ref.xxh3:
                raise IntegrityError(
                    f"chunk {ref.index} of {ref.digest} from origin fails its xxh3-128 check",
                    expected=ref.xxh3,
                    actual=actual,
                )
            return data

        try:
            self.stats.origin_fetches += 1
            data = await retrying(
                self.retry, once, describe=f"chunk {ref.index} of {ref.digest} from origin"
            )
        finally:
            await reader.close()
        await asyncio.to_thread(self._chunks.set, ref.key, data)
        return data

    async def close(self) -> None:
        """Close the chunk cache (idempotent)."""
        await asyncio.to_thread(self._chunks.close)
