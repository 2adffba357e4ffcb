"""What the bucket backends (S3 on moto, GCS on the emulator) must both do alike.

Stores: the BlobStore contract under a prefix, listing, ranged reads, missing keys
and buckets, unreachable servers, and uploads of local files that move or are
missing. Sources: a prefix listed as a folder, identities that follow overwrites,
ranged reads, missing buckets and names that are not manifest paths."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar, Protocol

import pytest

from bdn.backends.base import BlobStore, Source
from bdn.backends.bucket import BucketSource, BucketStore
from bdn.backends.gcs.client import GcsClientConfig
from bdn.backends.gcs.source import GcsSource
from bdn.backends.gcs.store import GcsStore
from bdn.backends.s3.client import S3ClientConfig
from bdn.backends.s3.creds import S3Credentials
from bdn.backends.s3.source import S3Source
from bdn.backends.s3.store import S3Store
from bdn.errors import NotFound, SourceError, SourceNotFound, StoreError
from bdn.http import HttpClient
from tests.backends.helpers import BLOB, assert_blob_missing, read_range, read_source
from tests.conftest import MotoS3
from tests.gcsemulator import GcsEmulator


class Backend(Protocol):
    """One kind of bucket as these tests reach it: stores on it, its objects read
    and written around the store, and a store whose server is not there."""

    scheme: ClassVar[str]
    source_kind: ClassVar[str]
    unreachable_hints: ClassVar[tuple[str, ...]]
    bucket: str

    def store(self, bucket: str, prefix: str = "") -> BucketStore: ...

    def source(self, bucket: str, prefix: str, http: HttpClient | None) -> BucketSource: ...

    def get(self, name: str) -> bytes: ...

    def put(self, name: str, data: bytes) -> None: ...

    @staticmethod
    def unreachable(port: int) -> BucketStore: ...


class S3Backend:
    scheme: ClassVar[str] = "s3"
    source_kind: ClassVar[str] = "s3"
    unreachable_hints: ClassVar[tuple[str, ...]] = ("--endpoint-url", "AWS_ENDPOINT_URL")

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.moto: MotoS3 = request.getfixturevalue("moto_s3")
        self.bucket: str = request.getfixturevalue("s3_bucket")

    def store(self, bucket: str, prefix: str = "") -> S3Store:
        return S3Store(bucket, prefix, endpoint_url=self.moto.endpoint_url,
                       credentials=self._credentials())

    def source(self, bucket: str, prefix: str, http: HttpClient | None) -> S3Source:
        return S3Source(bucket, prefix, endpoint_url=self.moto.endpoint_url,
                        credentials=self._credentials(), http=http)

    def _credentials(self) -> S3Credentials:
        moto = self.moto
        return S3Credentials(moto.access_key_id, moto.secret_access_key, region=moto.region)

    def get(self, name: str) -> bytes:
        body: bytes = self.moto.client().get_object(Bucket=self.bucket, Key=name)["Body"].read()
        return body

    def put(self, name: str, data: bytes) -> None:
        self.moto.client().put_object(Bucket=self.bucket, Key=name, Body=data)

    @staticmethod
    def unreachable(port: int) -> S3Store:
        return S3Store("b", endpoint_url=f"http://127.0.0.1:{port}",
                       credentials=S3Credentials("a", "b"),
                       client_config=S3ClientConfig(max_attempts=1, connect_timeout_s=2))


class GcsBackend:
    scheme: ClassVar[str] = "gs"
    source_kind: ClassVar[str] = "gcs"
    unreachable_hints: ClassVar[tuple[str, ...]] = ("STORAGE_EMULATOR_HOST",)

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
        self.bucket: str = request.getfixturevalue("gcs_bucket")

    def store(self, bucket: str, prefix: str = "") -> GcsStore:
        return GcsStore(bucket, prefix, emulator_host=self.emulator.host)

    def source(self, bucket: str, prefix: str, http: HttpClient | None) -> GcsSource:
        return GcsSource(bucket, prefix, credentials=None, emulator_host=self.emulator.host,
                         http=http)

    def get(self, name: str) -> bytes:
        data: bytes = self.emulator.client().bucket(self.bucket).blob(name).download_as_bytes()
        return data

    def put(self, name: str, data: bytes) -> None:
        self.emulator.upload(self.bucket, name, data)

    @staticmethod
    def unreachable(port: int) -> GcsStore:
        return GcsStore("b", emulator_host=f"127.0.0.1:{port}",
                        client_config=GcsClientConfig(retry_deadline_s=0.5, timeout_s=2))


@pytest.fixture(params=[S3Backend, GcsBackend], ids=["s3", "gs"])
def backend(request: pytest.FixtureRequest) -> Backend:
    made: Backend = request.param(request)
    return made


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[BucketStore]:
    s = backend.store(backend.bucket, "bdn/store")
    yield s
    await s.close()


def test_is_a_blob_store(store: BucketStore, backend: Backend) -> None:
    assert isinstance(store, BlobStore) and not store.read_only
    assert store.uri == f"{backend.scheme}://{backend.bucket}/bdn/store"
    assert store.local_path(BLOB) is None and store.staging_dir() is None


async def test_put_get_exists_size_delete(store: BucketStore, backend: Backend) -> None:
    assert not await store.exists(BLOB)
    await store.put_bytes(BLOB, b"hello")
    assert await store.exists(BLOB)
    assert await store.size(BLOB) == 5
    assert await store.get_bytes(BLOB) == b"hello"
    # Keys live under the store's prefix.
    assert backend.get(f"bdn/store/{BLOB}") == b"hello"
    await store.put_bytes(BLOB, b"hello")  # rewriting a key is fine
    await store.delete(BLOB)
    assert not await store.exists(BLOB)
    await store.delete(BLOB)  # missing is fine


async def test_empty_object(store: BucketStore) -> None:
    await store.put_bytes("refs/empty", b"")
    assert await store.size("refs/empty") == 0
    assert await store.get_bytes("refs/empty") == b""


async def test_list_with_prefix(store: BucketStore, backend: Backend) -> None:
    names = [BLOB, "blobs/sha256/cd/" + "cd" * 32, "manifests/m.json", "refs/a"]
    for name in reversed(names):
        await store.put_bytes(name, b"x")
    backend.put("elsewhere/blobs/x", b"x")
    backend.put("bdn/store-2/refs/a", b"x")
    assert [k async for k in store.list("")] == sorted(names)
    assert [k async for k in store.list("blobs/")] == names[:2]
    assert [k async for k in store.list("blobs/sha256/c")] == names[1:2]
    assert [k async for k in store.list("nothing/")] == []


async def test_reader_ranges(store: BucketStore, backend: Backend) -> None:
    data = bytes(range(256)) * 4096
    await store.put_bytes(BLOB, data)
    # Named by the object, never by a presigned URL or a token.
    assert store.reader(BLOB, len(data)).describe() == (
        f"{backend.scheme}://{backend.bucket}/bdn/store/{BLOB}")
    assert await read_range(store, BLOB, len(data), 0, len(data)) == data
    assert await read_range(store, BLOB, len(data), 1000, 70_000) == data[1000:70_000]


async def test_invalid_keys_are_refused(store: BucketStore) -> None:
    for key in ("../x", "/abs", "a//b"):
        with pytest.raises(StoreError, match="invalid key"):
            await store.put_bytes(key, b"")


async def test_missing_key_is_blob_not_found(store: BucketStore) -> None:
    await assert_blob_missing(store)


async def test_missing_bucket_is_not_found(backend: Backend) -> None:
    store = backend.store("no-such-bucket-here")
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        await store.get_bytes("refs/a")
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        _ = [k async for k in store.list("")]
    await store.close()


@pytest.mark.parametrize("kind", [S3Backend, GcsBackend], ids=["s3", "gs"])
async def test_unreachable_endpoint_says_what_to_do(kind: type[Backend]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = kind.unreachable(port)
    with pytest.raises(StoreError) as info:
        await store.get_bytes("refs/a")
    assert f"127.0.0.1:{port}" in str(info.value)
    for hint in kind.unreachable_hints:
        assert hint in str(info.value)
    await store.close()


async def test_put_file_move_removes_source(store: BucketStore, tmp_path: Path) -> None:
    src = tmp_path / "small.bin"
    src.write_bytes(b"abc")
    await store.put_file("refs/r", src, move=True)
    assert not src.exists()
    assert await store.get_bytes("refs/r") == b"abc"


async def test_put_file_missing_source(store: BucketStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"absent\.bin"):
        await store.put_file("refs/r", tmp_path / "absent.bin")


# -- sources ------------------------------------------------------------------

FOLDER = {
    "models/llama/config.json": b"{}",
    "models/llama/shards/w-00001.safetensors": b"a" * 100,
    "models/llama/shards/": b"",  # a console "folder" marker
    "models/llama-2/other.bin": b"not under the folder",
    "models/llamaX": b"nor this",
    "unrelated.bin": b"x",
}
"""Objects around and under ``models/llama``, which as a source is a folder."""


async def test_source_lists_prefix_as_folder(backend: Backend, http: HttpClient) -> None:
    for name, body in FOLDER.items():
        backend.put(name, body)
    src = backend.source(backend.bucket, "/models/llama/", http)
    assert isinstance(src, Source) and src.kind == backend.source_kind
    assert src.uri == f"{backend.scheme}://{backend.bucket}/models/llama"
    assert await src.resolve() is None
    objs = await src.list()
    assert [(o.path, o.size) for o in objs] == [("config.json", 2),
                                                ("shards/w-00001.safetensors", 100)]
    assert objs[0].sha256 is None


async def test_source_whole_bucket_and_empty_prefix(backend: Backend, http: HttpClient) -> None:
    backend.put("a/b.bin", b"x")
    assert [o.path for o in await backend.source(backend.bucket, "", http).list()] == ["a/b.bin"]
    assert await backend.source(backend.bucket, "nothing/here", http).list() == []


async def test_source_identity_changes_when_overwritten(backend: Backend,
                                                        http: HttpClient) -> None:
    backend.put("m/w.bin", b"one")
    src = backend.source(backend.bucket, "m", http)
    before = (await src.list())[0]
    assert (await src.list())[0].identity == before.identity
    backend.put("m/w.bin", b"two")  # same size, new ETag or generation
    after = (await src.list())[0]
    assert after.identity != before.identity and after.etag != before.etag
    assert after.content_id != before.content_id


async def test_source_range_reads(backend: Backend) -> None:
    data = bytes(range(256)) * 2048
    backend.put("m/dir with space/w.bin", data)
    src = backend.source(backend.bucket, "m", None)  # makes its own HTTP client
    try:
        (obj,) = await src.list()
        assert await read_source(src, obj, 0, len(data)) == data
        assert await read_source(src, obj, 100, 100_000) == data[100:100_000]
        reader = src.reader(obj)
        assert reader.describe() == f"{backend.scheme}://{backend.bucket}/m/dir with space/w.bin"
        # The server answers Range with 206: only the asked bytes travel.
        assert [bytes(p) async for p in reader.open_range(5, 9)] != []
        assert reader.supports_ranges is True
    finally:
        await src.close()
        await src.close()  # idempotent


async def test_source_missing_bucket(backend: Backend, http: HttpClient) -> None:
    src = backend.source("no-such-source-bucket", "m", http)
    with pytest.raises(SourceNotFound, match="no-such-source-bucket"):
        await src.list()


async def test_source_names_that_are_not_manifest_paths(backend: Backend,
                                                        http: HttpClient) -> None:
    backend.put("m/a//b.bin", b"x")
    with pytest.raises(SourceError, match=re.escape("a//b.bin")):
        await backend.source(backend.bucket, "m", http).list()
