"""A node cache shared across trust domains: blobs are used as proven, or on a trusted word.

The attack: an untrusted store publishes a manifest that claims another
model's SHA-256 with chunk digests of its own bytes. Chunks are checked with
xxh3 against that manifest, so a pull from it used to plant its bytes in the
shared cache under the real model's name, and a later pull of the real model
from the trusted store was served them, even with ``strict``.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.cache.index import QUARANTINED
from bdn.errors import IntegrityError
from bdn.manifest import Manifest
from bdn.pull import PullOptions
from bdn.store import Store, blob_key
from tests.e2e.agents import mirrored_model
from tests.fixtures import pattern_bytes, pull_from

CHUNK = 64 * 1024
SHARD = "model.safetensors"
REAL = {SHARD: pattern_bytes(1, 3 * CHUNK + 5), "config.json": b'{"layers": 2}'}
EVIL = {SHARD: pattern_bytes(66, 3 * CHUNK + 5), "config.json": b'{"layers": 2}'}


@dataclasses.dataclass
class Stores:
    trusted: str
    untrusted: str
    real: Manifest
    crafted: Manifest
    cache: Path


async def _craft(tmp_path: Path) -> Stores:
    """A trusted store with the real model; an untrusted one whose manifest claims the
    real shard's SHA-256 with chunk digests (and blob bytes) of attacker content."""
    _, trusted_root, real = await mirrored_model(tmp_path / "t", REAL, CHUNK)
    _, untrusted_root, evil = await mirrored_model(tmp_path / "u", EVIL, CHUNK)
    real_sha = next(f.sha256 for f in real.files if f.path == SHARD)
    files = tuple(dataclasses.replace(f, sha256=real_sha) if f.path == SHARD else f
                  for f in evil.files)
    crafted = dataclasses.replace(evil, files=files)
    planted = untrusted_root / blob_key(real_sha)
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(EVIL[SHARD])
    store = open_store(f"file://{untrusted_root}")
    try:
        await Store(store).put_manifest(crafted)
    finally:
        await store.close()
    return Stores(f"file://{trusted_root}", f"file://{untrusted_root}", real, crafted,
                  tmp_path / "cache")


def _admission(cache_dir: Path, manifest: Manifest) -> tuple[int, str | None]:
    sha = next(f.sha256 for f in manifest.files if f.path == SHARD)
    with sqlite3.connect(cache_dir / "index.db") as db:
        row = db.execute("SELECT proven, vouched_by FROM blobs WHERE hex = ?",
                         (sha.hex,)).fetchone()
    return row[0], row[1]


def _tree_manifest(cache_dir: Path, mount: Path) -> str:
    with sqlite3.connect(cache_dir / "index.db") as db:
        (manifest_id,) = db.execute("SELECT manifest_id FROM trees WHERE path = ?",
                                    (str(mount.resolve()),)).fetchone()
    return str(manifest_id)


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
async def test_planted_blob_never_reaches_a_pull_of_the_trusted_store(
    tmp_path: Path, strict: bool
) -> None:
    s = await _craft(tmp_path)
    # Each pull trusts only its own store (the library default).
    planted = await pull_from(s.crafted, tmp_path / "u-tree", s.untrusted, s.cache)
    assert planted.bytes_proven == 0  # The untrusted store's word, recorded as such...
    assert (tmp_path / "u-tree" / SHARD).read_bytes() == EVIL[SHARD]
    assert _admission(s.cache, s.real) == (0, s.untrusted)

    mount = tmp_path / "t-tree"
    result = await pull_from(s.real, mount, s.trusted, s.cache, PullOptions(strict=strict))
    # ...so the trusted pull proved the hit, found the poison, and fetched its own.
    assert (mount / SHARD).read_bytes() == REAL[SHARD]
    assert result.bytes_proven >= len(REAL[SHARD])
    assert result.bytes_from_origin >= len(REAL[SHARD])
    assert _admission(s.cache, s.real) == (int(strict), None if strict else s.trusted)
    # The tree built from the poison will be rebuilt by its next pull, never "unchanged".
    assert _tree_manifest(s.cache, tmp_path / "u-tree") == QUARANTINED


async def test_untrusted_store_is_proven_on_fetch_and_plants_nothing(tmp_path: Path) -> None:
    s = await _craft(tmp_path)
    node_trust = PullOptions(trusted_stores=frozenset([s.trusted]))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        await pull_from(s.crafted, tmp_path / "u-tree", s.untrusted, s.cache, node_trust)
    sha = next(f.sha256 for f in s.real.files if f.path == SHARD)
    assert not NodeCache(s.cache).has_blob(sha)
    assert not (tmp_path / "u-tree").exists()

    cold = await pull_from(s.real, tmp_path / "t-tree", s.trusted, s.cache, node_trust)
    assert (tmp_path / "t-tree" / SHARD).read_bytes() == REAL[SHARD]
    assert cold.bytes_proven == 0  # A trusted store's cold pull hashes nothing.


