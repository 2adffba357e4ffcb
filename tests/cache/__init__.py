"""Tests of bdn.cache, plus the small factories they share.

The helpers put blobs into a real cache the way a pull does (lock, partial,
commit), so every test exercises the real write path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bdn.cache import NodeCache
from bdn.digest import Digest, chunk_bounds, xxh3_128_hex
from bdn.manifest import FileEntry, Filters, Manifest, SourceRef

CHUNK = 16


def chunks_of(data: bytes, chunk_size: int = CHUNK) -> tuple[str, ...]:
    return tuple(xxh3_128_hex(data[a:b]) for a, b in chunk_bounds(len(data), chunk_size))


def put_blob(cache: NodeCache, data: bytes) -> Digest:
    """Write ``data`` into the cache through lock, partial and commit."""
    digest = Digest.of_bytes(data)

    async def go() -> None:
        async with cache.lock(digest):
            partial = cache.open_partial(digest, len(data), CHUNK, chunks_of(data))
            partial.path.write_bytes(data)
            partial.commit()

    asyncio.run(go())
    return digest


def make_manifest(files: Mapping[str, bytes], uri: str = "file:///models/test") -> Manifest:
    entries = [FileEntry(path, len(data), Digest.of_bytes(data), chunks_of(data), None)
               for path, data in files.items()]
    return Manifest.build(SourceRef(uri, "local", None), Filters(None, None), CHUNK, entries)


def fill(cache: NodeCache, files: Mapping[str, bytes]) -> Manifest:
    """Cache every non-empty file's blob and return the manifest of ``files``."""
    for data in files.values():
        if data:
            put_blob(cache, data)
    return make_manifest(files)
