"""Reading one file of a pinned Hub commit: locate its bytes once, then ranged GETs.

Bytes go through the transfer engine as ranged GETs. For each file a HEAD on
``{endpoint}/{repo}/resolve/{commit}/{path}`` (with the token) finds where the
bytes live: the Hub itself for small files, or a CDN that it redirects LFS files
to. The CDN URL is then read *without* the token: the Hub's token is for the
Hub only. (aiohttp also drops ``Authorization`` on a cross-origin redirect, but
resolving the redirect ourselves makes that independent of the HTTP library,
and saves a round trip per range.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urljoin, urlsplit

import aiohttp

from bdn.backends.hf.client import HubClient
from bdn.errors import AuthError, SourceError
from bdn.http import (
    HttpClient,
    HttpRangeReader,
    parse_retry_after,
    redact_url,
    retrying,
    translate_client_error,
)

__all__ = ["MAX_HUB_REDIRECTS", "HfFileReader"]

log = logging.getLogger(__name__)

MAX_HUB_REDIRECTS = 5
"""Same-origin redirects followed on a resolve HEAD (a renamed repo answers one)."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class HfFileReader:
    """A :class:`~bdn.backends.base.RangeReader` of one file at the pinned commit.

    On first use it HEADs the resolve URL with the token and follows redirects
    that stay on the Hub's origin; a redirect elsewhere (the LFS CDN) ends the
    walk, and that URL is read with **no** ``Authorization`` header. Ranges are
    then plain :class:`~bdn.http.HttpRangeReader` GETs on the final URL. If the
    CDN later refuses (a signed URL expired), the file is located once more and
    the range retried. Coroutine-safe: concurrent ranges share one HEAD.

    Args:
        hub: the repo's client (endpoint, token, retry policy, error mapping).
        http: shared client for the reads (not owned, not closed here).
        url: the file's resolve URL at the pinned commit.
        path: the file's path in the repo, named in errors.
        size: the size the listing gave.
    """

    def __init__(self, hub: HubClient, http: HttpClient, url: str, path: str, size: int) -> None:
        self._hub = hub
        self._http = http
        self.url = url
        self.path = path
        self.size = size
        self._inner: HttpRangeReader | None = None
        self._lock = asyncio.Lock()
        self._supports_ranges: bool | None = None

    @property
    def supports_ranges(self) -> bool | None:
        """Whether the final host honours ``Range`` (``None`` until known)."""
        return self._inner.supports_ranges if self._inner is not None else self._supports_ranges

    @supports_ranges.setter
    def supports_ranges(self, value: bool | None) -> None:
        self._supports_ranges = value
        if self._inner is not None:
            self._inner.supports_ranges = value

    def describe(self) -> str:
        """The resolve URL without credentials or query string."""
        return redact_url(self.url)

    async def close(self) -> None:
        """Nothing to release; idempotent."""

    async def open_range(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        """Yield bytes ``[start, end)``; errors as :class:`~bdn.http.HttpRangeReader`."""
        stale: HttpRangeReader | None = None
        yielded = False
        for attempt in (1, 2):
            inner = await self._located(stale)
            stream = inner.open_range(start, end)
            try:
                async for piece in stream:
                    yielded = True
                    yield piece
                return
            except AuthError:
                on_hub = _origin(inner.url) == _origin(self._hub.endpoint)
                if yielded or on_hub or attempt == 2:
                    raise
                # A signed CDN URL may have expired mid-mirror: locate afresh, once.
                stale = inner
            finally:
                # Close the inner stream now (not at garbage collection), so an
                # abandoned range releases its connection at once.
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def _located(self, stale: HttpRangeReader | None) -> HttpRangeReader:
        async with self._lock:
            if self._inner is None or self._inner is stale:
                known = self.supports_ranges
                self._inner = await retrying(
                    self._hub.retry, self._locate, describe=f"HEAD {self.describe()}"
                )
                self._inner.supports_ranges = known
            return self._inner

    async def _locate(self) -> HttpRangeReader:
        """HEAD the resolve URL; the reader for wherever the bytes are."""
        hub = self._hub
        url = self.url
        session = await self._http.session()
        for _ in range(MAX_HUB_REDIRECTS + 1):
            try:
                async with session.head(
                    url, headers=hub.auth_headers(), allow_redirects=False
                ) as resp:
                    status, headers = resp.status, resp.headers
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                raise translate_client_error(err, url, "HEAD") from None
            location = headers.get("Location")
            if 300 <= status < 400 and location:
                target = urljoin(url, location)
                if _origin(target) == _origin(hub.endpoint):
                    url = target  # Still the Hub (a renamed repo): keep the token.
                    continue
                self._check_size(headers)
                log.debug("%s: bytes on %s", self.describe(), redact_url(target))
                return HttpRangeReader(self._http, target, self.size)  # No token off the Hub.
            if status >= 400:
                raise hub.error(
                    status,
                    headers.get("X-Error-Code"),
                    headers.get("X-Error-Message"),
                    path=self.path,
                    request_id=headers.get("X-Request-Id"),
                    retry_after=parse_retry_after(headers.get("Retry-After")),
                )
            self._check_size(headers)
            return HttpRangeReader(self._http, url, self.size, headers=hub.auth_headers())
        raise SourceError(
            f"{redact_url(self.url)}: more than {MAX_HUB_REDIRECTS} redirects on the Hub; "
            "check HF_ENDPOINT"
        )

    def _check_size(self, headers: Mapping[str, str]) -> None:
        """Refuse a file whose size differs from the listing (a redirect's own
        ``Content-Length`` is its body's, so only ``X-Linked-Size`` counts there)."""
        text = headers.get("X-Linked-Size")
        if text is None and "Location" not in headers:
            text = headers.get("Content-Length")
        try:
            size = int(text) if text is not None else None
        except ValueError:
            size = None
        if size is not None and size != self.size:
            raise SourceError(
                f"{self.describe()}: the Hub says {size} bytes, its listing said {self.size}; "
                "the repo changed under the pinned commit? mirror again"
            )
