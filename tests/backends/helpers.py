"""Helpers shared by the store tests."""

from __future__ import annotations

from bdn.backends.base import BlobStore

BLOB = "blobs/sha256/ab/" + "ab" * 32
MiB = 1024 * 1024


async def read_range(store: BlobStore, key: str, size: int, start: int, end: int) -> bytes:
    """The bytes of ``[start, end)`` of ``key`` as the store's range reader yields them."""
    reader = store.reader(key, size)
    try:
        return b"".join([bytes(p) async for p in reader.open_range(start, end)])
    finally:
        await reader.close()
