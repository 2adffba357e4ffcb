"""Materialize: read-only hardlinked trees, instant repeats, atomic swaps, and refusals."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import bdn.cache.materialize as materialize_module
from bdn.cache import NodeCache
from bdn.errors import BlobNotFound, MountConflict
from bdn.manifest import Manifest
from tests.cache import fill, make_manifest, put_blob

FILES = {
    "config.json": b'{"hidden_size": 8}',
    "weights/shard-1.safetensors": b"\x01" * 3000,
    "weights/deep/shard-2.safetensors": b"\x02" * 500,
    "empty.txt": b"",
    "copy-a.bin": b"same bytes" * 10,
    "sub/copy-b.bin": b"same bytes" * 10,
}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def leftovers(mount: Path) -> list[str]:
    return [p.name for p in mount.parent.iterdir() if p.name.startswith(f".{mount.name}.bdn-")]


def built(cache: NodeCache, tmp_path: Path) -> tuple[Manifest, Path]:
    """:data:`FILES` cached and materialized at ``tmp_path/m``: its manifest, the mount."""
    manifest = fill(cache, FILES)
    mount = tmp_path / "m"
    cache.materialize(manifest, mount)
    return manifest, mount


def refusal(cache: NodeCache, manifest: Manifest, mount: Path) -> str:
    """The message of the :class:`MountConflict` materializing ``manifest`` at ``mount``
    must raise."""
    with pytest.raises(MountConflict) as info:
        cache.materialize(manifest, mount)
    return str(info.value)


def make_writable(path: Path) -> None:
    for directory, _dirs, _files in os.walk(path):
        os.chmod(directory, 0o755)


def test_builds_a_read_only_hardlinked_tree(cache: NodeCache, tmp_path: Path) -> None:
    manifest = fill(cache, FILES)
    mount = tmp_path / "models" / "m"
    done = cache.materialize(manifest, mount)
    assert (done.path, done.mode) == (mount, "hardlink")
    found = {str(p.relative_to(mount)) for p in mount.rglob("*") if p.is_file()}
    assert found == set(FILES)
    for entry in manifest.files:
        path = mount / entry.path
        assert path.read_bytes() == FILES[entry.path]
        assert mode(path) == 0o444
        if entry.size:
            assert os.stat(path).st_ino == os.stat(cache.blob_path(entry.sha256)).st_ino
    for directory in (mount, mount / "weights", mount / "weights/deep", mount / "sub"):
        assert mode(directory) == 0o555
    # Two paths, one content: both link the one blob.
    assert os.stat(mount / "copy-a.bin").st_ino == os.stat(mount / "sub/copy-b.bin").st_ino
    assert leftovers(mount) == []


def test_second_materialize_is_unchanged_and_touches_nothing(cache: NodeCache,
                                                             tmp_path: Path) -> None:
    manifest, mount = built(cache, tmp_path)
    before = os.stat(mount)
    assert cache.materialize(manifest, mount).mode == "unchanged"
    # Another process (a fresh cache object) agrees, through the index.
    with NodeCache(cache.root) as other:
        assert other.materialize(manifest, mount).mode == "unchanged"
    after = os.stat(mount)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_tree_missing_a_file_is_rebuilt(cache: NodeCache, tmp_path: Path) -> None:
    manifest, mount = built(cache, tmp_path)
    make_writable(mount)
    (mount / "config.json").unlink()
    assert cache.materialize(manifest, mount).mode == "hardlink"
    blob = cache.blob_path(manifest.file("config.json").sha256)
    assert os.stat(mount / "config.json").st_ino == os.stat(blob).st_ino


def records(cache: NodeCache) -> list[tuple[str, str]]:
    """The cache's tree records as ``(path, manifest id)``."""
    return [(str(t.path), t.manifest_id) for t in cache._index.trees()]


