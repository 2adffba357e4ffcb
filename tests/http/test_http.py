"""bdn.http: retry policy, status mapping, range maths, client and range reader."""

from __future__ import annotations

import asyncio
import email.utils
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest

from bdn.errors import (
    AuthError,
    BdnError,
    BlobNotFound,
    HTTPStatusError,
    IntegrityError,
    NotFound,
    RangeError,
    RetryableHTTPError,
    StallError,
    TransferError,
)
from bdn.http import (
    NO_RETRY,
    RETRY_DATA,
    RETRY_METADATA,
    HttpClient,
    HttpConfig,
    HttpRangeReader,
    RetryPolicy,
    parse_content_range,
    parse_retry_after,
    raise_for_status,
    range_header,
    redact_url,
    retrying,
    widen_reads,
)
from tests.httpserver import FaultPlan, FaultServer

FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.005)
SECRET = "X-Amz-Signature=5ecret5ignature"
DATA = os.urandom(300_000)


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with HttpClient(HttpConfig(connect_timeout=2.0, stall_timeout=0.3)) as c:
        yield c


def _chain_text(err: BaseException) -> str:
    """Every message, note and cause reachable from ``err``."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}")
        parts.extend(getattr(cur, "__notes__", []))
        parts.append(repr(getattr(cur, "url", "")))
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


def _unused_port() -> int:
    """A local port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read_all(reader: HttpRangeReader, start: int, end: int) -> bytes:
    return b"".join([bytes(b) async for b in reader.open_range(start, end)])


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://b.s3.amazonaws.com/k/x.bin?X-Amz-Signature=abc&X-Amz-Credential=c",
            "https://b.s3.amazonaws.com/k/x.bin",
        ),
        ("http://user:secret@host:9000/a/b#frag", "http://host:9000/a/b"),
        ("http://[::1]:8080/p?token=t", "http://[::1]:8080/p"),
        ("https://host/plain", "https://host/plain"),
        ("not a url?sig=x", "not a url"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("later") is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.25 ") == 0.25
    assert parse_retry_after("-3") == 0.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after(future) or 0) <= 31
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_retry_policy_delay() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=2.0)
    assert policy.delay(1, 3.0) == 3.0
    assert policy.delay(1, 3600.0) == policy.max_retry_after
    assert policy.delay(1, -1.0) == 0.0
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 2.0)]:
        samples = [policy.delay(attempt, None) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling / 2  # Jittered over the whole range.
    assert NO_RETRY.max_attempts == 1
    assert RETRY_DATA.max_attempts >= RETRY_METADATA.max_attempts > 1


def test_range_helpers() -> None:
    assert range_header(0, 1) == "bytes=0-0"
    assert range_header(10, 20) == "bytes=10-19"
    with pytest.raises(ValueError):
        range_header(5, 5)
    assert parse_content_range("bytes 10-19/100") == (10, 20, 100)
    assert parse_content_range("bytes 0-0/*") == (0, 1, None)
    for bad in [None, "", "bytes */100", "bytes 9-3/100", "items 0-1/2", "bytes 0-1"]:
        with pytest.raises(RangeError):
            parse_content_range(bad)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, BlobNotFound),
        (410, BlobNotFound),
        (401, AuthError),
        (403, AuthError),
        (416, RangeError),
        (429, RetryableHTTPError),
        (500, RetryableHTTPError),
        (503, RetryableHTTPError),
        (400, HTTPStatusError),
        (409, HTTPStatusError),
    ],
)
def test_raise_for_status_mapping(status: int, error: type[Exception]) -> None:
    url = f"https://bucket.example/key?{SECRET}"
    headers = {"x-amz-request-id": "REQ123", "Retry-After": "2"}
    with pytest.raises(error) as info:
        raise_for_status(status, url, headers)
    text = str(info.value)
    assert "5ecret" not in text
    assert "https://bucket.example/key" in text
    assert "REQ123" in text
    if isinstance(info.value, HTTPStatusError):
        assert info.value.status == status
        if status != 416 and not isinstance(info.value, RetryableHTTPError):
            assert info.value.request_id == "REQ123"
    if isinstance(info.value, RetryableHTTPError):
        assert info.value.retry_after == 2.0
    assert type(info.value) is not RetryableHTTPError or status in (429, 500, 503)


def test_raise_for_status_success() -> None:
    for status in (200, 204, 206):
        raise_for_status(status, "http://x/")


def test_not_found_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        raise_for_status(404, "http://x/y")
    with pytest.raises(PermissionError):
        raise_for_status(403, "http://x/y")


# --------------------------------------------------------------------------- retrying


