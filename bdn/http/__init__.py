"""The one place that talks HTTP: clients, limits, retries, status mapping, ranges.

Everything outbound goes through here (STYLE.md §3):

- :class:`HttpConfig` / :data:`DEFAULT_HTTP_CONFIG` - connection limits and timeouts.
- :class:`HttpClient` - owns the aiohttp session (one per event loop) and offers
  small metadata calls (:meth:`HttpClient.get_bytes`, :meth:`HttpClient.head`).
- :class:`RetryPolicy` and the named policies :data:`RETRY_DATA`,
  :data:`RETRY_METADATA`, :data:`NO_RETRY`; :func:`retrying` is the only retry loop.
- :func:`raise_for_status` - the one mapping from a status code to a typed error.
- :func:`range_header` / :func:`parse_content_range` - range maths, written once.
- :class:`HttpRangeReader` - the data-plane :class:`~bdn.backends.base.RangeReader`
  over one URL.

URLs are passed through :func:`redact_url` before they reach any message or
log, because presigned S3/GCS URLs carry their signature in the query string.

>>> range_header(0, 100)
'bytes=0-99'
>>> parse_content_range("bytes 0-99/1000")
(0, 100, 1000)
>>> redact_url("https://user:pw@bucket.s3.amazonaws.com/key?X-Amz-Signature=abc")
'https://bucket.s3.amazonaws.com/key'
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import random
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bdn.errors import (
    AuthError,
    BdnError,
    BlobNotFound,
    HTTPStatusError,
    RangeError,
    RetryableHTTPError,
    StallError,
    TransferError,
)

__all__ = [
    "DEFAULT_HTTP_CONFIG",
    "NO_RETRY",
    "RETRY_DATA",
    "RETRY_METADATA",
    "HttpClient",
    "HttpConfig",
    "HttpRangeReader",
    "RetryPolicy",
    "parse_content_range",
    "parse_retry_after",
    "raise_for_status",
    "range_header",
    "redact_url",
    "retrying",
    "translate_client_error",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
MiB = 1024 * 1024

MAX_RETRY_AFTER = 60.0
"""Longest ``Retry-After`` we obey; a server asking for more is capped to this."""


def _version() -> str:
    try:
        return metadata.version("bdn")
    except metadata.PackageNotFoundError:
        return "dev"


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    Attributes:
        max_attempts: total attempts including the first (1 = never retry).
        base_delay: backoff before the second attempt, in seconds; doubles per attempt.
        max_delay: cap on the exponential backoff, in seconds.
        retry_statuses: HTTP statuses worth retrying; a :class:`RetryableHTTPError`
            whose status is not listed is raised at once.
        max_retry_after: cap on a server's ``Retry-After``, in seconds.
    """

    max_attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 10.0
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    max_retry_after: float = MAX_RETRY_AFTER

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        A server's ``retry_after`` wins (capped at ``max_retry_after``); otherwise
        the delay is drawn uniformly from ``[0, min(max_delay, base_delay * 2**(attempt-1))]``
        ("full jitter"), so many clients throttled at once do not retry in step.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(attempt - 1, 0))
        return random.uniform(0.0, ceiling)

    def should_retry(self, err: BaseException) -> bool:
        """True when ``err`` is transient under this policy (attempt count aside)."""
        if isinstance(err, HTTPStatusError):
            return isinstance(err, RetryableHTTPError) and err.status in self.retry_statuses
        return isinstance(err, TransferError)


RETRY_DATA = RetryPolicy(max_attempts=8, base_delay=0.25, max_delay=10.0)
"""Chunk transfers: patient, since a chunk is expensive to give up on."""

RETRY_METADATA = RetryPolicy(max_attempts=5, base_delay=0.2, max_delay=5.0)
"""HEADs, listings, manifests: small calls that should fail reasonably fast."""

NO_RETRY = RetryPolicy(max_attempts=1)
"""One attempt; for callers that run their own higher-level retry."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    Returns ``None`` when the header is absent or unparseable, and never a
    negative number. Fractional seconds are accepted although RFC 9110 only
    defines integers.

    >>> parse_retry_after("3"), parse_retry_after("soon"), parse_retry_after(None)
    (3.0, None, None)
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if seconds == seconds else None  # NaN guard
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


OnRetry = Callable[[int, BaseException, float], None]
"""Hook called before each retry sleep with (failed attempt number, error, delay)."""


async def retrying(
    policy: RetryPolicy,
    fn: Callable[[], Awaitable[T]],
    *,
    describe: str,
    on_retry: OnRetry | None = None,
) -> T:
    """Await ``fn()`` until it succeeds, retrying transient failures by ``policy``.

    Retried: :class:`RetryableHTTPError` with a status in ``policy.retry_statuses``,
    :class:`StallError`, :class:`RangeError`, :class:`IntegrityError` and plain
    :class:`TransferError` (connection reset, truncated body). Everything else
    (``NotFound``, ``AuthError``, other ``HTTPStatusError``, non-BDN errors) is
    raised at once. After the last attempt the last error is raised unchanged,
    with a note saying how many attempts were made.

    Args:
        policy: attempts and backoff.
        fn: one attempt; called afresh each time.
        describe: what is being done, for logs (must not hold secrets).
        on_retry: called with ``(attempt, error, delay)`` before each backoff sleep.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as err:
            if not policy.should_retry(err):
                raise
            if attempt >= policy.max_attempts:
                if policy.max_attempts > 1:
                    err.add_note(f"{describe}: gave up after {attempt} attempts")
                raise
            delay = policy.delay(attempt, getattr(err, "retry_after", None))
            log.debug(
                "%s: attempt %d/%d failed (%s); retrying in %.2fs",
                describe,
                attempt,
                policy.max_attempts,
                err,
                delay,
            )
            if on_retry is not None:
                on_retry(attempt, err, delay)
        await asyncio.sleep(delay)


