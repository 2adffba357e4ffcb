"""Backends by URI scheme: :func:`open_store` for the mirrored origin a pull reads and
a mirror writes, :func:`open_source` for the upstream a mirror copies from.

Each SDK is imported only when its scheme is used, so ``bdn --help`` and a pull
from a ``file://`` store never load boto3, google-cloud or huggingface_hub.

>>> open_store("file:///srv/bdn").uri
'file:///srv/bdn'
>>> open_store("s3://weights/bdn/").uri
's3://weights/bdn'
>>> open_store("gs://weights/bdn", gcs_emulator_host="localhost:9023").uri
'gs://weights/bdn'
>>> open_store("./relative")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
bdn.errors.ConfigError: unsupported store './relative': the path is relative; use file:///...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bdn.backends.base import BlobStore, Source, SourceObject
from bdn.backends.http.store import HttpStore
from bdn.backends.local.store import FileStore
from bdn.backends.s3.store import S3Store
from bdn.config.secrets import S3Credentials, SecretResolver, load_s3_credentials
from bdn.config.weights import WeightsEntry
from bdn.errors import ConfigError
from bdn.http import HttpClient, redact_url

if TYPE_CHECKING:
    from google.auth.credentials import Credentials as GcsCredentials

# GcsStore lives in bdn.backends.gcs.store and is imported only when a gs:// store is
# opened: google-cloud-storage adds ~0.15 s to every CLI start otherwise.

_ACCEPTED = ("use file:///abs/path (or an absolute path), s3://bucket[/prefix], "
             "gs://bucket[/prefix] or http(s)://host[:port]/prefix")


def open_store(
    uri: str,
    *,
    endpoint_url: str | None = None,
    http: HttpClient | None = None,
    credentials: S3Credentials | None = None,
    gcs_emulator_host: str | None = None,
    gcs_credentials: GcsCredentials | None = None,
) -> BlobStore:
    """Open the blob store that ``uri`` names. Nothing is contacted yet.

    Args:
        uri: ``file:///abs/path`` (or a plain absolute path; ``~`` is
            expanded), ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]``, or
            ``http(s)://host[:port]/prefix`` (read-only).
        endpoint_url: S3-compatible server for ``s3://`` (``--endpoint-url``).
        http: shared HTTP client for the S3 and HTTP data planes; when omitted
            each store makes (and closes) its own.
        credentials: S3 keys; ``None`` uses boto3's default chain.
        gcs_emulator_host: ``STORAGE_EMULATOR_HOST`` for ``gs://`` as read at the
            entry point (never from ``os.environ`` here); the emulator is used
            anonymously.
        gcs_credentials: google-auth credentials for ``gs://`` (e.g.
            :func:`bdn.backends.gcs.client.gcs_credentials_from_secret` with the read-write
            scope); ``None`` uses Application Default Credentials.

    Raises:
        ConfigError: unknown scheme, relative path or missing bucket.
    """
    text = uri.strip()
    if text.startswith("file://"):
        path = text[len("file://"):]
        # file://localhost/x is the long spelling of file:///x.
        if path.startswith("localhost/"):
            path = path[len("localhost"):]
        return FileStore(_absolute(path, uri))
    if text.startswith(("/", "~", ".")):
        return FileStore(_absolute(text, uri))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"store {uri!r} names no bucket; expected s3://bucket[/prefix]")
        return S3Store(parts.netloc, parts.path.strip("/"), endpoint_url=endpoint_url,
                       credentials=credentials, http=http)
    if scheme == "gs":
        from bdn.backends.gcs.store import GcsStore

        if not parts.netloc:
            raise ConfigError(f"store {uri!r} names no bucket; expected gs://bucket[/prefix]")
        return GcsStore(parts.netloc, parts.path.strip("/"), credentials=gcs_credentials,
                        emulator_host=gcs_emulator_host, http=http)
    if scheme in ("http", "https"):
        return HttpStore(text, http=http)
    raise ConfigError(f"unsupported store {redact_url(uri)!r}; {_ACCEPTED}")


def _absolute(text: str, uri: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"unsupported store {uri!r}: the path is relative; {_ACCEPTED}")
    return path


__all__ = ["DEFAULT_SOURCE_ENV", "BlobStore", "FileStore", "HttpStore", "S3Store", "Source",
           "SourceEnv", "SourceObject", "open_source", "open_store"]


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
        from bdn.backends.local.source import LocalSource

        assert parsed.path is not None
        return LocalSource(Path(parsed.path), parsed.uri)
    if parsed.kind == "s3":
        return _s3_source(entry, secrets=secrets, http=http, env=env)
    if parsed.kind == "hf":
        from bdn.backends.hf.source import DEFAULT_HF_ENDPOINT, hf_source_from_entry

        return hf_source_from_entry(
            entry, secrets=secrets, endpoint=env.hf_endpoint or DEFAULT_HF_ENDPOINT, http=http
        )
    if parsed.kind == "gcs":
        from bdn.backends.gcs.source import gcs_source_from_entry

        return gcs_source_from_entry(entry, secrets=secrets, emulator_host=env.gcs_emulator_host,
                                     http=http, token_file=env.oidc_token_file)
    if parsed.kind == "r2":
        from bdn.backends.s3.r2 import r2_source_from_entry

        return r2_source_from_entry(entry, secrets=secrets, http=http,
                                    endpoint_override=env.r2_endpoint_url)
    raise ConfigError(f"{parsed.kind} sources are not supported", field="source")


def _s3_source(entry: WeightsEntry, *, secrets: SecretResolver, http: HttpClient,
               env: SourceEnv) -> Source:
    from bdn.backends.s3.source import S3Source

    parsed, auth = entry.parsed_source, entry.auth
    if auth is None or (auth.auth_method == "CUSTOM_SECRET" and not auth.auth_secret_name):
        raise ConfigError(_SECRET_REQUIRED, field="auth")
    assert parsed.bucket is not None
    if auth.auth_method == "AWS_OIDC":
        from bdn.backends.oidc import aws_oidc_credentials

        credentials = aws_oidc_credentials(auth, token_file=env.oidc_token_file)
    else:
        assert auth.auth_secret_name is not None
        credentials = load_s3_credentials(secrets, auth.auth_secret_name)
    return S3Source(parsed.bucket, parsed.prefix, credentials=credentials,
                    endpoint_url=env.endpoint_url, http=http)