async def test_retrying_retries_transient_then_succeeds() -> None:
    errors: list[Exception] = [
        RetryableHTTPError("busy", status=503),
        StallError("stall"),
        TransferError("reset"),
        RangeError("range"),
        IntegrityError("bad"),
    ]
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return "ok"

    retried: list[int] = []
    result = await retrying(
        RetryPolicy(max_attempts=6, base_delay=0.001, max_delay=0.002),
        fn,
        describe="test",
        on_retry=lambda attempt, err, delay: retried.append(attempt),
    )
    assert result == "ok"
    assert calls == 6
    assert retried == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "err",
    [
        BlobNotFound("gone"),
        AuthError("denied", status=403),
        HTTPStatusError("bad request", status=400),
        RetryableHTTPError("not implemented", status=501),  # Not in retry_statuses.
        ValueError("bug"),
    ],
)
async def test_retrying_does_not_retry_permanent(err: Exception) -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise err

    with pytest.raises(type(err)):
        await retrying(FAST, fn, describe="test")
    assert calls == 1


async def test_retrying_gives_up_with_last_error() -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise RetryableHTTPError(f"busy {calls}", status=503)

    with pytest.raises(RetryableHTTPError, match="busy 4") as info:
        await retrying(FAST, fn, describe="GET thing")
    assert calls == FAST.max_attempts
    assert any("gave up after 4 attempts" in n for n in info.value.__notes__)


# --------------------------------------------------------------------------- client


async def test_get_bytes_and_head(client: HttpClient, fault_server: FaultServer) -> None:
    url = fault_server.put("obj", DATA)
    assert await client.get_bytes(url) == DATA
    headers = await client.head(url)
    assert headers is not None
    assert headers["content-length"] == str(len(DATA))
    assert await client.head(fault_server.url("missing")) is None


async def test_get_bytes_retries_503(client: HttpClient, fault_server: FaultServer) -> None:
    url = fault_server.put("obj", DATA)
    fault_server.faults = FaultPlan(status=503, status_count=2)
    assert await client.get_bytes(url, policy=FAST) == DATA
    assert fault_server.stats.get_requests == 3


async def test_get_bytes_permanent_errors(client: HttpClient, fault_server: FaultServer) -> None:
    with pytest.raises(BlobNotFound):
        await client.get_bytes(fault_server.url("missing"), policy=FAST)
    assert fault_server.stats.get_requests == 1
    url = fault_server.put("obj", DATA)
    fault_server.faults = FaultPlan(status=403, status_count=100)
    with pytest.raises(AuthError) as info:
        await client.get_bytes(f"{url}?{SECRET}", policy=FAST)
    assert info.value.status == 403
    assert "test-request-id" in str(info.value)
    assert "5ecret" not in _chain_text(info.value)
    assert fault_server.stats.get_requests == 2
    fault_server.faults = FaultPlan(status=503, status_count=100)
    with pytest.raises(RetryableHTTPError):
        await client.head(url, policy=FAST)
    assert fault_server.stats.head_requests == FAST.max_attempts


async def test_retry_after_is_honoured(client: HttpClient, fault_server: FaultServer) -> None:
    url = fault_server.put("obj", DATA)
    fault_server.faults = FaultPlan(status=429, status_count=2, retry_after="0.05")
    delays: list[float] = []
    policy = RetryPolicy(max_attempts=5, base_delay=30.0, max_delay=30.0)
    started = time.monotonic()
    body = await retrying(
        policy,
        lambda: client.get_bytes(url, policy=NO_RETRY),
        describe="test",
        on_retry=lambda attempt, err, delay: delays.append(delay),
    )
    assert body == DATA
    assert delays == [0.05, 0.05]
    assert time.monotonic() - started >= 0.1


async def test_connection_refused_is_transfer_error() -> None:
    port = _unused_port()
    async with HttpClient(HttpConfig(connect_timeout=1.0)) as c:
        with pytest.raises(TransferError) as info:
            await c.get_bytes(f"http://127.0.0.1:{port}/x?{SECRET}", policy=FAST)
    assert "5ecret" not in _chain_text(info.value)


def test_client_serves_several_event_loops(fault_server: FaultServer) -> None:
    url = fault_server.put("obj", DATA)
    c = HttpClient()

    async def get() -> bytes:
        try:
            return await c.get_bytes(url)
        finally:
            await c.close()
            await c.close()  # Idempotent.

    assert asyncio.run(get()) == DATA
    assert asyncio.run(get()) == DATA


# --------------------------------------------------------------------------- range reader


@pytest.mark.parametrize(
    ("start", "end"), [(0, 1), (0, 300_000), (1, 2), (4096, 250_001), (299_999, 300_000)]
)
async def test_reader_exact_ranges(
    client: HttpClient, fault_server: FaultServer, start: int, end: int
) -> None:
    reader = HttpRangeReader(client, fault_server.put("obj", DATA), len(DATA))
    assert await _read_all(reader, start, end) == DATA[start:end]
    assert reader.supports_ranges is True
    assert fault_server.stats.ranges == [("obj", start, end)]


async def test_reader_zero_length_range_makes_no_request(
    client: HttpClient, fault_server: FaultServer
) -> None:
    reader = HttpRangeReader(client, fault_server.put("obj", DATA), len(DATA))
    assert await _read_all(reader, 10, 10) == b""
    assert fault_server.stats.requests == 0
    with pytest.raises(ValueError):
        await _read_all(reader, 10, len(DATA) + 1)


