"""Mirror end to end with GCS and R2: gs:// as source and as store on the emulator,
r2:// on moto through the endpoint override; unchanged re-mirrors move nothing."""

from __future__ import annotations

import json
from pathlib import Path

from bdn.backends import open_store
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.mirror import MirrorOptions, MirrorResult, run_mirror
from bdn.store import Store, blob_key
from tests.conftest import MotoS3
from tests.fixtures import pattern_bytes
from tests.gcsemulator import GcsEmulator

CHUNK = 64 * 1024
FILES = {f"model-0000{i}-of-00003.safetensors": pattern_bytes(i, 2 * CHUNK + 77)
         for i in range(1, 4)}
FILES["config.json"] = b'{"hidden_size": 64}'
TOTAL = sum(len(v) for v in FILES.values())


async def mirror(entry: WeightsEntry, store_uri: str, emu: GcsEmulator,
                 secrets: SecretResolver | None = None, r2: str | None = None) -> MirrorResult:
    store = open_store(store_uri, gcs_emulator_host=emu.host)
    options = MirrorOptions(chunk_size=CHUNK, gcs_emulator_host=emu.host, r2_endpoint_url=r2)
    try:
        return await run_mirror(entry, store=store, secrets=secrets or SecretResolver(None, {}),
                                options=options)
    finally:
        await store.close()


async def test_gcs_source_into_file_store(gcs_emulator: GcsEmulator, gcs_bucket: str,
                                          tmp_path: Path) -> None:
    for path, data in FILES.items():
        gcs_emulator.upload(gcs_bucket, f"models/base/{path}", data)
    entry = WeightsEntry(source=f"gs://{gcs_bucket}/models/base")
    store_uri = f"file://{tmp_path / 'store'}"

    first = await mirror(entry, store_uri, gcs_emulator)
    assert (first.files, first.total_bytes, first.bytes_stored) == (4, TOTAL, TOTAL)
    assert first.bytes_transferred == TOTAL

    again = await mirror(entry, store_uri, gcs_emulator)
    assert again.manifest_id == first.manifest_id
    assert (again.bytes_transferred, again.bytes_stored, again.bytes_deduplicated) == (0, 0, TOTAL)

    store = Store(open_store(store_uri))
    manifest = await store.get_manifest(first.manifest_id)
    assert (manifest.source.uri, manifest.source.kind) == (f"gs://{gcs_bucket}/models/base", "gcs")
    generations = {b.name.removeprefix("models/base/"): str(b.generation)
                   for b in gcs_emulator.client().list_blobs(gcs_bucket, prefix="models/base/")}
    for f in manifest.files:
        assert f.source_etag == generations[f.path]
        assert await store.backend.get_bytes(blob_key(f.sha256)) == FILES[f.path]

    # Overwriting one object (new generation) moves exactly that object again.
    changed = pattern_bytes(99, CHUNK + 3)
    gcs_emulator.upload(gcs_bucket, "models/base/config.json", changed)
    third = await mirror(entry, store_uri, gcs_emulator)
    assert third.bytes_transferred == len(changed) == third.bytes_stored


async def test_copied_shards_in_the_same_bucket_dedup_by_md5(gcs_emulator: GcsEmulator,
                                                             gcs_bucket: str,
                                                             tmp_path: Path) -> None:
    tuned = dict(FILES)
    tuned["model-00003-of-00003.safetensors"] = pattern_bytes(33, 2 * CHUNK + 77)
    for prefix, files in (("base", FILES), ("tuned", tuned)):
        for path, data in files.items():
            gcs_emulator.upload(gcs_bucket, f"{prefix}/{path}", data)
    store_uri = f"file://{tmp_path / 'store'}"
    await mirror(WeightsEntry(source=f"gs://{gcs_bucket}/base"), store_uri, gcs_emulator)
    res = await mirror(WeightsEntry(source=f"gs://{gcs_bucket}/tuned"), store_uri, gcs_emulator)
    new = len(tuned["model-00003-of-00003.safetensors"])
    assert (res.bytes_transferred, res.bytes_stored) == (new, new)


async def test_local_dir_into_gcs_store(gcs_emulator: GcsEmulator, gcs_bucket: str,
                                        tmp_path: Path) -> None:
    src = tmp_path / "model"
    for path, data in FILES.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    entry = WeightsEntry(source=f"file://{src}")
    store_uri = f"gs://{gcs_bucket}/bdn"

    first = await mirror(entry, store_uri, gcs_emulator)
    assert first.bytes_stored == TOTAL
    again = await mirror(entry, store_uri, gcs_emulator)
    assert again.manifest_id == first.manifest_id
    assert (again.bytes_transferred, again.bytes_stored) == (0, 0)

    store = Store(open_store(store_uri, gcs_emulator_host=gcs_emulator.host))
    try:
        assert await store.get_ref(entry.config_hash()) == first.manifest_id
        manifest = await store.get_manifest(first.manifest_id)
        for f in manifest.files:
            reader = store.backend.reader(blob_key(f.sha256), f.size)
            assert b"".join([bytes(p) async for p in reader.open_range(0, f.size)]) == FILES[f.path]
        assert (await store.check(deep=True)).ok
    finally:
        await store.backend.close()


async def test_r2_source_into_file_store(moto_s3: MotoS3, s3_bucket: str,
                                         gcs_emulator: GcsEmulator, tmp_path: Path) -> None:
    client = moto_s3.client()
    for path, data in FILES.items():
        client.put_object(Bucket=s3_bucket, Key=f"m/{path}", Body=data)
    secret = json.dumps({"aws_access_key_id": moto_s3.access_key_id,
                         "aws_secret_access_key": moto_s3.secret_access_key})
    secrets = SecretResolver(None, {"BDN_SECRET_R2_CREDENTIALS": secret})
    entry = WeightsEntry(source=f"r2://0123abcd.{s3_bucket}/m",
                         auth=AuthConfig(auth_method="CUSTOM_SECRET",
                                         auth_secret_name="r2_credentials"))
    store_uri = f"file://{tmp_path / 'store'}"

    first = await mirror(entry, store_uri, gcs_emulator, secrets, r2=moto_s3.endpoint_url)
    assert (first.files, first.bytes_stored) == (4, TOTAL)
    again = await mirror(entry, store_uri, gcs_emulator, secrets, r2=moto_s3.endpoint_url)
    assert again.manifest_id == first.manifest_id
    assert (again.bytes_transferred, again.bytes_stored) == (0, 0)
    manifest = await Store(open_store(store_uri)).get_manifest(first.manifest_id)
    assert (manifest.source.uri, manifest.source.kind) == (f"r2://0123abcd.{s3_bucket}/m", "r2")
