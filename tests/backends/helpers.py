"""Helpers shared by the store and source tests."""

from __future__ import annotations

import pytest

from bdn.backends.base import BlobStore, RangeReader, Source, SourceObject
from bdn.errors import BlobNotFound

BLOB = "blobs/sha256/ab/" + "ab" * 32
MiB = 1024 * 1024


async def read_all(reader: RangeReader, start: int, end: int) -> bytes:
    """The bytes of ``[start, end)`` as ``reader`` yields them; the reader is closed after."""
    try:
        return b"".join([bytes(p) async for p in reader.open_range(start, end)])
    finally:
        await reader.close()


async def read_range(store: BlobStore, key: str, size: int, start: int, end: int) -> bytes:
    """The bytes of ``[start, end)`` of ``key`` as the store's range reader yields them."""
    return await read_all(store.reader(key, size), start, end)


async def read_source(src: Source, obj: SourceObject, start: int = 0,
                      end: int | None = None) -> bytes:
    """The bytes of ``[start, end)`` (default: all) of listed ``obj``, through the source."""
    return await read_all(src.reader(obj), start, obj.size if end is None else end)


async def assert_blob_missing(store: BlobStore) -> None:
    """Every read of absent :data:`BLOB` is ``BlobNotFound``, carrying the digest the
    key names."""
    for stat_or_read in (store.size, store.get_bytes):
        with pytest.raises(BlobNotFound) as info:
            await stat_or_read(BLOB)
        assert info.value.digest == "sha256:" + "ab" * 32
    with pytest.raises(BlobNotFound):
        await read_range(store, BLOB, 10, 0, 10)
