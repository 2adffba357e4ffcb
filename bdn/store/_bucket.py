"""What the object-store backends (``s3://``, ``gs://``) share: keys under a prefix,
an SDK bucket handle for the control plane, an aiohttp client for the data plane."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from bdn._http import HttpClient
from bdn.errors import NotFound
from bdn.store._keys import check_key


class _SdkBucket(Protocol):
    bucket: str

    def close(self) -> None: ...


class BucketStore:
    """Base of the bucket-backed :class:`~bdn.store.base.BlobStore` implementations.

    Subclasses set ``_bucket`` (their SDK handle) and implement the reads and
    writes; this class owns the prefix, the URI, key mapping, the borrowed or
    owned HTTP client, ``exists`` (a ``size`` that may be ``NotFound``) and
    ``close``.
    """

    read_only = False
    _bucket: _SdkBucket

    def __init__(self, scheme: str, bucket: str, prefix: str, http: HttpClient | None) -> None:
        self.prefix = prefix.strip("/")
        self.uri = f"{scheme}://{bucket}/{self.prefix}" if self.prefix else f"{scheme}://{bucket}"
        self._http = http
        self._owns_http = http is None

    @property
    def bucket(self) -> str:
        return self._bucket.bucket

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

    async def close(self) -> None:
        """Close the SDK client, and the aiohttp client if this store created it
        (a borrowed one is left to its owner); idempotent."""
        self._bucket.close()
        if self._owns_http and self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def _full(self, key: str) -> str:
        check_key(key, store=self.uri)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _http_client(self) -> HttpClient:
        if self._http is None:
            self._http = HttpClient()
        return self._http
