"""Pull-through (``--hf-upstream``): an unmirrored public revision is mirrored once, then served.

Upstream is our Hub-compatible test server (``tests/hfserver.py``), which
records every request, so "mirrored once" is counted where the bytes leave
it. Requests are forced together with a barrier: several clients on one
endpoint, and clients on two endpoints over one store (the cross-endpoint
election through store claims). Off by default; private and gated repos are
never pulled through without the configured token.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bdn.backends import open_store
from bdn.config.secrets import SecretResolver
from bdn.config.settings import Settings
from bdn.errors import ConfigError
from bdn.hub.serve import HubServer, ServeConfig
from bdn.hub.upstream import PullThrough, UpstreamConfig
from bdn.store import Store
from tests.hfserver import HfServer
from tests.hub.conftest import ENV, REPO, SECRET_NAME, TOKEN, HubThread, model_dir

hf = pytest.importorskip("huggingface_hub")

PRIVATE = "acme/private-upstream"
GATED = "acme/gated-upstream"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HfServer]:
    """The upstream Hub: MiniLM public, a private copy and a gated copy."""
    with HfServer(tmp_path_factory.mktemp("upstream")) as server:
        root = model_dir()
        server.commit_dir(REPO, root)
        server.commit_dir(PRIVATE, root)
        server.make_private(PRIVATE, TOKEN)
        server.commit_dir(GATED, root)
        server.make_gated(GATED, TOKEN)
        yield server


@pytest.fixture
def fresh(upstream: HfServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HfServer:
    """The upstream with its request records cleared; the client's HF_HOME private."""
    upstream.reset_stats()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return upstream


def endpoints(tmp_path: Path, upstream: HfServer, n: int, *,
              token_secret: str | None = None, on: bool = True) -> list[HubThread]:
    """``n`` endpoints (``bdn serve``) over one empty store, each with its own node cache."""
    config = UpstreamConfig(endpoint=upstream.endpoint, token_secret=token_secret) if on else None
    return [HubThread(Settings(store_uri=f"file://{tmp_path / 'store'}",
                               cache_dir=tmp_path / f"node{i}", environ=ENV), config)
            for i in range(n)]


@pytest.fixture
def started() -> Iterator[Callable[[list[HubThread]], list[str]]]:
    running: list[HubThread] = []

    def start(threads: list[HubThread]) -> list[str]:
        urls = []
        for t in threads:
            urls.append(t.start())
            running.append(t)
        return urls

    yield start
    for t in running:
        t.stop()


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads released at once by a barrier; results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait(30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result(300) for f in [pool.submit(run, c) for c in calls]]


def tree_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def assert_mirrored_once(server: HfServer) -> None:
    """Every Hub request of the mirror was made once, and every LFS byte left the CDN once
    (in as many ranges as the mirror's engine chose)."""
    requests = Counter((s.method, s.path) for s in server.seen if s.host == "hub")
    assert requests, "upstream was never asked"
    repeated = {k: n for k, n in requests.items() if n > 1}
    assert not repeated, f"upstream was asked more than once: {repeated}"
    lfs = sum(f.size for f in server.files(REPO).values() if f.is_lfs)
    assert server.bytes_served["cdn"] == lfs


def test_concurrent_requests_on_one_endpoint_mirror_once_then_download_bit_exact(
        fresh: HfServer, tmp_path: Path, started: Callable[[list[HubThread]], list[str]]) -> None:
    (url,) = started(endpoints(tmp_path, fresh, 1))
    folders = together([
        (lambda i=i: Path(hf.snapshot_download(REPO, cache_dir=tmp_path / f"hf{i}",
                                               endpoint=url)))
        for i in range(4)])
    assert_mirrored_once(fresh)
    want = tree_digests(model_dir())
    for folder in folders:
        assert tree_digests(folder) == want


def test_concurrent_requests_on_two_endpoints_over_one_store_mirror_once(
        fresh: HfServer, tmp_path: Path, started: Callable[[list[HubThread]], list[str]]) -> None:
    urls = started(endpoints(tmp_path, fresh, 2))
    infos = together([(lambda u=u: hf.HfApi(endpoint=u).model_info(REPO))
                      for u in urls for _ in range(3)])
    assert_mirrored_once(fresh)
    assert {i.sha for i in infos} == {hf.HfApi(endpoint=fresh.endpoint).model_info(REPO).sha}
    # The claims are gone once the mirror is in: nothing is left for the next revision.
    store = Store(open_store(f"file://{tmp_path / 'store'}"))
    assert asyncio.run(store.hub_pulls(REPO, "main")) == {}
    path = hf.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "hf",
                              endpoint=urls[1])
    assert Path(path).read_bytes() == (model_dir() / "model.safetensors").read_bytes()


