"""Helpers shared by the store and source tests."""

from __future__ import annotations

from typing import Any

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


MODEL_BYTES = bytes(range(256)) * 512
"""``w.bin`` of :func:`put_model`."""


def put_model(s3_client: Any, bucket: str) -> None:
    """Write ``models/m/``: ``config.json`` and ``w.bin`` (:data:`MODEL_BYTES`), through
    a boto3 S3 client."""
    s3_client.put_object(Bucket=bucket, Key="models/m/w.bin", Body=MODEL_BYTES)
    s3_client.put_object(Bucket=bucket, Key="models/m/config.json", Body=b"{}")


async def assert_lists_and_reads_model(src: Source) -> list[SourceObject]:
    """``src`` (on :func:`put_model`'s ``models/m/``) lists both files, in order, and
    reads a range of ``w.bin``; returns the listing."""
    objs = await src.list()
    assert [o.path for o in objs] == ["config.json", "w.bin"]
    assert await read_source(src, objs[1], 10, 5000) == MODEL_BYTES[10:5000]
    return objs


async def assert_blob_missing(store: BlobStore) -> None:
    """Every read of absent :data:`BLOB` is ``BlobNotFound``, carrying the digest the
    key names."""
    for stat_or_read in (store.size, store.get_bytes):
        with pytest.raises(BlobNotFound) as info:
            await stat_or_read(BLOB)
        assert info.value.digest == "sha256:" + "ab" * 32
    with pytest.raises(BlobNotFound):
        await read_range(store, BLOB, 10, 0, 10)