# --------------------------------------------------------------------------- errors

_REQUEST_ID_HEADERS = ("x-amz-request-id", "x-request-id", "x-goog-request-id")


def redact_url(url: str) -> str:
    """``url`` without userinfo, query string or fragment, safe for messages and logs.

    Presigned URLs carry their signature (``X-Amz-Signature``, ``X-Goog-Signature``)
    in the query string, so it is always dropped.

    >>> redact_url("http://127.0.0.1:9000/b/k?X-Amz-Signature=s#frag")
    'http://127.0.0.1:9000/b/k'
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        # Unparseable: keep only what precedes any query/userinfo marker.
        head = url.split("?", 1)[0].split("#", 1)[0]
        return head.rpartition("@")[2] if "@" in head else head


def _request_id(headers: Mapping[str, str] | None) -> str | None:
    if not headers:
        return None
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name) or headers.get(name.title())
        if value:
            return value
    return None


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "unknown status"


def raise_for_status(status: int, url: str, headers: Mapping[str, str] | None = None) -> None:
    """Raise the typed error for a non-2xx ``status``; return ``None`` for 2xx.

    Mapping: 404/410 -> :class:`BlobNotFound`; 401/403 -> :class:`AuthError`;
    416 -> :class:`RangeError`; 429 and 5xx -> :class:`RetryableHTTPError` (with
    ``retry_after`` from the header); any other status -> :class:`HTTPStatusError`.
    ``headers`` supplies ``Retry-After`` and a request id (``x-amz-request-id``,
    ``x-request-id``) for support tickets. Messages carry :func:`redact_url` only.
    """
    if 200 <= status < 300:
        return
    safe = redact_url(url)
    rid = _request_id(headers)
    suffix = f" (request id {rid})" if rid else ""
    head = f"{safe}: HTTP {status} {_reason(status)}"
    if status in (404, 410):
        raise BlobNotFound(
            f"{head}; the object does not exist: check the URL/key, or whether it was "
            f"deleted since it was listed{suffix}"
        )
    if status in (401, 403):
        raise AuthError(
            f"{head}; access denied: check the credentials or auth secret, and whether a "
            f"presigned URL has expired{suffix}",
            url=safe,
            status=status,
        )
    if status == 416:
        raise RangeError(
            f"{head}; the requested range is outside the object: it may have changed "
            f"size since it was listed{suffix}",
            url=safe,
        )
    if status == 429 or 500 <= status < 600:
        value = (headers.get("Retry-After") or headers.get("retry-after")) if headers else None
        raise RetryableHTTPError(
            f"{head}; the server is throttling or failing{suffix}",
            url=safe,
            status=status,
            retry_after=parse_retry_after(value),
            request_id=rid,
        )
    raise HTTPStatusError(
        f"{head}; unexpected answer{suffix}", url=safe, status=status, request_id=rid
    )


# aiohttp exceptions whose text may quote the full URL (signature included): they
# are translated without chaining so the query string cannot reach a traceback.
_URL_BEARING = (aiohttp.InvalidURL, aiohttp.ClientResponseError)


def translate_client_error(err: BaseException, url: str, what: str = "request") -> TransferError:
    """Our error for a foreign transport exception raised while doing ``what`` on ``url``.

    Read timeouts become :class:`StallError`; everything else (reset, refused,
    truncated or malformed body, connect timeout) becomes :class:`TransferError`.
    Callers ``raise translate_client_error(err, url) from err``.
    """
    safe = redact_url(url)
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return TransferError(f"{safe}: {what}: connect timeout", url=safe)
    if isinstance(err, asyncio.TimeoutError):  # includes aiohttp.ServerTimeoutError
        return StallError(
            f"{safe}: {what}: no data within the stall timeout; the server or network stalled",
            url=safe,
        )
    if isinstance(err, aiohttp.ClientPayloadError):
        return TransferError(f"{safe}: {what}: truncated or malformed body ({err})", url=safe)
    if isinstance(err, _URL_BEARING):
        return TransferError(f"{safe}: {what}: {type(err).__name__}", url=safe)
    detail = str(err) or type(err).__name__
    return TransferError(f"{safe}: {what}: connection failed ({detail})", url=safe)


_FOREIGN = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def _raise_translated(err: BaseException, url: str, what: str) -> None:
    """Re-raise a foreign error as ours; BDN errors pass through unchanged."""
    if isinstance(err, BdnError):
        raise err
    new = translate_client_error(err, url, what)
    if isinstance(err, _URL_BEARING):
        raise new from None
    raise new from err


# --------------------------------------------------------------------------- ranges

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


# --------------------------------------------------------------------------- client


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Connection limits and timeouts of an :class:`HttpClient`.

    Attributes:
        max_connections: open connections per session, across all hosts.
        connect_timeout: seconds to establish a connection (TCP + TLS).
        stall_timeout: seconds without a single byte arriving before a read is
            abandoned as stalled (there is deliberately no total timeout: a
            100 GB file may take a while, a silent socket may not).
        read_bufsize: bytes aiohttp buffers per response before applying
            backpressure; large values mean fewer, larger reads.
        user_agent: ``User-Agent`` header.
        trust_env: honour ``HTTP(S)_PROXY``/``NO_PROXY`` and ``.netrc``.
    """

    max_connections: int = 16
    connect_timeout: float = 10.0
    stall_timeout: float = 30.0
    read_bufsize: int = 4 * MiB
    user_agent: str = field(default_factory=lambda: f"bdn/{_version()}")
    trust_env: bool = False


