"""S3Store against moto's real S3 server: multipart uploads and refused credentials
(what every bucket store does alike is in tests/backends/test_bucket.py)."""

from __future__ import annotations

import traceback
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from bdn.backends.s3.creds import S3Credentials
from bdn.backends.s3.store import MiB, S3Store, part_size_for
from bdn.errors import AuthError
from tests.backends.helpers import BLOB
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
