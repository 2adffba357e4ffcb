"""The S3 data plane: ranged reads of one object over aiohttp on a presigned URL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from bdn.http import HttpClient, HttpRangeReader

if TYPE_CHECKING:
    from bdn.backends.s3.client import S3Bucket

__all__ = ["PresignedReader"]


class PresignedReader:
    """:class:`~bdn.backends.base.RangeReader` of one S3 object via a presigned URL.

    Signing needs the client (and on AWS perhaps a region lookup), which is
    blocking I/O, so it happens on the first ``open_range`` rather than here.
    """

    supports_ranges: bool | None = True

    def __init__(self, bucket: S3Bucket, key: str, size: int,
                 http: Callable[[], HttpClient]) -> None:
        self._bucket = bucket
        self._key = key
        self._size = size
        self._http = http
        self._inner: HttpRangeReader | None = None

    async def _target(self) -> HttpRangeReader:
        if self._inner is None:
            url = await self._bucket.presigned_get(self._key)
            if self._inner is None:  # Another task may have signed meanwhile.
                self._inner = HttpRangeReader(self._http(), url, self._size)
        return self._inner

    async def open_range(
        self, start: int, end: int
    ) -> AsyncIterator[bytes | bytearray | memoryview]:
        """Yield the bytes of ``[start, end)``; see the RangeReader contract."""
        inner = await self._target()
        async for piece in inner.open_range(start, end):
            yield piece

    def describe(self) -> str:
        return f"s3://{self._bucket.bucket}/{self._key}"

    async def close(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.close()
