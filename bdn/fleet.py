"""Fleets of real ``bdn agent`` processes on one machine: start, wait, stop.

``bdn demo`` runs a ring of agents on loopback, the herd bench (``bench/``,
outside the wheel) runs fleets on loopback or in network namespaces, and the
end-to-end tests run rings with corrupting proxies and agents that come and go.
They all start agents the same way, through this module:

- :class:`AgentSpec` says where one agent runs (peer address, origin, its
  directory, its pod socket, an optional ``ip netns exec`` prefix);
- :func:`start_agent` starts ``python -m bdn agent`` in its own session, its
  output in ``root/agent.log``; :func:`stop_agents` drains (SIGTERM) or kills;
- :func:`wait_ready` waits until each answers ``/healthz`` and sees its ring;
  :func:`wait_answering` until one answers at all (the moment a pod on its node
  could start a pull: an agent opens its pod socket once its ring has settled);
- :func:`loopback_fleet` puts it together: N agents on free 127.0.0.1 ports,
  one ring, stopped on the way out.

The pod socket is used to talk to an agent because it crosses network
namespaces; its path must be short (:func:`short_dir`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bdn.agent.client import AgentClient
from bdn.errors import BdnError

STOP_TIMEOUT_S = 30.0
"""SIGTERM drains an agent; after this it is killed."""

KILL_WAIT_S = 10.0
"""How long a SIGKILLed agent gets to be reaped."""


class FleetError(BdnError):
    """An agent of a fleet exited, or the fleet did not come up in time."""


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """Where one agent runs and keeps its files.

    Attributes:
        name: a label for logs and errors.
        listen: the peer port's ``host:port``.
        store: the origin store URI.
        root: the agent's directory: its node cache, its log, and the trees
            root its pulls may write under (``--trees-root``).
        socket: its pod (unix) socket; the path must fit in 108 bytes.
        argv_prefix: run the agent through this (``ip netns exec NS``).
        advertise: the address peers know it by, when not ``listen``.
    """

    name: str
    listen: str
    store: str
    root: Path
    socket: Path
    argv_prefix: tuple[str, ...] = ()
    advertise: str | None = None

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"


@dataclass(slots=True)
class FleetAgent:
    """A running agent started by :func:`start_agent`."""

    spec: AgentSpec
    proc: subprocess.Popen[bytes]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def socket(self) -> Path:
        return self.spec.socket

    @property
    def log(self) -> Path:
        return self.spec.log

    @property
    def address(self) -> str:
        """The pod socket as an ``AgentClient`` address."""
        return f"unix://{self.spec.socket}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 5) -> str:
        """The last ``lines`` of the log on one line (``|`` between them)."""
        return " | ".join(self.logs().strip().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait; returns the exit status (SIGKILL after ``timeout``)."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(KILL_WAIT_S)

    async def health(self) -> dict[str, Any] | None:
        """The ``/healthz`` body on the pod socket, or None while it does not answer."""
        if not self.spec.socket.exists():
            return None
        return await AgentClient(self.address).health()


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on 127.0.0.1 (held open until all are picked)."""
    held = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


@contextlib.contextmanager
def short_dir(prefix: str = "bdn-") -> Iterator[Path]:
    """A fresh directory under /tmp, removed afterwards: unix socket paths must be short."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def agent_argv(
    spec: AgentSpec,
    *,
    peers: Sequence[str] = (),
    token_file: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of one agent; without ``peers`` it is a ring of one."""
    argv = [
        *spec.argv_prefix, sys.executable, "-m", "bdn", "agent",
        "--store", spec.store,
        "--cache", str(spec.cache),
        "--socket", str(spec.socket),
        "--listen", spec.listen,
        "--trees-root", str(spec.root),
        *extra,
    ]
    if spec.advertise:
        argv += ["--advertise", spec.advertise]
    if peers:
        argv += ["--peers", ",".join(peers)]
    if token_file is not None:
        argv += ["--token-file", str(token_file)]
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


