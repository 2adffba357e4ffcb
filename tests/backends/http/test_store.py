"""HttpStore: a FileStore's directory served by a real aiohttp server on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bdn.backends import FileStore, HttpStore, open_store
from bdn.backends.base import BlobStore
from bdn.errors import AuthError, ConfigError, StoreError
from bdn.http import HttpClient
from tests.backends.helpers import BLOB, assert_blob_missing, read_range
from tests.loopback import LoopbackApps, listen

TOKEN = "cdn-token-value"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Like a CDN with signed URLs: no token in the query, no content.
    if request.query.get("token") != TOKEN:
        raise web.HTTPForbidden()
    return await handler(request)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[FileStore, str]]:
    """A file store, and the base URL that serves it over HTTP (static files + Range)."""
    store = FileStore(tmp_path / "store")
    store.root.mkdir()
    app = web.Application(middlewares=[require_token])
    app.router.add_static("/bdn/", store.root)
    sock, port = listen()
    server = LoopbackApps()
    server.start([(app, sock)])
    try:
        yield store, f"http://127.0.0.1:{port}/bdn"
    finally:
        server.stop()


@pytest.fixture
async def web_store(origin: tuple[FileStore, str]) -> AsyncIterator[HttpStore]:
    http = HttpClient()
    yield HttpStore(f"{origin[1]}/?token={TOKEN}", http=http)
    await http.close()


async def test_reads_through_http(origin: tuple[FileStore, str], web_store: HttpStore) -> None:
    files, base = origin
    data = bytes(range(256)) * 5000
    await files.put_bytes(BLOB, data)
    await files.put_bytes("manifests/m.json", b"{}")
    assert isinstance(web_store, BlobStore) and web_store.read_only
    assert web_store.uri == base  # no token shown
    assert await web_store.exists(BLOB)
    assert await web_store.size(BLOB) == len(data)
    assert await web_store.get_bytes("manifests/m.json") == b"{}"
    assert await read_range(web_store, BLOB, len(data), 0, len(data)) == data
    assert await read_range(web_store, BLOB, len(data), 12_345, 300_001) == data[12_345:300_001]
    assert TOKEN not in web_store.reader(BLOB, len(data)).describe()


async def test_missing_keys(web_store: HttpStore) -> None:
    assert not await web_store.exists(BLOB)
    await assert_blob_missing(web_store)


async def test_forbidden_is_auth_error(origin: tuple[FileStore, str]) -> None:
    await origin[0].put_bytes("refs/r", b"x")
    store = HttpStore(origin[1])  # no token; the store makes its own client
    try:
        with pytest.raises(AuthError):
            await store.exists("refs/r")
        with pytest.raises(AuthError):
            await store.get_bytes("refs/r")
    finally:
        await store.close()
        await store.close()  # idempotent


async def test_writes_and_listing_are_refused(web_store: HttpStore, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    for call in (web_store.put_bytes("refs/r", b"x"), web_store.put_file("refs/r", tmp_path / "f"),
                 web_store.delete("refs/r")):
        with pytest.raises(StoreError, match="read-only") as info:
            await call
        assert web_store.uri in str(info.value)
    with pytest.raises(StoreError, match="cannot be listed"):
        _ = [k async for k in web_store.list("blobs/")]
    assert web_store.local_path(BLOB) is None and web_store.staging_dir() is None


async def test_unreachable_server_is_store_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = HttpStore(f"http://127.0.0.1:{port}/bdn")
    try:
        with pytest.raises(StoreError, match=f"127.0.0.1:{port}/bdn"):
            await store.exists("refs/r")
    finally:
        await store.close()


def test_keys_are_checked_and_urls_validated() -> None:
    store = open_store("http://127.0.0.1:1/base/")
    with pytest.raises(StoreError, match="invalid key"):
        store.reader("../etc/passwd", 1)
    with pytest.raises(ConfigError):
        HttpStore("ftp://host/x")
