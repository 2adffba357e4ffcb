"""A source that changes while it is mirrored fails the mirror with one line naming
the object, and publishes nothing: s3:// on moto, gs:// on gcp-storage-emulator,
file:// (azure:// is in tests/backends/azure/test_mirror_edges.py).

Two paths are covered for each: the object being read changes (the pinned read
fails: S3 ``If-Match`` answers 412, a GCS ``generation`` that is gone answers
404), and an object already copied changes (the second listing before the
manifest catches it, and the index entries of that object are dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.backends.base import BlobStore
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import SourceError
from bdn.mirror import MirrorOptions, run_mirror
from tests.conftest import MotoS3
from tests.fixtures import pattern_bytes
from tests.gcsemulator import GcsEmulator
from tests.mirror.changes import FIRST, SECOND, SERIAL, ChangeAt, assert_nothing_published

A, B = pattern_bytes(1, FIRST), pattern_bytes(2, SECOND)
CHANGED_A, CHANGED_B = pattern_bytes(3, FIRST), pattern_bytes(4, SECOND)
CHANGED = "changed upstream while it was being mirrored"


def _s3_secrets(moto: MotoS3) -> SecretResolver:
    return SecretResolver(None, {"BDN_SECRET_AWS_CREDENTIALS": json.dumps({
        "aws_access_key_id": moto.access_key_id,
        "aws_secret_access_key": moto.secret_access_key})})


async def _mirror(entry: WeightsEntry, store: BlobStore, secrets: SecretResolver,
                  options: MirrorOptions, hook: ChangeAt) -> None:
    try:
        await run_mirror(entry, store=store, secrets=secrets, options=options, on_progress=hook)
    finally:
        await store.close()


def _s3(moto: MotoS3, bucket: str) -> tuple[WeightsEntry, SecretResolver, MirrorOptions]:
    client = moto.client()
    client.put_object(Bucket=bucket, Key="m/a.bin", Body=A)
    client.put_object(Bucket=bucket, Key="m/b.bin", Body=B)
    entry = WeightsEntry(source=f"s3://{bucket}/m", auth=AuthConfig(
        auth_method="CUSTOM_SECRET", auth_secret_name="aws_credentials"))
    options = MirrorOptions(**{**_fields(SERIAL), "endpoint_url": moto.endpoint_url})
    return entry, _s3_secrets(moto), options


def _fields(options: MirrorOptions) -> dict[str, object]:
    return {name: getattr(options, name) for name in options.__slots__}  # type: ignore[attr-defined]


async def test_s3_object_rewritten_while_read_fails_on_if_match(
        moto_s3: MotoS3, s3_bucket: str, tmp_path: Path) -> None:
    entry, secrets, options = _s3(moto_s3, s3_bucket)
    rewrite = ChangeAt(FIRST, lambda: moto_s3.client().put_object(
        Bucket=s3_bucket, Key="m/b.bin", Body=CHANGED_B))
    store = open_store(f"file://{tmp_path / 'store'}")
    with pytest.raises(SourceError, match=f"s3://{s3_bucket}/m/b.bin {CHANGED}") as info:
        await _mirror(entry, store, secrets, options, rewrite)
    message = str(info.value)
    assert rewrite.done and "\n" not in message and "run the mirror again" in message
    assert "nothing of it was stored" in message  # the read failed, not the re-list
    await assert_nothing_published(open_store(f"file://{tmp_path / 'store'}"))


async def test_s3_object_rewritten_after_its_copy_fails_before_the_manifest(
        moto_s3: MotoS3, s3_bucket: str, tmp_path: Path) -> None:
    entry, secrets, options = _s3(moto_s3, s3_bucket)
    first = moto_s3.client().head_object(Bucket=s3_bucket, Key="m/a.bin")["ETag"].strip('"')
    rewrite = ChangeAt(FIRST, lambda: moto_s3.client().put_object(
        Bucket=s3_bucket, Key="m/a.bin", Body=CHANGED_A))
    store = open_store(f"file://{tmp_path / 'store'}")
    with pytest.raises(SourceError, match=f"s3://{s3_bucket}/m/a.bin {CHANGED}") as info:
        await _mirror(entry, store, secrets, options, rewrite)
    assert f"listed as {first}" in str(info.value) and "no manifest was written" in str(info.value)
    identity = f"s3:{moto_s3.endpoint_url}:{s3_bucket}/m/a.bin:{first}:{FIRST}"
    await assert_nothing_published(open_store(f"file://{tmp_path / 'store'}"), (identity,))


def _gcs(emu: GcsEmulator, bucket: str) -> tuple[WeightsEntry, MirrorOptions]:
    emu.upload(bucket, "m/a.bin", A)
    emu.upload(bucket, "m/b.bin", B)
    options = MirrorOptions(**{**_fields(SERIAL), "gcs_emulator_host": emu.host})
    return WeightsEntry(source=f"gs://{bucket}/m"), options


async def test_gcs_generation_gone_while_read_fails(
        gcs_emulator: GcsEmulator, gcs_bucket: str, tmp_path: Path) -> None:
    # gcp-storage-emulator ignores ``generation=`` on downloads (it serves the
    # newest bytes), so the pin is shown with the object deleted: a generation
    # that no longer exists answers 404, as GCS answers for an overwritten one.
    entry, options = _gcs(gcs_emulator, gcs_bucket)
    delete = ChangeAt(FIRST, lambda: gcs_emulator.client().bucket(gcs_bucket).blob(
        "m/b.bin").delete())
    store = open_store(f"file://{tmp_path / 'store'}")
    with pytest.raises(SourceError, match=f"gs://{gcs_bucket}/m/b.bin {CHANGED}") as info:
        await _mirror(entry, store, SecretResolver(None, {}), options, delete)
    assert "nothing of it was stored" in str(info.value)  # the read failed, not the re-list
    await assert_nothing_published(open_store(f"file://{tmp_path / 'store'}"))


async def test_gcs_object_rewritten_while_read_never_reaches_a_manifest(
        gcs_emulator: GcsEmulator, gcs_bucket: str, tmp_path: Path) -> None:
    # On the emulator the rewritten object's later ranges carry the new bytes
    # (no generation pin there): the second listing sees the new generation,
    # so the mixed file is never published and its index entry is dropped.
    entry, options = _gcs(gcs_emulator, gcs_bucket)
    listed = gcs_emulator.client().bucket(gcs_bucket).get_blob("m/b.bin")
    rewrite = ChangeAt(FIRST, lambda: gcs_emulator.upload(gcs_bucket, "m/b.bin", CHANGED_B))
    store = open_store(f"file://{tmp_path / 'store'}")
    with pytest.raises(SourceError, match=f"gs://{gcs_bucket}/m/b.bin {CHANGED}") as info:
        await _mirror(entry, store, SecretResolver(None, {}), options, rewrite)
    assert f"listed as {listed.generation}" in str(info.value)
    assert "no manifest was written" in str(info.value)
    identity = f"gcs:{gcs_emulator.endpoint}:{gcs_bucket}/m/b.bin#{listed.generation}"
    await assert_nothing_published(open_store(f"file://{tmp_path / 'store'}"), (identity,))


async def test_local_file_rewritten_after_its_copy_fails(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(A)
    (src / "b.bin").write_bytes(B)

    def rewrite_a() -> None:
        tmp = src / "a.bin.new"
        tmp.write_bytes(CHANGED_A)
        tmp.replace(src / "a.bin")

    hook = ChangeAt(FIRST, rewrite_a)
    store = open_store(f"file://{tmp_path / 'store'}")
    with pytest.raises(SourceError, match=f"{src}/a.bin {CHANGED}") as info:
        await _mirror(WeightsEntry(source=f"file://{src}"), store, SecretResolver(None, {}),
                      SERIAL, hook)
    assert hook.done and "no manifest was written" in str(info.value)
    await assert_nothing_published(open_store(f"file://{tmp_path / 'store'}"))