def tree_state(mount: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under ``mount`` with its inode and content: to prove nothing changed."""
    return {str(p.relative_to(mount)): (os.lstat(p).st_ino, p.read_bytes() if p.is_file() else b"")
            for p in sorted(mount.rglob("*"))}


@pytest.mark.parametrize("other_manifest", [False, True], ids=["same", "different"])
def test_a_users_file_in_a_tree_is_never_deleted(cache: NodeCache, tmp_path: Path,
                                                 other_manifest: bool) -> None:
    # Before: the re-pull swapped the tree in and deleted the user's notes.txt.
    manifest, mount = built(cache, tmp_path)
    next_manifest = fill(cache, {"x.bin": b"next"}) if other_manifest else manifest
    os.chmod(mount, 0o755)
    (mount / "notes.txt").write_text("mine")
    before, record = tree_state(mount), records(cache)
    assert refusal(cache, next_manifest, mount) == (
        f"mount location {mount} holds 1 path(s) BDN did not put there: notes.txt; refusing "
        "to replace the tree, so nothing of yours is lost: move them out (its directories are "
        "read-only: chmod u+w first), or choose another mount location")
    assert tree_state(mount) == before and records(cache) == record
    assert leftovers(mount) == []
    # Moved out: the pull goes through.
    (mount / "notes.txt").unlink()
    assert cache.materialize(next_manifest, mount).mode in ("hardlink", "unchanged")


def test_foreign_paths_are_named_a_few_then_a_count(cache: NodeCache, tmp_path: Path) -> None:
    manifest, mount = built(cache, tmp_path)
    make_writable(mount)
    (mount / "config.json").unlink()
    (mount / "config.json").write_bytes(FILES["config.json"])  # Same bytes, the user's file.
    (mount / "weights" / "empty-dir").mkdir()
    os.symlink("/etc/passwd", mount / "link")
    for i in range(5):
        (mount / f"extra-{i}.txt").write_text("x")
    with pytest.raises(MountConflict, match=r"holds 8 path\(s\) BDN did not put there: "
                       r"config.json, extra-0.txt, extra-1.txt, extra-2.txt, extra-3.txt "
                       r"\(and 3 more\)"):
        cache.materialize(manifest, mount)
    assert (mount / "config.json").read_bytes() == FILES["config.json"]
    assert (mount / "weights" / "empty-dir").is_dir() and (mount / "link").is_symlink()


def test_a_tree_whose_blob_the_cache_dropped_is_still_ours(cache: NodeCache,
                                                           tmp_path: Path) -> None:
    # A hardlink whose blob `bdn cache verify --fix` removed has no other link left:
    # it is BDN's file, and the next pull replaces the tree without complaint.
    m1 = fill(cache, {"a.bin": b"one" * 100, "b.bin": b"two"})
    mount = tmp_path / "m"
    cache.materialize(m1, mount)
    cache.blob_path(m1.file("a.bin").sha256).unlink()
    m2 = fill(cache, {"c.bin": b"three"})
    assert cache.materialize(m2, mount).mode == "hardlink"
    assert sorted(os.listdir(mount)) == ["c.bin"]


def test_swap_is_atomic_for_readers(cache: NodeCache, tmp_path: Path) -> None:
    v1 = {"w/model.bin": b"\x01" * 200_000, "w/other.bin": b"one"}
    v2 = {"w/model.bin": b"\x02" * 300_000, "w/new.bin": b"two"}
    m1, m2 = fill(cache, v1), fill(cache, v2)
    mount = tmp_path / "m"
    cache.materialize(m1, mount)
    stop = threading.Event()
    seen: set[bytes] = set()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                data = (mount / "w/model.bin").read_bytes()
            except BaseException as err:  # ENOENT would mean a window without a tree.
                errors.append(err)
                return
            if data not in (v1["w/model.bin"], v2["w/model.bin"]):
                errors.append(AssertionError(f"mixed or short file of {len(data)} bytes"))
                return
            seen.add(data[:1])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            cache.materialize(m2 if i % 2 == 0 else m1, mount)
    finally:
        stop.set()
        thread.join(10)
    assert errors == []
    assert seen == {b"\x01", b"\x02"}
    assert sorted(p.name for p in (mount / "w").iterdir()) == ["model.bin", "other.bin"]
    assert leftovers(mount) == []


def test_refuses_a_foreign_non_empty_directory(cache: NodeCache, tmp_path: Path) -> None:
    manifest = fill(cache, FILES)
    mount = tmp_path / "mine"
    mount.mkdir()
    (mount / "notes.txt").write_text("precious")
    with pytest.raises(MountConflict) as info:
        cache.materialize(manifest, mount)
    assert str(mount) in str(info.value) and "choose another mount location" in str(info.value)
    assert isinstance(info.value, FileExistsError)
    assert (mount / "notes.txt").read_text() == "precious"
    assert leftovers(mount) == []
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(MountConflict, match="is a file"):
        cache.materialize(manifest, tmp_path / "a-file")


def test_adopts_an_empty_directory_of_its_own_user(cache: NodeCache, tmp_path: Path) -> None:
    manifest = fill(cache, FILES)
    mount = tmp_path / "empty"
    mount.mkdir()
    assert cache.materialize(manifest, mount).mode == "hardlink"
    assert (mount / "config.json").read_bytes() == FILES["config.json"]


def test_refuses_another_users_empty_directory(cache: NodeCache, tmp_path: Path) -> None:
    # Before: the directory was replaced by one of the puller's (root's), 0555.
    if os.geteuid() != 0:
        pytest.skip("making a directory another user owns needs root")
    manifest = fill(cache, FILES)
    mount = tmp_path / "theirs"
    mount.mkdir()
    os.chown(mount, 4242, 4242)
    inode = os.stat(mount).st_ino
    assert refusal(cache, manifest, mount) == (
        f"mount location {mount} is an empty directory owned by uid 4242, not by the user "
        "pulling (uid 0); BDN only adopts an empty directory of its own user: remove it, or "
        "choose another mount location")
    st = os.stat(mount)
    assert (st.st_ino, st.st_uid, os.listdir(mount)) == (inode, 4242, [])
    assert records(cache) == [] and leftovers(mount) == []


def test_a_mount_point_holding_a_users_file_is_not_emptied(
        cache: NodeCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m1, m2 = fill(cache, {"x": b"one"}), fill(cache, {"x": b"two"})
    mount = tmp_path / "m"
    cache.materialize(m1, mount)
    os.chmod(mount, 0o755)
    (mount / "mine").write_text("keep")
    monkeypatch.setattr(materialize_module.os.path, "ismount", lambda p: p == mount)
    with pytest.raises(MountConflict, match="mine"):
        cache.materialize(m2, mount)
    assert (mount / "mine").read_text() == "keep" and (mount / "x").read_bytes() == b"one"


def test_missing_blob_fails_cleanly(cache: NodeCache, tmp_path: Path) -> None:
    manifest = make_manifest({"a.bin": b"never cached"})
    mount = tmp_path / "m"
    with pytest.raises(BlobNotFound, match="bdn pull"):
        cache.materialize(manifest, mount)
    assert not mount.exists() and leftovers(mount) == []


def test_leftovers_of_a_crash_are_swept(cache: NodeCache, tmp_path: Path) -> None:
    manifest = fill(cache, FILES)
    mount = tmp_path / "m"
    crashed = tmp_path / ".m.bdn-0123456789abcdef" / "half"
    crashed.mkdir(parents=True)
    os.chmod(crashed, 0o555)
    cache.materialize(manifest, mount)
    assert leftovers(mount) == []


def test_without_renameat2_the_fallback_swaps(cache: NodeCache, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_exchange(a: Path, b: Path) -> None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(b))

    m1, m2 = fill(cache, {"x": b"one"}), fill(cache, {"x": b"two"})
    mount = tmp_path / "m"
    cache.materialize(m1, mount)
    monkeypatch.setattr(materialize_module, "_exchange", no_exchange)
    assert cache.materialize(m2, mount).mode == "hardlink"
    assert (mount / "x").read_bytes() == b"two"
    assert leftovers(mount) == []


def test_a_mount_point_is_populated_in_place(cache: NodeCache, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(a: Path, b: Path) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", str(b))

    m1, m2 = fill(cache, {"x": b"one", "d/y": b"why"}), fill(cache, {"x": b"two"})
    mount = tmp_path / "m"
    cache.materialize(m1, mount)
    inode = os.stat(mount).st_ino
    monkeypatch.setattr(materialize_module, "_exchange", busy)  # As renaming over a mount does.
    assert cache.materialize(m2, mount).mode == "hardlink"
    assert os.stat(mount).st_ino == inode  # The same directory, refilled.
    assert sorted(os.listdir(mount)) == ["x"]
    assert (mount / "x").read_bytes() == b"two" and mode(mount) == 0o555
    assert cache.materialize(m2, mount).mode == "unchanged"
    assert leftovers(mount) == []


@pytest.fixture
def other_fs_cache(tmp_path: Path) -> Iterator[NodeCache]:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        print("skipping: /dev/shm is missing or on the same filesystem as tmp_path")
        pytest.skip("needs /dev/shm on another filesystem than tmp_path")
    root = Path(tempfile.mkdtemp(prefix="bdn-cache-test-", dir=shm))
    cache = NodeCache(root / "cache")
    yield cache
    cache.close()
    for directory, _dirs, _files in os.walk(root):
        os.chmod(directory, 0o755)
    shutil.rmtree(root)


def test_cache_on_another_filesystem_copies_and_warns_once(
        other_fs_cache: NodeCache, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = other_fs_cache
    manifest = fill(cache, FILES)
    with caplog.at_level(logging.WARNING, logger="bdn.cache"):
        done = cache.materialize(manifest, tmp_path / "one")
        cache.materialize(manifest, tmp_path / "two")
    assert done.mode in ("copy", "reflink")  # tmpfs -> anything cannot reflink: copy.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "BDN_CACHE_DIR" in warnings[0]
    for entry in manifest.files:
        path = tmp_path / "one" / entry.path
        assert path.read_bytes() == FILES[entry.path] and mode(path) == 0o444
    assert mode(tmp_path / "one" / "weights") == 0o555
    assert cache.materialize(manifest, tmp_path / "one").mode == "unchanged"
    # Copies share no inode, so only the tree record keeps their blobs.
    assert all(b.referenced for b in cache.ls())
    assert cache.evict(10**9) == 0
    for name in ("one", "two"):
        make_writable(tmp_path / name)
        shutil.rmtree(tmp_path / name)
    assert not any(b.referenced for b in cache.ls())
    assert len(cache.gc().trees_dropped) == 2


def test_blob_put_helper_is_idempotent(cache: NodeCache) -> None:
    first = put_blob(cache, b"abc")
    assert put_blob(cache, b"abc") == first
