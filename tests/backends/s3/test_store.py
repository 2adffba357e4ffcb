"""S3Store against moto's real S3 server: CRUD, multipart, listing, presigned reads, errors."""

from __future__ import annotations

import socket
import traceback
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from bdn.backends.base import BlobStore
from bdn.backends.s3.client import S3ClientConfig
from bdn.backends.s3.creds import S3Credentials
from bdn.backends.s3.store import MiB, S3Store, part_size_for
from bdn.errors import AuthError, NotFound, StoreError
from tests.backends.helpers import BLOB, read_range
from tests.conftest import MotoS3

SECRET = "wrong-secret-value-that-must-never-show"


def creds(moto: MotoS3) -> S3Credentials:
    return S3Credentials(moto.access_key_id, moto.secret_access_key, region=moto.region)


@pytest.fixture
async def store(moto_s3: MotoS3, s3_bucket: str) -> AsyncIterator[S3Store]:
    s = S3Store(s3_bucket, "bdn/store", endpoint_url=moto_s3.endpoint_url,
                credentials=creds(moto_s3), part_size=5 * MiB)
    yield s
    await s.close()


def test_is_a_blob_store(store: S3Store, s3_bucket: str) -> None:
    assert isinstance(store, BlobStore)
    assert store.uri == f"s3://{s3_bucket}/bdn/store"
    assert store.local_path(BLOB) is None and store.staging_dir() is None


async def test_put_get_exists_size_delete(store: S3Store, moto_s3: MotoS3,
                                          s3_bucket: str) -> None:
    assert not await store.exists(BLOB)
    await store.put_bytes(BLOB, b"hello")
    assert await store.exists(BLOB)
    assert await store.size(BLOB) == 5
    assert await store.get_bytes(BLOB) == b"hello"
    # Keys live under the store's prefix.
    body = moto_s3.client().get_object(Bucket=s3_bucket, Key=f"bdn/store/{BLOB}")["Body"]
    assert body.read() == b"hello"
    await store.delete(BLOB)
    assert not await store.exists(BLOB)
    await store.delete(BLOB)  # missing is fine


async def test_put_file_multipart(store: S3Store, moto_s3: MotoS3, s3_bucket: str,
                                  tmp_path: Path) -> None:
    data = bytes(range(256)) * (11 * MiB // 256) + b"tail"
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    await store.put_file(BLOB, src)
    assert src.exists()
    assert await store.size(BLOB) == len(data)
    assert await store.get_bytes(BLOB) == data
    # A multipart upload's ETag ends in "-<parts>": 11 MiB in 5 MiB parts is 3.
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key=f"bdn/store/{BLOB}")
    assert head["ETag"].strip('"').endswith("-3")


def test_part_size_keeps_parts_under_limit() -> None:
    assert part_size_for(10) == 8 * MiB
    size = 500 * 1024**3
    part = part_size_for(size)
    assert part % MiB == 0 and -(-size // part) <= 10_000


async def test_list_with_prefix(store: S3Store, moto_s3: MotoS3, s3_bucket: str) -> None:
    names = [BLOB, "blobs/sha256/cd/" + "cd" * 32, "manifests/m.json", "refs/a"]
    for name in names:
        await store.put_bytes(name, b"x")
    moto_s3.client().put_object(Bucket=s3_bucket, Key="elsewhere/blobs/x", Body=b"x")
    assert [k async for k in store.list("")] == sorted(names)
    assert [k async for k in store.list("blobs/")] == names[:2]
    assert [k async for k in store.list("blobs/sha256/c")] == names[1:2]
    assert [k async for k in store.list("nothing/")] == []


async def test_reader_uses_presigned_url(store: S3Store) -> None:
    data = bytes(range(256)) * 4096
    await store.put_bytes(BLOB, data)
    reader = store.reader(BLOB, len(data))
    assert "X-Amz" not in reader.describe() and reader.describe().startswith("s3://")
    assert await read_range(store, BLOB, len(data), 0, len(data)) == data
    assert await read_range(store, BLOB, len(data), 1000, 70_000) == data[1000:70_000]


async def test_missing_bucket_is_not_found(moto_s3: MotoS3) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=moto_s3.endpoint_url,
                    credentials=creds(moto_s3))
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        await store.get_bytes("refs/a")
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        _ = [k async for k in store.list("")]
    await store.close()


async def test_unreachable_endpoint_says_what_to_do() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store("b", endpoint_url=f"http://127.0.0.1:{port}",
                    credentials=S3Credentials("a", "b"),
                    client_config=S3ClientConfig(max_attempts=1, connect_timeout_s=2))
    with pytest.raises(StoreError) as info:
        await store.get_bytes("refs/a")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "--endpoint-url" in str(info.value) and "AWS_ENDPOINT_URL" in str(info.value)


@pytest.fixture
def iam_key_id(moto_s3: MotoS3) -> str:
    """An access key id moto knows (its secret is not what the test will send)."""
    iam = boto3.client("iam", endpoint_url=moto_s3.endpoint_url, region_name=moto_s3.region,
                       aws_access_key_id=moto_s3.access_key_id,
                       aws_secret_access_key=moto_s3.secret_access_key)
    name = f"bdn-test-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    return str(iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"])


@pytest.fixture
def moto_auth(moto_s3: MotoS3, s3_bucket: str, iam_key_id: str) -> Iterator[None]:
    """Make moto check signatures (off by default) for the duration of a test;
    the bucket and IAM user are made first, while any key is still accepted."""

    def set_count(value: str) -> None:
        request = urllib.request.Request(f"{moto_s3.endpoint_url}/moto-api/reset-auth",
                                         data=value.encode(), method="POST",
                                         # Not form-encoded: moto reads the raw body.
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).close()

    set_count("0")
    try:
        yield
    finally:
        set_count("inf")


@pytest.mark.parametrize("known_key", [False, True], ids=["unknown-key", "wrong-secret"])
@pytest.mark.usefixtures("moto_auth")
async def test_wrong_credentials_are_auth_error_without_secret(
    moto_s3: MotoS3, s3_bucket: str, iam_key_id: str, known_key: bool
) -> None:
    key_id = iam_key_id if known_key else "AKIAWRONGWRONGWRONG1"
    store = S3Store(s3_bucket, endpoint_url=moto_s3.endpoint_url,
                    credentials=S3Credentials(key_id, SECRET, region="us-east-1"))
    for call in (store.exists("refs/a"), store.get_bytes("refs/a"), store.put_bytes("refs/a", b"")):
        with pytest.raises(AuthError) as info:
            await call
        text = "".join(traceback.format_exception(info.value))
        assert SECRET not in text
        assert "check the credentials" in str(info.value)
    await store.close()
