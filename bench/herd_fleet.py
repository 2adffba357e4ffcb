"""The moving parts of ``bdn bench herd``: a counting origin and fleets of agent processes.

- :class:`CountingOrigin`: nginx serving the store with an access log of
  ``$bytes_sent``, so origin bytes are counted where they leave the origin;
- :class:`Node`, :func:`loopback_nodes`, :func:`netns_nodes`: where each agent
  listens and finds origin, on loopback or in :mod:`bench.netns` namespaces;
- :func:`start_agents`, :func:`stop_agents` and the coroutines that talk to the
  agents over their unix sockets (which cross network namespaces): readiness,
  the simultaneous pulls, the agents' own origin counters.

Every process here is started in its own session and stopped by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bdn.agent.client import AgentClient, request_for
from bdn.errors import BdnError
from bench.harness import ToolFailed
from bench.netns import NetnsPlan, exec_argv
from bench.nginx import Nginx, free_port

Variant = Literal["ring", "naive"]
"""``ring``: every agent lists all in ``--peers``; ``naive``: each agent alone."""

AGENT_PORT_NETNS = 7070
"""Peer port of every agent in the shaped run (each has its own namespace)."""

ORIGIN_PORT_NETNS = 8080
"""nginx's port on every origin link of the shaped run."""

STOP_TIMEOUT_S = 30.0
"""SIGTERM drains an agent; after this it is killed."""

POLL_INTERVAL_S = 0.05
"""Progress polls of each pull: the wall clock's resolution."""


# ---------------------------------------------------------------------------
# The origin: nginx with an access log of bytes sent


@dataclass(frozen=True, slots=True)
class OriginTally:
    """What nginx's access log says it sent.

    Attributes:
        bytes_sent: every response byte, headers and manifests included.
        blob_body_bytes: body bytes of blob responses only.
        requests: requests logged.
        last_blob_end: when the last blob response ended (Unix time, nginx's
            ``$msec``); 0 when there was none.
    """

    bytes_sent: int = 0
    blob_body_bytes: int = 0
    requests: int = 0
    last_blob_end: float = 0.0


