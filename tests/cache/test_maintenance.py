"""Operator tools: verify finds and removes corrupt blobs; gc tidies records, partials, locks."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bdn.cache import NodeCache
from bdn.digest import Digest
from tests.cache import CHUNK, chunks_of, fill, put_blob


def flip_a_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(5)
        byte = f.read(1)
        f.seek(5)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.chmod(path, 0o444)


def test_verify_passes_a_healthy_cache(cache: NodeCache) -> None:
    for seed in range(5):
        put_blob(cache, bytes([seed]) * (100 + seed))
    report = cache.verify()
    assert report.ok and report.checked == 5 and report.bytes_checked == sum(
        100 + s for s in range(5))


def test_verify_finds_a_corrupt_blob_and_fix_removes_it(cache: NodeCache,
                                                         tmp_path: Path) -> None:
    manifest = fill(cache, {"good.bin": b"g" * 300, "bad.bin": b"b" * 300})
    cache.materialize(manifest, tmp_path / "m")
    bad = manifest.file("bad.bin").sha256
    flip_a_byte(cache.blob_path(bad))
    report = cache.verify()
    assert [c.digest for c in report.corrupt] == [bad] and report.removed == []
    [corrupt] = report.corrupt
    assert corrupt.actual is not None and corrupt.actual != bad.hex
    assert corrupt.trees == (tmp_path / "m",)  # The tree shares the damaged inode.
    assert "1 corrupt; run `bdn cache verify --fix`" in report.describe()
    assert cache.has_blob(bad)
    fixed = cache.verify(fix=True)
    assert fixed.removed == [bad] and "removed" in fixed.describe()
    assert not cache.has_blob(bad) and bad not in {b.digest for b in cache.ls()}
    assert cache.verify().ok and cache.verify().describe().endswith("all intact")
    # Pulling it again re-materializes the tree from the fresh blob.
    put_blob(cache, b"b" * 300)
    assert cache.materialize(manifest, tmp_path / "m").mode == "hardlink"
    assert (tmp_path / "m" / "bad.bin").read_bytes() == b"b" * 300


def test_gc_drops_records_of_deleted_trees(cache: NodeCache, tmp_path: Path) -> None:
    manifest = fill(cache, {"a": b"aaa"})
    cache.materialize(manifest, tmp_path / "kept")
    cache.materialize(manifest, tmp_path / "gone")
    os.chmod(tmp_path / "gone", 0o755)
    (tmp_path / "gone" / "a").unlink()
    (tmp_path / "gone").rmdir()
    report = cache.gc()
    assert report.trees_dropped == [tmp_path / "gone"]
    assert "dropped 1 records of deleted trees" in report.describe()
    assert cache.gc().trees_dropped == []
    assert cache.materialize(manifest, tmp_path / "kept").mode == "unchanged"


def test_gc_removes_stale_partials_but_not_locked_ones(cache: NodeCache) -> None:
    stale, busy = b"stale" * 20, b"busy" * 20
    for data in (stale, busy):
        p = cache.open_partial(Digest.of_bytes(data), len(data), CHUNK, chunks_of(data))
        p.path.write_bytes(data[:10])

    async def gc_while_fetching() -> list[Digest]:
        async with cache.lock(Digest.of_bytes(busy)):
            return (await asyncio.to_thread(cache.gc, partial_max_age_s=0)).partials_removed

    assert asyncio.run(gc_while_fetching()) == [Digest.of_bytes(stale)]
    assert [i.digest for i in cache.ls_partials()] == [Digest.of_bytes(busy)]
    assert cache.gc().partials_removed == []  # Young partials stay by default.


def test_gc_sweeps_rows_of_vanished_blobs_and_idle_locks(cache: NodeCache) -> None:
    digest = put_blob(cache, b"soon gone")
    cache.blob_path(digest).unlink()
    report = cache.gc()
    assert report.index_rows_swept == 1 and report.locks_removed >= 1
    assert not list((cache.root / "locks").glob(f"{digest.hex}.lock"))
    assert cache.gc().index_rows_swept == 0


def test_close_is_idempotent_and_the_cache_reopens(cache: NodeCache) -> None:
    put_blob(cache, b"x")
    cache.close()
    cache.close()
    assert len(cache.ls()) == 1
