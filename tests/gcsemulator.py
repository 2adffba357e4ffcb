"""GCS test servers on loopback: gcp-storage-emulator, and a fake of Google's auth.

``gcs_emulator`` runs gcp-storage-emulator in-process and in memory; it checks
no credentials. ``fake_google`` is a small aiohttp server that plays the parts
the emulator cannot: Google's OAuth token endpoint (service-account JWTs), STS
and IAM Credentials (workload identity federation), and a GCS JSON API that
demands the bearer token those issue, so credential flows run offline.

The emulator's server thread is not a daemon, so a run that forgets to stop
it hangs at interpreter exit: Python joins non-daemon threads *before* it runs
``atexit`` handlers. The fixture therefore marks the thread as a daemon before
starting it, stops it in a ``finally``, and registers the same idempotent stop
with ``atexit`` for the case where the session is torn down abnormally.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import itertools
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import pytest
from aiohttp import web
from gcp_storage_emulator.server import create_server
from google.auth._regional_access_boundary_utils import _RegionalAccessBoundaryManager
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.emulator import StorageEmulator

__all__ = ["FakeGoogle", "GcsEmulator", "fake_google", "gcs_bucket", "gcs_emulator"]


@dataclass(frozen=True)
class GcsEmulator(StorageEmulator):
    """A running gcp-storage-emulator."""

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: what ``STORAGE_EMULATOR_HOST`` would hold."""
        return self.endpoint.removeprefix("http://")

    def client(self) -> Any:
        """A google-cloud-storage client on the emulator (anonymous, project "test")."""
        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(name)
        return name

    def upload(self, bucket: str, name: str, data: bytes) -> Any:
        """Write an object; returns its ``Blob`` (with ``generation``, ``md5_hash``...)."""
        blob = self.client().bucket(bucket).blob(name)
        blob.upload_from_string(data)
        return blob


class _Stopper:
    """Stops the server exactly once, whoever asks first (fixture or atexit)."""

    def __init__(self, server: Any) -> None:
        self._server: Any = server
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """gcp-storage-emulator on 127.0.0.1 (a free port), in memory, one per session."""
    server = create_server("127.0.0.1", 0, in_memory=True)
    # The package builds its server thread without daemon=True; see the module doc.
    server._api.daemon = True
    stop = _Stopper(server)
    atexit.register(stop)
    try:
        server.start()
        # Port 0 picks a free port; the package exposes the bound address only
        # through its HTTPServer, which exists once start() has returned.
        port = server._api._httpd.server_address[1]
        yield GcsEmulator(endpoint=f"http://127.0.0.1:{port}")
    finally:
        stop()
        atexit.unregister(stop)


_bucket_counter = itertools.count()


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator) -> str:
    """A fresh, empty bucket on the session's emulator."""
    return gcs_emulator.make_bucket(f"bdn-test-{next(_bucket_counter)}-{os.getpid()}")


@dataclass
class FakeGoogle:
    """Just enough of oauth2/sts/iamcredentials.googleapis.com and the GCS JSON API.

    Every token endpoint issues ``ACCESS_TOKEN`` in the end (the service
    account's), and storage calls without it get 401. Serves bucket ``bkt``.
    """

    ACCESS_TOKEN = "sa-token"

    objects: dict[str, bytes]
    url: str = ""
    oauth_requests: list[dict[str, str]] = field(default_factory=list)
    sts_requests: list[dict[str, str]] = field(default_factory=list)
    iam_requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    storage_auth: list[str] = field(default_factory=list)
    storage_paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/token" and request.method == "POST":  # a service-account JWT grant
            self.oauth_requests.append(dict(await request.post()))  # type: ignore[arg-type]
            return web.json_response({"access_token": self.ACCESS_TOKEN, "expires_in": 3600,
                                      "token_type": "Bearer"})
        if path == "/v1/token" and request.method == "POST":
            self.sts_requests.append(dict(await request.post()))  # type: ignore[arg-type]
            return web.json_response({
                "access_token": "federated-token", "token_type": "Bearer", "expires_in": 3600,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
        if path.endswith(":generateAccessToken") and request.method == "POST":
            self.iam_requests.append((path, request.headers.get("Authorization", ""),
                                      await request.json()))
            return web.json_response({"accessToken": self.ACCESS_TOKEN,
                                      "expireTime": "2099-01-01T00:00:00Z"})
        self.storage_paths.append(path)
        self.storage_auth.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {self.ACCESS_TOKEN}":
            return web.json_response({"error": {"code": 401}}, status=401)
        if path == "/storage/v1/b/bkt":
            # The SDK fetches bucket metadata in the background for its tracing;
            # an object reader may not read it, and the SDK copes.
            return web.json_response({"error": {"code": 403}}, status=403)
        if path == "/storage/v1/b/bkt/o":
            return web.json_response({"items": [self._resource(n) for n in self.objects]})
        name = path.removeprefix("/download/storage/v1/b/bkt/o/")
        data = self.objects[name]
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last) + 1
        return web.Response(status=206, body=data[start:end], headers={
            "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"})

    def _resource(self, name: str) -> dict[str, str]:
        data = self.objects[name]
        crc = google_crc32c.Checksum(data).digest()
        return {"name": name, "size": str(len(data)), "generation": "7",
                "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
                "crc32c": base64.b64encode(crc).decode()}


@pytest.fixture
async def fake_google(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeGoogle]:
    """A :class:`FakeGoogle` on 127.0.0.1 (a free port), serving ``bkt/m/w.bin``."""
    # google-auth looks up a "regional access boundary" of impersonated
    # credentials at the real iamcredentials.googleapis.com, in a background
    # thread whose failure it tolerates; kept off so the test stays on loopback.
    monkeypatch.setattr(_RegionalAccessBoundaryManager, "maybe_start_refresh",
                        lambda *_args: None)
    fake = FakeGoogle(objects={"m/w.bin": b"weights!"})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()
