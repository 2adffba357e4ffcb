"""Real ``bdn agent`` processes on loopback, and what tests need around them.

- :func:`mirrored_model` mirrors a synthetic model into a ``file://`` store;
  :func:`publish_store` puts that store's files on a :class:`FaultServer`, so
  origin bytes are counted at the origin.
- :class:`AgentProcess` / :func:`start_agent` run ``python -m bdn agent`` with
  its own cache and a short unix socket path (through :mod:`bdn.fleet`, which
  the demo and the herd bench use too), and talk to it.
- :class:`CorruptingProxy` sits in front of one agent's peer port and flips a
  byte of every chunk it relays: a peer serving corrupt bytes, with no test
  hook in the agent itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bdn import fleet
from bdn.backends import open_store
from bdn.backends.base import BlobStore
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.fleet import AgentSpec, FleetAgent, stop_agents
from bdn.fleet import free_ports as free_ports  # re-exported for the tests
from bdn.fleet import short_dir as short_dir
from bdn.manifest import Manifest
from bdn.mirror import MirrorOptions, run_mirror
from bdn.store import Store
from bench.mirror_server_process import parse_metrics as parse_metrics  # the tests use it too
from bench.threaded_app import ThreadedApp
from tests.e2e.threaded_app import UPSTREAM_DOWN, answer, forward
from tests.fixtures import bdn_env, make_model
from tests.httpserver import FaultServer

TOKEN = "test-peer-token-0123456789abcdef"


# -- the model and its origin -----------------------------------------------------------


async def mirrored_model(
    root: Path, files: Mapping[str, bytes], chunk_size: int
) -> tuple[Path, Path, Manifest]:
    """Mirror ``files`` into ``root/store``; returns (source dir, store root, manifest)."""
    src = make_model(root / "src", files)
    store_root = root / "store"
    manifest = await mirror_into(open_store(f"file://{store_root}"), src, chunk_size)
    return src, store_root, manifest


async def mirror_into(store: BlobStore, src: Path, chunk_size: int) -> Manifest:
    """Mirror the model directory ``src`` into ``store``, close it, return the manifest."""
    try:
        res = await run_mirror(
            WeightsEntry(source=f"file://{src}"),
            store=store,
            secrets=SecretResolver(None, {}),
            options=MirrorOptions(chunk_size=chunk_size),
        )
        return await Store(store).get_manifest(res.manifest_id)
    finally:
        await store.close()


def publish_store(server: FaultServer, store_root: Path) -> str:
    """Serve every key of a ``file://`` store from ``server``; returns the store URL."""
    for path in store_root.rglob("*"):
        if path.is_file() and ".incomplete" not in path.parts:
            server.put(path.relative_to(store_root).as_posix(), path)
    return server.base_url


def origin_blob_bytes(server: FaultServer) -> int:
    """Blob bytes the origin has sent since its counters were last reset."""
    return sum(n for name, n in server.stats.bytes_by_object.items() if name.startswith("blobs/"))


def assert_same_tree(mount: Path, files: Mapping[str, bytes]) -> None:
    """``mount`` holds exactly ``files``, bit for bit."""
    found = {p.relative_to(mount).as_posix(): p for p in mount.rglob("*") if p.is_file()}
    assert set(found) == set(files), mount
    for rel, p in found.items():
        assert p.read_bytes() == files[rel], f"{mount}/{rel} differs"


def unique_size(manifest: Manifest) -> int:
    return sum({f.sha256: f.size for f in manifest.files}.values())


# -- processes ----------------------------------------------------------------------------


@dataclass(slots=True)
class AgentProcess(FleetAgent):
    """One ``bdn agent`` subprocess of a test, talked to over its peer port.

    A :class:`~bdn.fleet.FleetAgent` whose :meth:`health` asks the peer port
    (as the ring's probes do), so :func:`wait_ready` waits for that port too.
    """

    token: str | None = TOKEN

    @property
    def port(self) -> int:
        return int(self.spec.listen.rpartition(":")[2])

    @property
    def advertise(self) -> str:
        return self.spec.advertise or self.spec.listen

    @property
    def cache(self) -> Path:
        return self.spec.cache

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def agent_address(self) -> str:
        return self.address

    async def health(self) -> dict[str, Any] | None:
        """The peer port's ``/healthz`` body, or None when it does not answer 200."""
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=2)
            ) as s, s.get(self.url + "/healthz") as resp:
                if resp.status != 200:
                    return None
                data: dict[str, Any] = await resp.json()
                return data
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    async def metrics(self) -> dict[str, float]:
        """Every sample on ``/metrics`` as ``name{label="v",...}`` -> value."""
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5)
        ) as s, s.get(self.url + "/metrics") as resp:
            text = await resp.text()
        return parse_metrics(text)


