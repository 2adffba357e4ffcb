"""Ranged reads of one upstream object, pinned to the version that was listed.

The readers of ``https://`` and ``azure://`` sources (and of Azure stores) are
this one class: each range is one GET through :class:`~bdn.http.HttpRangeReader`
on a URL made afresh for it (a SAS is signed per range, like S3's presigned
URLs), carrying ``If-Match: <ETag>`` (or ``If-Unmodified-Since`` when the
server has only a weak ETag or none) so that a server whose object changed
after it was listed answers 412 instead of the new bytes. That 412 becomes a
permanent :class:`~bdn.errors.SourceError` that says what changed and what to
do: a mirror never stitches two versions of one file together.

A reader whose URL is fixed (an ``https://`` source) can be rebuilt in a
data-plane worker process (:class:`PinnedSpec`), pin and 412 included; one
that signs each range (Azure) stays in its process, with the credential.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bdn.errors import HTTPStatusError, SourceError
from bdn.http import HttpClient, HttpConfig, HttpRangeReader, redact_url
from bdn.http.ranges import worker_client

__all__ = ["PinnedReader", "PinnedSpec", "changed_error", "pin_headers"]


def pin_headers(etag: str | None, last_modified: str | None) -> dict[str, str]:
    """The conditional headers that pin a GET to the listed version.

    >>> pin_headers('"abc"', None)
    {'If-Match': '"abc"'}
    >>> pin_headers('W/"abc"', "Tue, 01 Jul 2025 10:00:00 GMT")
    {'If-Unmodified-Since': 'Tue, 01 Jul 2025 10:00:00 GMT'}
    """
    if etag and not etag.startswith("W/"):
        return {"If-Match": etag if etag.startswith('"') else f'"{etag}"'}
    if last_modified:
        return {"If-Unmodified-Since": last_modified}
    return {}


def changed_error(where: str, version: str | None) -> SourceError:
    """The one-line error for an upstream object that changed while it was mirrored."""
    pinned = f" (listed as {version})" if version else ""
    return SourceError(
        f"{where} changed upstream while it was being mirrored{pinned}; nothing of it was "
        "stored; run the mirror again to copy the new version in one piece")


class PinnedReader:
    """:class:`~bdn.backends.base.RangeReader` of one object at a fixed size and version.

    Args:
        http: the shared client (a callable, so a source may create it lazily).
        url: the GET URL, or what makes it for one range (may sign it); never
            logged whole. Only a reader with a fixed URL has a :meth:`reopen_spec`.
        size: the object's size as listed.
        where: what :meth:`describe` and errors name (no credentials).
        etag, last_modified: the listed version; both ``None`` reads unpinned
            (content-addressed store blobs never change).
        supports_ranges: ``None`` until a server shows whether it honours ``Range``.
        headers: sent with every GET (e.g. ``Authorization``; never logged).
    """

    def __init__(self, http: Callable[[], HttpClient], url: str | Callable[[], str], size: int,
                 *, where: str, etag: str | None = None, last_modified: str | None = None,
                 supports_ranges: bool | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self._http = http
        self._fixed_url = url if isinstance(url, str) else None
        self._url: Callable[[], str] = (lambda: url) if isinstance(url, str) else url
        self._size = size
        self._where = where
        self._pin = (etag, last_modified)
        self._version = etag or last_modified
        self._given_headers = dict(headers or {})
        self._headers = {**self._given_headers, **pin_headers(etag, last_modified)}
        self.supports_ranges = supports_ranges

    def reopen_spec(self) -> PinnedSpec | None:
        """How a data-plane worker rebuilds this reader (``ReopenableReader``); ``None``
        for a reader that signs each range, whose signing stays in this process."""
        if self._fixed_url is None:
            return None
        etag, modified = self._pin
        return PinnedSpec(self._fixed_url, self._size, self._http().config, self._where,
                          etag, modified, dict(self._given_headers))

    async def open_range(self, start: int, end: int
                         ) -> AsyncIterator[bytes | bytearray | memoryview]:
        """Yield the bytes of ``[start, end)``; see the RangeReader contract.

        Raises:
            SourceError: the object changed since it was listed (HTTP 412).
        """
        inner = HttpRangeReader(self._http(), self._url(), self._size, headers=self._headers)
        try:
            async for piece in inner.open_range(start, end):
                # Known once the headers arrived: pass it on before the first piece.
                if inner.supports_ranges is not None:
                    self.supports_ranges = inner.supports_ranges
                yield piece
        except HTTPStatusError as err:
            if err.status == 412:
                raise changed_error(self._where, self._version) from None
            raise

    def describe(self) -> str:
        return self._where

    async def close(self) -> None:
        """Nothing to release: connections belong to the shared HttpClient."""


@dataclass(frozen=True, slots=True)
class PinnedSpec:
    """A picklable :class:`PinnedReader` with a fixed URL (``bdn.backends.base.ReaderSpec``):
    the worker's reader pins the same version and turns a 412 into the same error.
    ``headers`` may hold credentials; the ``repr`` leaves them and the query out."""

    url: str
    size: int
    config: HttpConfig
    where: str
    etag: str | None
    last_modified: str | None
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"PinnedSpec({redact_url(self.url)!r}, {self.size})"

    def open(self, resources: dict[object, object]) -> PinnedReader:
        client = worker_client(resources, self.config)
        return PinnedReader(lambda: client, self.url, self.size, where=self.where,
                            etag=self.etag, last_modified=self.last_modified,
                            headers=self.headers)

