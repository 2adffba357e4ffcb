"""Map HTTP answers and transport failures onto :mod:`bdn.errors`, without leaking URLs.

:func:`raise_for_status` is the one mapping from a status code to a typed error
and :func:`translate_client_error` the one mapping from an aiohttp/OS exception.
Every URL is passed through :func:`redact_url` before it reaches a message,
because presigned S3/GCS URLs carry their signature in the query string.

>>> redact_url("https://user:pw@bucket.s3.amazonaws.com/key?X-Amz-Signature=abc")
'https://bucket.s3.amazonaws.com/key'
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Mapping
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
from bdn.http.policy import parse_retry_after

__all__ = [
    "FOREIGN_ERRORS",
    "raise_for_status",
    "raise_translated",
    "redact_url",
    "request_id",
    "status_reason",
    "translate_client_error",
]

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


def request_id(headers: Mapping[str, str] | None) -> str | None:
    """The server's request id, which support tickets ask for; ``None`` if it sent none."""
    if not headers:
        return None
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name) or headers.get(name.title())
        if value:
            return value
    return None


def status_reason(status: int) -> str:
    """The standard reason phrase of ``status``, for readable messages."""
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
    rid = request_id(headers)
    suffix = f" (request id {rid})" if rid else ""
    head = f"{safe}: HTTP {status} {status_reason(status)}"
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


FOREIGN_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)
"""Transport exceptions that :func:`raise_translated` turns into BDN errors."""


def raise_translated(err: BaseException, url: str, what: str) -> None:
    """Re-raise a foreign error as ours; BDN errors pass through unchanged."""
    if isinstance(err, BdnError):
        raise err
    new = translate_client_error(err, url, what)
    if isinstance(err, _URL_BEARING):
        raise new from None
    raise new from err