def test_off_by_default_answers_how_to_mirror_and_never_asks_upstream(
        fresh: HfServer, tmp_path: Path, started: Callable[[list[HubThread]], list[str]]) -> None:
    (url,) = started(endpoints(tmp_path, fresh, 1, on=False))
    with pytest.raises(hf.errors.RepositoryNotFoundError) as err:
        hf.HfApi(endpoint=url).model_info(REPO)
    assert f"bdn mirror hf://{REPO}@main" in str(err.value)
    assert fresh.seen == []


def test_private_and_gated_repos_are_never_pulled_through_without_the_configured_token(
        fresh: HfServer, tmp_path: Path, started: Callable[[list[HubThread]], list[str]]) -> None:
    (url,) = started(endpoints(tmp_path, fresh, 1))
    for repo in (PRIVATE, GATED):
        with pytest.raises(hf.errors.RepositoryNotFoundError) as err:
            hf.HfApi(endpoint=url).model_info(repo, token=TOKEN)  # A token, but none configured.
        assert "could not be pulled through" in str(err.value)
        # The caller's token never went upstream.
        assert all(s.headers.get("Authorization") is None for s in fresh.seen)
    store = Store(open_store(f"file://{tmp_path / 'store'}"))
    assert asyncio.run(store.hub_revisions(PRIVATE)) == {}
    assert asyncio.run(store.hub_revisions(GATED)) == {}


def test_with_the_configured_token_a_private_repo_is_pulled_through_and_stays_private(
        fresh: HfServer, tmp_path: Path, started: Callable[[list[HubThread]], list[str]]) -> None:
    (url,) = started(endpoints(tmp_path, fresh, 1, token_secret=SECRET_NAME))
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        hf.HfApi(endpoint=url).model_info(PRIVATE, token="hf_someone_else")
    path = hf.hf_hub_download(PRIVATE, "config.json", cache_dir=tmp_path / "hf", token=TOKEN,
                              endpoint=url)
    assert Path(path).read_bytes() == (model_dir() / "config.json").read_bytes()
    # Mirrored with the secret: private here too.
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        hf.HfApi(endpoint=url).model_info(PRIVATE, token=False)


def test_a_failed_pull_through_is_answered_from_its_claim_without_asking_upstream_again(
        fresh: HfServer, tmp_path: Path, started: Callable[[list[HubThread]], list[str]]) -> None:
    (url,) = started(endpoints(tmp_path, fresh, 1))
    for _ in range(2):
        with pytest.raises(hf.errors.RepositoryNotFoundError):
            hf.HfApi(endpoint=url).model_info("nobody/nothing")
    asked = [s for s in fresh.seen if "nobody" in s.path]
    assert len(asked) == 1, asked


def test_pull_through_needs_a_writable_store(tmp_path: Path) -> None:
    config = ServeConfig(
        settings=Settings(store_uri="http://127.0.0.1:9/store", cache_dir=tmp_path / "node",
                          environ=ENV),
        listen=("127.0.0.1", 0), upstream=UpstreamConfig(endpoint="http://127.0.0.1:9"))
    server = HubServer(config)
    with pytest.raises(ConfigError, match="read-only"):
        asyncio.run(server.start())
    asyncio.run(server.stop())


async def test_a_stale_claim_of_a_crashed_endpoint_does_not_block_the_pull(
        fresh: HfServer, tmp_path: Path) -> None:
    backend = open_store(f"file://{tmp_path / 'store'}")
    layout = Store(backend)
    # Sorts before any live holder id: were it not ignored, this pull would wait on it forever.
    await layout.put_hub_pull(REPO, "main", "0-crashed", {"at": time.time() - 3600})
    pull = PullThrough(UpstreamConfig(endpoint=fresh.endpoint), backend,
                       SecretResolver(None, ENV))
    try:
        await asyncio.wait_for(pull.pull(REPO, "main", None), 120)
        assert await layout.get_hub_revision(REPO, "main") is not None
        assert set(await layout.hub_pulls(REPO, "main")) == {"0-crashed"}
    finally:
        await pull.close()
        await backend.close()