def origin_config(
    *, listen: Sequence[str], unix_socket: Path, root: Path, state_dir: Path, as_root: bool
) -> str:
    """nginx.conf serving ``root`` on ``listen`` (``host:port`` each) and a unix socket.

    Like :func:`bench.nginx.nginx_config`, everything nginx writes lives in
    ``state_dir``; unlike it, every request is logged with ``$bytes_sent``
    (what went onto the wire), ``$body_bytes_sent``, when it ended, how long it
    took and who asked (the last three to read a burst's timeline with --keep). The unix socket is
    how the bench checks nginx is up when it runs in another network namespace.
    """
    temp = {name: state_dir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    lines = [
        "daemon off;",
        "worker_processes auto;",
        f"pid {state_dir / 'nginx.pid'};",
        f"error_log {state_dir / 'error.log'} warn;",
        *(["user root;"] if as_root else []),
        "events { worker_connections 4096; }",
        "http {",
        "    log_format herd '$bytes_sent $body_bytes_sent $status $msec $request_time "
        "$remote_addr $request_uri';",
        f"    access_log {state_dir / 'access.log'} herd;",
        "    sendfile on;",
        "    tcp_nopush on;",
        "    keepalive_requests 100000;",
        "    default_type application/octet-stream;",
        *(f"    {name}_temp_path {path};" for name, path in temp.items()),
        "    server {",
        *(f"        listen {address};" for address in listen),
        f"        listen unix:{unix_socket};",
        f"        root {root};",
        "        location / { }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def tally_log(text: str) -> OriginTally:
    """Sum access-log lines in :func:`origin_config`'s format.

    >>> tally_log("1200 1000 206 1.5 0.2 10.213.1.2 /blobs/sha256/ab/ab\\n"
    ...           "300 100 200 1.6 0.001 10.213.2.2 /manifests/x.json\\n")
    OriginTally(bytes_sent=1500, blob_body_bytes=1000, requests=2, last_blob_end=1.5)
    """
    sent = blob = requests = 0
    last = 0.0
    for line in text.splitlines():
        parts = line.split(" ", 6)
        if len(parts) < 7 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        requests += 1
        sent += int(parts[0])
        if parts[6].startswith("/blobs/"):
            blob += int(parts[1])
            with contextlib.suppress(ValueError):
                last = max(last, float(parts[3]))
    return OriginTally(sent, blob, requests, last)


class CountingOrigin(Nginx):
    """nginx serving the store, logging every byte it sends; stops like :class:`Nginx`.

    Args:
        root: the ``file://`` store's directory.
        state_dir: config, logs and pid.
        unix_socket: a short path for the readiness probe.
        listen: addresses to serve on (``None``: 127.0.0.1 on a free port).
        argv_prefix: run nginx through this (``ip netns exec NS``).
    """

    def __init__(
        self,
        root: Path,
        state_dir: Path,
        *,
        unix_socket: Path,
        listen: Sequence[str] | None = None,
        argv_prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(root, state_dir)
        self.unix_socket = unix_socket
        self.listen = list(listen) if listen is not None else None
        self.argv_prefix = list(argv_prefix)
        self.access_log = state_dir / "access.log"

    def _start_attempts(self) -> int:
        # Fixed addresses (in namespaces) cannot be retried on another port.
        return 3 if self.listen is None else 1

    def _config(self) -> str:
        listen = self.listen or [f"127.0.0.1:{free_port()}"]
        self.port = int(listen[0].rpartition(":")[2])
        # An attempt that failed on its TCP port may have left the socket file.
        self.unix_socket.unlink(missing_ok=True)
        return origin_config(listen=listen, unix_socket=self.unix_socket, root=self.root,
                             state_dir=self.state_dir, as_root=os.geteuid() == 0)

    def _wait_ready(self) -> str:
        """Poll the unix socket until nginx answers; ``""`` when ready, else why not."""
        assert self._proc is not None
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                logs = [self.state_dir / "stderr.log", self.state_dir / "error.log"]
                text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
                lines = [line for line in text.splitlines() if "[emerg]" in line] or [
                    line for line in text.splitlines() if line.strip()
                ]
                return lines[0] if lines else f"exited with status {self._proc.returncode}"
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1)
                    sock.connect(str(self.unix_socket))
                    sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
                    if sock.recv(16).startswith(b"HTTP/"):
                        return ""
            except OSError:
                pass
            time.sleep(0.05)
        return f"no answer on {self.unix_socket} within {self.START_TIMEOUT_S:.0f}s"

    def log_offset(self) -> int:
        """Where the next request's log line will start."""
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def tally_since(
        self, offset: int, *, settle_s: float = 0.3, limit_s: float = 10.0
    ) -> OriginTally:
        """Tally the log from ``offset``, once it stopped growing for ``settle_s``.

        nginx writes a request's line when the response ends; a connection the
        client just closed can still be finishing, so wait for the log to settle.
        """
        deadline = time.monotonic() + limit_s
        size = self.log_offset()
        while time.monotonic() < deadline:
            time.sleep(settle_s)
            now = self.log_offset()
            if now == size:
                break
            size = now
        if not self.access_log.exists():
            return OriginTally()
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            return tally_log(f.read().decode(errors="replace"))


# ---------------------------------------------------------------------------
# The fleet: where each agent listens and finds origin


@dataclass(frozen=True, slots=True)
class Node:
    """One agent's place: its peer address, its origin URL, how to start it there."""

    name: str
    listen: str
    store: str
    argv_prefix: tuple[str, ...] = ()


def loopback_nodes(n: int, origin: str) -> list[Node]:
    """``n`` agents on 127.0.0.1, each on a port free now, all reading ``origin``."""
    held = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        ports = [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()
    return [Node(f"n{i}", f"127.0.0.1:{port}", origin) for i, port in enumerate(ports)]


def netns_nodes(n: int, plan: NetnsPlan) -> list[Node]:
    """The first ``n`` nodes of ``plan``: each in its own namespace, with its own origin link."""
    return [
        Node(
            f"n{i}",
            f"{plan.peer_addr(i)}:{AGENT_PORT_NETNS}",
            f"http://{plan.origin_addr(i)}:{ORIGIN_PORT_NETNS}",
            tuple(exec_argv(plan.node_ns(i), [])),
        )
        for i in range(n)
    ]


def agent_argv(node: Node, variant: Variant, peers: Sequence[str], paths: AgentPaths,
               token_file: Path) -> list[str]:
    """The command line of one agent (a ring member, or alone for ``naive``)."""
    argv = [
        *node.argv_prefix, sys.executable, "-m", "bdn", "agent",
        "--store", node.store,
        "--cache", str(paths.cache),
        "--socket", str(paths.socket),
        "--listen", node.listen,
        "--token-file", str(token_file),
        # Membership timings stay at their defaults, as deployed: faster probes
        # would find a ring sooner but also drop busy peers from it more often.
        "--drain-timeout", "10",
    ]
    if variant == "ring":
        argv += ["--peers", ",".join(peers)]
    return argv


def agent_env(home: Path) -> dict[str, str]:
    """The caller's environment minus anything that would steer an agent elsewhere
    (``BDN_*``, cloud credentials, proxies), with ``HOME`` in the agent's directory."""
    dropped = ("BDN_", "AWS_", "HF_", "GOOGLE_", "STORAGE_EMULATOR_HOST")
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(dropped) and k.lower() not in proxies}
    env["HOME"] = str(home)
    return env


@dataclass(frozen=True, slots=True)
class AgentPaths:
    """Files of one agent: its directory (cache, log) and its pod socket (short path)."""

    root: Path
    socket: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def mount(self) -> Path:
        return self.root / "mount"


@dataclass(slots=True)
class AgentProc:
    """A running agent this bench started."""

    node: Node
    paths: AgentPaths
    proc: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 5) -> str:
        text = self.paths.log.read_text(errors="replace") if self.paths.log.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def ring_changes_since(self, since: float) -> int:
        """How often this agent's ring changed after Unix time ``since`` (its JSON log).

        Once a ring has formed, a change mid-burst means a probe of a busy peer
        failed and the peer's chunks moved: the way a ring reads origin twice.
        """
        if not self.paths.log.exists():
            return 0
        count = 0
        for line in self.paths.log.read_text(errors="replace").splitlines():
            if '"ring membership changed"' not in line:
                continue
            try:
                when = datetime.datetime.fromisoformat(json.loads(line)["ts"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            count += when >= since
        return count


def start_agents(nodes: Sequence[Node], variant: Variant, area: Path, sockets: Path,
                 token_file: Path) -> list[AgentProc]:
    """Start one agent per node; the caller must :func:`stop_agents` them (even on failure)."""
    peers = [node.listen for node in nodes]
    agents: list[AgentProc] = []
    for node in nodes:
        paths = AgentPaths(area / node.name, sockets / f"{area.name}-{node.name}.sock")
        paths.root.mkdir(parents=True)
        with paths.log.open("wb") as sink:
            proc = subprocess.Popen(
                agent_argv(node, variant, peers, paths, token_file),
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                env=agent_env(paths.root), cwd=paths.root,
                # A ^C at the terminal reaches the bench, which stops the agents itself.
                start_new_session=True,
            )
        agents.append(AgentProc(node, paths, proc))
    return agents


def stop_agents(agents: Sequence[AgentProc]) -> None:
    """SIGTERM every agent (they drain in parallel), wait, SIGKILL any that linger."""
    for a in agents:
        if a.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                a.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for a in agents:
        try:
            a.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            a.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.proc.wait(10)


# ---------------------------------------------------------------------------
# Talking to the agents (over their unix sockets, which cross namespaces)


async def _get(sock: Path, path: str, *, timeout: float = 5) -> tuple[int, str]:
    connector = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session, session.get("http://bdn-agent" + path) as resp:
        return resp.status, await resp.text()


async def wait_ready(agents: Sequence[AgentProc], members: int, timeout: float) -> None:
    """Until every agent's ``/healthz`` lists ``members`` ring members.

    Raises:
        ToolFailed: an agent exited, or the ring did not form in ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pending = list(agents)
    seen: dict[str, int] = {}
    while pending:
        for a in list(pending):
            if a.proc.poll() is not None:
                raise ToolFailed(f"agent {a.node.name} exited {a.proc.returncode}: "
                                 f"{a.log_tail()}")
            try:
                status, text = await _get(a.paths.socket, "/healthz", timeout=2)
                count = len(json.loads(text).get("members", [])) if status == 200 else 0
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                count = 0
            seen[a.node.name] = count
            if count == members:
                pending.remove(a)
        if pending and time.monotonic() > deadline:
            raise ToolFailed(f"agents did not see {members} members within {timeout:.0f}s: "
                             f"{ {a.node.name: seen.get(a.node.name) for a in pending} }")
        await asyncio.sleep(0.1)


COUNTERS = {
    "origin_bytes": "bdn_origin_bytes_total",
    "peer_failures": "bdn_peer_failures_total",
    "corrupt_from_peers": "bdn_corrupt_chunks_from_peers_total",
}
"""Agent counters the bench reads after a burst (our name -> Prometheus sample name)."""


async def agent_counters(agents: Sequence[AgentProc]) -> dict[str, int]:
    """Each of :data:`COUNTERS`, summed over ``agents`` (from ``/metrics`` on their sockets).

    ``origin_bytes`` is what the agents say they read from origin: a cross-check of
    the origin's own count; ``peer_failures`` says why a ring read origin more than once.
    """
    wanted = {sample: key for key, sample in COUNTERS.items()}
    totals = dict.fromkeys(COUNTERS, 0.0)
    for a in agents:
        status, text = await _get(a.paths.socket, "/metrics")
        if status != 200:
            raise ToolFailed(f"agent {a.node.name} /metrics answered {status}")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    totals[wanted[sample.name]] += sample.value
    return {key: int(value) for key, value in totals.items()}


async def pull_all(
    agents: Sequence[AgentProc], manifest_id: str, timeout: float
) -> tuple[float, list[dict[str, Any]]]:
    """All agents pull ``manifest_id`` into their mounts at once.

    Returns:
        Seconds from the first request to the last completion, and each
        agent's final progress object.

    Raises:
        ToolFailed: a pull failed, or they did not all finish in ``timeout``.
    """

    async def one(a: AgentProc) -> tuple[float, dict[str, Any]]:
        client = AgentClient(f"unix://{a.paths.socket}", poll_interval=POLL_INTERVAL_S)
        status = await client.pull(request_for(manifest_id, a.paths.mount))
        return time.perf_counter(), status

    start = time.perf_counter()
    try:
        # asyncio.timeout, not wait_for: when SIGTERM cancels everything, wait_for
        # leaves the gather's CancelledError unretrieved and asyncio logs it.
        async with asyncio.timeout(timeout):
            done = await asyncio.gather(*(one(a) for a in agents))
    except TimeoutError:
        raise ToolFailed(f"the pulls did not finish within {timeout:.0f}s") from None
    except (BdnError, OSError) as err:
        raise ToolFailed(f"a pull failed: {err}") from err
    return max(end for end, _ in done) - start, [status for _, status in done]

