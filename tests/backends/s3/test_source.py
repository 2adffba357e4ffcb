"""S3Source against moto's real S3 server: listing as a folder, identities, presigned reads."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from bdn.backends.base import Source, SourceObject
from bdn.backends.s3.creds import S3Credentials
from bdn.backends.s3.source import S3Source
from bdn.errors import SourceError, SourceNotFound
from bdn.http import HttpClient
from tests.conftest import MotoS3


def creds(moto: MotoS3) -> S3Credentials:
    return S3Credentials(moto.access_key_id, moto.secret_access_key, region=moto.region)


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    yield client
    await client.close()


def make_source(moto: MotoS3, bucket: str, prefix: str, http: HttpClient | None) -> S3Source:
    return S3Source(bucket, prefix, credentials=creds(moto), endpoint_url=moto.endpoint_url,
                    http=http)


async def read(src: S3Source, obj: SourceObject, start: int, end: int) -> bytes:
    reader = src.reader(obj)
    try:
        return b"".join([bytes(p) async for p in reader.open_range(start, end)])
    finally:
        await reader.close()


async def test_lists_prefix_as_folder(moto_s3: MotoS3, s3_bucket: str, http: HttpClient) -> None:
    client = moto_s3.client()
    for key, body in {
        "models/llama/config.json": b"{}",
        "models/llama/shards/w-00001.safetensors": b"a" * 100,
        "models/llama/shards/": b"",  # a console "folder" marker
        "models/llama-2/other.bin": b"not under the folder",
        "models/llamaX": b"nor this",
        "unrelated.bin": b"x",
    }.items():
        client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    src = make_source(moto_s3, s3_bucket, "/models/llama/", http)
    assert isinstance(src, Source) and src.kind == "s3"
    assert src.uri == f"s3://{s3_bucket}/models/llama"
    assert await src.resolve() is None
    objs = await src.list()
    assert [(o.path, o.size) for o in objs] == [("config.json", 2),
                                                ("shards/w-00001.safetensors", 100)]
    head = client.head_object(Bucket=s3_bucket, Key="models/llama/config.json")
    etag = head["ETag"].strip('"')
    assert objs[0].etag == etag
    assert objs[0].identity == (f"s3:{moto_s3.endpoint_url}:{s3_bucket}/models/llama/"
                                f"config.json:{etag}:2")
    assert objs[0].content_id is not None and s3_bucket in objs[0].content_id


async def test_whole_bucket(moto_s3: MotoS3, s3_bucket: str, http: HttpClient) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="a/b.bin", Body=b"x")
    assert [o.path for o in await make_source(moto_s3, s3_bucket, "", http).list()] == ["a/b.bin"]


async def test_identity_changes_when_overwritten(moto_s3: MotoS3, s3_bucket: str,
                                                 http: HttpClient) -> None:
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="m/w.bin", Body=b"one")
    src = make_source(moto_s3, s3_bucket, "m", http)
    before = (await src.list())[0]
    assert (await src.list())[0].identity == before.identity
    client.put_object(Bucket=s3_bucket, Key="m/w.bin", Body=b"two")  # same size
    after = (await src.list())[0]
    assert after.identity != before.identity and after.etag != before.etag


async def test_range_read_through_presigned_url(moto_s3: MotoS3, s3_bucket: str) -> None:
    data = bytes(range(256)) * 2048
    moto_s3.client().put_object(Bucket=s3_bucket, Key="m/w.bin", Body=data)
    src = make_source(moto_s3, s3_bucket, "m", None)  # makes its own HTTP client
    try:
        (obj,) = await src.list()
        assert await read(src, obj, 0, len(data)) == data
        assert await read(src, obj, 100, 100_000) == data[100:100_000]
        assert src.reader(obj).describe() == f"s3://{s3_bucket}/m/w.bin"
    finally:
        await src.close()
        await src.close()  # idempotent


async def test_empty_prefix_lists_nothing(moto_s3: MotoS3, s3_bucket: str,
                                          http: HttpClient) -> None:
    assert await make_source(moto_s3, s3_bucket, "nothing/here", http).list() == []


async def test_missing_bucket(moto_s3: MotoS3, http: HttpClient) -> None:
    src = make_source(moto_s3, "no-such-source-bucket", "m", http)
    with pytest.raises(SourceNotFound, match="no-such-source-bucket"):
        await src.list()


async def test_keys_that_are_not_manifest_paths(moto_s3: MotoS3, s3_bucket: str,
                                                http: HttpClient) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="m/a//b.bin", Body=b"x")
    with pytest.raises(SourceError, match=re.escape("a//b.bin")):
        await make_source(moto_s3, s3_bucket, "m", http).list()
