"""OIDC auth (AWS_OIDC, GCP_OIDC): the plain error without a token file, and the real
SDK exchanges against local servers (moto's STS; a small fake of Google's STS, IAM
Credentials and GCS JSON APIs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.auth.credentials import Credentials

from bdn.backends.gcs.creds import SCOPE_READ_ONLY, gcp_oidc_credentials
from bdn.backends.gcs.source import GcsSource
from bdn.backends.oidc import OIDC_TOKEN_FILE_ENV, oidc_token_file, read_oidc_token
from bdn.backends.s3.creds import aws_oidc_credentials
from bdn.backends.s3.source import S3Source
from bdn.config.weights import AuthConfig
from bdn.errors import AuthError, ConfigError
from bdn.http import HttpClient
from tests.backends.helpers import read_source
from tests.conftest import MotoS3
from tests.gcsemulator import FakeGoogle

TOKEN = "eyJhbGciOiJSUzI1NiJ9.zzFAKE-oidc-PAYLOAD.sig"  # must never appear in an error
ROLE = "arn:aws:iam::123456789012:role/bdn-reader"
SA = "bdn-reader@my-project.iam.gserviceaccount.com"
PROVIDER = "projects/123456789/locations/global/workloadIdentityPools/pool/providers/prov"

AWS_AUTH = AuthConfig(auth_method="AWS_OIDC", aws_oidc_role_arn=ROLE, aws_oidc_region="us-east-1")
GCP_AUTH = AuthConfig(auth_method="GCP_OIDC", gcp_oidc_service_account=SA,
                      gcp_oidc_workload_id_provider=PROVIDER)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_token_file_comes_from_the_environment_snapshot() -> None:
    assert oidc_token_file({OIDC_TOKEN_FILE_ENV: "/t/token"}) == Path("/t/token")
    assert oidc_token_file({OIDC_TOKEN_FILE_ENV: " "}) is None
    assert oidc_token_file({}) is None


@pytest.mark.parametrize("method", ["AWS_OIDC", "GCP_OIDC"])
def test_no_token_file_is_one_plain_line(method: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = {
        None: "BDN_OIDC_TOKEN_FILE is not set",
        tmp_path / "absent": "which does not exist",
        empty: "which is empty",
        tmp_path: "which cannot be read",  # a directory
    }
    for path, problem in cases.items():
        with pytest.raises(AuthError) as info:
            read_oidc_token(path, method)
        text = str(info.value)
        assert text.startswith(f"{method} needs a projected service-account token file")
        assert problem in text and "CUSTOM_SECRET" in text and "\n" not in text


def test_aws_oidc_without_token_file() -> None:
    with pytest.raises(AuthError, match=r"AWS_OIDC needs a projected .* audience sts\.amazonaws"):
        aws_oidc_credentials(AWS_AUTH, token_file=None)


def test_oidc_functions_want_their_own_auth_blocks(token_file: Path) -> None:
    with pytest.raises(ConfigError, match="AWS_OIDC"):
        aws_oidc_credentials(GCP_AUTH, token_file=token_file)
    with pytest.raises(ConfigError, match="GCP_OIDC"):
        gcp_oidc_credentials(AWS_AUTH, token_file=token_file)


async def test_aws_oidc_assumes_the_role_at_sts(moto_s3: MotoS3, s3_bucket: str,
                                                token_file: Path) -> None:
    creds = aws_oidc_credentials(AWS_AUTH, token_file=token_file,
                                 sts_endpoint_url=moto_s3.endpoint_url)
    keys = creds.current()
    assert keys.access_key_id.startswith("ASIA")  # temporary keys, as STS issues them
    assert keys.session_token and keys.region == creds.region == "us-east-1"
    for text in (repr(creds), repr(keys)):
        assert TOKEN not in text and keys.secret_access_key not in text
        assert keys.session_token not in text
    moto_s3.client().put_object(Bucket=s3_bucket, Key="m/w.bin", Body=b"abc")
    src = S3Source(s3_bucket, "m", credentials=creds, endpoint_url=moto_s3.endpoint_url)
    try:
        assert [o.path for o in await src.list()] == ["w.bin"]
    finally:
        await src.close()


def test_aws_oidc_unreachable_sts_is_auth_error(token_file: Path) -> None:
    with pytest.raises(AuthError, match="cannot exchange the token") as info:
        aws_oidc_credentials(AWS_AUTH, token_file=token_file,
                             sts_endpoint_url="http://127.0.0.1:1")
    assert TOKEN not in str(info.value)


# -- GCP: google-auth's identity pool + impersonation, end to end on loopback -----


def gcp_credentials(fake_google: FakeGoogle, token_file: Path) -> Credentials:
    """GCP_OIDC credentials whose STS and IAM Credentials are ``fake_google``'s."""
    return gcp_oidc_credentials(GCP_AUTH, token_file=token_file,
                                sts_url=f"{fake_google.url}/v1/token",
                                iam_url=f"{fake_google.url}/v1")


