"""What S3Store (on moto) and GcsStore (on the emulator) must both do alike: missing
keys, uploads of local files that move or are missing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bdn.backends.gcs.store import GcsStore
from bdn.backends.s3.creds import S3Credentials
from bdn.backends.s3.store import S3Store
from bdn.errors import BlobNotFound, StoreError
from tests.backends.helpers import BLOB, read_range
from tests.conftest import MotoS3
from tests.gcsemulator import GcsEmulator


def _s3_store(request: pytest.FixtureRequest) -> S3Store:
    moto: MotoS3 = request.getfixturevalue("moto_s3")
    return S3Store(request.getfixturevalue("s3_bucket"), "bdn/store",
                   endpoint_url=moto.endpoint_url,
                   credentials=S3Credentials(moto.access_key_id, moto.secret_access_key,
                                             region=moto.region))


def _gcs_store(request: pytest.FixtureRequest) -> GcsStore:
    emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
    return GcsStore(request.getfixturevalue("gcs_bucket"), "bdn/store",
                    emulator_host=emulator.host)


@pytest.fixture(params=[_s3_store, _gcs_store], ids=["s3", "gs"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[S3Store | GcsStore]:
    s: S3Store | GcsStore = request.param(request)
    yield s
    await s.close()


async def test_missing_key_is_blob_not_found(store: S3Store | GcsStore) -> None:
    with pytest.raises(BlobNotFound) as info:
        await store.get_bytes(BLOB)
    assert info.value.digest == "sha256:" + "ab" * 32
    with pytest.raises(BlobNotFound):
        await store.size(BLOB)
    with pytest.raises(BlobNotFound):
        await read_range(store, BLOB, 10, 0, 10)


async def test_put_file_move_removes_source(store: S3Store | GcsStore, tmp_path: Path) -> None:
    src = tmp_path / "small.bin"
    src.write_bytes(b"abc")
    await store.put_file("refs/r", src, move=True)
    assert not src.exists()
    assert await store.get_bytes("refs/r") == b"abc"


async def test_put_file_missing_source(store: S3Store | GcsStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"absent\.bin"):
        await store.put_file("refs/r", tmp_path / "absent.bin")
