"""GcsStore against gcp-storage-emulator: ``open_store``, resumable uploads, missing
credentials (what every bucket store does alike is in tests/backends/test_bucket.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.backends.gcs.client import GcsClientConfig
from bdn.backends.gcs.store import GcsStore
from bdn.errors import AuthError, ConfigError
from tests.backends.helpers import BLOB, MiB
from tests.gcsemulator import GcsEmulator


@pytest.fixture
async def store(gcs_emulator: GcsEmulator, gcs_bucket: str) -> AsyncIterator[GcsStore]:
    s = GcsStore(gcs_bucket, "bdn/store", emulator_host=gcs_emulator.host,
                 client_config=GcsClientConfig(upload_chunk_size=4 * MiB))
    yield s
    await s.close()


def test_open_store_knows_gs(gcs_emulator: GcsEmulator) -> None:
    opened = open_store("gs://weights/bdn/", gcs_emulator_host=gcs_emulator.host)
    assert isinstance(opened, GcsStore) and opened.uri == "gs://weights/bdn"
    with pytest.raises(ConfigError, match=r"gs://bucket\[/prefix\]"):
        open_store("gs:///nobucket")


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


async def test_no_ambient_credentials_is_auth_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # google-auth's own lookup (ADC) starts with this variable; a missing file
    # fails at once, without reaching for a metadata server.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    store = GcsStore("b")
    with pytest.raises(AuthError, match="no GCP credentials found"):
        await store.get_bytes("refs/a")
    await store.close()
