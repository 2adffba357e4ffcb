"""Origin blob stores: open one by URI with :func:`open_store`.

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

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bdn._http import HttpClient, redact_url
from bdn.errors import ConfigError
from bdn.secrets import S3Credentials
from bdn.store.base import BlobStore
from bdn.store.file import FileStore
from bdn.store.http import HttpStore
from bdn.store.s3 import S3Store

if TYPE_CHECKING:
    from google.auth.credentials import Credentials as GcsCredentials

# GcsStore lives in bdn.store.gcs and is imported only when a gs:// store is
# opened: google-cloud-storage adds ~0.15 s to every CLI start otherwise.
__all__ = ["BlobStore", "FileStore", "HttpStore", "S3Store", "open_store"]

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
            :func:`bdn._gcp.gcs_credentials_from_secret` with the read-write
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
        from bdn.store.gcs import GcsStore

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