def start_agent(
    base: Path,
    name: str,
    port: int,
    *,
    store: str,
    peers: Sequence[str] = (),
    advertise: str | None = None,
    token: str | None = TOKEN,
    extra: Sequence[str] = (),
    home: Path | None = None,
    trees: Sequence[Path] | None = None,
) -> AgentProcess:
    """Start ``bdn agent`` in ``base/name`` (via :func:`bdn.fleet.start_agent`);
    it is not ready until :func:`wait_ready`.

    Its pulls may write trees under ``base/name`` and under ``trees`` (default:
    the system's temporary directory, where pytest's ``tmp_path`` lives).
    """
    root = base / name
    root.mkdir(parents=True, exist_ok=True)
    token_file = None
    if token:
        token_file = root / "token"
        token_file.write_text(token + "\n")
    spec = AgentSpec(name, f"127.0.0.1:{port}", store, root, root / "a.sock",
                     advertise=advertise)
    started = fleet.start_agent(
        spec, peers=peers, token_file=token_file, env=bdn_env(home or root),
        # Short intervals: a dead or new peer is noticed within a fraction of a second.
        extra=["--probe-interval", "0.2", "--peer-timeout", "5", "--drain-timeout", "60",
               *trees_flags(trees), *extra],
    )
    return AgentProcess(spec, started.proc, token)


def trees_flags(trees: Sequence[Path] | None) -> list[str]:
    """``--trees-root`` for each of ``trees`` (``None``: the system's temporary directory)."""
    roots = [Path(tempfile.gettempdir())] if trees is None else trees
    return [flag for root in roots for flag in ("--trees-root", str(root))]


async def wait_ready(
    agents: Sequence[AgentProcess], *, members: int | None = None, timeout: float = 60
) -> None:
    """Wait until every agent answers ``/healthz`` on its peer port (seeing ``members``
    ring members, if given); an agent that exited fails with its log's tail."""
    await fleet.wait_ready(agents, members=members, timeout=timeout, log_lines=60)


@contextlib.contextmanager
def running(agents: list[AgentProcess]) -> Iterator[list[AgentProcess]]:
    """Kill every agent in ``agents`` on the way out, even on failure (no drain)."""
    try:
        yield agents
    finally:
        stop_agents(agents, drain=False)


async def http_json(address: str, method: str, path: str, body: Any = None,
                    headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """One request to ``unix:///sock`` or ``http://host:port``: (status, decoded JSON or text)."""
    connector: aiohttp.BaseConnector | None = None
    base = address
    if address.startswith("unix://"):
        connector = aiohttp.UnixConnector(path=address[len("unix://"):])
        base = "http://agent"
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=10)) as s:
        data = body if isinstance(body, bytes | str) else None
        async with s.request(method, base + path, data=data,
                             json=None if data is not None else body,
                             headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except json.JSONDecodeError:
                return resp.status, text


# -- a corrupting peer -----------------------------------------------------------------------


@dataclass
class CorruptingProxy(ThreadedApp):
    """Relays HTTP to ``127.0.0.1:upstream_port``; flips byte 0 of every chunk body.

    Runs its own event loop in a thread, like :class:`FaultServer`. ``flipped``
    counts the chunks it corrupted.
    """

    upstream_port: int
    port: int = 0
    flipped: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        return app

    async def _relay(self, request: web.Request) -> web.Response:
        got = await forward(request, self.upstream_port)
        if got is None:
            return web.Response(status=502, text=UPSTREAM_DOWN)
        status, body, ctype = got
        if request.path.startswith("/v1/chunks/") and status == 200 and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
            self.flipped += 1
        return answer(status, body, ctype)

