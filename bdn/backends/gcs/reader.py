"""The GCS data plane: ranged reads of one object's media URL over aiohttp, with a
bearer token, checked against the listed CRC32C when a read covers the whole object."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import google_crc32c

from bdn.backends.http.pinned import changed_error
from bdn.errors import IntegrityError, NotFound
from bdn.http import HttpClient, HttpRangeReader

if TYPE_CHECKING:
    from bdn.backends.gcs.client import GcsBucket

__all__ = ["GcsReader"]


class GcsReader:
    """:class:`~bdn.backends.base.RangeReader` of one GCS object, over aiohttp.

    Each range is one GET of the media URL (pinned to ``generation`` when
    given, so an object overwritten since it was listed answers 404 instead of
    other bytes; that 404 becomes the one-line "changed upstream" error) with
    a fresh bearer header. A range that covers the whole
    object is checked against ``crc32c`` (base64, as GCS lists it) when given,
    catching corruption between GCS and us; partial ranges rely on the
    manifest's own digests.
    """

    supports_ranges: bool | None = True

    def __init__(self, bucket: GcsBucket, name: str, size: int,
                 http: Callable[[], HttpClient], *, generation: int | str | None = None,
                 crc32c: str | None = None) -> None:
        self._bucket = bucket
        self._name = name
        self._size = size
        self._http = http
        self._url = bucket.media_url(name, generation)
        self._generation = None if generation is None else str(generation)
        self._crc32c = base64.b64decode(crc32c) if crc32c else None

    async def open_range(
        self, start: int, end: int
    ) -> AsyncIterator[bytes | bytearray | memoryview]:
        """Yield the bytes of ``[start, end)``; see the RangeReader contract.

        Raises:
            IntegrityError: a whole-object read does not match the listed CRC32C.
            SourceError: the pinned generation no longer exists (changed upstream).
            AuthError, BlobNotFound, TransferError...: as :class:`HttpRangeReader`.
        """
        headers = await self._bucket.auth_headers()
        inner = HttpRangeReader(self._http(), self._url, self._size, headers=headers)
        check = (google_crc32c.Checksum()
                 if self._crc32c is not None and start == 0 and end == self._size else None)
        try:
            async for piece in inner.open_range(start, end):
                if check is not None:
                    check.update(piece)
                yield piece
        except NotFound:
            if self._generation is None:
                raise
            # The listed generation is gone: the object was overwritten or deleted.
            raise changed_error(self.describe(), f"generation {self._generation}") from None
        finally:
            if inner.supports_ranges is not None:
                self.supports_ranges = inner.supports_ranges
        if check is not None and check.digest() != self._crc32c:
            raise IntegrityError(
                f"{self.describe()}: the bytes read do not match the CRC32C that GCS listed; "
                "the transfer was corrupted (it is retried)",
                url=self.describe(),
                expected=f"crc32c:{base64.b64encode(self._crc32c or b'').decode()}",
                actual=f"crc32c:{base64.b64encode(check.digest()).decode()}",
            )

    def describe(self) -> str:
        return f"gs://{self._bucket.bucket}/{self._name}"

    async def close(self) -> None:
        """Nothing to release: connections belong to the shared HttpClient."""
