"""R2Source: S3Source at the account's R2 endpoint (moto stands in for it), and the
credential rules of an r2:// entry."""

from __future__ import annotations

import json
import traceback
from urllib.parse import unquote

import pytest

from bdn.backends.base import Source
from bdn.backends.s3.r2 import R2Source, r2_endpoint, r2_source_from_entry
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import ConfigError, SecretError
from bdn.http import HttpClient
from tests.backends.helpers import assert_lists_and_reads_model, put_model
from tests.conftest import MotoS3

FAKE_SECRET = "zzFAKE-r2-s3cr3t-VALUE-77aa"  # Distinctive: must never appear in an error.
R2_AUTH = AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name="r2_credentials")


def r2_secrets(moto: MotoS3) -> SecretResolver:
    secret = json.dumps({"aws_access_key_id": moto.access_key_id,
                         "aws_secret_access_key": moto.secret_access_key})
    return SecretResolver(None, {"BDN_SECRET_R2_CREDENTIALS": secret})


def entry(source: str, auth: AuthConfig | None = R2_AUTH) -> WeightsEntry:
    return WeightsEntry(source=source, auth=auth)


async def test_lists_and_reads_through_the_s3_api(moto_s3: MotoS3, s3_bucket: str,
                                                  http: HttpClient) -> None:
    put_model(moto_s3.client(), s3_bucket)
    src = r2_source_from_entry(entry(f"r2://0123abcd.{s3_bucket}/models/m/"),
                               secrets=r2_secrets(moto_s3), http=http,
                               endpoint_override=moto_s3.endpoint_url)
    try:
        assert isinstance(src, Source) and isinstance(src, R2Source)
        assert src.kind == "r2"
        assert src.uri == f"r2://0123abcd.{s3_bucket}/models/m"
        objs = await assert_lists_and_reads_model(src)
        assert all(o.etag and moto_s3.endpoint_url in o.identity for o in objs)
    finally:
        await src.close()


async def test_default_endpoint_is_the_accounts_and_region_is_auto(http: HttpClient) -> None:
    assert r2_endpoint("0123abcd") == "https://0123abcd.r2.cloudflarestorage.com"
    secret = json.dumps({"aws_access_key_id": "AKIAFAKE", "aws_secret_access_key": FAKE_SECRET,
                         "aws_region": "eu-west-1"})
    src = r2_source_from_entry(entry("r2://0123abcd.weights"),
                               secrets=SecretResolver(None, {"BDN_SECRET_R2_CREDENTIALS": secret}),
                               http=http)
    assert src.uri == "r2://0123abcd.weights"
    # Signing a URL is local (no request): it shows the endpoint and the region.
    url = await src._bucket.presigned_get("k")  # type: ignore[attr-defined]
    assert url.startswith("https://0123abcd.r2.cloudflarestorage.com/weights/k?")
    assert "/auto/s3/aws4_request" in unquote(url)
    await src.close()


@pytest.mark.parametrize("auth", [None, AuthConfig(auth_method="CUSTOM_SECRET")],
                         ids=["no-auth", "no-secret-name"])
def test_no_secret_is_secret_id_required_then_the_fix(auth: AuthConfig | None,
                                                      http: HttpClient) -> None:
    with pytest.raises(ConfigError) as info:
        r2_source_from_entry(entry("r2://acct.bucket/m", auth), secrets=SecretResolver(None, {}),
                             http=http)
    text = str(info.value)
    assert "secret_id is required" in text and "r2_credentials" in text
    assert "aws_access_key_id" in text and "\n" not in text


def test_oidc_cannot_authenticate_r2(http: HttpClient) -> None:
    auth = AuthConfig(auth_method="AWS_OIDC", aws_oidc_role_arn="arn:aws:iam::123456789012:role/r",
                      aws_oidc_region="us-east-1")
    with pytest.raises(ConfigError, match="AWS_OIDC cannot authenticate an r2:// source"):
        r2_source_from_entry(entry("r2://acct.bucket/m", auth), secrets=SecretResolver(None, {}),
                             http=http)


@pytest.mark.parametrize(
    "secret",
    [
        {"access_key_id": "AKIAFAKE", "secret_access_key": FAKE_SECRET},  # Cloudflare's names
        {"aws_access_key_id": "AKIAFAKE", "aws_secret_key": FAKE_SECRET},
        {"AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SECRET_ACCESS_KEY": FAKE_SECRET},
    ],
    ids=["cloudflare-names", "short-secret-name", "upper-case"],
)
def test_misnamed_keys_are_baseten_message(secret: dict[str, str], http: HttpClient) -> None:
    secrets = SecretResolver(None, {"BDN_SECRET_R2_CREDENTIALS": json.dumps(secret)})
    with pytest.raises(SecretError) as info:
        r2_source_from_entry(entry("r2://acct.bucket/m"), secrets=secrets, http=http)
    assert ("aws_access_key_id and aws_secret_access_key are required in S3 credentials"
            in str(info.value))
    assert "'r2_credentials'" in str(info.value)
    assert FAKE_SECRET not in "".join(traceback.format_exception(info.value))


def test_missing_secret_names_where_it_was_looked_for(http: HttpClient) -> None:
    with pytest.raises(SecretError, match="BDN_SECRET_R2_CREDENTIALS"):
        r2_source_from_entry(entry("r2://acct.bucket/m"), secrets=SecretResolver(None, {}),
                             http=http)


def test_not_an_r2_entry(http: HttpClient) -> None:
    with pytest.raises(ConfigError, match="not an r2:// source"):
        r2_source_from_entry(entry("s3://bucket/m"), secrets=SecretResolver(None, {}), http=http)
