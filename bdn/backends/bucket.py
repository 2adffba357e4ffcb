"""What the bucket-backed stores and sources (``s3://``, ``gs://``) share: a prefix and
URI, an SDK bucket handle for the control plane, an aiohttp client for the data plane,
and the store's key mapping and upload error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from bdn.backends.keys import check_key
from bdn.errors import BdnError, ConfigError, ManifestInvalid, NotFound, SourceError, StoreError
from bdn.http import HttpClient
from bdn.manifest import validate_path


def bucket_and_prefix(uri: str, scheme: str) -> tuple[str, str]:
    """The bucket and prefix of store URI ``<scheme>://bucket[/prefix]``.

    Raises:
        ConfigError: the URI names no bucket.
    """
    parts = urlsplit(uri.strip())
    if not parts.netloc:
        raise ConfigError(f"store {uri!r} names no bucket; expected {scheme}://bucket[/prefix]")
    return parts.netloc, parts.path.strip("/")


class _SdkBucket(Protocol):
    bucket: str

    def close(self) -> None: ...


class BucketClient:
    """A bucket under an optional prefix, read through an SDK handle and aiohttp.

    Subclasses set ``_bucket`` (their SDK handle). This class owns the prefix,
    the URI, the borrowed or owned HTTP client, and ``close`` (idempotent).
    """

    _bucket: _SdkBucket

    def __init__(self, scheme: str, bucket: str, prefix: str, http: HttpClient | None) -> None:
        self.scheme = scheme
        self.prefix = prefix.strip("/")
        self.uri = f"{scheme}://{bucket}/{self.prefix}" if self.prefix else f"{scheme}://{bucket}"
        self._base = f"{self.prefix}/" if self.prefix else ""
        self._http = http
        self._owns_http = http is None

    @property
    def bucket(self) -> str:
        return self._bucket.bucket

    async def close(self) -> None:
        """Close the SDK client, and the aiohttp client if this object created it
        (a borrowed one is left to its owner); idempotent."""
        self._bucket.close()
        if self._owns_http and self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def _http_client(self) -> HttpClient:
        if self._http is None:
            self._http = HttpClient()
        return self._http

    def _source_path(self, name: str) -> str | None:
        """The manifest path of listed object ``name`` when used as a source: ``None``
        for a console-made "folder" (a name ending in ``/``), which is not a file.

        Raises:
            SourceError: the name is not a valid manifest path.
        """
        if name.endswith("/"):
            return None
        path = name[len(self._base):]
        try:
            validate_path(path)
        except ManifestInvalid as err:
            raise SourceError(f"cannot mirror {self.scheme}://{self.bucket}/{name}: {err}; "
                              "rename the object or narrow the source prefix") from err
        return path


class BucketStore(BucketClient):
    """Base of the bucket-backed :class:`~bdn.backends.base.BlobStore` implementations:
    adds key mapping, ``exists`` (a ``size`` that may be ``NotFound``) and the
    error of an upload whose local file cannot be read."""

    read_only = False

    async def size(self, key: str) -> int:
        raise NotImplementedError

    async def exists(self, key: str) -> bool:
        """True when ``key`` exists; 401/403 raise ``AuthError``."""
        try:
            await self.size(key)
        except NotFound:
            return False
        return True

    def local_path(self, key: str) -> Path | None:
        return None

    def staging_dir(self) -> Path | None:
        return None

    def _full(self, key: str) -> str:
        check_key(key, store=self.uri)
        return self._base + key

    async def _upload(self, source: Path, full: str,
                      run: Callable[[str], Awaitable[Any]]) -> None:
        """Await ``run(action)``, the upload of local file ``source`` to object ``full``;
        a local file that cannot be read is a ``StoreError`` naming it."""
        where = f"{self.scheme}://{self.bucket}/{full}"
        try:
            await run(f"upload {source} to {where}")
        except BdnError:
            raise
        except OSError as err:
            raise StoreError(f"cannot upload {source} to {where}: {err.strerror or err}") from err
