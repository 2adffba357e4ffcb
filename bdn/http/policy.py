"""Value objects of outbound HTTP: connection limits and timeouts, and retry policies.

:func:`retrying` is the only retry loop in BDN, so that every caller backs off,
honours ``Retry-After`` and gives up the same way.

>>> parse_retry_after("3")
3.0
>>> NO_RETRY.max_attempts
1
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TypeVar

from bdn.errors import HTTPStatusError, RetryableHTTPError, StallError, TransferError

__all__ = [
    "DEFAULT_HTTP_CONFIG",
    "MAX_RETRY_AFTER",
    "NO_RETRY",
    "RETRY_DATA",
    "RETRY_METADATA",
    "HttpConfig",
    "OnRetry",
    "RetryPolicy",
    "parse_retry_after",
    "retrying",
]

# Records keep the package's logger name, as before the package was split, so
# log filters and levels set on "bdn.http" keep applying.
log = logging.getLogger("bdn.http")

T = TypeVar("T")
MiB = 1024 * 1024

MAX_RETRY_AFTER = 60.0
"""Longest ``Retry-After`` we obey; a server asking for more is capped to this."""


def _version() -> str:
    try:
        return metadata.version("bdn")
    except metadata.PackageNotFoundError:
        return "dev"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Connection limits and timeouts of an :class:`~bdn.http.HttpClient`.

    Attributes:
        max_connections: open connections per session, across all hosts.
        connect_timeout: seconds to establish a connection (TCP + TLS).
        stall_timeout: seconds without a single byte arriving before a read is
            abandoned as stalled (there is deliberately no total timeout: a
            100 GB file may take a while, a silent socket may not). With
            ``RetryPolicy.max_stalls`` it bounds how long a persistently silent
            source holds a transfer: about ``max_stalls * stall_timeout`` plus
            the backoff between attempts (defaults: 5 x 20 s + under 4 s, so
            under two minutes).
        read_bufsize: bytes aiohttp buffers per response before applying
            backpressure; large values mean fewer, larger reads.
        socket_read_size: bytes one socket read may return to a body being
            streamed (:func:`bdn.http.client.widen_reads`); asyncio reads 256 KiB.
        user_agent: ``User-Agent`` header.
        trust_env: honour ``HTTP(S)_PROXY``/``NO_PROXY`` and ``.netrc``.
    """

    max_connections: int = 16
    connect_timeout: float = 10.0
    stall_timeout: float = 20.0
    read_bufsize: int = 4 * MiB
    socket_read_size: int = 4 * MiB
    user_agent: str = field(default_factory=lambda: f"bdn/{_version()}")
    trust_env: bool = False


DEFAULT_HTTP_CONFIG = HttpConfig()


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
        max_stalls: attempts that may end in a :class:`StallError` (no byte for
            ``HttpConfig.stall_timeout``) before giving up, whatever attempts
            are left; ``0``: no separate limit. Stalls are the slow failure
            (each costs a whole stall timeout), so they get a smaller budget.
    """

    max_attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 10.0
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    max_retry_after: float = MAX_RETRY_AFTER
    max_stalls: int = 0

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


RETRY_DATA = RetryPolicy(max_attempts=8, base_delay=0.25, max_delay=10.0, max_stalls=5)
"""Chunk transfers: patient, since a chunk is expensive to give up on; but a source
silent for five stall timeouts in a row is down, not slow (see ``HttpConfig``)."""

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
    with a note saying how many attempts were made. After ``policy.max_stalls``
    stalls the stall is raised at once, its message saying so (a silent source
    fails within about ``max_stalls`` stall timeouts, not ``max_attempts``).

    Args:
        policy: attempts and backoff.
        fn: one attempt; called afresh each time.
        describe: what is being done, for logs (must not hold secrets).
        on_retry: called with ``(attempt, error, delay)`` before each backoff sleep.
    """
    attempt = stalls = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as err:
            if not policy.should_retry(err):
                raise
            if isinstance(err, StallError):
                stalls += 1
                if policy.max_stalls and stalls >= policy.max_stalls:
                    _gave_up_stalled(err, stalls)
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


def _gave_up_stalled(err: StallError, stalls: int) -> None:
    """Say in ``err``'s message (what the CLI prints) that stalls exhausted their budget."""
    why = (f"gave up after {stalls} stalled attempts: the source sends nothing; "
           "check that it is up and reachable, then pull again (verified bytes are kept)")
    if err.args and isinstance(err.args[0], str):
        err.args = (f"{err.args[0]}; {why}", *err.args[1:])
    else:
        err.add_note(why)
