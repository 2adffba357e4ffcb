"""Load a real owner agent with concurrent chunk requests and read its memory.

Used by ``test_owner_memory.py``, and runnable to compare two checkouts on
one machine (the "before" agent runs from another source tree)::

    python -m tests.agent.owner_load [--pythonpath /tmp/before] [--chunk-mib 4]

It mirrors a model of 64 chunks, starts ``bdn agent`` over it (origin: an
HTTP view of the store, as S3 or GCS would be), and asks for all 64 chunks at
once three times, through small receive windows (see ``_small_window``):
each fetched from origin, each from the chunk cache, each
from the node cache (after a pull filled it). Peak RSS (``VmHWM``, reset
between rounds through ``/proc/<pid>/clear_refs``) is read after each round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bdn.digest import new_xxh3
from bdn.manifest import FileEntry, Manifest
from tests.e2e.agents import TOKEN, http_json, mirrored_model, parse_metrics, publish_store
from tests.fixtures import pattern_bytes
from tests.httpserver import FaultServer

MiB = 1024 * 1024
REQUESTS = 64
SHARDS = 4
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def model(chunk: int) -> dict[str, bytes]:
    """``SHARDS`` distinct shards holding ``REQUESTS`` chunks of ``chunk`` bytes in all."""
    per = REQUESTS // SHARDS
    return {f"model-{i:05d}.safetensors": pattern_bytes(70 + i, per * chunk)
            for i in range(SHARDS)}


def vm_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def reset_peak(pid: int) -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5; our own child)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def fetch_all(url: str, manifest: Manifest, pid: int) -> int:
    """Every chunk of ``manifest`` at once, read as slow peers would: each request
    reads its first piece, then all wait until every request is in flight at the
    owner (answering, or queued behind its gate); the owner's RSS is read then
    (KiB, returned), and the bodies are read to the end and checked."""
    wanted = [(f, i) for f in manifest.files for i in range(len(f.chunks))]
    started, go = [0], asyncio.Event()
    connector = aiohttp.TCPConnector(limit=len(wanted), socket_factory=_small_window)
    async with aiohttp.ClientSession(connector=connector, headers=AUTH,
                                     timeout=aiohttp.ClientTimeout(total=600)) as s:

        async def one(f: FileEntry, index: int) -> None:
            path = (f"/v1/chunks/{f.sha256.hex}/{index}?size={f.size}"
                    f"&chunk_size={manifest.chunk_size}&xxh3={f.chunks[index]}")
            async with s.get(url + path) as resp:
                assert resp.status == 200, (resp.status, await resp.text())
                hasher = new_xxh3()
                hasher.update(await resp.content.readany())
                started[0] += 1
                await go.wait()
                async for piece in resp.content.iter_chunked(1 * MiB):
                    hasher.update(piece)
                assert hasher.hexdigest() == f.chunks[index]

        tasks = [asyncio.create_task(one(f, i)) for f, i in wanted]
        for _ in range(60000):
            if any(t.done() for t in tasks) or await _all_in(url, started[0], len(wanted)):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"only {started[0]} of {len(wanted)} requests got in")
        rss = vm_kib(pid, "VmRSS")
        go.set()
        await asyncio.gather(*tasks)
    return rss


def _small_window(addr: Any) -> socket.socket:
    """A client socket with a small receive buffer, as a peer across a busy network
    would read: loopback's autotuned buffers (up to 32 MiB here) would otherwise
    hold most of a chunk in the kernel, hiding what the owner keeps in memory."""
    family, type_, proto, _, _ = addr
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return sock


async def _all_in(url: str, started: int, total: int) -> bool:
    """True when ``total`` requests are at the owner: answering, or waiting in its queue."""
    if started == total:
        return True
    _, text = await http_json(url, "GET", "/metrics")
    found = parse_metrics(text) if isinstance(text, str) else {}
    queued = int(found.get("bdn_peer_responses_queued", 0))
    return started > 0 and started + queued == total


@dataclass
class Owner:
    """A ``bdn agent`` process and where to reach it."""

    proc: subprocess.Popen[bytes]
    url: str
    socket: Path
    mounts: Path

    async def ready(self) -> None:
        for _ in range(1200):
            assert self.proc.poll() is None, "the agent exited"
            try:
                code, _ = await http_json(self.url, "GET", "/healthz")
                if code == 200:
                    return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.05)
        raise AssertionError("the agent never answered /healthz")

    async def pull(self, manifest: Manifest) -> None:
        """Fill the owner's node cache through its own pod API."""
        body = {"manifest_id": manifest.id, "mount_location": str(self.mounts / "m")}
        code, job = await http_json(f"unix://{self.socket}", "POST", "/v1/pulls", body)
        assert code == 202, job
        for _ in range(6000):
            _, job = await http_json(f"unix://{self.socket}", "GET", f"/v1/pulls/{job['id']}")
            if job["state"] != "running":
                assert job["state"] == "succeeded", job
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the pull did not finish")


