"""Backends by URI scheme: :func:`open_store` for the mirrored origin a pull reads and
a mirror writes, :func:`open_source` for the upstream a mirror copies from.

One table per side maps a scheme (or a source kind) to the factory of the
backend package that serves it. A factory is imported only when its scheme is
used, so ``bdn --help`` and a pull from a ``file://`` store never load boto3,
google-cloud or huggingface_hub.

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

import importlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bdn.backends.base import BlobStore, Source, SourceObject
from bdn.backends.http.store import HttpStore
from bdn.backends.local.store import FileStore
from bdn.config.secrets import SecretResolver
from bdn.config.settings import Settings
from bdn.config.weights import WeightsEntry
from bdn.errors import ConfigError
from bdn.http import HttpClient, redact_url

if TYPE_CHECKING:
    from google.auth.credentials import Credentials as GcsCredentials

    from bdn.backends.azure.creds import AzureCredentials
    from bdn.backends.s3.creds import S3Credentials

__all__ = ["DEFAULT_SOURCE_ENV", "BlobStore", "FileStore", "HttpStore", "Source",
           "SourceEnv", "SourceObject", "open_source", "open_store"]

# A factory as the tables call it: the URI or weights entry, then the caller's options.
_Build = Callable[[Any, Mapping[str, Any]], Any]

_ACCEPTED = ("use file:///abs/path (or an absolute path), s3://bucket[/prefix], "
             "gs://bucket[/prefix], azure://account/container[/prefix] "
             "or http(s)://host[:port]/prefix")


@dataclass(frozen=True, slots=True)
class _Factory:
    """A backend's factory, named rather than imported so that its SDK loads only
    when its scheme is used.

    Attributes:
        module: the module that defines it.
        name: its name there.
        options: which of the caller's options it takes, as ``{option: parameter}``.
    """

    module: str
    name: str
    options: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, target: Any, given: Mapping[str, Any]) -> Any:
        factory = getattr(importlib.import_module(self.module), self.name)
        return factory(target, **{param: given[option] for option, param in self.options.items()})


# open_store's keyword arguments, per URI scheme.
_STORES: dict[str, _Build] = {
    "s3": _Factory("bdn.backends.s3.store", "open_s3_store",
                   {"endpoint_url": "endpoint_url", "credentials": "credentials", "http": "http"}),
    "gs": _Factory("bdn.backends.gcs.store", "open_gcs_store",
                   {"gcs_credentials": "credentials", "gcs_emulator_host": "emulator_host",
                    "http": "http"}),
    "azure": _Factory("bdn.backends.azure.store", "open_azure_store",
                      {"azure_credentials": "credentials", "azure_endpoint_url": "endpoint_url",
                       "http": "http"}),
    "http": _Factory("bdn.backends.http.store", "open_http_store", {"http": "http"}),
    "https": _Factory("bdn.backends.http.store", "open_http_store", {"http": "http"}),
}


def store_for(settings: Settings) -> BlobStore:
    """The blob store ``settings`` name, with the platform's own credentials."""
    azure = None
    if settings.azure_store_secret and urlsplit(settings.store_uri).scheme.lower() == "azure":
        # Imported here: the Azure SDK loads only for azure:// stores.
        from bdn.backends.azure.creds import load_azure_credentials

        account = urlsplit(settings.store_uri).netloc
        azure = load_azure_credentials(settings.secrets(), settings.azure_store_secret, account)
    return open_store(settings.store_uri, endpoint_url=settings.endpoint_url,
                      gcs_emulator_host=settings.gcs_emulator_host,
                      azure_credentials=azure, azure_endpoint_url=settings.azure_endpoint_url)


def open_store(
    uri: str,
    *,
    endpoint_url: str | None = None,
    http: HttpClient | None = None,
    credentials: S3Credentials | None = None,
    gcs_emulator_host: str | None = None,
    gcs_credentials: GcsCredentials | None = None,
    azure_credentials: AzureCredentials | None = None,
    azure_endpoint_url: str | None = None,
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
            :func:`bdn.backends.gcs.creds.gcs_credentials_from_secret` with the
            read-write scope); ``None`` uses Application Default Credentials.
        azure_credentials: the account key for ``azure://`` (``BDN_AZURE_STORE_SECRET``
            names its secret); ``None`` reads a public container.
        azure_endpoint_url: an Azure emulator's base URL (``BDN_AZURE_ENDPOINT_URL``).

    Raises:
        ConfigError: unknown scheme, relative path or missing bucket.
    """
    text = uri.strip()
    path = _local_path(text, uri)
    if path is not None:
        return FileStore(path)
    factory = _STORES.get(urlsplit(text).scheme.lower())
    if factory is None:
        raise ConfigError(f"unsupported store {redact_url(uri)!r}; {_ACCEPTED}")
    store: BlobStore = factory(uri, {
        "endpoint_url": endpoint_url, "http": http, "credentials": credentials,
        "gcs_emulator_host": gcs_emulator_host, "gcs_credentials": gcs_credentials,
        "azure_credentials": azure_credentials, "azure_endpoint_url": azure_endpoint_url,
    })
    return store


def _local_path(text: str, uri: str) -> Path | None:
    """The directory of a ``file://`` URI or a plain path, ``None`` for any other URI."""
    if text.startswith("file://"):
        text = text[len("file://"):]
        # file://localhost/x is the long spelling of file:///x.
        if text.startswith("localhost/"):
            text = text[len("localhost"):]
    elif not text.startswith(("/", "~", ".")):
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"unsupported store {uri!r}: the path is relative; {_ACCEPTED}")
    return path


