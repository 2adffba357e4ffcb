"""Weights sources: one module per upstream, and the factory that picks one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bdn._http import HttpClient
from bdn.config import WeightsEntry
from bdn.errors import ConfigError
from bdn.secrets import SecretResolver, load_s3_credentials
from bdn.sources.base import Source, SourceObject

__all__ = ["DEFAULT_SOURCE_ENV", "Source", "SourceEnv", "SourceObject", "open_source"]


@dataclass(frozen=True, slots=True)
class SourceEnv:
    """Where the upstreams are, read once from the environment at the entry point.

    Attributes:
        endpoint_url: S3-compatible endpoint for ``s3://`` (``AWS_ENDPOINT_URL``).
        hf_endpoint: the Hugging Face Hub (``HF_ENDPOINT``; default huggingface.co).
        gcs_emulator_host: a GCS emulator (``STORAGE_EMULATOR_HOST``).
        r2_endpoint_url: overrides ``https://<account>.r2.cloudflarestorage.com``
            (``BDN_R2_ENDPOINT_URL``), e.g. for an S3-compatible test server.
        oidc_token_file: the projected service-account token for ``AWS_OIDC`` and
            ``GCP_OIDC`` (``BDN_OIDC_TOKEN_FILE``).
    """

    endpoint_url: str | None = None
    hf_endpoint: str | None = None
    gcs_emulator_host: str | None = None
    r2_endpoint_url: str | None = None
    oidc_token_file: Path | None = None


DEFAULT_SOURCE_ENV = SourceEnv()

_SECRET_REQUIRED = (
    "secret_id is required: name a secret with the bucket's credentials, "
    "e.g. `auth: {auth_method: CUSTOM_SECRET, auth_secret_name: aws_credentials}` "
    "or `--auth-secret aws_credentials`"
)


def open_source(
    entry: WeightsEntry,
    *,
    secrets: SecretResolver,
    http: HttpClient,
    env: SourceEnv = DEFAULT_SOURCE_ENV,
) -> Source:
    """Build the :class:`Source` for a weights entry, resolving its credentials.

    Raises:
        ConfigError: the entry's auth does not fit its source.
        SecretError: the named secret is missing or malformed.
        AuthError: OIDC was asked for but no token file is available.
    """
    parsed = entry.parsed_source
    if parsed.kind == "local":
        from bdn.sources.local import LocalSource

        assert parsed.path is not None
        return LocalSource(Path(parsed.path), parsed.uri)
    if parsed.kind == "s3":
        return _s3_source(entry, secrets=secrets, http=http, env=env)
    if parsed.kind == "hf":
        from bdn.sources.hf import DEFAULT_HF_ENDPOINT, hf_source_from_entry

        return hf_source_from_entry(
            entry, secrets=secrets, endpoint=env.hf_endpoint or DEFAULT_HF_ENDPOINT, http=http
        )
    if parsed.kind == "gcs":
        from bdn.sources.gcs import gcs_source_from_entry

        return gcs_source_from_entry(entry, secrets=secrets, emulator_host=env.gcs_emulator_host,
                                     http=http, token_file=env.oidc_token_file)
    if parsed.kind == "r2":
        from bdn.sources.r2 import r2_source_from_entry

        return r2_source_from_entry(entry, secrets=secrets, http=http,
                                    endpoint_override=env.r2_endpoint_url)
    raise ConfigError(f"{parsed.kind} sources are not supported", field="source")


def _s3_source(entry: WeightsEntry, *, secrets: SecretResolver, http: HttpClient,
               env: SourceEnv) -> Source:
    from bdn.sources.s3 import S3Source

    parsed, auth = entry.parsed_source, entry.auth
    if auth is None or (auth.auth_method == "CUSTOM_SECRET" and not auth.auth_secret_name):
        raise ConfigError(_SECRET_REQUIRED, field="auth")
    assert parsed.bucket is not None
    if auth.auth_method == "AWS_OIDC":
        from bdn._oidc import aws_oidc_credentials

        credentials = aws_oidc_credentials(auth, token_file=env.oidc_token_file)
    else:
        assert auth.auth_secret_name is not None
        credentials = load_s3_credentials(secrets, auth.auth_secret_name)
    return S3Source(parsed.bucket, parsed.prefix, credentials=credentials,
                    endpoint_url=env.endpoint_url, http=http)
