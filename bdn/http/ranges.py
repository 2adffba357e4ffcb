"""Byte ranges over HTTP: the ``Range``/``Content-Range`` maths and the range reader.

The maths is written once here, so every backend asks for and checks ranges
the same way (ends exclusive, as everywhere else in BDN).

>>> range_header(0, 100)
'bytes=0-99'
>>> parse_content_range("bytes 0-99/1000")
(0, 100, 1000)
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp

from bdn.errors import BdnError, HTTPStatusError, RangeError, TransferError
from bdn.http.client import HttpClient, widen_reads
from bdn.http.policy import HttpConfig
from bdn.http.status import (
    FOREIGN_ERRORS,
    raise_for_status,
    raise_translated,
    redact_url,
    request_id,
    status_reason,
)

__all__ = [
    "HttpRangeReader",
    "HttpRangeSpec",
    "parse_content_range",
    "range_header",
    "worker_client",
]

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)


def range_header(start: int, end: int) -> str:
    """The ``Range`` header value for bytes ``[start, end)`` (``end`` exclusive)."""
    if not 0 <= start < end:
        raise ValueError(f"empty or negative byte range [{start}, {end})")
    return f"bytes={start}-{end - 1}"


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """Parse ``Content-Range: bytes a-b/total`` into ``(a, b + 1, total or None)``.

    The end is returned exclusive, like everywhere else in BDN. A missing,
    malformed or unsatisfied (``bytes */n``) header raises :class:`RangeError`.
    """
    match = _CONTENT_RANGE.fullmatch(value or "")
    if match is None:
        raise RangeError(f"unusable Content-Range header {value!r}")
    first, last, total = int(match[1]), int(match[2]), match[3]
    if last < first:
        raise RangeError(f"unusable Content-Range header {value!r}")
    return first, last + 1, None if total == "*" else int(total)


class HttpRangeReader:
    """A :class:`~bdn.backends.base.RangeReader` over one HTTP(S) URL of known size.

    Each :meth:`open_range` is one GET with a ``Range`` header, made through the
    shared :class:`HttpClient` (which this reader does not own). A ``206`` answer
    must carry exactly the requested ``Content-Range``; a ``200`` to a partial
    request means the server ignores ranges: :attr:`supports_ranges` becomes
    ``False`` and the reader skips the prefix, yields exactly the requested bytes
    and drops the connection. :attr:`supports_ranges` is set as soon as the
    response headers arrive, before the first buffer is yielded.

    Every failure is a :mod:`bdn.errors` type, chained to its cause; messages
    carry only :func:`redact_url` of the URL. Coroutine-safe; :meth:`close` is a
    no-op kept for the protocol.
    """

    def __init__(
        self,
        client: HttpClient,
        url: str,
        size: int,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if size < 0:
            raise ValueError(f"negative object size {size}")
        self.client = client
        self.url = url
        self.size = size
        self.headers: dict[str, str] = dict(headers or {})
        self.supports_ranges: bool | None = None

    def describe(self) -> str:
        """The URL without credentials or query string."""
        return redact_url(self.url)

    async def close(self) -> None:
        """Nothing to release: the connection pool belongs to the :class:`HttpClient`."""

    def reopen_spec(self) -> HttpRangeSpec:
        """How a worker process rebuilds this reader (``ReopenableReader``): the URL,
        size, headers and the client's config; the worker makes its own client."""
        return HttpRangeSpec(self.url, self.size, self.client.config, dict(self.headers))

    async def open_range(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        """Yield the bytes of ``[start, end)`` in order; see the class docstring.

        Raises:
            ValueError: the range is outside ``[0, size]``.
            RangeError: wrong ``Content-Range``/``Content-Length`` or HTTP 416.
            StallError: no byte arrived within ``stall_timeout``.
            TransferError: connection reset/refused, or the body ended early.
            BlobNotFound, AuthError, HTTPStatusError, RetryableHTTPError: by status.
        """
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"range [{start}, {end}) outside object of {self.size} bytes")
        if start == end:
            return
        url = self.url
        safe = redact_url(url)
        want = end - start
        request_headers = {**self.headers, "Range": range_header(start, end)}
        session = await self.client.session()
        try:
            async with session.get(url, headers=request_headers) as resp:
                skip = self._check_response(resp, start, end, safe)
                widen_reads(resp, self.client.config.socket_read_size)
                content = resp.content
                remaining = want
                try:
                    while remaining > 0:
                        data: bytes | memoryview = await content.readany()
                        if not data:
                            raise TransferError(
                                f"{safe}: truncated: body ended after {want - remaining} of "
                                f"{want} bytes (range {start}-{end - 1})",
                                url=safe,
                            )
                        if skip:
                            if len(data) <= skip:
                                skip -= len(data)
                                continue
                            data = memoryview(data)[skip:]
                            skip = 0
                        if len(data) > remaining:
                            data = memoryview(data)[:remaining]
                        remaining -= len(data)
                        yield data
                finally:
                    if not content.at_eof():
                        # Unread bytes remain (a 200 full body, an abandoned stream, an
                        # error): close rather than let aiohttp drain or reuse the socket.
                        resp.close()
        except BdnError:
            raise
        except FOREIGN_ERRORS as err:
            raise_translated(err, url, f"GET range {start}-{end - 1}")

    def _check_response(self, resp: aiohttp.ClientResponse, start: int, end: int, safe: str) -> int:
        """Validate status and headers; return how many leading body bytes to skip."""
        raise_for_status(resp.status, self.url, resp.headers)
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _unusable(resp, safe, f"server sent Content-Encoding {encoding!r} despite "
                            "'Accept-Encoding: identity'; ranges would not match the "
                            "object's bytes")
        length = resp.content_length
        if resp.status == 206:
            first, stop, total = parse_content_range(resp.headers.get("Content-Range"))
            if (first, stop) != (start, end) or total not in (None, self.size):
                raise RangeError(
                    f"{safe}: asked for bytes {start}-{end - 1}/{self.size}, server sent "
                    f"{resp.headers.get('Content-Range')!r}; the object may have changed",
                    url=safe,
                )
            if length is not None and length != end - start:
                raise RangeError(
                    f"{safe}: Content-Length {length} does not match range {start}-{end - 1}",
                    url=safe,
                )
            self.supports_ranges = True
            return 0
        if resp.status == 200:
            if length is not None and length != self.size:
                raise RangeError(
                    f"{safe}: server sent the whole object as {length} bytes, expected "
                    f"{self.size}; the object may have changed",
                    url=safe,
                )
            if end - start < self.size:
                # A partial request answered in full: this server ignores Range.
                self.supports_ranges = False
            return start
        raise _unusable(resp, safe, f"HTTP {resp.status} {status_reason(resp.status)}; "
                        "expected 206 or 200 to a range request")


