"""AWS_OIDC keys are renewed before they expire, on the control plane (boto3) and
the data plane (presigned URLs) alike, with the projected token re-read each time.

Runs against moto's real STS and S3 server. No test sleeps: the STS answers are
rebased onto a clock the test owns (botocore judges expiry by it), and moving
that clock is what ages the keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import bdn.backends.s3.creds as s3_creds
from bdn.backends.s3.client import S3Bucket
from bdn.backends.s3.creds import AwsOidcCredentials, aws_oidc_credentials
from bdn.backends.s3.source import S3Source
from bdn.config.weights import AuthConfig
from bdn.errors import AuthError
from tests.conftest import MotoS3

FIRST_TOKEN = "eyJhbGciOiJSUzI1NiJ9.FIRST-oidc-PAYLOAD.sig1"
ROTATED_TOKEN = "eyJhbGciOiJSUzI1NiJ9.ROTATED-oidc-PAYLOAD.sig2"
AUTH = AuthConfig(auth_method="AWS_OIDC", aws_oidc_role_arn="arn:aws:iam::123456789012:role/r",
                  aws_oidc_region="us-east-1")
LIFETIME = timedelta(hours=1)
DATA = bytes(range(256)) * 1024  # 256 KiB


@dataclass
class StsSpy:
    """Counts STS exchanges (and the token each sent), and owns the clock."""

    offset: timedelta = timedelta(0)
    tokens: list[str] = field(default_factory=list)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def sts(monkeypatch: pytest.MonkeyPatch) -> StsSpy:
    spy = StsSpy()
    real = s3_creds._assume_role_with_web_identity

    def exchange(params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        spy.tokens.append(params["WebIdentityToken"])
        keys = real(params, **kwargs)
        # moto's answer is real keys; their lifetime is put on the test's clock.
        return {**keys, "Expiration": spy.now() + LIFETIME}

    monkeypatch.setattr(s3_creds, "_assume_role_with_web_identity", exchange)
    return spy


@pytest.fixture
def signed_urls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every presigned URL the data plane asked for."""
    urls: list[str] = []
    real = S3Bucket.presigned_get

    async def presigned_get(self: S3Bucket, key: str) -> str:
        url = await real(self, key)
        urls.append(url)
        return url

    monkeypatch.setattr(S3Bucket, "presigned_get", presigned_get)
    return urls


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(FIRST_TOKEN + "\n")
    return path


@pytest.fixture
def oidc(moto_s3: MotoS3, sts: StsSpy, token_file: Path) -> Iterator[AwsOidcCredentials]:
    yield aws_oidc_credentials(AUTH, token_file=token_file, sts_endpoint_url=moto_s3.endpoint_url,
                               time_fetcher=sts.now)


def _signer(url: str) -> str:
    """The access key id a presigned URL was signed with."""
    return parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].split("/")[0]


async def _read(src: S3Source, start: int, end: int) -> bytes:
    (obj,) = await src.list()
    out = bytearray()
    async for piece in src.reader(obj).open_range(start, end):
        out += piece
    return bytes(out)


async def test_keys_are_renewed_for_both_planes_with_the_rotated_token(
    moto_s3: MotoS3, s3_bucket: str, sts: StsSpy, signed_urls: list[str], token_file: Path,
    oidc: AwsOidcCredentials, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    moto_s3.client().put_object(Bucket=s3_bucket, Key="m/w.bin", Body=DATA)
    src = S3Source(s3_bucket, "m", credentials=oidc, endpoint_url=moto_s3.endpoint_url)
    try:
        (obj,) = await src.list()
        reader = src.reader(obj)  # one long-lived reader, as a long mirror holds
        half = len(DATA) // 2
        first = b"".join([bytes(p) async for p in reader.open_range(0, half)])
        old = oidc.current()
        assert sts.tokens == [FIRST_TOKEN]  # fresh keys: used, not renewed

        # An hour minus five minutes later: inside botocore's mandatory window.
        token_file.write_text(ROTATED_TOKEN + "\n")  # the kubelet rotated it meanwhile
        sts.offset = LIFETIME - timedelta(minutes=5)
        second = b"".join([bytes(p) async for p in reader.open_range(half, len(DATA))])
        assert first + second == DATA
        new = oidc.current()
        assert sts.tokens == [FIRST_TOKEN, ROTATED_TOKEN]  # renewed once, token re-read
        assert new.access_key_id != old.access_key_id
        assert [_signer(u) for u in signed_urls] == [old.access_key_id, new.access_key_id]

        # The control plane shares the renewed keys: no second renewal.
        assert [o.path for o in await src.list()] == ["w.bin"]
        assert await _read(src, 0, 10) == DATA[:10]
        assert len(sts.tokens) == 2 and _signer(signed_urls[-1]) == new.access_key_id
    finally:
        await src.close()
    secrets = (FIRST_TOKEN, ROTATED_TOKEN, old.secret_access_key, new.secret_access_key,
               str(old.session_token), str(new.session_token))
    for text in (caplog.text, repr(oidc), repr(old), repr(new)):
        assert not any(secret in text for secret in secrets)


async def test_fresh_keys_are_not_renewed(moto_s3: MotoS3, s3_bucket: str, sts: StsSpy,
                                          oidc: AwsOidcCredentials) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="m/w.bin", Body=DATA)
    src = S3Source(s3_bucket, "m", credentials=oidc, endpoint_url=moto_s3.endpoint_url)
    try:
        for minutes in (0, 20, 44):  # still outside botocore's 15-minute advisory window
            sts.offset = timedelta(minutes=minutes)
            assert await _read(src, 0, len(DATA)) == DATA
    finally:
        await src.close()
    assert sts.tokens == [FIRST_TOKEN]


async def test_failed_renewal_is_a_plain_auth_error(
    moto_s3: MotoS3, s3_bucket: str, sts: StsSpy, token_file: Path,
    oidc: AwsOidcCredentials, caplog: pytest.LogCaptureFixture,
) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="m/w.bin", Body=DATA)
    src = S3Source(s3_bucket, "m", credentials=oidc, endpoint_url=moto_s3.endpoint_url)
    keys = oidc.current()
    try:
        (obj,) = await src.list()
        token_file.unlink()  # the projected volume went away
        sts.offset = 2 * LIFETIME  # and the keys expired
        for attempt in (src.list(), _read(src, 0, 10)):
            with pytest.raises(AuthError, match=r"AWS_OIDC needs a projected .* does not exist"
                               ) as info:
                await attempt
            assert FIRST_TOKEN not in str(info.value)
            assert keys.secret_access_key not in str(info.value)
        # A read that never needed the listing fails the same way.
        with pytest.raises(AuthError, match="AWS_OIDC needs a projected"):
            async for _ in src.reader(obj).open_range(0, 10):
                pass
    finally:
        await src.close()
    assert FIRST_TOKEN not in caplog.text and keys.secret_access_key not in caplog.text