def start_owner(root: Path, store: str, port: int, *, pythonpath: str | None,
                trees_root: bool) -> Owner:
    """``python -m bdn agent`` in ``root`` (a ring of one) reading ``store``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "token").write_text(TOKEN + "\n")
    sock = Path(tempfile.mkdtemp(prefix="bdn-rss-", dir="/tmp")) / "a.sock"
    argv = [sys.executable, "-m", "bdn", "agent", "--store", store, "--cache",
            str(root / "cache"), "--socket", str(sock), "--listen", f"127.0.0.1:{port}",
            "--token-file", str(root / "token")]
    if trees_root:
        argv += ["--trees-root", str(root)]
    env: Mapping[str, str] = {k: v for k, v in os.environ.items() if not k.startswith("BDN_")}
    if pythonpath:
        env = {**env, "PYTHONPATH": pythonpath}
    log = (root / "agent.log").open("wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env={**env, "HOME": str(root)}, cwd=root, start_new_session=True)
    return Owner(proc, f"http://127.0.0.1:{port}", sock,
                 root / "trees" if trees_root else root / "cache" / "trees")


async def measure(root: Path, server: FaultServer, port: int, chunk: int, *,
                  pythonpath: str | None = None, trees_root: bool = True) -> dict[str, int]:
    """Peak RSS (KiB) of an owner serving 64 concurrent chunk requests, per round."""
    _, store_root, manifest = await mirrored_model(root, model(chunk), chunk)
    owner = start_owner(root / "agent", publish_store(server, store_root), port,
                        pythonpath=pythonpath, trees_root=trees_root)
    try:
        await owner.ready()
        pid = owner.proc.pid
        figures = {"idle": vm_kib(pid, "VmRSS")}
        for name in ("origin", "chunk_cache"):
            reset_peak(pid)
            figures[f"{name}_held"] = await fetch_all(owner.url, manifest, pid)
            figures[f"{name}_peak"] = vm_kib(pid, "VmHWM")
        await owner.pull(manifest)
        figures["idle_after_pull"] = vm_kib(pid, "VmRSS")
        reset_peak(pid)
        figures["node_cache_held"] = await fetch_all(owner.url, manifest, pid)
        figures["node_cache_peak"] = vm_kib(pid, "VmHWM")
        return figures
    finally:
        owner.proc.kill()
        owner.proc.wait()


def main() -> None:
    from bdn.fleet import free_ports

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythonpath", help="run the agent from this source tree")
    parser.add_argument("--chunk-mib", type=int, default=4)
    parser.add_argument("--no-trees-root", action="store_true",
                        help="for agents older than --trees-root")
    args = parser.parse_args()
    with FaultServer() as server, tempfile.TemporaryDirectory(prefix="bdn-rss-") as tmp:
        (port,) = free_ports(1)
        got = asyncio.run(measure(Path(tmp), server, port, args.chunk_mib * MiB,
                                  pythonpath=args.pythonpath,
                                  trees_root=not args.no_trees_root))
    print({k: f"{v / 1024:.0f} MiB" for k, v in got.items()})


if __name__ == "__main__":
    main()