def start_agent(
    spec: AgentSpec,
    *,
    peers: Sequence[str] = (),
    token_file: Path | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> FleetAgent:
    """Start one agent (not ready until :func:`wait_ready`); stop it with :func:`stop_agents`.

    Args:
        spec: where it runs; ``spec.root`` is created.
        peers: the static ``--peers`` list (empty: a ring of one).
        token_file: the peer token's file.
        extra: more flags (probe intervals, drain timeout...).
        env: its environment (default: the caller's; see :func:`agent_env`).
        cwd: its working directory (default: the caller's).
    """
    spec.root.mkdir(parents=True, exist_ok=True)
    with spec.log.open("wb") as sink:
        proc = subprocess.Popen(
            agent_argv(spec, peers=peers, token_file=token_file, extra=extra),
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None, cwd=cwd,
            # A ^C at the terminal reaches the caller, which stops the agents itself.
            start_new_session=True,
        )
    return FleetAgent(spec, proc)


def stop_agents(agents: Sequence[FleetAgent], *, drain: bool = True,
                timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop every agent: SIGTERM (they drain in parallel), wait, SIGKILL any that
    linger; with ``drain=False`` SIGKILL at once (a test's cleanup)."""
    if drain:
        for a in agents:
            a.signal(signal.SIGTERM)
    deadline = time.monotonic() + (timeout if drain else 0.0)
    for a in agents:
        try:
            a.proc.wait(max(0.1, deadline - time.monotonic()) if drain else 0)
        except subprocess.TimeoutExpired:
            a.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.proc.wait(KILL_WAIT_S)


async def wait_ready(
    agents: Sequence[FleetAgent],
    *,
    members: int | None = None,
    timeout: float = 60.0,
    interval: float = 0.05,
    log_lines: int = 5,
) -> None:
    """Until every agent answers ``/healthz`` (seeing ``members`` ring members, if given).

    Each agent's :meth:`FleetAgent.health` is asked, so a subclass decides
    where (the pod socket by default).

    Raises:
        FleetError: an agent exited (with ``log_lines`` of its log), or they
            were not all ready within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pending = list(agents)
    seen: dict[str, int | None] = {}
    while pending:
        for a in list(pending):
            if a.proc.poll() is not None:
                raise FleetError(f"agent {a.name} exited {a.proc.returncode}: "
                                 f"{a.log_tail(log_lines)}")
            body = await a.health()
            seen[a.name] = len(body.get("members", ())) if body is not None else None
            if body is not None and (members is None or seen[a.name] == members):
                pending.remove(a)
        if pending and time.monotonic() > deadline:
            want = "answer" if members is None else f"see {members} members"
            raise FleetError(f"agents did not {want} within {timeout:.0f}s: "
                             f"{ {a.name: seen.get(a.name) for a in pending} }")
        await asyncio.sleep(interval)


async def wait_answering(agent: FleetAgent, *, timeout: float = 60.0,
                         interval: float = 0.02) -> dict[str, Any]:
    """Until ``agent`` answers ``/healthz`` on its pod socket (not its peer port); returns
    the body.

    Raises:
        FleetError: the agent exited, or did not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if agent.proc.poll() is not None:
            raise FleetError(f"agent {agent.name} exited {agent.proc.returncode}: "
                             f"{agent.log_tail()}")
        # The pod socket itself, whatever a subclass's health() asks.
        body = await AgentClient(agent.address).health() if agent.socket.exists() else None
        if body is not None:
            return body
        if time.monotonic() > deadline:
            raise FleetError(f"agent {agent.name} did not answer within {timeout:.0f}s")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def loopback_fleet(
    count: int,
    *,
    store: str,
    roots: Path,
    token_file: Path | None = None,
    extra: Sequence[str] = (),
    name_prefix: str = "agent-",
) -> Iterator[list[FleetAgent]]:
    """``count`` agents on free 127.0.0.1 ports as one ring, stopped on the way out.

    Agent ``i`` is named ``{name_prefix}{i}`` and keeps its cache and log in
    ``roots/{name}``; the pod sockets live in a short temporary directory.
    Not ready until :func:`wait_ready`.
    """
    peers = [f"127.0.0.1:{port}" for port in free_ports(count)]
    agents: list[FleetAgent] = []
    with short_dir() as sockets:
        try:
            for i, listen in enumerate(peers):
                name = f"{name_prefix}{i}"
                spec = AgentSpec(name, listen, store, roots / name, sockets / f"{i}.sock")
                agents.append(start_agent(spec, peers=peers, token_file=token_file, extra=extra))
            yield agents
        finally:
            stop_agents(agents)
