"""Eviction: LRU order, referenced and kept blobs survive, and a clear error when nothing fits."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bdn.cache import NodeCache
from bdn.digest import Digest
from bdn.errors import InsufficientSpace
from tests.cache import CHUNK, chunks_of, fill, make_manifest, put_blob

SIZE = 1000


def blob(seed: int) -> bytes:
    return bytes([seed]) * SIZE


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[NodeCache]:
    c = NodeCache(tmp_path / "cache", max_bytes=4 * SIZE)
    yield c
    c.close()


def put_in_lru_order(cache: NodeCache, *seeds: int) -> list[Digest]:
    digests = [put_blob(cache, blob(s)) for s in seeds]
    for d in digests:  # Oldest first, with distinct times.
        cache.touch([d])
        time.sleep(0.002)
    return digests


def cached(cache: NodeCache) -> set[Digest]:
    return {b.digest for b in cache.ls()}


def test_ls_is_least_recently_used_first(cache: NodeCache) -> None:
    a, b, c = put_in_lru_order(cache, 1, 2, 3)
    cache.touch([a])
    assert [i.digest for i in cache.ls()] == [b, c, a]


def test_evicts_least_recently_used_first(cache: NodeCache) -> None:
    a, b, c = put_in_lru_order(cache, 1, 2, 3)
    cache.touch([a])
    assert cache.evict(1) == SIZE
    assert cached(cache) == {a, c}
    assert cache.evict(SIZE + 1) == 2 * SIZE
    assert cached(cache) == set()
    assert not cache.has_blob(b)


def test_keep_is_respected(cache: NodeCache) -> None:
    a, _b, c = put_in_lru_order(cache, 1, 2, 3)
    assert cache.evict(10 * SIZE, keep=[a, c]) == SIZE
    assert cached(cache) == {a, c}


def test_hardlinked_blobs_are_never_evicted(cache: NodeCache, tmp_path: Path) -> None:
    a, b = put_in_lru_order(cache, 1, 2)
    cache.materialize(make_manifest({"w.bin": blob(1)}), tmp_path / "model")
    assert {i.digest: i.referenced for i in cache.ls()} == {a: True, b: False}
    assert cache.evict(10 * SIZE) == SIZE
    assert cached(cache) == {a}


def test_ensure_space_evicts_just_enough(cache: NodeCache) -> None:
    a, _b, _c, d = put_in_lru_order(cache, 1, 2, 3, 4)  # Budget full.
    asyncio.run(cache.ensure_space(2 * SIZE, keep=[a]))
    assert cached(cache) == {a, d}


def test_ensure_space_without_pressure_evicts_nothing(cache: NodeCache) -> None:
    put_in_lru_order(cache, 1, 2)
    asyncio.run(cache.ensure_space(2 * SIZE))
    assert len(cached(cache)) == 2


def test_insufficient_space_names_the_numbers_and_the_fix(cache: NodeCache,
                                                          tmp_path: Path) -> None:
    a, b, c = put_in_lru_order(cache, 1, 2, 3)
    cache.materialize(make_manifest({"w.bin": blob(1)}), tmp_path / "model")
    with pytest.raises(InsufficientSpace) as info:
        asyncio.run(cache.ensure_space(4 * SIZE, keep=[b]))
    err = info.value
    # Budget 4000, cached 3000: 1000 free; only c is evictable (a is linked, b kept).
    assert (err.needed, err.free, err.evictable) == (4 * SIZE, SIZE, SIZE)
    message = str(err)
    assert "\n" not in message
    for number in ("need 4000 bytes", "free 1000", "evictable 1000"):
        assert number in message
    assert "--max-cache-bytes" in message and "BDN_CACHE_MAX_BYTES" in message
    assert "bdn cache gc" in message
    assert isinstance(err, OSError)
    assert cached(cache) == {a, b, c}  # Nothing evicted for nothing.


def test_partials_count_against_the_budget_unless_kept(cache: NodeCache) -> None:
    put_in_lru_order(cache, 1, 2)
    other = blob(9)
    partial = cache.open_partial(Digest.of_bytes(other), SIZE, CHUNK, chunks_of(other))
    partial.path.write_bytes(other)  # 3000 of 4000 used.
    with pytest.raises(InsufficientSpace):
        asyncio.run(cache.ensure_space(3 * SIZE + 1, keep=cached(cache)))
    # Resuming that very blob: its .part is part of what the pull needs.
    asyncio.run(cache.ensure_space(2 * SIZE, keep=cached(cache) | {partial.digest}))
    assert len(cached(cache)) == 2


def test_no_budget_means_only_the_disk_limits(tmp_path: Path) -> None:
    with NodeCache(tmp_path / "cache") as cache:
        put_blob(cache, blob(1))
        asyncio.run(cache.ensure_space(10 * SIZE))
        with pytest.raises(InsufficientSpace, match=re.escape("need 1125899906842624 bytes")):
            asyncio.run(cache.ensure_space(2**50))


def test_gc_evicts_down_to_the_budget(tmp_path: Path) -> None:
    with NodeCache(tmp_path / "cache") as big:
        digests = put_in_lru_order(big, 1, 2, 3)
    with NodeCache(tmp_path / "cache", max_bytes=SIZE) as small:
        report = small.gc()
        assert report.evicted == digests[:2] and report.bytes_freed == 2 * SIZE
        assert cached(small) == {digests[2]}


def test_blob_without_index_row_is_still_a_blob(cache: NodeCache) -> None:
    manifest = fill(cache, {"x": blob(5)})
    cache.close()
    (cache.root / "index.db").unlink()
    for suffix in ("-wal", "-shm"):
        (cache.root / f"index.db{suffix}").unlink(missing_ok=True)
    [info] = cache.ls()
    assert info.digest == manifest.files[0].sha256 and info.size == SIZE
