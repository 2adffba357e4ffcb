"""The S3 data plane: ranged reads of one object over aiohttp on presigned URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from bdn.backends.http.pinned import changed_error, pin_headers
from bdn.errors import HTTPStatusError
from bdn.http import HttpClient, HttpRangeReader

if TYPE_CHECKING:
    from bdn.backends.s3.client import S3Bucket

__all__ = ["PresignedReader"]


class PresignedReader:
    """:class:`~bdn.backends.base.RangeReader` of one S3 object via presigned URLs.

    Each range is one GET on a URL signed for it (:meth:`S3Bucket.presigned_get`),
    never on one kept from an earlier range: a URL signed with temporary keys
    (``AWS_OIDC``, IRSA, an instance role) stops working when those keys
    expire, and a long mirror outlives them. Signing is local and cheap once
    the client exists; the first one builds it (and on AWS may look up the
    bucket's region), which is why nothing is signed here at construction.
    """

    supports_ranges: bool | None = True

    def __init__(self, bucket: S3Bucket, key: str, size: int,
                 http: Callable[[], HttpClient], *, etag: str | None = None) -> None:
        self._bucket = bucket
        self._key = key
        self._size = size
        self._http = http
        self._etag = etag
        # If-Match pins a source's reads to the listed ETag: an object rewritten
        # mid-mirror answers 412 instead of new bytes (see bdn.backends.http.pinned).
        self._headers = pin_headers(etag, None)

    async def open_range(
        self, start: int, end: int
    ) -> AsyncIterator[bytes | bytearray | memoryview]:
        """Yield the bytes of ``[start, end)``; see the RangeReader contract."""
        url = await self._bucket.presigned_get(self._key)
        inner = HttpRangeReader(self._http(), url, self._size, headers=self._headers)
        try:
            async for piece in inner.open_range(start, end):
                yield piece
        except HTTPStatusError as err:
            if err.status == 412:
                raise changed_error(self.describe(), self._etag) from None
            raise

    def describe(self) -> str:
        return f"s3://{self._bucket.bucket}/{self._key}"

    async def close(self) -> None:
        """Nothing to release: connections belong to the shared HttpClient."""