@dataclass(frozen=True, slots=True)
class HttpRangeSpec:
    """A picklable :class:`HttpRangeReader` (``bdn.backends.base.ReaderSpec``).

    ``open`` builds a reader on one :class:`HttpClient` per ``config`` kept in
    the worker's ``resources``, so every chunk a worker fetches shares that
    worker's connection pool. ``headers`` may hold credentials; the spec's
    ``repr`` leaves them and the URL's query out.
    """

    url: str
    size: int
    config: HttpConfig
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"HttpRangeSpec({redact_url(self.url)!r}, {self.size})"

    def open(self, resources: dict[object, object]) -> HttpRangeReader:
        return HttpRangeReader(worker_client(resources, self.config), self.url, self.size,
                               headers=self.headers)


def worker_client(resources: dict[object, object], config: HttpConfig) -> HttpClient:
    """The :class:`HttpClient` for ``config`` in a worker's ``resources`` (made on first
    use), so every reader a worker rebuilds shares one connection pool per config."""
    key = ("bdn.http.HttpClient", config)
    client = resources.get(key)
    if not isinstance(client, HttpClient):
        client = resources[key] = HttpClient(config)
    return client


def _unusable(resp: aiohttp.ClientResponse, safe: str, why: str) -> HTTPStatusError:
    """An answer to a range request that cannot be read as one, for redacted URL
    ``safe``: carries the status and the server's request id, for the operator."""
    return HTTPStatusError(f"{safe}: {why}", url=safe, status=resp.status,
                           request_id=request_id(resp.headers))