@contextlib.asynccontextmanager
async def gcp_oidc_source(fake_google: FakeGoogle,
                          token_file: Path) -> AsyncIterator[tuple[Credentials, GcsSource]]:
    """:func:`gcp_credentials`, and a source of bucket ``bkt`` on ``fake_google`` that
    presents them on the SDK's listing and the aiohttp data plane; closed after."""
    creds = gcp_credentials(fake_google, token_file)
    http = HttpClient()
    src = GcsSource("bkt", "m", credentials=creds, api_endpoint=fake_google.url, http=http)
    try:
        yield creds, src
    finally:
        await src.close()
        await http.close()


async def test_gcp_oidc_exchanges_the_token_and_impersonates(fake_google: FakeGoogle,
                                                             token_file: Path) -> None:
    async with gcp_oidc_source(fake_google, token_file) as (_, src):
        (obj,) = await src.list()
        assert await read_source(src, obj) == b"weights!"
    # The projected token went to STS, for the workload identity provider
    # (once per thread that found the token missing: the SDK's and ours)...
    assert fake_google.sts_requests
    for sts in fake_google.sts_requests:
        assert sts["subject_token"] == TOKEN
        assert sts["audience"] == f"//iam.googleapis.com/{PROVIDER}"
        assert sts["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    # ...its federated token bought the service account's token...
    (iam_path, iam_auth, iam_body), *_ = fake_google.iam_requests
    assert iam_path == f"/v1/projects/-/serviceAccounts/{SA}:generateAccessToken"
    assert iam_auth == "Bearer federated-token" and iam_body["scope"] == [SCOPE_READ_ONLY]
    # ...which both the SDK's listing and the aiohttp data plane presented.
    assert fake_google.storage_auth and set(fake_google.storage_auth) == {"Bearer sa-token"}
    assert json.dumps(fake_google.storage_auth).count("sa-token") >= 2


async def test_gcp_oidc_token_file_that_vanishes_later_fails_plainly(fake_google: FakeGoogle,
                                                                   token_file: Path) -> None:
    creds = gcp_credentials(fake_google, token_file)
    token_file.unlink()  # e.g. the projected volume went away after start-up
    src = GcsSource("bkt", "m", credentials=creds, api_endpoint=fake_google.url)
    try:
        with pytest.raises(AuthError, match=r"GCP_OIDC needs a projected .* does not exist"):
            await src.list()
    finally:
        await src.close()
    assert fake_google.sts_requests == []


async def test_gcp_oidc_token_is_renewed_when_it_nears_expiry(fake_google: FakeGoogle,
                                                              token_file: Path) -> None:
    """google-auth renews the impersonated token by itself once it nears expiry (its
    ``valid`` turns false), on the SDK's listing and the aiohttp data plane alike."""
    async with gcp_oidc_source(fake_google, token_file) as (creds, src):
        (obj,) = await src.list()
        assert await read_source(src, obj) == b"weights!"
        # The SDK looks the bucket up in a background thread, refreshing the token
        # first if it must; let that finish, or its refresh could land after the
        # expiry set below and hide the renewal this test is about.
        for _ in range(500):
            if "/storage/v1/b/bkt" in fake_google.storage_paths:
                break
            await asyncio.sleep(0.01)
        renewals = len(fake_google.iam_requests)
        # An hour on: the token is a minute from expiry (google-auth's clock is naive UTC).
        creds.expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=1)
        assert not creds.valid
        assert await read_source(src, obj) == b"weights!"
        assert len(fake_google.iam_requests) == renewals + 1 and creds.valid
        creds.expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=1)
        assert [o.path for o in await src.list()] == [obj.path]
        assert len(fake_google.iam_requests) == renewals + 2
