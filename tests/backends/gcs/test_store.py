"""GcsStore against gcp-storage-emulator: the BlobStore contract, resumable uploads, errors."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.backends.base import BlobStore
from bdn.backends.gcs.client import GcsClientConfig
from bdn.backends.gcs.store import GcsStore
from bdn.errors import AuthError, ConfigError, NotFound, StoreError
from tests.backends.helpers import BLOB, MiB, read_range
from tests.gcsemulator import GcsEmulator


@pytest.fixture
async def store(gcs_emulator: GcsEmulator, gcs_bucket: str) -> AsyncIterator[GcsStore]:
    s = GcsStore(gcs_bucket, "bdn/store", emulator_host=gcs_emulator.host,
                 client_config=GcsClientConfig(upload_chunk_size=4 * MiB))
    yield s
    await s.close()


def test_is_a_blob_store(store: GcsStore, gcs_bucket: str) -> None:
    assert isinstance(store, BlobStore) and not store.read_only
    assert store.uri == f"gs://{gcs_bucket}/bdn/store"
    assert store.local_path(BLOB) is None and store.staging_dir() is None


def test_open_store_knows_gs(gcs_emulator: GcsEmulator) -> None:
    opened = open_store("gs://weights/bdn/", gcs_emulator_host=gcs_emulator.host)
    assert isinstance(opened, GcsStore) and opened.uri == "gs://weights/bdn"
    with pytest.raises(ConfigError, match=r"gs://bucket\[/prefix\]"):
        open_store("gs:///nobucket")


async def test_put_get_exists_size_delete(store: GcsStore, gcs_emulator: GcsEmulator,
                                          gcs_bucket: str) -> None:
    assert not await store.exists(BLOB)
    await store.put_bytes(BLOB, b"hello")
    assert await store.exists(BLOB)
    assert await store.size(BLOB) == 5
    assert await store.get_bytes(BLOB) == b"hello"
    # Keys live under the store's prefix.
    blob = gcs_emulator.client().bucket(gcs_bucket).blob(f"bdn/store/{BLOB}")
    assert blob.download_as_bytes() == b"hello"
    await store.put_bytes(BLOB, b"hello")  # rewriting a key is fine
    await store.delete(BLOB)
    assert not await store.exists(BLOB)
    await store.delete(BLOB)  # missing is fine


async def test_empty_object(store: GcsStore) -> None:
    await store.put_bytes("refs/empty", b"")
    assert await store.size("refs/empty") == 0
    assert await store.get_bytes("refs/empty") == b""


async def test_put_file_resumable_in_chunks(store: GcsStore, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    # Past the SDK's 8 MiB single-request limit: a resumable upload in 4 MiB chunks.
    data = bytes(range(256)) * (9 * MiB // 256) + b"tail"
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with caplog.at_level(logging.INFO, logger="gcp_storage_emulator.server"):
        await store.put_file(BLOB, src)
    chunks = [r for r in caplog.records if '"PUT /upload/storage/v1/b/' in r.getMessage()]
    assert len(chunks) == 3
    assert src.exists()
    assert await store.size(BLOB) == len(data)
    assert await store.get_bytes(BLOB) == data


async def test_list_with_prefix(store: GcsStore, gcs_emulator: GcsEmulator,
                                gcs_bucket: str) -> None:
    names = [BLOB, "blobs/sha256/cd/" + "cd" * 32, "manifests/m.json", "refs/a"]
    for name in reversed(names):
        await store.put_bytes(name, b"x")
    gcs_emulator.upload(gcs_bucket, "elsewhere/blobs/x", b"x")
    gcs_emulator.upload(gcs_bucket, "bdn/store-2/refs/a", b"x")
    assert [k async for k in store.list("")] == sorted(names)
    assert [k async for k in store.list("blobs/")] == names[:2]
    assert [k async for k in store.list("blobs/sha256/c")] == names[1:2]
    assert [k async for k in store.list("nothing/")] == []


async def test_reader_ranges(store: GcsStore) -> None:
    data = bytes(range(256)) * 4096
    await store.put_bytes(BLOB, data)
    reader = store.reader(BLOB, len(data))
    assert reader.describe() == f"gs://{store.bucket}/bdn/store/{BLOB}"
    assert await read_range(store, BLOB, len(data), 0, len(data)) == data
    assert await read_range(store, BLOB, len(data), 1000, 70_000) == data[1000:70_000]


async def test_invalid_keys_are_refused(store: GcsStore) -> None:
    for key in ("../x", "/abs", "a//b"):
        with pytest.raises(StoreError, match="invalid key"):
            await store.put_bytes(key, b"")


async def test_missing_bucket_is_not_found(gcs_emulator: GcsEmulator) -> None:
    store = GcsStore("no-such-bucket-here", emulator_host=gcs_emulator.host)
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        await store.get_bytes("refs/a")
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        _ = [k async for k in store.list("")]
    await store.close()


async def test_unreachable_endpoint_says_what_to_do() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = GcsStore("b", emulator_host=f"127.0.0.1:{port}",
                     client_config=GcsClientConfig(retry_deadline_s=0.5, timeout_s=2))
    with pytest.raises(StoreError) as info:
        await store.get_bytes("refs/a")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "STORAGE_EMULATOR_HOST" in str(info.value)
    await store.close()


async def test_no_ambient_credentials_is_auth_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # google-auth's own lookup (ADC) starts with this variable; a missing file
    # fails at once, without reaching for a metadata server.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    store = GcsStore("b")
    with pytest.raises(AuthError, match="no GCP credentials found"):
        await store.get_bytes("refs/a")
    await store.close()
