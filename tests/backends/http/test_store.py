"""HttpStore: a FileStore's directory served by a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bdn.backends import FileStore, HttpStore, open_store
from bdn.backends.base import BlobStore
from bdn.errors import AuthError, BlobNotFound, ConfigError, StoreError
from bdn.http import HttpClient

BLOB = "blobs/sha256/ab/" + "ab" * 32
TOKEN = "cdn-token-value"


class ServeInThread:
    """An aiohttp app on 127.0.0.1:<free port>, run by its own loop in a thread."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = web.AppRunner(app)
        self.port = 0

    def __enter__(self) -> ServeInThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


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
    with ServeInThread(app) as server:
        yield store, f"http://127.0.0.1:{server.port}/bdn"


@pytest.fixture
async def web_store(origin: tuple[FileStore, str]) -> AsyncIterator[HttpStore]:
    http = HttpClient()
    yield HttpStore(f"{origin[1]}/?token={TOKEN}", http=http)
    await http.close()


async def read(store: BlobStore, key: str, size: int, start: int, end: int) -> bytes:
    reader = store.reader(key, size)
    try:
        return b"".join([bytes(p) async for p in reader.open_range(start, end)])
    finally:
        await reader.close()


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
    assert await read(web_store, BLOB, len(data), 0, len(data)) == data
    assert await read(web_store, BLOB, len(data), 12_345, 300_001) == data[12_345:300_001]
    assert TOKEN not in web_store.reader(BLOB, len(data)).describe()


async def test_missing_keys(web_store: HttpStore) -> None:
    assert not await web_store.exists(BLOB)
    with pytest.raises(BlobNotFound) as info:
        await web_store.size(BLOB)
    assert info.value.digest == "sha256:" + "ab" * 32
    with pytest.raises(BlobNotFound):
        await web_store.get_bytes(BLOB)
    with pytest.raises(BlobNotFound):
        await read(web_store, BLOB, 10, 0, 10)


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
