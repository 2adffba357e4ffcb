"""AzureSource against Azurite: listing (size, ETag, Content-MD5), ranged reads on
SAS URLs, the secret format, errors, and a blob rewritten while it is read."""

from __future__ import annotations

import json
import traceback

import pytest

from bdn.backends import SourceEnv, open_source
from bdn.backends.azure.creds import AzureCredentials
from bdn.backends.azure.source import AzureSource, azure_source_from_entry
from bdn.backends.base import Source
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import AuthError, ConfigError, SecretError, SourceError, SourceNotFound
from bdn.http import HttpClient
from tests.backends.azure.azurite import ACCOUNT, ACCOUNT_KEY, Azurite

AUTH = AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name="azure_credentials")
FAKE_KEY = "zzFAKE-azure-KEY-value-0099"  # Distinctive: must never appear in an error.


def secrets(key: str = ACCOUNT_KEY) -> SecretResolver:
    return SecretResolver(None, {"BDN_SECRET_AZURE_CREDENTIALS": json.dumps({"account_key": key})})


def source(azurite: Azurite, uri: str, http: HttpClient, auth: AuthConfig | None = AUTH,
           key: str = ACCOUNT_KEY) -> Source:
    return open_source(WeightsEntry(source=uri, auth=auth), secrets=secrets(key), http=http,
                       env=SourceEnv(azure_endpoint_url=azurite.endpoint))


async def test_lists_with_sizes_etags_and_md5_and_reads_ranges(
        azurite: Azurite, container: str, http: HttpClient) -> None:
    data = bytes(range(256)) * 4096
    azurite.upload(container, "models/m/w.bin", data)
    azurite.upload(container, "models/m/sub/config.json", b"{}")
    azurite.upload(container, "models/m-2/other.bin", b"x")  # a sibling, not under the folder
    src = source(azurite, f"azure://{ACCOUNT}/{container}/models/m/", http)
    try:
        assert isinstance(src, AzureSource) and src.kind == "azure"
        assert src.uri == f"azure://{ACCOUNT}/{container}/models/m"
        objs = await src.list()
        assert [(o.path, o.size) for o in objs] == [("sub/config.json", 2), ("w.bin", len(data))]
        assert all(o.etag and o.content_id and o.content_id.startswith("azure-md5:")
                   for o in objs)
        reader = src.reader(objs[1])
        got = b"".join([bytes(p) async for p in reader.open_range(100, 200_000)])
        assert got == data[100:200_000]
        assert "sig=" not in reader.describe()
    finally:
        await src.close()


async def test_public_container_reads_without_credentials(
        azurite: Azurite, http: HttpClient) -> None:
    name = azurite.make_container("bdn-public-read", public=True)
    azurite.upload(name, "a.bin", b"hello world")
    src = source(azurite, f"azure://{ACCOUNT}/{name}", http, auth=None)
    try:
        [obj] = await src.list()
        reader = src.reader(obj)
        assert b"".join([bytes(p) async for p in reader.open_range(6, 11)]) == b"world"
    finally:
        await src.close()


async def test_blob_rewritten_mid_mirror_fails_clearly(
        azurite: Azurite, container: str, http: HttpClient) -> None:
    azurite.upload(container, "w.bin", b"a" * 1000)
    src = source(azurite, f"azure://{ACCOUNT}/{container}", http)
    try:
        [obj] = await src.list()
        azurite.upload(container, "w.bin", b"b" * 1000)  # same size, new ETag
        reader = src.reader(obj)
        with pytest.raises(SourceError, match="changed upstream while it was being mirrored"):
            _ = [p async for p in reader.open_range(0, 500)]
    finally:
        await src.close()


async def test_missing_container_and_wrong_key(azurite: Azurite, http: HttpClient) -> None:
    src = source(azurite, f"azure://{ACCOUNT}/no-such-container", http)
    with pytest.raises(SourceNotFound, match="does not exist"):
        await src.list()
    await src.close()
    name = azurite.make_container("bdn-wrong-key")
    bad = source(azurite, f"azure://{ACCOUNT}/{name}", http,
                 key="QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    with pytest.raises(AuthError) as info:
        await bad.list()
    await bad.close()
    assert "account_key" in str(info.value) and "\n" not in str(info.value)


def test_secret_format_is_truss_account_key() -> None:
    with pytest.raises(SecretError) as info:
        azure_source_from_entry(WeightsEntry(source="azure://acct/c", auth=AUTH),
                                secrets=SecretResolver(None, {
                                    "BDN_SECRET_AZURE_CREDENTIALS": json.dumps({"key": FAKE_KEY})}),
                                http=HttpClient())
    text = "".join(traceback.format_exception(info.value))
    assert "account_key is required" in str(info.value)
    assert FAKE_KEY not in text
    creds = AzureCredentials("acct", FAKE_KEY)
    assert FAKE_KEY not in repr(creds)


def test_oidc_and_nameless_secret_are_refused() -> None:
    with pytest.raises(ConfigError, match="secret_id is required"):
        azure_source_from_entry(
            WeightsEntry(source="azure://acct/c", auth=AuthConfig(auth_method="CUSTOM_SECRET")),
            secrets=SecretResolver(None, {}), http=HttpClient())
