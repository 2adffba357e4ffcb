"""Weights sources: one module per upstream, and the factory that picks one."""

from __future__ import annotations

from pathlib import Path

from bdn._http import HttpClient
from bdn.config import WeightsEntry
from bdn.errors import ConfigError
from bdn.secrets import SecretResolver, load_s3_credentials
from bdn.sources.base import Source, SourceObject

__all__ = ["Source", "SourceObject", "open_source"]

# Kinds a later issue adds; until then a clear error rather than a stub.
_NOT_YET = {
    "hf": "hf:// sources",
    "gcs": "gs:// sources",
    "r2": "r2:// sources",
}


def open_source(
    entry: WeightsEntry,
    *,
    secrets: SecretResolver,
    endpoint_url: str | None = None,
    http: HttpClient,
) -> Source:
    """Build the :class:`Source` for a weights entry, resolving its credentials.

    Raises:
        ConfigError: the entry's auth does not fit its source, or the kind is
            not available in this build.
        SecretError: the named secret is missing or malformed.
    """
    parsed = entry.parsed_source
    if parsed.kind == "local":
        from bdn.sources.local import LocalSource

        assert parsed.path is not None
        return LocalSource(Path(parsed.path), parsed.uri)
    if parsed.kind == "s3":
        from bdn.sources.s3 import S3Source

        auth = entry.auth
        if auth is None or (auth.auth_method == "CUSTOM_SECRET" and not auth.auth_secret_name):
            raise ConfigError(
                "secret_id is required: name a secret with the bucket's credentials, "
                "e.g. `auth: {auth_method: CUSTOM_SECRET, auth_secret_name: aws_credentials}` "
                "or `--auth-secret aws_credentials`",
                field="auth",
            )
        if auth.auth_method != "CUSTOM_SECRET":
            raise ConfigError(
                f"{auth.auth_method} needs an OIDC token exchange, which this build cannot do; "
                "use auth_method: CUSTOM_SECRET with an aws_credentials secret",
                field="auth.auth_method",
            )
        assert parsed.bucket is not None and auth.auth_secret_name is not None
        credentials = load_s3_credentials(secrets, auth.auth_secret_name)
        return S3Source(
            parsed.bucket,
            parsed.prefix,
            credentials=credentials,
            endpoint_url=endpoint_url,
            http=http,
        )
    raise ConfigError(
        f"{_NOT_YET.get(parsed.kind, parsed.kind)} are not supported by this build yet; "
        "mirror from file:// or s3:// for now",
        field="source",
    )
