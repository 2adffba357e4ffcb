"""A download of a blob not in the node cache streams as its chunks are verified.

Origin is a ``file://`` store whose reads past the first chunk wait on a gate:
the first bytes of the answer must arrive while the rest of the blob cannot
have been fetched yet; opening the gate finishes the blob, which then sits in
the node cache.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bdn.backends import open_store
from bdn.backends.base import BlobStore, RangeReader
from bdn.cache import NodeCache
from bdn.digest import Digest
from bdn.hub.blobs import BlobReader
from bdn.manifest import FileEntry
from bdn.store import Store
from tests.hub.conftest import CHUNK, REPO, Mirrored


class _GatedReader:
    def __init__(self, inner: RangeReader, gate: asyncio.Event) -> None:
        self._inner, self._gate = inner, gate

    async def open_range(self, start: int, end: int) -> AsyncIterator[Any]:
        if start >= CHUNK:
            await self._gate.wait()
        async for piece in self._inner.open_range(start, end):
            yield piece

    def __getattr__(self, name: str) -> Any:
        if name == "copy_to":  # The kernel-copy shortcut would pass the gate by: streams only.
            raise AttributeError(name)
        return getattr(self._inner, name)

    def describe(self) -> str:
        return self._inner.describe()

    async def close(self) -> None:
        await self._inner.close()


class _GatedStore:
    """Delegates to a store; readers hold every range past the first chunk at the gate."""

    def __init__(self, inner: BlobStore, gate: asyncio.Event) -> None:
        self._inner, self._gate = inner, gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def reader(self, key: str, size: int) -> RangeReader:
        return _GatedReader(self._inner.reader(key, size), self._gate)


async def test_first_chunk_is_served_before_the_blob_is_fetched(
        mirrored: Mirrored, tmp_path: Path) -> None:
    backend = open_store(f"file://{mirrored.store}")
    revision = await Store(backend).get_hub_revision(REPO, "main")
    assert revision is not None
    manifest_id = next(iter(revision.manifests.values()))[0]
    manifest = await Store(backend).get_manifest(manifest_id)
    entry = next(e for e in manifest.files if e.path == "model.safetensors")
    gate = asyncio.Event()
    cache = NodeCache(tmp_path / "node")
    reader = BlobReader(_GatedStore(backend, gate), cache)  # type: ignore[arg-type]
    try:
        pieces = reader.read(manifest, entry, 0, entry.size)
        first = await asyncio.wait_for(anext(pieces), 60)
        assert len(first) == CHUNK and not cache.has_blob(entry.sha256, entry.size)
        gate.set()
        rest = b"".join([piece async for piece in pieces])
        data = first + rest
        assert hashlib.sha256(data).hexdigest() == entry.sha256.hex
        want = (mirrored.model_dir / "model.safetensors").read_bytes()
        assert data == want
        # The fill ran on: the blob is in the node cache, and a range now reads from it.
        await reader.settle()
        assert cache.has_blob(entry.sha256, entry.size)
        tail = b"".join([p async for p in reader.read(manifest, entry, entry.size - 10,
                                                       entry.size)])
        assert tail == want[-10:]
    finally:
        await reader.close()
        cache.close()
        await backend.close()


async def test_an_empty_file_sends_nothing_and_fetches_nothing(
        mirrored: Mirrored, tmp_path: Path) -> None:
    backend = open_store(f"file://{mirrored.store}")
    revision = await Store(backend).get_hub_revision(REPO, "main")
    assert revision is not None
    manifest = await Store(backend).get_manifest(next(iter(revision.manifests.values()))[0])
    empty = FileEntry("empty.txt", 0, Digest.of_bytes(b""), (), None)
    cache = NodeCache(tmp_path / "node")
    reader = BlobReader(backend, cache)
    try:
        assert [s async for s in reader.spans(manifest, empty, 0, 0)] == []
        assert [p async for p in reader.read(manifest, empty, 0, 0)] == []
    finally:
        await reader.close()
        cache.close()
        await backend.close()
