"""GcsSource against gcp-storage-emulator: generations and MD5s, CRC32C checks, and the
credential errors of a gs:// entry (what every bucket source does alike is in
tests/backends/test_bucket.py)."""

from __future__ import annotations

import base64
import json
import traceback
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions as gapi
from google.auth import exceptions as gae
from google.auth import jwt

from bdn.backends.gcs.client import GcsBucket, map_gcs_error
from bdn.backends.gcs.creds import (
    SCOPE_READ_ONLY,
    GcpServiceAccount,
    gcs_credentials_from_secret,
    service_account_credentials,
)
from bdn.backends.gcs.source import GcsSource, gcs_source_from_entry
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import (
    AuthError,
    ConfigError,
    IntegrityError,
    SecretError,
    SourceError,
    SourceNotFound,
)
from bdn.http import HttpClient
from tests.backends.helpers import read_source
from tests.gcsemulator import FakeGoogle, GcsEmulator

FAKE_KEY = "zzFAKE-private-KEY-material-5e4d3c2b"  # Distinctive: must never appear in an error.


def make_source(emu: GcsEmulator, bucket: str, prefix: str, http: HttpClient | None) -> GcsSource:
    return GcsSource(bucket, prefix, credentials=None, emulator_host=emu.host, http=http)


def entry(bucket: str, auth: AuthConfig | None) -> WeightsEntry:
    return WeightsEntry(source=f"gs://{bucket}/models/m", auth=auth)


async def test_identity_is_generation_and_content_id_md5(
    gcs_emulator: GcsEmulator, gcs_bucket: str, http: HttpClient
) -> None:
    gcs_emulator.upload(gcs_bucket, "models/llama/config.json", b"{}")
    (first,) = await make_source(gcs_emulator, gcs_bucket, "/models/llama/", http).list()
    blob = gcs_emulator.client().bucket(gcs_bucket).get_blob("models/llama/config.json")
    assert blob.crc32c and blob.md5_hash  # the emulator lists both, like GCS
    assert first.etag == str(blob.generation)
    assert first.identity == (f"gcs:{gcs_emulator.endpoint}:{gcs_bucket}/models/llama/"
                              f"config.json#{blob.generation}")
    md5 = base64.b64decode(blob.md5_hash).hex()
    assert first.content_id == f"gcs-md5:{gcs_emulator.endpoint}:{gcs_bucket}:{md5}:2"


async def test_same_content_elsewhere_in_bucket_shares_content_id(
    gcs_emulator: GcsEmulator, gcs_bucket: str, http: HttpClient
) -> None:
    gcs_emulator.upload(gcs_bucket, "base/w.bin", b"shard")
    gcs_emulator.upload(gcs_bucket, "tuned/w.bin", b"shard")
    (base,) = await make_source(gcs_emulator, gcs_bucket, "base", http).list()
    (tuned,) = await make_source(gcs_emulator, gcs_bucket, "tuned", http).list()
    assert base.identity != tuned.identity
    assert base.content_id == tuned.content_id is not None


async def test_whole_read_is_checked_against_crc32c(gcs_emulator: GcsEmulator,
                                                    gcs_bucket: str, http: HttpClient) -> None:
    gcs_emulator.upload(gcs_bucket, "m/w.bin", b"payload")
    bucket = GcsBucket(gcs_bucket, credentials=None, emulator_host=gcs_emulator.host)
    wrong = base64.b64encode(b"\0\0\0\0").decode()
    reader = bucket.reader("m/w.bin", 7, lambda: http, crc32c=wrong)
    with pytest.raises(IntegrityError, match="CRC32C"):
        _ = [p async for p in reader.open_range(0, 7)]
    # A partial range cannot be checked against a whole-object CRC, so it is not.
    assert b"".join([bytes(p) async for p in reader.open_range(1, 4)]) == b"ayl"
    bucket.close()


