"""The data-plane seam: something that can stream a byte range of one object.

Every origin the engine reads (an HTTP(S) URL, a presigned S3 URL, a local
file) is a :class:`RangeReader`. The engine owns retries, verification and
writes; a reader only turns ``[start, end)`` into bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable


@runtime_checkable
class RangeReader(Protocol):
    """Streams byte ranges of one immutable object of known size.

    Contract for implementations:

    - ``open_range(start, end)`` yields the bytes of ``[start, end)`` (end
      exclusive) in order, as buffers of any size; the total is exactly
      ``end - start`` or the iterator raises.
    - Failures are raised as :mod:`bdn.errors` types: ``RetryableHTTPError``,
      ``StallError`` or ``TransferError`` for transient trouble (the engine
      retries them), ``NotFound``/``AuthError``/``HTTPStatusError`` for
      permanent ones, ``RangeError`` when the server answered a different range.
    - ``supports_ranges`` may start ``None`` (unknown); an HTTP reader that sees
      a server ignore ``Range`` sets it to ``False`` and, for that request only,
      still yields exactly the requested bytes (skipping the prefix).
    - Safe to use from many tasks of one event loop at once. ``close()`` is
      idempotent. ``describe()`` names the object for errors and logs and never
      includes credentials or presigned query strings.
    """

    supports_ranges: bool | None

    def open_range(self, start: int, end: int) -> AsyncIterator[bytes | bytearray | memoryview]:
        ...

    def describe(self) -> str:
        ...

    async def close(self) -> None:
        ...
