"""AzureStore against Azurite (the BlobStore contract), and a whole mirror from an
azure:// source into an azure:// store, then again with nothing to move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bdn.backends import SourceEnv, open_store
from bdn.backends.azure.creds import AzureCredentials
from bdn.backends.azure.store import AzureStore
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import BlobNotFound, ConfigError
from bdn.http import HttpClient
from bdn.mirror.run import MirrorOptions, run_mirror
from tests.backends.azure.azurite import ACCOUNT, ACCOUNT_KEY, Azurite

KEY = AzureCredentials(ACCOUNT, ACCOUNT_KEY)


def store(azurite: Azurite, container: str, http: HttpClient | None = None) -> AzureStore:
    opened = open_store(f"azure://{ACCOUNT}/{container}/bdn/", azure_credentials=KEY,
                        azure_endpoint_url=azurite.endpoint, http=http)
    assert isinstance(opened, AzureStore)
    return opened


async def test_store_contract(azurite: Azurite, container: str, tmp_path: Path,
                              http: HttpClient) -> None:
    st = store(azurite, container, http)
    try:
        assert st.uri == f"azure://{ACCOUNT}/{container}/bdn" and not st.read_only
        assert not await st.exists("refs/a")
        await st.put_bytes("refs/a", b"one")
        assert await st.get_bytes("refs/a") == b"one" and await st.size("refs/a") == 3
        big = tmp_path / "big"
        big.write_bytes(b"z" * (3 * 1024 * 1024 + 7))
        await st.put_file("blobs/big", big, move=True)
        assert not big.exists() and await st.size("blobs/big") == 3 * 1024 * 1024 + 7
        reader = st.reader("blobs/big", 3 * 1024 * 1024 + 7)
        assert b"".join([bytes(p) async for p in reader.open_range(5, 10)]) == b"zzzzz"
        assert [k async for k in st.list("")] == ["blobs/big", "refs/a"]
        await st.delete("refs/a")
        await st.delete("refs/a")  # missing: not an error
        with pytest.raises(BlobNotFound):
            await st.get_bytes("refs/a")
    finally:
        await st.close()


def test_store_uri_needs_a_container() -> None:
    with pytest.raises(ConfigError, match="azure://account/container"):
        open_store("azure://acct")


async def test_mirror_azure_to_azure_then_nothing_moves(
        azurite: Azurite, container: str, http: HttpClient) -> None:
    azurite.upload(container, "src/w.bin", bytes(range(256)) * 8192)
    azurite.upload(container, "src/config.json", b'{"a": 1}')
    entry = WeightsEntry(source=f"azure://{ACCOUNT}/{container}/src",
                         auth=AuthConfig(auth_method="CUSTOM_SECRET",
                                         auth_secret_name="azure_credentials"))
    secrets = SecretResolver(None, {"BDN_SECRET_AZURE_CREDENTIALS":
                                    json.dumps({"account_key": ACCOUNT_KEY})})
    options = MirrorOptions(azure_endpoint_url=azurite.endpoint)
    st = store(azurite, container, http)
    try:
        first = await run_mirror(entry, store=st, secrets=secrets, options=options, http=http)
        assert first.files == 2 and first.bytes_stored == 256 * 8192 + 8
        again = await run_mirror(entry, store=st, secrets=secrets, options=options, http=http)
        assert again.manifest_id == first.manifest_id
        assert again.bytes_transferred == 0 and again.bytes_stored == 0
    finally:
        await st.close()


def test_source_env_carries_the_endpoint() -> None:
    assert SourceEnv(azure_endpoint_url="http://127.0.0.1:1").azure_endpoint_url