def test_access_denied_is_auth_error() -> None:
    err = map_gcs_error(gapi.Forbidden("caller does not have storage.objects.list"),
                        action="list gs://b/m", bucket="b", for_source=True, missing="bucket")
    assert isinstance(err, AuthError) and err.status == 403
    assert "objectViewer" in str(err) and "does not have" not in str(err)


@pytest.mark.parametrize(
    ("err", "kind", "text"),
    [
        (gae.RefreshError(f"invalid_grant: Invalid JWT Signature. {FAKE_KEY}", {}), AuthError,
         "refused the credentials when issuing an access token (invalid_grant)"),
        (gae.DefaultCredentialsError(f"File {FAKE_KEY} was not found"), AuthError,
         "GOOGLE_APPLICATION_CREDENTIALS"),
        (gae.TransportError(f"{FAKE_KEY}"), SourceError, "cannot reach Google's token endpoint"),
        (gapi.RetryError("gave up", gapi.ServiceUnavailable(FAKE_KEY)), SourceError,
         "answered HTTP 503"),
        (gapi.NotFound(FAKE_KEY), SourceNotFound, "gs://b/m/w.bin does not exist"),
    ],
    ids=["refused", "no-adc", "token-endpoint-down", "retries-exhausted", "object-gone"],
)
def test_error_table(err: Exception, kind: type[Exception], text: str) -> None:
    mapped = map_gcs_error(err, action="read gs://b/m/w.bin", bucket="b", key="m/w.bin",
                           for_source=True)
    assert type(mapped) is kind and text in str(mapped)
    assert FAKE_KEY not in str(mapped)  # built from codes, never from the server's text


# -- entry -> source: the credential rules ------------------------------------


async def test_no_auth_is_baseten_message_then_the_fix(http: HttpClient) -> None:
    with pytest.raises(ConfigError) as info:
        gcs_source_from_entry(entry("b", None), secrets=SecretResolver(None, {}),
                              emulator_host=None, http=http)
    text = str(info.value)
    assert "no credentials configured: need either OIDC config or secret_id" in text
    assert "auth_secret_name" in text and "GCP_OIDC" in text
    assert "\n" not in text


async def test_no_auth_is_allowed_against_an_emulator(gcs_emulator: GcsEmulator,
                                                      gcs_bucket: str, http: HttpClient) -> None:
    gcs_emulator.upload(gcs_bucket, "models/m/w.bin", b"abc")
    src = gcs_source_from_entry(entry(gcs_bucket, None), secrets=SecretResolver(None, {}),
                                emulator_host=gcs_emulator.host, http=http)
    assert [o.path for o in await src.list()] == ["w.bin"]
    await src.close()


def _sa_key(**overrides: object) -> str:
    key: dict[str, object] = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "0",
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{FAKE_KEY}\n-----END PRIVATE KEY-----\n",
        "client_email": "reader@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    key.update(overrides)
    return json.dumps({k: v for k, v in key.items() if v is not None})


def _assert_no_leak(err: BaseException) -> None:
    assert FAKE_KEY not in "".join(traceback.format_exception(err))


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        (_sa_key(client_email=None, private_key=None),
         "missing client_email, private_key"),
        (_sa_key(type=None, token_uri=None), "missing type, token_uri"),
        ("{not json " + FAKE_KEY, "is not valid JSON"),
        (_sa_key(type="authorized_user"), "type 'authorized_user', not 'service_account'"),
        (_sa_key(type=FAKE_KEY), "another type"),
        (_sa_key(private_key=FAKE_KEY), "private_key is not a PEM private key"),
    ],
    ids=["missing-keys", "missing-type", "not-json", "user-credential", "odd-type", "not-pem"],
)
async def test_malformed_service_account_secret(secret: str, expected: str,
                                                http: HttpClient) -> None:
    secrets = SecretResolver(None, {"BDN_SECRET_GCS_SA": secret})
    auth = AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name="gcs_sa")
    for emulator_host in (None, "127.0.0.1:1"):  # same checks with or without an emulator
        with pytest.raises(SecretError) as info:
            gcs_source_from_entry(entry("b", auth), secrets=secrets,
                                  emulator_host=emulator_host, http=http)
        assert expected in str(info.value)
        assert "'gcs_sa'" in str(info.value) and "\n" not in str(info.value)
        _assert_no_leak(info.value)


