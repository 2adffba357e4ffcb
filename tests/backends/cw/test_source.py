"""CwSource: S3Source at CoreWeave's endpoint with virtual-hosted addressing (moto
stands in for it on loopback, path-style), and the credential rules of a cw:// entry."""

from __future__ import annotations

import json
import traceback

import pytest

from bdn.backends import SourceEnv, open_source
from bdn.backends.s3.cw import CW_ENDPOINT, CwSource, cw_source_from_entry
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import ConfigError, SecretError, SourceError
from bdn.http import HttpClient
from tests.backends.helpers import assert_lists_and_reads_model, put_model
from tests.conftest import MotoS3

FAKE_SECRET = "zzFAKE-cw-s3cr3t-VALUE-55bb"  # Distinctive: must never appear in an error.
CW_AUTH = AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name="cw_credentials")


def cw_secrets(access: str, secret: str) -> SecretResolver:
    value = json.dumps({"aws_access_key_id": access, "aws_secret_access_key": secret})
    return SecretResolver(None, {"BDN_SECRET_CW_CREDENTIALS": value})


async def test_lists_and_reads_through_the_s3_api(moto_s3: MotoS3, s3_bucket: str,
                                                  http: HttpClient) -> None:
    put_model(moto_s3.client(), s3_bucket)
    src = open_source(WeightsEntry(source=f"cw://{s3_bucket}/models/m/", auth=CW_AUTH),
                      secrets=cw_secrets(moto_s3.access_key_id, moto_s3.secret_access_key),
                      http=http, env=SourceEnv(cw_endpoint_url=moto_s3.endpoint_url))
    try:
        assert isinstance(src, CwSource) and src.kind == "cw"
        assert src.uri == f"cw://{s3_bucket}/models/m"
        await assert_lists_and_reads_model(src)
    finally:
        await src.close()


async def test_default_endpoint_is_cwobject_virtual_hosted(http: HttpClient) -> None:
    src = cw_source_from_entry(WeightsEntry(source="cw://weights/m", auth=CW_AUTH),
                               secrets=cw_secrets("AKFAKE", FAKE_SECRET), http=http)
    # Signing is local (no request): the bucket is a subdomain of cwobject.com.
    url = await src._bucket.presigned_get("m/k")
    assert CW_ENDPOINT == "https://cwobject.com"
    assert url.startswith("https://weights.cwobject.com/m/k?")
    await src.close()


def test_lota_endpoint_stays_virtual_hosted(http: HttpClient) -> None:
    src = cw_source_from_entry(WeightsEntry(source="cw://weights", auth=CW_AUTH),
                               secrets=cw_secrets("AKFAKE", FAKE_SECRET), http=http,
                               endpoint_override="http://cwlota.com")
    assert src._bucket.addressing_style == "virtual"


@pytest.mark.parametrize("auth", [None, AuthConfig(auth_method="CUSTOM_SECRET")],
                         ids=["no-auth", "no-secret-name"])
def test_no_secret_is_secret_id_required_then_the_fix(auth: AuthConfig | None,
                                                      http: HttpClient) -> None:
    with pytest.raises(ConfigError) as info:
        cw_source_from_entry(WeightsEntry(source="cw://bucket/m", auth=auth),
                             secrets=SecretResolver(None, {}), http=http)
    assert "secret_id is required" in str(info.value) and "cw_credentials" in str(info.value)


def test_malformed_secret_never_shows_its_value(http: HttpClient) -> None:
    secrets = SecretResolver(None, {"BDN_SECRET_CW_CREDENTIALS": json.dumps(
        {"access_key": "x", "secret": FAKE_SECRET})})
    with pytest.raises(SecretError) as info:
        cw_source_from_entry(WeightsEntry(source="cw://bucket/m", auth=CW_AUTH),
                             secrets=secrets, http=http)
    assert FAKE_SECRET not in "".join(traceback.format_exception(info.value))


async def test_object_rewritten_mid_mirror_fails_clearly(moto_s3: MotoS3, s3_bucket: str,
                                                         http: HttpClient) -> None:
    """Every S3-API source (s3://, r2://, cw://) pins range reads to the listed ETag."""
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="w.bin", Body=b"a" * 1000)
    src = open_source(WeightsEntry(source=f"cw://{s3_bucket}", auth=CW_AUTH),
                      secrets=cw_secrets(moto_s3.access_key_id, moto_s3.secret_access_key),
                      http=http, env=SourceEnv(cw_endpoint_url=moto_s3.endpoint_url))
    try:
        [obj] = await src.list()
        client.put_object(Bucket=s3_bucket, Key="w.bin", Body=b"b" * 1000)
        with pytest.raises(SourceError, match="changed upstream while it was being mirrored"):
            _ = [p async for p in src.reader(obj).open_range(0, 500)]
    finally:
        await src.close()
