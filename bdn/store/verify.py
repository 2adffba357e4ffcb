"""Re-hash stored bytes: the deep store check and recomputing chunk lists."""

from __future__ import annotations

import asyncio
import hashlib

from bdn.digest import Digest, new_xxh3
from bdn.errors import TransferError
from bdn.store.base import BlobStore
from bdn.transfer.reader import RangeReader


async def digest_stream(
    reader: RangeReader, size: int, chunk_size: int
) -> tuple[str, tuple[str, ...]]:
    """Read an object once, in order, and return its sha256 hex and chunk xxh3-128 digests."""
    sha = hashlib.sha256()
    chunks: list[str] = []
    xxh = new_xxh3()
    in_chunk = 0

    def absorb(piece: bytes | bytearray | memoryview) -> None:
        nonlocal xxh, in_chunk
        view = memoryview(piece)
        sha.update(view)
        while view:
            take = min(len(view), chunk_size - in_chunk)
            xxh.update(view[:take])
            in_chunk += take
            view = view[take:]
            if in_chunk == chunk_size:
                chunks.append(xxh.hexdigest())
                xxh, in_chunk = new_xxh3(), 0

    seen = 0
    async for piece in reader.open_range(0, size):
        seen += len(piece)
        # hashlib and xxhash release the GIL on large buffers; keep the loop free.
        await asyncio.to_thread(absorb, piece)
    if seen != size:
        raise TransferError(f"{reader.describe()}: read {seen} bytes, expected {size}")
    if in_chunk:
        chunks.append(xxh.hexdigest())
    return sha.hexdigest(), tuple(chunks)


async def blob_matches(
    backend: BlobStore,
    key: str,
    size: int,
    chunk_size: int,
    chunks: tuple[str, ...],
    digest: Digest,
) -> bool:
    """True when the stored blob hashes to ``digest`` and to the expected chunk list."""
    reader = backend.reader(key, size)
    try:
        sha, actual_chunks = await digest_stream(reader, size, chunk_size)
    except TransferError:
        return False
    finally:
        await reader.close()
    return sha == digest.hex and actual_chunks == chunks
