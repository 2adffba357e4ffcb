"""The mirror's edges on Azurite: a blob that changes while it is mirrored (read
pinned with If-Match; re-listed before the manifest), and a blob bigger than one
Put Blob, staged as blocks (the threshold lowered so 12 MiB takes that path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.backends.azure.creds import AzureCredentials
from bdn.backends.azure.store import AzureStore
from bdn.backends.bucket import MiB
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import SourceError
from bdn.http import HttpClient
from bdn.mirror import MirrorOptions, run_mirror
from bdn.store import Store, blob_key
from tests.backends.azure.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.fixtures import pattern_bytes
from tests.mirror.changes import FIRST, SECOND, SERIAL, ChangeAt, assert_nothing_published

AUTH = AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name="azure_credentials")
SECRETS = SecretResolver(None, {"BDN_SECRET_AZURE_CREDENTIALS":
                                json.dumps({"account_key": ACCOUNT_KEY})})
CHANGED = "changed upstream while it was being mirrored"


def _options(azurite: Azurite, base: MirrorOptions = SERIAL) -> MirrorOptions:
    fields = {name: getattr(base, name) for name in base.__slots__}  # type: ignore[attr-defined]
    return MirrorOptions(**{**fields, "azure_endpoint_url": azurite.endpoint})


async def _mirror_changing(azurite: Azurite, container: str, tmp_path: Path,
                           hook: ChangeAt) -> SourceError:
    store = open_store(f"file://{tmp_path / 'store'}")
    entry = WeightsEntry(source=f"azure://{ACCOUNT}/{container}/m", auth=AUTH)
    try:
        with pytest.raises(SourceError) as info:
            await run_mirror(entry, store=store, secrets=SECRETS, options=_options(azurite),
                             on_progress=hook)
    finally:
        await store.close()
    assert hook.done and "\n" not in str(info.value)
    await assert_nothing_published(open_store(f"file://{tmp_path / 'store'}"))
    return info.value


async def test_blob_rewritten_while_read_fails_on_if_match(
        azurite: Azurite, container: str, tmp_path: Path) -> None:
    azurite.upload(container, "m/a.bin", pattern_bytes(1, FIRST))
    azurite.upload(container, "m/b.bin", pattern_bytes(2, SECOND))
    hook = ChangeAt(FIRST, lambda: azurite.upload(container, "m/b.bin", pattern_bytes(3, SECOND)))
    err = await _mirror_changing(azurite, container, tmp_path, hook)
    assert f"azure://{ACCOUNT}/{container}/m/b.bin {CHANGED}" in str(err)
    assert "nothing of it was stored" in str(err)


async def test_blob_rewritten_after_its_copy_fails_before_the_manifest(
        azurite: Azurite, container: str, tmp_path: Path) -> None:
    listed = azurite.upload(container, "m/a.bin", pattern_bytes(1, FIRST))
    azurite.upload(container, "m/b.bin", pattern_bytes(2, SECOND))
    hook = ChangeAt(FIRST, lambda: azurite.upload(container, "m/a.bin", pattern_bytes(4, FIRST)))
    err = await _mirror_changing(azurite, container, tmp_path, hook)
    assert f"azure://{ACCOUNT}/{container}/m/a.bin {CHANGED}" in str(err)
    assert f"listed as {listed.etag.strip(chr(34))}" in str(err)
    assert "no manifest was written" in str(err)


async def test_a_blob_over_one_put_is_staged_as_blocks(
        azurite: Azurite, container: str, http: HttpClient) -> None:
    data = pattern_bytes(5, 12 * MiB + 5)
    azurite.upload(container, "src/big.bin", data)
    store = AzureStore(ACCOUNT, container, "store", credentials=AzureCredentials(
        ACCOUNT, ACCOUNT_KEY), endpoint_url=azurite.endpoint, http=http,
        single_put_size=5 * MiB, block_size=5 * MiB)
    entry = WeightsEntry(source=f"azure://{ACCOUNT}/{container}/src", auth=AUTH)
    try:
        result = await run_mirror(entry, store=store, secrets=SECRETS, http=http,
                                  options=MirrorOptions(azure_endpoint_url=azurite.endpoint))
        [f] = (await Store(store).get_manifest(result.manifest_id)).files
        blob = azurite.client().get_blob_client(container, f"store/{blob_key(f.sha256)}")
        committed, uncommitted = blob.get_block_list("all")
        assert [b.size for b in committed] == [5 * MiB, 5 * MiB, 2 * MiB + 5]
        assert uncommitted == []
        assert blob.download_blob().readall() == data
    finally:
        await store.close()

