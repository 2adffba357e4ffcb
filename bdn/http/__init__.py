"""The one place that talks HTTP: clients, limits, retries, status mapping, ranges.

Everything outbound goes through here, so timeouts, retries, error types and
URL redaction are decided once:

- :mod:`bdn.http.policy` - :class:`HttpConfig` (limits, timeouts) and
  :class:`RetryPolicy` with the named policies :data:`RETRY_DATA`,
  :data:`RETRY_METADATA`, :data:`NO_RETRY`; :func:`retrying` is the only retry loop.
- :mod:`bdn.http.status` - :func:`raise_for_status` and
  :func:`translate_client_error`, the one mapping into :mod:`bdn.errors`, and
  :func:`redact_url`, which every URL passes before it reaches a message or log
  (presigned S3/GCS URLs carry their signature in the query string).
- :mod:`bdn.http.client` - :class:`HttpClient`, the only builder of sessions.
- :mod:`bdn.http.ranges` - range maths and :class:`HttpRangeReader`, the
  data-plane :class:`~bdn.backends.base.RangeReader` over one URL.

>>> range_header(0, 100)
'bytes=0-99'
>>> parse_content_range("bytes 0-99/1000")
(0, 100, 1000)
>>> redact_url("https://user:pw@bucket.s3.amazonaws.com/key?X-Amz-Signature=abc")
'https://bucket.s3.amazonaws.com/key'
"""

from __future__ import annotations

from bdn.http.client import HttpClient, widen_reads
from bdn.http.policy import (
    DEFAULT_HTTP_CONFIG,
    MAX_RETRY_AFTER,
    NO_RETRY,
    RETRY_DATA,
    RETRY_METADATA,
    HttpConfig,
    OnRetry,
    RetryPolicy,
    parse_retry_after,
    retrying,
)
from bdn.http.ranges import HttpRangeReader, parse_content_range, range_header
from bdn.http.status import raise_for_status, redact_url, translate_client_error

__all__ = [
    "DEFAULT_HTTP_CONFIG",
    "MAX_RETRY_AFTER",
    "NO_RETRY",
    "RETRY_DATA",
    "RETRY_METADATA",
    "HttpClient",
    "HttpConfig",
    "HttpRangeReader",
    "OnRetry",
    "RetryPolicy",
    "parse_content_range",
    "parse_retry_after",
    "raise_for_status",
    "range_header",
    "redact_url",
    "retrying",
    "translate_client_error",
    "widen_reads",
]
