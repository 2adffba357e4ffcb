"""CoreWeave AI Object Storage as a weights source: ``cw://bucket/models/llama``.

CoreWeave speaks the S3 API at one global endpoint, ``https://cwobject.com``
(``http://cwlota.com``, its LOTA cache, from inside a CoreWeave cluster), and
accepts only virtual-hosted addressing (``https://<bucket>.cwobject.com/key``).
So this is :class:`~bdn.backends.s3.source.S3Source` pointed there with
virtual-hosted addressing, with its own kind and URI. Credentials are a secret
in the S3 JSON format (``aws_access_key_id``, ``aws_secret_access_key``, and
optionally ``aws_region``), the format Truss uses for its other S3-compatible
schemes; the conventional name is ``cw_credentials``.
"""

from __future__ import annotations

from bdn.backends.s3.client import DEFAULT_S3_CLIENT_CONFIG, S3ClientConfig
from bdn.backends.s3.creds import S3Credentials, custom_secret_keys
from bdn.backends.s3.source import S3Source
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.errors import ConfigError
from bdn.http import HttpClient

__all__ = ["CW_ENDPOINT", "CW_REGION", "CwSource", "cw_source_from_entry"]

CW_ENDPOINT = "https://cwobject.com"
"""CoreWeave AI Object Storage's primary endpoint (set BDN_CW_ENDPOINT_URL to
``http://cwlota.com`` inside a CoreWeave cluster)."""
CW_REGION = "us-east-1"
"""The signing region used when the secret names none (CoreWeave accepts any)."""


class CwSource(S3Source):
    """Every object under ``cw://bucket/prefix/``; see :class:`S3Source` for listing,
    identities (which include the endpoint) and reads.

    Args:
        bucket: bucket name.
        prefix: folder inside the bucket ("" for the whole bucket).
        credentials: keys from the ``cw_credentials`` secret.
        endpoint_url: the S3 endpoint; ``None`` for :data:`CW_ENDPOINT`.
        virtual_hosted: virtual-hosted addressing (CoreWeave requires it);
            tests against a path-style server (moto on loopback) turn it off.
        http: shared HTTP client; one is created (and closed) when not given.
    """

    kind = "cw"

    def __init__(self, bucket: str, prefix: str = "", *, credentials: S3Credentials,
                 endpoint_url: str | None = None, virtual_hosted: bool = True,
                 http: HttpClient | None = None,
                 client_config: S3ClientConfig = DEFAULT_S3_CLIENT_CONFIG) -> None:
        keys = S3Credentials(credentials.access_key_id, credentials.secret_access_key,
                             region=credentials.region or CW_REGION,
                             session_token=credentials.session_token)
        super().__init__(bucket, prefix, credentials=keys,
                         endpoint_url=endpoint_url or CW_ENDPOINT, http=http,
                         client_config=client_config)
        self._bucket.addressing_style = "virtual" if virtual_hosted else "path"
        self.uri = f"cw://{bucket}/{self.prefix}" if self.prefix else f"cw://{bucket}"


def cw_source_from_entry(entry: WeightsEntry, *, secrets: SecretResolver, http: HttpClient,
                         endpoint_override: str | None = None) -> CwSource:
    """Build the :class:`CwSource` for a ``cw://`` weights entry (nothing is contacted).

    Args:
        endpoint_override: the endpoint to use instead of :data:`CW_ENDPOINT`
            (``BDN_CW_ENDPOINT_URL``: ``http://cwlota.com`` in-cluster, or a test
            server). A loopback override is addressed path-style, since a bucket
            cannot be a subdomain of an IP address.

    Raises:
        ConfigError: no ``auth`` or no secret name, an OIDC method, or not ``cw://``.
        SecretError: the secret is missing or not in the S3 JSON format.
    """
    parsed = entry.parsed_source
    if parsed.kind != "cw" or parsed.bucket is None:
        raise ConfigError(f"{entry.source!r} is not a cw:// source", field="source")
    credentials = custom_secret_keys(
        entry.auth, secrets, keys_of="the CoreWeave access key", secret="cw_credentials",
        no_oidc="cannot authenticate a cw:// source; use auth_method: CUSTOM_SECRET with a "
        "cw_credentials secret")
    return CwSource(parsed.bucket, parsed.prefix, credentials=credentials,
                    endpoint_url=endpoint_override, http=http,
                    virtual_hosted=not _is_ip_endpoint(endpoint_override))


def _is_ip_endpoint(url: str | None) -> bool:
    """True for an endpoint whose host is an IP address or ``localhost``."""
    if not url:
        return False
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.replace(".", "").isdigit() or ":" in host
