"""What the bucket-backed stores and sources (``s3://``, ``gs://``) share: a prefix and
URI, an SDK bucket handle for the control plane, an aiohttp client for the data plane,
the source's listing, the store's key mapping and upload error, and which error
type each role gets for a missing bucket or object."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from bdn.backends.base import SourceObject
from bdn.backends.keys import blob_digest, check_key, check_prefix
from bdn.errors import (
    BdnError,
    BlobNotFound,
    ConfigError,
    ManifestInvalid,
    NotFound,
    SourceError,
    SourceNotFound,
    StoreError,
)
from bdn.http import HttpClient
from bdn.manifest import validate_path

MiB = 1024 * 1024


def part_size(size: int, minimum: int, max_parts: int) -> int:
    """Part (or block) size for a ``size``-byte upload in pieces: ``minimum``, or bigger
    (whole MiB) so the upload needs at most ``max_parts`` pieces.

    Every bucket store uploads big files in pieces (S3 multipart: 10,000 parts;
    Azure block blobs: 50,000 blocks), never in one request, which S3 caps at
    5 GiB; growing the piece keeps a file of any size within the piece count.

    >>> part_size(1, 8 * MiB, 10_000) // MiB
    8
    >>> part_size(200 * 1024**3, 8 * MiB, 10_000) // MiB   # 200 GiB in <= 10,000 parts
    21
    """
    needed = math.ceil(size / max_parts)
    return max(minimum, math.ceil(needed / MiB) * MiB)


def bucket_and_prefix(uri: str, scheme: str) -> tuple[str, str]:
    """The bucket and prefix of store URI ``<scheme>://bucket[/prefix]``.

    Raises:
        ConfigError: the URI names no bucket.
    """
    parts = urlsplit(uri.strip())
    if not parts.netloc:
        raise ConfigError(f"store {uri!r} names no bucket; expected {scheme}://bucket[/prefix]")
    return parts.netloc, parts.path.strip("/")


def bucket_not_found(message: str, *, for_source: bool) -> BdnError:
    """A missing bucket: ``SourceNotFound`` for a source, ``NotFound`` for a store."""
    return SourceNotFound(message) if for_source else NotFound(message)


def object_not_found(where: str, key: str | None, *, for_source: bool) -> BdnError:
    """Missing object ``where`` (``<scheme>://bucket/key``): ``SourceNotFound`` for a
    source; for a store ``BlobNotFound``, carrying the digest a blob key names."""
    if for_source:
        return SourceNotFound(f"{where} does not exist")
    return BlobNotFound(f"{where} does not exist", digest=blob_digest(key) if key else None)


def failure_type(for_source: bool) -> type[SourceError] | type[StoreError]:
    """The plain failure of each role (whatever is neither missing nor refused)."""
    return SourceError if for_source else StoreError


_T = TypeVar("_T")


class _SdkBucket(Protocol):
    bucket: str

    async def run(self, fn: Callable[[Any], _T], *, action: str, key: str | None = None) -> _T:
        ...

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


class BucketSource(BucketClient):
    """Base of the bucket-backed :class:`~bdn.backends.base.Source` implementations:
    every object under the prefix, listed as a folder.

    A bucket prefix has no revision (each object's own version, ETag or
    generation, pins it), so :meth:`resolve` returns ``None``. :meth:`list` skips
    folder markers, checks every path and sorts; subclasses say how to page
    through the listing (:meth:`_listing`) and what one entry becomes
    (:meth:`_object`).
    """

    async def resolve(self) -> str | None:
        """No revision to pin for a prefix; returns ``None``."""
        return None

    async def list(self) -> list[SourceObject]:
        """List the prefix (paginated), sorted by path; ``[]`` when it is empty.

        Raises:
            SourceNotFound: the bucket does not exist.
            AuthError: the credentials are refused or lack access.
            SourceError: a name is not a valid manifest path, or the service failed.
        """
        objects: list[SourceObject] = []
        async for name, entry in self._listing():
            path = self._source_path(name)
            if path is not None:
                objects.append(self._object(path, name, entry))
        objects.sort(key=lambda obj: obj.path)
        return objects

    def _listing(self) -> AsyncIterator[tuple[str, Any]]:
        """``(object name, SDK entry)`` for every object under the prefix."""
        raise NotImplementedError

    def _object(self, path: str, name: str, entry: Any) -> SourceObject:
        """The :class:`SourceObject` of listed object ``name`` (manifest path ``path``)."""
        raise NotImplementedError


class BucketStore(BucketClient):
    """Base of the bucket-backed :class:`~bdn.backends.base.BlobStore` implementations:
    adds key mapping, ``exists`` (a ``size`` that may be ``NotFound``), listing
    relative to the prefix, and ``put_file`` with the error of a local file that
    cannot be read. Subclasses say how to page through names (:meth:`_names`)
    and how the SDK uploads one file (:meth:`_upload_file`)."""

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

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """Yield every key (relative to the store prefix) starting with ``prefix``,
        in name order."""
        check_prefix(prefix, store=self.uri)
        async for name in self._names(self._base + prefix):
            yield name[len(self._base):]

    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        """Upload local file ``path`` to ``key`` (see :meth:`_upload_file`); the object
        appears only once the upload completes. ``move=True`` removes ``path``
        after a successful upload.

        Raises:
            StoreError: the local file cannot be read (naming it), or the upload failed.
        """
        full = self._full(key)
        source = Path(path)

        def upload(handle: Any) -> None:
            self._upload_file(handle, source, full)
            if move:
                source.unlink(missing_ok=True)

        where = f"{self.scheme}://{self.bucket}/{full}"
        try:
            await self._bucket.run(upload, action=f"upload {source} to {where}", key=full)
        except BdnError:
            raise
        except OSError as err:
            raise StoreError(f"cannot upload {source} to {where}: {err.strerror or err}") from err

    def _names(self, prefix: str) -> AsyncIterator[str]:
        """The full name of every object starting with ``prefix``, in name order."""
        raise NotImplementedError

    def _upload_file(self, handle: Any, source: Path, full: str) -> None:
        """Upload ``source`` to object ``full`` through SDK ``handle`` (blocking: it
        runs in a worker thread)."""
        raise NotImplementedError
