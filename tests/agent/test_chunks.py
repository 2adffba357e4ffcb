"""The owner side (ChunkService) and the tiered reader, against a real counting origin."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from bdn.agent.chunks import ChunkService
from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.config.settings import store_identity
from bdn.errors import IntegrityError
from bdn.http import HttpClient, RetryPolicy
from bdn.manifest import FileEntry, Manifest
from bdn.peer import ChunkRef, PeerClient, TierConfig
from bdn.pull import PullOptions, pull_manifest
from bdn.ring import Ring
from bdn.transfer import TransferConfig
from tests.e2e.agents import publish_store
from tests.httpserver import FaultPlan, FaultServer
from tests.test_pull import CHUNK, MODEL, assert_tree, mirror_model

FAST = RetryPolicy(max_attempts=3, base_delay=0.01)


def _ref(entry: FileEntry, manifest: Manifest, index: int) -> ChunkRef:
    return ChunkRef(entry.sha256, index, entry.size, manifest.chunk_size, entry.chunks[index])


def _big(manifest: Manifest) -> FileEntry:
    return next(f for f in manifest.files if f.path.startswith("model-00001"))


async def test_concurrent_asks_for_one_chunk_fetch_it_from_origin_once(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    base = publish_store(fault_server, store_root)
    fault_server.faults = FaultPlan(bytes_per_second=2 * 1024 * 1024)
    big = _big(manifest)
    origin = open_store(base)
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST)
        got = await asyncio.gather(*(service.read(_ref(big, manifest, 1)) for _ in range(8)))
        want = MODEL[big.path][CHUNK : 2 * CHUNK]
        assert all(g == want for g in got)
        assert service.stats.origin_fetches == 1 and service.stats.coalesced_waiters == 7
        # Now it is kept: a later ask is served from the chunk cache.
        assert await service.read(_ref(big, manifest, 1)) == want
        assert service.stats.from_chunk_cache == 1 and service.stats.origin_fetches == 1
        await service.close()
    await origin.close()
    assert fault_server.stats.bytes_served == CHUNK


async def test_corrupt_origin_bytes_are_never_kept(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    base = publish_store(fault_server, store_root)
    big = _big(manifest)
    fault_server.faults = FaultPlan(flip_offset=CHUNK + 3, flip_count=100)
    origin = open_store(base)
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST)
        with pytest.raises(IntegrityError):
            await service.read(_ref(big, manifest, 1))
        fault_server.faults = FaultPlan()
        assert await service.read(_ref(big, manifest, 1)) == MODEL[big.path][CHUNK : 2 * CHUNK]
        await service.close()
    await origin.close()


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # Closed when we return: nobody listens.


async def test_pull_completes_when_every_owner_is_down(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    base = publish_store(fault_server, store_root)
    http = HttpClient()
    ring = Ring([_dead_address(), _dead_address(), "self:1"])
    origin = open_store(base)
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST)
        tiers = TierConfig(ring, "self:1", PeerClient(http, "token", timeout=0.5), service)
        opts = PullOptions(transfer=TransferConfig(retry=FAST))
        res = await pull_manifest(manifest, tmp_path / "m", store=origin, cache=cache,
                                  options=opts, tiers=tiers)
        await service.close()
    await origin.close()
    await http.close()
    assert_tree(tmp_path / "m")
    assert res.bytes_from_peers == 0
    assert res.bytes_from_origin == sum({f.sha256: f.size for f in manifest.files}.values())
    assert res.peer_failures > 0


async def test_a_chunk_is_hashed_once_when_it_enters_the_owners_cache(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    base = publish_store(fault_server, store_root)
    big = _big(manifest)
    want = MODEL[big.path][CHUNK : 2 * CHUNK]
    origin = open_store(base)
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST)
        for _ in range(5):
            assert await service.read(_ref(big, manifest, 1)) == want
        assert service.stats.origin_fetches == 1 and service.stats.from_chunk_cache == 4
        assert service.stats.chunk_hashes == 1  # At entry only, not per request.
        # A node-cache blob admitted on the owner's own store's word: served, never hashed.
        _put_blob(cache, big, MODEL[big.path], vouched_by=store_identity(base))
        for i in range(len(big.chunks)):
            got = await service.read(_ref(big, manifest, i))
            assert got == MODEL[big.path][i * CHUNK : (i + 1) * CHUNK]
        assert service.stats.from_node_cache == len(big.chunks)
        assert service.stats.chunk_hashes == 1 and service.stats.origin_fetches == 1
        await service.close()
    await origin.close()


async def test_a_blob_admitted_on_another_stores_word_is_not_served(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    base = publish_store(fault_server, store_root)
    big = _big(manifest)
    origin = open_store(base)
    # Same name and size, other bytes: what a store an attacker writes could vouch for.
    forged = bytes(b ^ 0xFF for b in MODEL[big.path])
    with NodeCache(tmp_path / "cache") as cache:
        _put_blob(cache, big, forged, vouched_by="file:///some/other/store")
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST)
        data, source = await service.read_with_origin(_ref(big, manifest, 1))
        assert data == MODEL[big.path][CHUNK : 2 * CHUNK] and source == "origin"
        assert service.stats.untrusted_blobs == 1 and service.stats.from_node_cache == 0
        # The same file vouched by the owner's own store is taken at its word.
        cache.admit(big.sha256, proven=False, vouched_by=store_identity(base))
        data, source = await service.read_with_origin(_ref(big, manifest, 0))
        assert source == "node_cache" and data == forged[:CHUNK]
        await service.close()
    await origin.close()


def _put_blob(cache: NodeCache, entry: FileEntry, data: bytes, *, vouched_by: str) -> None:
    """Place ``data`` in the node cache as blob ``entry``, admitted on ``vouched_by``'s word."""
    path = cache.blob_path(entry.sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    cache.admit(entry.sha256, proven=False, vouched_by=vouched_by)


async def test_open_if_kept_never_reads_origin(tmp_path: Path, fault_server: FaultServer) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    base = publish_store(fault_server, store_root)
    big = _big(manifest)
    ref = _ref(big, manifest, 1)
    origin = open_store(base)
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST)
        assert await service.open_if_kept(ref) is None  # Missing: the caller fills it.
        assert fault_server.stats.bytes_served == 0
        await service.read(ref)
        chunk = await service.open_if_kept(ref)
        assert chunk is not None and chunk.origin == "chunk_cache"
        assert chunk.read_all() == MODEL[big.path][CHUNK : 2 * CHUNK]
        chunk.close()
        assert service.stats.origin_fetches == 1 and service.stats.from_chunk_cache == 1
        await service.close()
    await origin.close()