async def test_trusted_cold_pull_computes_no_sha256(tmp_path: Path) -> None:
    s = await _craft(tmp_path)
    result = await pull_from(s.real, tmp_path / "m", s.trusted, s.cache,
                         PullOptions(trusted_stores=frozenset([s.trusted])))
    assert result.bytes_proven == 0
    assert _admission(s.cache, s.real) == (0, s.trusted)


async def test_blobs_proven_by_an_untrusted_pull_serve_everyone(tmp_path: Path) -> None:
    s = await _craft(tmp_path)
    # The untrusted store also holds the real model, honestly: proven while fetched.
    other = f"file://{tmp_path / 't' / 'store'}/"  # Another spelling of the trusted store.
    first = await pull_from(s.real, tmp_path / "a", other, s.cache,
                        PullOptions(trusted_stores=frozenset(["s3://elsewhere"])))
    assert first.bytes_proven == sum({f.sha256: f.size for f in s.real.files}.values())
    assert _admission(s.cache, s.real) == (1, None)
    again = await pull_from(s.real, tmp_path / "b", s.trusted, s.cache, PullOptions(strict=True))
    assert again.bytes_proven == 0 and again.bytes_from_origin == 0


async def test_a_store_in_the_trusted_set_vouches_for_other_pulls(tmp_path: Path) -> None:
    s = await _craft(tmp_path)
    await pull_from(s.real, tmp_path / "a", s.trusted, s.cache)
    assert _admission(s.cache, s.real) == (0, s.trusted)
    both = PullOptions(trusted_stores=frozenset([s.trusted, s.untrusted]))
    hit = await pull_from(s.real, tmp_path / "b", s.untrusted, s.cache, both)
    assert hit.bytes_proven == 0 and hit.bytes_from_origin == 0
    # Not in the set: proven once, then taken as proven.
    alone = PullOptions(trusted_stores=frozenset([s.untrusted]))
    proved = await pull_from(s.real, tmp_path / "c", s.untrusted, s.cache, alone)
    assert proved.bytes_proven > 0 and proved.bytes_from_origin == 0
    assert _admission(s.cache, s.real) == (1, None)
    once = await pull_from(s.real, tmp_path / "d", s.untrusted, s.cache, alone)
    assert once.bytes_proven == 0


async def test_a_blob_replaced_behind_the_index_is_proven_again(tmp_path: Path) -> None:
    s = await _craft(tmp_path)
    await pull_from(s.real, tmp_path / "a", s.trusted, s.cache)
    sha = next(f.sha256 for f in s.real.files if f.path == SHARD)
    blob = NodeCache(s.cache).blob_path(sha)
    blob.unlink()
    blob.write_bytes(EVIL[SHARD])  # Same size, other bytes, a new inode: no record holds.
    result = await pull_from(s.real, tmp_path / "b", s.trusted, s.cache)
    assert (tmp_path / "b" / SHARD).read_bytes() == REAL[SHARD]
    assert result.bytes_proven > 0


async def test_blobs_cached_before_admission_records_are_proven_once(tmp_path: Path) -> None:
    s = await _craft(tmp_path)
    await pull_from(s.real, tmp_path / "a", s.trusted, s.cache)
    with sqlite3.connect(s.cache / "index.db") as db:  # As an older BDN left it.
        db.execute("UPDATE blobs SET ino = NULL, proven = 0, vouched_by = NULL")
    first = await pull_from(s.real, tmp_path / "b", s.trusted, s.cache)
    assert first.bytes_proven > 0 and first.bytes_from_origin == 0
    second = await pull_from(s.real, tmp_path / "c", s.trusted, s.cache)
    assert second.bytes_proven == 0


def test_index_db_is_private_and_a_readable_one_is_tightened(tmp_path: Path) -> None:
    with NodeCache(tmp_path / "fresh") as cache:
        cache.touch([])
        cache.ls()
    db = tmp_path / "fresh" / "index.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    for extra in ("index.db-wal", "index.db-shm"):
        if (tmp_path / "fresh" / extra).exists():
            assert stat.S_IMODE((tmp_path / "fresh" / extra).stat().st_mode) & 0o077 == 0
    os.chmod(db, 0o644)
    with NodeCache(tmp_path / "fresh") as cache:
        cache.ls()
    assert stat.S_IMODE(db.stat().st_mode) == 0o640