async def test_unparseable_private_key_names_the_account_only(http: HttpClient) -> None:
    data = json.loads(_sa_key())
    account = GcpServiceAccount(client_email=data["client_email"], project_id="p", info=data)
    with pytest.raises(SecretError, match=r"reader@p\.iam\.gserviceaccount\.com") as info:
        service_account_credentials(account)
    _assert_no_leak(info.value)
    assert FAKE_KEY not in repr(account)
    secrets = SecretResolver(None, {"BDN_SECRET_GCS_SA": _sa_key()})
    auth = AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name="gcs_sa")
    with pytest.raises(SecretError, match=r"secret 'gcs_sa': .* private_key does not parse"):
        gcs_source_from_entry(entry("b", auth), secrets=secrets, emulator_host=None, http=http)


async def test_service_account_key_signs_for_a_token_that_reads(fake_google: FakeGoogle,
                                                                http: HttpClient) -> None:
    """CUSTOM_SECRET with a real (freshly made) key: google-auth signs a JWT with it,
    trades it at the key's token_uri, and both the SDK and the data plane present
    the access token."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    secret = _sa_key(private_key=pem, private_key_id="kid-1",
                     token_uri=f"{fake_google.url}/token")
    credentials = gcs_credentials_from_secret(
        SecretResolver(None, {"BDN_SECRET_GCS_SA": secret}), "gcs_sa")
    src = GcsSource("bkt", "m", credentials=credentials, api_endpoint=fake_google.url,
                    http=http)
    try:
        (obj,) = await src.list()
        assert await read_source(src, obj) == b"weights!"
    finally:
        await src.close()
    grant = fake_google.oauth_requests[0]
    assert grant["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    # google-auth always names Google's token endpoint as the audience, even
    # when it posts to the key's token_uri.
    claims = jwt.decode(grant["assertion"], certs={"kid-1": public.decode()},
                        audience="https://oauth2.googleapis.com/token")
    assert claims["iss"] == "reader@p.iam.gserviceaccount.com"
    assert claims["scope"] == SCOPE_READ_ONLY
    assert set(fake_google.storage_auth) == {f"Bearer {FakeGoogle.ACCESS_TOKEN}"}


async def test_gcp_oidc_without_token_file_says_so(tmp_path: Path, http: HttpClient) -> None:
    auth = AuthConfig(
        auth_method="GCP_OIDC",
        gcp_oidc_service_account="reader@p.iam.gserviceaccount.com",
        gcp_oidc_workload_id_provider=(
            "projects/123/locations/global/workloadIdentityPools/pool/providers/prov"),
    )
    with pytest.raises(AuthError, match=r"GCP_OIDC needs a projected service-account token "
                                        r"file.*BDN_OIDC_TOKEN_FILE is not set.*CUSTOM_SECRET"):
        gcs_source_from_entry(entry("b", auth), secrets=SecretResolver(None, {}),
                              emulator_host=None, http=http)
    with pytest.raises(AuthError, match="does not exist"):
        gcs_source_from_entry(entry("b", auth), secrets=SecretResolver(None, {}),
                              emulator_host=None, http=http, token_file=tmp_path / "absent")


async def test_aws_oidc_cannot_authenticate_gcs(http: HttpClient) -> None:
    auth = AuthConfig(auth_method="AWS_OIDC",
                      aws_oidc_role_arn="arn:aws:iam::123456789012:role/r",
                      aws_oidc_region="us-east-1")
    with pytest.raises(ConfigError, match="AWS_OIDC cannot authenticate a gs:// source"):
        gcs_source_from_entry(entry("b", auth), secrets=SecretResolver(None, {}),
                              emulator_host=None, http=http)
