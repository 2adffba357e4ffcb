"""S3Source against moto's real S3 server: what identifies an object (what every bucket
source does alike is in tests/backends/test_bucket.py)."""

from __future__ import annotations

from bdn.backends.s3.creds import S3Credentials
from bdn.backends.s3.source import S3Source
from bdn.http import HttpClient
from tests.conftest import MotoS3


def creds(moto: MotoS3) -> S3Credentials:
    return S3Credentials(moto.access_key_id, moto.secret_access_key, region=moto.region)


def make_source(moto: MotoS3, bucket: str, prefix: str, http: HttpClient | None) -> S3Source:
    return S3Source(bucket, prefix, credentials=creds(moto), endpoint_url=moto.endpoint_url,
                    http=http)


async def test_identity_is_endpoint_key_etag_and_size(moto_s3: MotoS3, s3_bucket: str,
                                                       http: HttpClient) -> None:
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="models/llama/config.json", Body=b"{}")
    (obj,) = await make_source(moto_s3, s3_bucket, "/models/llama/", http).list()
    head = client.head_object(Bucket=s3_bucket, Key="models/llama/config.json")
    etag = head["ETag"].strip('"')
    assert obj.etag == etag
    assert obj.identity == (f"s3:{moto_s3.endpoint_url}:{s3_bucket}/models/llama/"
                            f"config.json:{etag}:2")
    assert obj.content_id is not None and s3_bucket in obj.content_id