DEFAULT_HTTP_CONFIG = HttpConfig()


class HttpClient:
    """Shared HTTP client: one aiohttp session per running event loop, made lazily.

    Coroutine-safe. The session is bound to the loop it was created on, so a
    client may be used from several ``asyncio.run`` calls in turn; call
    :meth:`close` on each loop before that loop ends. :meth:`close` is
    idempotent, and a closed client opens a fresh session when used again.
    """

    def __init__(self, config: HttpConfig = DEFAULT_HTTP_CONFIG) -> None:
        self.config = config
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()

    async def session(self) -> aiohttp.ClientSession:
        """The running loop's session, created on first use."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for other in [lp for lp in self._sessions if lp.is_closed()]:
                # That loop is gone and its sockets with it; forget the session.
                self._sessions.pop(other).detach()
            cfg = self.config
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=cfg.max_connections, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.stall_timeout
                ),
                # Bytes must arrive exactly as stored: ranges and digests are over
                # the object itself, and auto_decompress is off.
                headers={"User-Agent": cfg.user_agent, "Accept-Encoding": "identity"},
                auto_decompress=False,
                read_bufsize=cfg.read_bufsize,
                trust_env=cfg.trust_env,
            )
            self._sessions[loop] = session
        return session

    async def close(self) -> None:
        """Close the running loop's session (idempotent)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - close() is a coroutine
            return
        session = self._sessions.pop(loop, None)
        if session is not None and not session.closed:
            await session.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get_bytes(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        policy: RetryPolicy = RETRY_METADATA,
    ) -> bytes:
        """GET ``url`` and return the whole body; for small objects (manifests, JSON).

        Raises the :func:`raise_for_status` errors (``BlobNotFound`` for 404) and
        :class:`TransferError` subclasses after ``policy`` is exhausted.
        """

        async def once() -> bytes:
            session = await self.session()
            try:
                async with session.get(url, headers=headers) as resp:
                    raise_for_status(resp.status, url, resp.headers)
                    return await resp.read()
            except BdnError:
                raise
            except _FOREIGN as err:
                _raise_translated(err, url, "GET")
                raise  # pragma: no cover - _raise_translated always raises

        return await retrying(policy, once, describe=f"GET {redact_url(url)}")

    async def head(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        policy: RetryPolicy = RETRY_METADATA,
    ) -> dict[str, str] | None:
        """HEAD ``url``: its response headers (names lowercased), or ``None`` on 404/410.

        Other failures raise as :meth:`get_bytes` does.
        """

        async def once() -> dict[str, str] | None:
            session = await self.session()
            try:
                async with session.head(url, headers=headers, allow_redirects=True) as resp:
                    if resp.status in (404, 410):
                        return None
                    raise_for_status(resp.status, url, resp.headers)
                    return {k.lower(): v for k, v in resp.headers.items()}
            except BdnError:
                raise
            except _FOREIGN as err:
                _raise_translated(err, url, "HEAD")
                raise  # pragma: no cover

        return await retrying(policy, once, describe=f"HEAD {redact_url(url)}")


# --------------------------------------------------------------------------- reader


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
        except _FOREIGN as err:
            _raise_translated(err, url, f"GET range {start}-{end - 1}")

    def _check_response(self, resp: aiohttp.ClientResponse, start: int, end: int, safe: str) -> int:
        """Validate status and headers; return how many leading body bytes to skip."""
        raise_for_status(resp.status, self.url, resp.headers)
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise HTTPStatusError(
                f"{safe}: server sent Content-Encoding {encoding!r} despite "
                "'Accept-Encoding: identity'; ranges would not match the object's bytes",
                url=safe,
                status=resp.status,
                request_id=_request_id(resp.headers),
            )
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
        raise HTTPStatusError(
            f"{safe}: HTTP {resp.status} {_reason(resp.status)}; expected 206 or 200 to "
            "a range request",
            url=safe,
            status=resp.status,
            request_id=_request_id(resp.headers),
        )
