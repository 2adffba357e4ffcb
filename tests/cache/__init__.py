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


def entry_of(data: bytes, path: str = "blob.bin") -> FileEntry:
    """The manifest entry of a file holding ``data``."""
    return FileEntry(path, len(data), Digest.of_bytes(data), chunks_of(data), None)


def write_blob(cache: NodeCache, data: bytes) -> None:
    """Open ``data``'s partial, write it whole and commit it; the caller holds the lock."""
    partial = cache.open_partial(Digest.of_bytes(data), len(data), CHUNK, chunks_of(data))
    partial.path.write_bytes(data)
    partial.commit()


def put_blob(cache: NodeCache, data: bytes) -> Digest:
    """Write ``data`` into the cache through lock, partial and commit (even if held)."""
    digest = Digest.of_bytes(data)

    async def go() -> None:
        async with cache.lock(digest):
            write_blob(cache, data)

    asyncio.run(go())
    return digest


def make_manifest(files: Mapping[str, bytes], uri: str = "file:///models/test") -> Manifest:
    entries = [entry_of(data, path) for path, data in files.items()]
    return Manifest.build(SourceRef(uri, "local", None), Filters(None, None), CHUNK, entries)


def fill(cache: NodeCache, files: Mapping[str, bytes]) -> Manifest:
    """Cache every non-empty file's blob and return the manifest of ``files``."""
    for data in files.values():
        if data:
            put_blob(cache, data)
    return make_manifest(files)
