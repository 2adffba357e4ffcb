"""What the bucket-backed stores and sources (``s3://``, ``gs://``) share: a prefix and
URI, an SDK bucket handle for the control plane, an aiohttp client for the data plane."""

from __future__ import annotations

from typing import Protocol

from bdn.http import HttpClient


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