@dataclass(frozen=True, slots=True)
class SourceEnv:
    """Where the upstreams are, read once from the environment at the entry point.

    Attributes:
        endpoint_url: S3-compatible endpoint for ``s3://`` (``AWS_ENDPOINT_URL``).
        hf_endpoint: the Hugging Face Hub (``HF_ENDPOINT``; default huggingface.co).
        gcs_emulator_host: a GCS emulator (``STORAGE_EMULATOR_HOST``).
        r2_endpoint_url: overrides ``https://<account>.r2.cloudflarestorage.com``
            (``BDN_R2_ENDPOINT_URL``), e.g. for an S3-compatible test server.
        cw_endpoint_url: overrides ``https://cwobject.com`` for ``cw://``
            (``BDN_CW_ENDPOINT_URL``: ``http://cwlota.com`` inside CoreWeave, or a test server).
        azure_endpoint_url: an Azure Blob emulator's base URL for ``azure://``
            (``BDN_AZURE_ENDPOINT_URL``, e.g. Azurite's ``http://127.0.0.1:10000``).
        oidc_token_file: the projected service-account token for ``AWS_OIDC`` and
            ``GCP_OIDC`` (``BDN_OIDC_TOKEN_FILE``).
    """

    endpoint_url: str | None = None
    hf_endpoint: str | None = None
    gcs_emulator_host: str | None = None
    r2_endpoint_url: str | None = None
    cw_endpoint_url: str | None = None
    azure_endpoint_url: str | None = None
    oidc_token_file: Path | None = None

    @classmethod
    def of(cls, holder: object) -> SourceEnv:
        """The endpoints ``holder`` carries under these fields' names (:class:`Settings`,
        ``MirrorOptions``): one list of names, so an upstream added here reaches every
        holder without another field-by-field copy."""
        return cls(**{name: getattr(holder, name) for name in _SOURCE_ENV_FIELDS})


_SOURCE_ENV_FIELDS = tuple(f.name for f in fields(SourceEnv))
DEFAULT_SOURCE_ENV = SourceEnv()


def _hf_source(entry: WeightsEntry, given: Mapping[str, Any]) -> Source:
    """The Hub source: its factory wants an endpoint, so the default is filled in here."""
    # Imported here, not at the top: huggingface_hub loads only for hf:// sources.
    from bdn.backends.hf.source import DEFAULT_HF_ENDPOINT, hf_source_from_entry

    return hf_source_from_entry(entry, secrets=given["secrets"], http=given["http"],
                                endpoint=given["hf_endpoint"] or DEFAULT_HF_ENDPOINT)


# What each source kind's factory takes: ``secrets``, ``http`` and fields of SourceEnv.
_SOURCES: dict[str, _Build] = {
    "local": _Factory("bdn.backends.local.source", "local_source_from_entry"),
    "s3": _Factory("bdn.backends.s3.source", "s3_source_from_entry",
                   {"secrets": "secrets", "http": "http", "endpoint_url": "endpoint_url",
                    "oidc_token_file": "token_file"}),
    "hf": _hf_source,
    "gcs": _Factory("bdn.backends.gcs.source", "gcs_source_from_entry",
                    {"secrets": "secrets", "http": "http", "gcs_emulator_host": "emulator_host",
                     "oidc_token_file": "token_file"}),
    "r2": _Factory("bdn.backends.s3.r2", "r2_source_from_entry",
                   {"secrets": "secrets", "http": "http", "r2_endpoint_url": "endpoint_override"}),
    "cw": _Factory("bdn.backends.s3.cw", "cw_source_from_entry",
                   {"secrets": "secrets", "http": "http", "cw_endpoint_url": "endpoint_override"}),
    "azure": _Factory("bdn.backends.azure.source", "azure_source_from_entry",
                      {"secrets": "secrets", "http": "http",
                       "azure_endpoint_url": "endpoint_url"}),
    "https": _Factory("bdn.backends.http.source", "https_source_from_entry",
                      {"secrets": "secrets", "http": "http"}),
}


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
    kind = entry.parsed_source.kind
    factory = _SOURCES.get(kind)
    if factory is None:
        raise ConfigError(f"{kind} sources are not supported", field="source")
    source: Source = factory(entry, {"secrets": secrets, "http": http, **asdict(env)})
    return source
