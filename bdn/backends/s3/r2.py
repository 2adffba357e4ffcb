"""A Cloudflare R2 prefix as a weights source: ``r2://account_id.bucket/models/llama``.

R2 speaks the S3 API at ``https://<account_id>.r2.cloudflarestorage.com`` with
region ``auto``, so this is :class:`~bdn.backends.s3.source.S3Source` pointed there,
with its own kind and URI. Credentials are the ``r2_credentials`` secret in
the S3 JSON format (``aws_access_key_id``, ``aws_secret_access_key``).
"""

from __future__ import annotations

from bdn.backends.base import Source
from bdn.backends.s3.client import DEFAULT_S3_CLIENT_CONFIG, S3ClientConfig
from bdn.backends.s3.creds import S3Credentials, custom_secret_keys
from bdn.backends.s3.source import S3Source
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.errors import ConfigError
from bdn.http import HttpClient

__all__ = ["R2_REGION", "R2Source", "r2_endpoint", "r2_source_from_entry"]

R2_REGION = "auto"
"""The signing region R2 expects."""


def r2_endpoint(account_id: str) -> str:
    """The S3 API endpoint of a Cloudflare account.

    >>> r2_endpoint("0123abcd")
    'https://0123abcd.r2.cloudflarestorage.com'
    """
    return f"https://{account_id}.r2.cloudflarestorage.com"


class R2Source(S3Source):
    """Every object under ``r2://account_id.bucket/prefix/``; see :class:`S3Source`
    for listing, identities (which include the endpoint, hence the account)
    and reads.

    Args:
        account_id: Cloudflare account id.
        bucket: bucket name.
        prefix: folder inside the bucket ("" for the whole bucket).
        credentials: keys from the ``r2_credentials`` secret; signed for
            region ``auto`` whatever region they name.
        endpoint_url: the S3 endpoint; ``None`` for :func:`r2_endpoint` (tests
            override it to reach a local S3 server).
        http: shared HTTP client; one is created (and closed) when not given.
    """

    kind = "r2"

    def __init__(
        self,
        account_id: str,
        bucket: str,
        prefix: str = "",
        *,
        credentials: S3Credentials,
        endpoint_url: str | None = None,
        http: HttpClient | None = None,
        client_config: S3ClientConfig = DEFAULT_S3_CLIENT_CONFIG,
    ) -> None:
        keys = S3Credentials(credentials.access_key_id, credentials.secret_access_key,
                             region=R2_REGION, session_token=credentials.session_token)
        super().__init__(bucket, prefix, credentials=keys,
                         endpoint_url=endpoint_url or r2_endpoint(account_id), http=http,
                         client_config=client_config)
        host = f"{account_id}.{bucket}"
        self.uri = f"r2://{host}/{self.prefix}" if self.prefix else f"r2://{host}"


def r2_source_from_entry(
    entry: WeightsEntry,
    *,
    secrets: SecretResolver,
    http: HttpClient,
    endpoint_override: str | None = None,
) -> Source:
    """Build the :class:`R2Source` for an ``r2://`` weights entry (nothing is contacted).

    Args:
        entry: the weights entry (its source must be ``r2://``).
        secrets: where ``auth_secret_name`` (usually ``r2_credentials``) is looked up.
        http: the shared HTTP client for the data plane (not closed by the source).
        endpoint_override: S3 endpoint to use instead of the account's R2
            endpoint (from an environment twin such as ``BDN_R2_ENDPOINT_URL``).

    Raises:
        ConfigError: no ``auth`` or no secret name (``secret_id is required``,
            then the fix), an OIDC method (R2 has none), or not an ``r2://`` source.
        SecretError: the secret is missing or not in the S3 JSON format.
    """
    parsed = entry.parsed_source
    if parsed.kind != "r2" or parsed.bucket is None or parsed.account_id is None:
        raise ConfigError(f"{entry.source!r} is not an r2:// source", field="source")
    credentials = custom_secret_keys(
        entry.auth, secrets, keys_of="the R2 API token's S3 keys", secret="r2_credentials",
        no_oidc="cannot authenticate an r2:// source (R2 has no OIDC federation); use "
        "auth_method: CUSTOM_SECRET with an r2_credentials secret")
    return R2Source(parsed.account_id, parsed.bucket, parsed.prefix, credentials=credentials,
                    endpoint_url=endpoint_override, http=http)
