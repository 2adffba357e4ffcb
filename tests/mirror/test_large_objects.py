"""Objects bigger than one upload request reach every bucket store in pieces.

S3 refuses a single PUT or CopyObject over 5 GiB, so the S3 store uploads a blob
above one part as a multipart upload; the GCS store uses a resumable upload in
chunks (azure:// is in tests/backends/azure/test_mirror_edges.py). Nothing here
moves 5 GiB: the part and chunk sizes are lowered so a 12 MiB object takes the
same path, and the test checks that it did, and that the bytes are exact.
"""

from __future__ import annotations

import json
import logging

import pytest

from bdn.backends.bucket import MiB
from bdn.backends.gcs.client import GcsClientConfig
from bdn.backends.gcs.store import GcsStore
from bdn.backends.s3.creds import S3Credentials
from bdn.backends.s3.store import S3Store
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.mirror import MirrorOptions, run_mirror
from bdn.store import Store, blob_key
from tests.conftest import MotoS3
from tests.fixtures import pattern_bytes
from tests.gcsemulator import GcsEmulator

BIG = pattern_bytes(7, 12 * MiB + 3)


async def test_s3_source_to_s3_store_in_multipart_parts(moto_s3: MotoS3, s3_bucket: str) -> None:
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="src/big.bin", Body=BIG)
    store = S3Store(s3_bucket, "store", endpoint_url=moto_s3.endpoint_url, part_size=5 * MiB,
                    credentials=S3Credentials(moto_s3.access_key_id, moto_s3.secret_access_key,
                                              region=moto_s3.region))
    secrets = SecretResolver(None, {"BDN_SECRET_AWS_CREDENTIALS": json.dumps({
        "aws_access_key_id": moto_s3.access_key_id,
        "aws_secret_access_key": moto_s3.secret_access_key})})
    entry = WeightsEntry(source=f"s3://{s3_bucket}/src", auth=AuthConfig(
        auth_method="CUSTOM_SECRET", auth_secret_name="aws_credentials"))
    try:
        result = await run_mirror(entry, store=store, secrets=secrets,
                                  options=MirrorOptions(endpoint_url=moto_s3.endpoint_url))
        [f] = (await Store(store).get_manifest(result.manifest_id)).files
    finally:
        await store.close()
    key = f"store/{blob_key(f.sha256)}"
    # A multipart upload's ETag ends in "-<parts>": 12 MiB in 5 MiB parts is 3.
    assert client.head_object(Bucket=s3_bucket, Key=key)["ETag"].strip('"').endswith("-3")
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == BIG


async def test_gcs_source_to_gcs_store_in_resumable_chunks(
        gcs_emulator: GcsEmulator, gcs_bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    gcs_emulator.upload(gcs_bucket, "src/big.bin", BIG)
    store = GcsStore(gcs_bucket, "store", emulator_host=gcs_emulator.host,
                     client_config=GcsClientConfig(upload_chunk_size=5 * MiB))
    entry = WeightsEntry(source=f"gs://{gcs_bucket}/src")
    try:
        with caplog.at_level(logging.INFO, logger="gcp_storage_emulator.server"):
            result = await run_mirror(entry, store=store, secrets=SecretResolver(None, {}),
                                      options=MirrorOptions(gcs_emulator_host=gcs_emulator.host))
        [f] = (await Store(store).get_manifest(result.manifest_id)).files
    finally:
        await store.close()
    chunks = [r for r in caplog.records if '"PUT /upload/storage/v1/b/' in r.getMessage()]
    assert len(chunks) == 3  # 5 + 5 + 2 MiB
    blob = gcs_emulator.client().bucket(gcs_bucket).blob(f"store/{blob_key(f.sha256)}")
    assert blob.download_as_bytes() == BIG
