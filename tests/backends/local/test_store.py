"""FileStore: atomic writes, read-only blobs, move vs copy, key rules, stale temp cleanup."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bdn.backends import FileStore, HttpStore, open_store
from bdn.backends.base import BlobStore
from bdn.backends.local.store import _os_error
from bdn.backends.s3.store import S3Store
from bdn.errors import BlobNotFound, ConfigError, StoreError
from tests.backends.helpers import BLOB, read_range


async def read_all(store: BlobStore, key: str, start: int, end: int) -> bytes:
    """``[start, end)`` of ``key``, its size taken from the store."""
    return await read_range(store, key, await store.size(key), start, end)


async def keys(store: BlobStore, prefix: str) -> list[str]:
    return [k async for k in store.list(prefix)]


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def test_is_a_blob_store(store: FileStore) -> None:
    assert isinstance(store, BlobStore)
    assert store.uri == f"file://{store.root}"
    assert store.read_only is False


async def test_put_get_exists_size_roundtrip(store: FileStore) -> None:
    assert not await store.exists("refs/x")
    await store.put_bytes("refs/x", b"hello")
    assert await store.exists("refs/x")
    assert await store.size("refs/x") == 5
    assert await store.get_bytes("refs/x") == b"hello"
    await store.put_bytes("refs/x", b"replaced")
    assert await store.get_bytes("refs/x") == b"replaced"
    # Nothing is left behind in the staging area after a successful write.
    assert list(store.staging_dir().iterdir()) == []


async def test_missing_key_is_blob_not_found(store: FileStore) -> None:
    for call in (store.get_bytes(BLOB), store.size(BLOB)):
        with pytest.raises(BlobNotFound) as info:
            await call
        assert info.value.digest == "sha256:" + "ab" * 32
        assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(BlobNotFound):
        store.reader(BLOB, 1)


async def test_blobs_are_read_only_and_can_be_rewritten(store: FileStore) -> None:
    await store.put_bytes(BLOB, b"content")
    await store.put_bytes("manifests/m.json", b"{}")
    assert stat.S_IMODE(os.stat(store.local_path(BLOB)).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(store.local_path("manifests/m.json")).st_mode) != 0o444
    # A rename onto an existing (read-only) blob is success, not an error.
    await store.put_bytes(BLOB, b"content")
    assert await store.get_bytes(BLOB) == b"content"


async def test_put_file_copy_leaves_source(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    await store.put_file(BLOB, src)
    assert src.read_bytes() == b"x" * 1000
    assert await store.get_bytes(BLOB) == b"x" * 1000
    assert os.stat(src).st_ino != os.stat(store.local_path(BLOB)).st_ino


async def test_put_file_move_renames_on_same_filesystem(store: FileStore) -> None:
    staged = store.new_temp_path()
    staged.write_bytes(b"y" * 1000)
    inode = os.stat(staged).st_ino
    await store.put_file(BLOB, staged, move=True)
    assert not staged.exists()
    assert os.stat(store.local_path(BLOB)).st_ino == inode  # renamed, not copied
    assert stat.S_IMODE(os.stat(store.local_path(BLOB)).st_mode) == 0o444


async def test_put_file_move_across_filesystems_copies(store: FileStore) -> None:
    shm = Path("/dev/shm")
    store.staging_dir()
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(store.root).st_dev:
        pytest.skip("needs a second filesystem (/dev/shm)")
    src = shm / f"bdn-test-{os.getpid()}"
    src.write_bytes(b"z" * 100)
    try:
        await store.put_file(BLOB, src, move=True)
    finally:
        src.unlink(missing_ok=True)
    assert await store.get_bytes(BLOB) == b"z" * 100
    assert not src.exists()


async def test_put_file_missing_source_names_it(store: FileStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"nope\.bin"):
        await store.put_file(BLOB, tmp_path / "nope.bin")


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../escape", "a/../../b", "a\\b", "a//b", "./a", ".incomplete/x"]
)
async def test_bad_keys_are_refused(store: FileStore, key: str) -> None:
    with pytest.raises(StoreError, match="invalid key"):
        await store.put_bytes(key, b"x")
    with pytest.raises(StoreError):
        await store.exists(key)


async def test_list_walks_keys_with_prefix(store: FileStore) -> None:
    names = ["blobs/sha256/ab/" + "ab" * 32, "blobs/sha256/cd/" + "cd" * 32,
             "manifests/1.json", "refs/r"]
    for name in names:
        await store.put_bytes(name, b"x")
    store.new_temp_path().write_bytes(b"partial")  # in .incomplete: never listed
    assert await keys(store, "") == sorted(names)
    assert await keys(store, "blobs/") == names[:2]
    assert await keys(store, "blobs/sha256/a") == names[:1]
    assert await keys(store, "manifests/1") == ["manifests/1.json"]
    assert await keys(store, "nothing/") == []
    assert await keys(FileStore(store.root / "absent"), "") == []


async def test_delete(store: FileStore) -> None:
    await store.put_bytes(BLOB, b"x")
    await store.delete(BLOB)
    assert not await store.exists(BLOB)
    await store.delete(BLOB)  # missing is fine


async def test_reader_reads_ranges(store: FileStore) -> None:
    data = bytes(range(256)) * 1000
    await store.put_bytes(BLOB, data)
    assert await read_all(store, BLOB, 0, len(data)) == data
    assert await read_all(store, BLOB, 1000, 5000) == data[1000:5000]


async def test_concurrent_writers_of_one_key(store: FileStore) -> None:
    payloads = [bytes([i]) * 100_000 for i in range(20)]
    await asyncio.gather(*(store.put_bytes("refs/same", p) for p in payloads))
    assert await store.get_bytes("refs/same") in payloads
    assert list(store.staging_dir().iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_cleanup_stale_removes_dead_writers_only(store: FileStore) -> None:
    live = store.new_temp_path()
    live.write_bytes(b"live")
    _, _pid, rand, rest = live.name.split(".", 3)
    dead = live.with_name(f"tmp.{_dead_pid()}.{rand}.{rest}")
    dead.write_bytes(b"dead")
    companion = dead.with_name(dead.name + ".resume.json")  # a suffix keeps the owner
    companion.write_bytes(b"{}")
    pidns = rest.split(".", 1)[0]
    other_host = live.with_name(f"tmp.{_dead_pid()}.{rand}.{pidns}.some-other-host")
    other_host.write_bytes(b"other")
    foreign = store.staging_dir() / "someone-elses-file"
    foreign.write_bytes(b"?")

    assert sorted(store.cleanup_stale()) == sorted([dead, companion])
    assert live.exists() and other_host.exists() and foreign.exists()
    # With an age limit, old files of other hosts (and unknown names) go too.
    old = 1_000_000_000
    os.utime(other_host, (old, old))
    os.utime(foreign, (old, old))
    assert sorted(store.cleanup_stale(max_age_s=3600)) == sorted([other_host, foreign])
    assert live.exists()


async def test_first_write_sweeps_dead_temp_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    # What a killed writer leaves: a file named by staging_name() in its process.
    name = subprocess.run(
        [sys.executable, "-c",
         "from bdn.backends.staging import staging_name; print(staging_name())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    dead = store.staging_dir() / name
    dead.write_bytes(b"leftover")
    await store.put_bytes("refs/a", b"x")
    assert not dead.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
async def test_permission_denied_names_path(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="permission denied") as info:
            await FileStore(root).put_bytes("refs/a", b"x")
        assert str(root) in str(info.value)
    finally:
        root.chmod(0o755)


async def test_write_into_a_file_fails_as_store_error(tmp_path: Path) -> None:
    # Runs as root too: a file where a directory should be fails for everyone.
    (tmp_path / "refs").write_bytes(b"not a directory")
    with pytest.raises(StoreError, match="refs"):
        await FileStore(tmp_path).put_bytes("refs/a", b"x")


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied"),
     (errno.EROFS, "read-only")],
)
def test_os_errors_say_what_to_do(code: int, words: str) -> None:
    err = _os_error(OSError(code, os.strerror(code)), Path("/s/blobs/x"), "write")
    assert isinstance(err, StoreError)
    assert err.errno == code
    assert "/s/blobs/x" in str(err) and words in str(err) and "--store" in str(err)


# -- open_store -----------------------------------------------------------------


def test_open_store_file_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for uri in (f"file://{tmp_path}/s", f"{tmp_path}/s", f"file://localhost{tmp_path}/s"):
        store = open_store(uri)
        assert isinstance(store, FileStore) and store.root == tmp_path / "s"
    for uri in ("file://~/s", "~/s"):
        store = open_store(uri)
        assert isinstance(store, FileStore) and store.root == tmp_path / "s"


def test_open_store_s3_and_http_forms() -> None:
    s3 = open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.uri) == ("bucket", "some/prefix", "s3://bucket/some/prefix")
    assert open_store("s3://bucket").uri == "s3://bucket"
    web = open_store("https://user:pw@cdn.example.com/bdn/?token=secret")
    assert isinstance(web, HttpStore) and web.read_only
    assert web.uri == "https://cdn.example.com/bdn"


@pytest.mark.parametrize("uri", ["relative/dir", "./dir", "file://relative", "gs2://x", "s3://",
                                 "ftp://host/x"])
def test_open_store_rejects(uri: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(uri)
    assert "\n" not in str(info.value)
    assert "file://" in str(info.value) or "s3://bucket" in str(info.value)