async def test_reader_server_ignoring_range(client: HttpClient, fault_server: FaultServer) -> None:
    reader = HttpRangeReader(client, fault_server.put("obj", DATA), len(DATA))
    fault_server.faults = FaultPlan(ignore_range=True)
    assert await _read_all(reader, 100_000, 100_100) == DATA[100_000:100_100]
    assert reader.supports_ranges is False
    assert fault_server.stats.ranges == [("obj", 0, len(DATA))]
    assert await _read_all(reader, 0, 5) == DATA[:5]


async def test_reader_wrong_content_range(client: HttpClient, fault_server: FaultServer) -> None:
    reader = HttpRangeReader(client, fault_server.put("obj", DATA) + f"?{SECRET}", len(DATA))
    fault_server.faults = FaultPlan(wrong_range_count=1)
    with pytest.raises(RangeError) as info:
        await _read_all(reader, 10, 20)
    assert "5ecret" not in _chain_text(info.value)
    assert await _read_all(reader, 10, 20) == DATA[10:20]


async def test_reader_size_mismatch(client: HttpClient, fault_server: FaultServer) -> None:
    reader = HttpRangeReader(client, fault_server.put("obj", DATA), len(DATA) + 10)
    with pytest.raises(RangeError, match="may have changed"):
        await _read_all(reader, 0, 10)


@pytest.mark.parametrize(
    ("plan", "error"),
    [
        (FaultPlan(truncate_after=70_000), TransferError),
        (FaultPlan(reset_after=70_000), TransferError),
        (FaultPlan(stall_after=70_000, stall_seconds=2.0), StallError),
        (FaultPlan(status=500, status_count=1), RetryableHTTPError),
        (FaultPlan(status=403, status_count=1), AuthError),
    ],
)
async def test_reader_faults_are_typed(
    client: HttpClient, fault_server: FaultServer, plan: FaultPlan, error: type[TransferError]
) -> None:
    url = fault_server.put("obj", DATA) + f"?{SECRET}"
    reader = HttpRangeReader(client, url, len(DATA))
    fault_server.faults = plan
    received = 0
    with pytest.raises(error) as info:
        async for piece in reader.open_range(0, len(DATA)):
            received += len(piece)
    assert isinstance(info.value, BdnError)
    assert received < len(DATA)
    assert "5ecret" not in _chain_text(info.value)
    assert reader.describe() == fault_server.url("obj")
    # The next request is clean.
    assert await _read_all(reader, 0, len(DATA)) == DATA


async def test_reader_asks_for_identity_and_refuses_encoded_bodies(
    client: HttpClient, fault_server: FaultServer
) -> None:
    reader = HttpRangeReader(client, fault_server.put("obj", DATA), len(DATA))
    assert await _read_all(reader, 0, 10) == DATA[:10]
    assert fault_server.stats.last_headers["Accept-Encoding"] == "identity"
    assert fault_server.stats.last_headers["User-Agent"].startswith("bdn/")
    fault_server.faults = FaultPlan(content_encoding="gzip")
    with pytest.raises(HTTPStatusError, match="Content-Encoding 'gzip'") as info:
        await _read_all(reader, 0, 10)
    assert not isinstance(info.value, RetryableHTTPError)


async def test_reader_not_found(client: HttpClient, fault_server: FaultServer) -> None:
    reader = HttpRangeReader(client, fault_server.url("nope"), 10)
    with pytest.raises(NotFound):
        await _read_all(reader, 0, 10)


async def test_reader_abandoned_stream_releases_connection(
    client: HttpClient, fault_server: FaultServer
) -> None:
    reader = HttpRangeReader(client, fault_server.put("obj", DATA), len(DATA))
    stream = reader.open_range(0, len(DATA))
    first = await anext(stream)
    assert first
    await stream.aclose()  # type: ignore[attr-defined]
    assert await _read_all(reader, 5, 50) == DATA[5:50]


async def test_widen_reads_lets_one_socket_read_return_more(
    client: HttpClient, fault_server: FaultServer
) -> None:
    """A streamed body's socket may return ``socket_read_size`` bytes per read, not
    asyncio's 256 KiB."""
    url = fault_server.put("obj", DATA)
    session = await client.session()
    async with session.get(url) as resp:
        transport = resp.connection.transport if resp.connection else None
        assert transport is not None
        assert transport.max_size == 256 * 1024  # type: ignore[attr-defined]
        widen_reads(resp, client.config.socket_read_size)
        assert transport.max_size == client.config.socket_read_size  # type: ignore[attr-defined]
        assert client.config.socket_read_size == 4 * 1024 * 1024
        assert await resp.read() == DATA
    reader = HttpRangeReader(client, url, len(DATA))
    assert await _read_all(reader, 0, len(DATA)) == DATA
