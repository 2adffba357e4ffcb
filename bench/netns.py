"""Network namespaces for ``bdn bench herd --netns``: a shaped origin and a shaped peer switch.

The loopback herd has no bottleneck link, so it cannot show what the ring is
for: a fleet whose nodes each reach origin over a thin link and each other
over a fat one. This module builds that fleet on one machine, entirely inside
namespaces it creates (nothing is added to, or routed through, the caller's
own network namespace)::

        origin ns                       switch ns (bridge br0)
    o0 10.213.1.1 ──┐               ┌── p0 ──┐
    o1 10.213.2.1 ──┼─ tbf origin   │  p1 ──┼── br0
        ...         │  rate, per    │  ...   │
                    │  node         │        │  tbf peer rate both ways
       node ns n0: "origin" 10.213.1.2/24, "peer" 10.213.0.10/24
       node ns n1: "origin" 10.213.2.2/24, "peer" 10.213.0.11/24

Each node has a point-to-point veth link to the origin namespace, shaped on
the origin side (the direction the bytes flow) with a token bucket, so each
node gets its own link at the origin rate, and a veth link to a bridge in the
switch namespace, shaped on both ends (upload and download) at the peer rate.
Every veth is created directly inside its namespaces (``ip -n NS link add ...
peer ... netns NS2``), and deleting the namespaces deletes every link.

The plan is data (:func:`setup_commands`, :func:`teardown_commands`), so the
commands are testable without root; :class:`Topology` runs them and always
tears down what it created, on errors and signals too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

SUBNET = "10.213"
"""First two octets of every address; they exist only inside the bench's namespaces."""

PEER_NET_OCTET = 0
"""Third octet of the shared peer network (``10.213.0.0/24``)."""

PEER_HOST_BASE = 10
"""Node ``i`` is ``10.213.0.(10 + i)`` on the peer network."""

MAX_NODES = 200
"""Origin links use ``10.213.(i + 1).0/24``; the peer /24 holds hosts 10-209."""

ORIGIN_IFNAME = "origin"
"""Name of a node's origin-facing interface inside its namespace."""

PEER_IFNAME = "peer"
"""Name of a node's peer-facing interface inside its namespace."""

COMMAND_TIMEOUT_S = 20.0
"""Bound on every ``ip``/``tc`` call; they return in milliseconds when healthy."""

_QUEUE_S = 0.02
"""Queue a token bucket may hold, in seconds at its rate: enough for TCP, no bufferbloat."""

_MIN_BURST = 256 * 1024
"""Bucket depth floor: veth hands tbf GSO packets of up to 64 KiB; a shallower bucket
would have to split every one of them and could not reach the rate."""


class NetnsError(Exception):
    """Building or using the namespaces failed; ``str()`` names the command and its error."""


@dataclass(frozen=True, slots=True)
class NetnsPlan:
    """Names, addresses and rates of one shaped fleet.

    Attributes:
        tag: unique prefix of every namespace name (``bdnh`` + random hex), so
            concurrent runs never share a name and leftovers are recognisable.
        nodes: how many node namespaces.
        origin_mbps: each node's origin link, in MB/s (10^6 bytes per second).
        peer_mbps: each node's link to the peer switch, in MB/s, each direction.
    """

    tag: str
    nodes: int
    origin_mbps: float = 100.0
    peer_mbps: float = 1000.0

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 1..{MAX_NODES}, not {self.nodes}")
        if self.origin_mbps <= 0 or self.peer_mbps <= 0:
            raise ValueError("link rates must be positive")
        # Namespace names become file names under /run/netns; keep them short and plain.
        if not self.tag.isalnum() or len(self.tag) > 16:
            raise ValueError(f"tag must be 1-16 letters or digits, not {self.tag!r}")

    @property
    def origin_ns(self) -> str:
        return f"{self.tag}-o"

    @property
    def switch_ns(self) -> str:
        return f"{self.tag}-s"

    def node_ns(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace the plan creates, in creation order."""
        return [self.origin_ns, self.switch_ns, *(self.node_ns(i) for i in range(self.nodes))]

    def origin_addr(self, i: int) -> str:
        """The origin's address on node ``i``'s link (where node ``i`` reaches origin)."""
        return f"{SUBNET}.{i + 1}.1"

    def node_origin_addr(self, i: int) -> str:
        """Node ``i``'s own address on its origin link."""
        return f"{SUBNET}.{i + 1}.2"

    def peer_addr(self, i: int) -> str:
        """Node ``i``'s address on the peer network: where its agent listens."""
        return f"{SUBNET}.{PEER_NET_OCTET}.{PEER_HOST_BASE + i}"


def new_plan(nodes: int, *, origin_mbps: float, peer_mbps: float) -> NetnsPlan:
    """A plan with a fresh random tag."""
    return NetnsPlan(f"bdnh{secrets.token_hex(3)}", nodes, origin_mbps, peer_mbps)


def tbf_args(mbps: float) -> list[str]:
    """``tc`` token-bucket arguments for ``mbps`` MB/s (tc's ``mbit`` is 10^6 bits).

    >>> tbf_args(100)
    ['tbf', 'rate', '800mbit', 'burst', '400000', 'limit', '2000000']
    """
    bytes_per_s = mbps * 1e6
    burst = max(_MIN_BURST, int(bytes_per_s / 250))  # 4 ms of traffic
    limit = max(2 * burst, int(bytes_per_s * _QUEUE_S))
    return ["tbf", "rate", f"{mbps * 8:g}mbit", "burst", str(burst), "limit", str(limit)]


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside namespace ``ns`` (``ip netns exec`` execs it: same pid)."""
    return ["ip", "netns", "exec", ns, *argv]


def setup_commands(plan: NetnsPlan) -> list[list[str]]:
    """Every ``ip``/``tc`` command that builds ``plan``, in order (see the module docstring)."""
    o, s = plan.origin_ns, plan.switch_ns
    cmds: list[list[str]] = []
    for ns in plan.namespaces:
        cmds += [["ip", "netns", "add", ns], ["ip", "-n", ns, "link", "set", "lo", "up"]]
    cmds += [
        ["ip", "-n", s, "link", "add", "br0", "type", "bridge"],
        ["ip", "-n", s, "link", "set", "br0", "up"],
    ]
    for i in range(plan.nodes):
        n = plan.node_ns(i)
        cmds += [
            # The origin link: o<i> in the origin namespace, "origin" in the node's.
            ["ip", "-n", o, "link", "add", f"o{i}", "type", "veth",
             "peer", "name", ORIGIN_IFNAME, "netns", n],
            ["ip", "-n", o, "addr", "add", f"{plan.origin_addr(i)}/24", "dev", f"o{i}"],
            ["ip", "-n", o, "link", "set", f"o{i}", "up"],
            ["ip", "-n", n, "addr", "add", f"{plan.node_origin_addr(i)}/24", "dev", ORIGIN_IFNAME],
            ["ip", "-n", n, "link", "set", ORIGIN_IFNAME, "up"],
            # The peer link: p<i> a port of the switch's bridge, "peer" in the node's.
            ["ip", "-n", s, "link", "add", f"p{i}", "type", "veth",
             "peer", "name", PEER_IFNAME, "netns", n],
            ["ip", "-n", s, "link", "set", f"p{i}", "master", "br0"],
            ["ip", "-n", s, "link", "set", f"p{i}", "up"],
            ["ip", "-n", n, "addr", "add",
             f"{plan.peer_addr(i)}/24", "dev", PEER_IFNAME],
            ["ip", "-n", n, "link", "set", PEER_IFNAME, "up"],
            # Shaping: egress of origin -> node, and both directions of the peer link.
            ["tc", "-n", o, "qdisc", "add", "dev", f"o{i}", "root", *tbf_args(plan.origin_mbps)],
            ["tc", "-n", s, "qdisc", "add", "dev", f"p{i}", "root", *tbf_args(plan.peer_mbps)],
            ["tc", "-n", n, "qdisc", "add", "dev", PEER_IFNAME, "root",
             *tbf_args(plan.peer_mbps)],
        ]
    return cmds


def teardown_commands(plan: NetnsPlan) -> list[list[str]]:
    """Delete every namespace of ``plan`` (their veths and the bridge go with them)."""
    return [["ip", "netns", "del", ns] for ns in reversed(plan.namespaces)]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NetnsError(f"{' '.join(argv)}: {err}") from None


def _check(argv: Sequence[str]) -> None:
    proc = _run(argv)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")


def existing_namespaces() -> set[str]:
    """Names in ``ip netns list`` (empty when it cannot be run)."""
    try:
        proc = _run(["ip", "netns", "list"])
    except NetnsError:
        return set()
    return {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def netns_unavailable() -> str | None:
    """Why namespaces cannot be built here (``None``: they can).

    Creates and deletes one probe namespace of its own: being root is not
    enough inside some containers, where ``ip netns add`` is refused.
    """
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or drop --netns)"
    for binary in ("ip", "tc"):
        if shutil.which(binary) is None:
            return f"{binary} not on PATH; install with: apt-get install -y iproute2"
    probe = new_plan(1, origin_mbps=1, peer_mbps=1).origin_ns
    try:
        _check(["ip", "netns", "add", probe])
    except NetnsError as err:
        return f"cannot create a network namespace: {err}"
    try:
        _check(["ip", "-n", probe, "link", "add", "t0", "type", "veth", "peer", "name", "t1"])
        _check(["tc", "-n", probe, "qdisc", "add", "dev", "t0", "root", *tbf_args(1)])
    except NetnsError as err:
        return f"veth or tc unavailable in a network namespace: {err}"
    finally:
        with contextlib.suppress(NetnsError):
            _run(["ip", "netns", "del", probe])
    return None


class Topology:
    """Builds a :class:`NetnsPlan` on ``__enter__`` and removes it on ``__exit__``.

    Only namespaces this object created are deleted; processes still running
    inside them at teardown (which can only be ones the caller started there)
    are killed first, by pid, so no namespace outlives the bench.
    """

    def __init__(self, plan: NetnsPlan) -> None:
        self.plan = plan
        self._created: list[str] = []

    def __enter__(self) -> Topology:
        try:
            for argv in setup_commands(self.plan):
                _check(argv)
                if argv[:3] == ["ip", "netns", "add"]:
                    self._created.append(argv[3])
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``ns``, one of this topology's namespaces."""
        if ns not in self.plan.namespaces:
            raise ValueError(f"{ns} is not a namespace of this topology")
        return exec_argv(ns, argv)

    def teardown(self) -> None:
        """Kill leftover processes in our namespaces, then delete them (idempotent).

        Raises:
            NetnsError: a namespace could not be deleted (after trying all of them).
        """
        errors = []
        for ns in reversed(self._created):
            self._kill_leftovers(ns)
            proc = _run(["ip", "netns", "del", ns])
            if proc.returncode != 0 and ns in existing_namespaces():
                errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
        self._created.clear()
        if errors:
            raise NetnsError("; ".join(errors))

    def _kill_leftovers(self, ns: str) -> None:
        proc = _run(["ip", "netns", "pids", ns])
        pids = [int(p) for p in proc.stdout.split() if p.isdigit()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            # Our own children must be reaped or they linger as zombies; others
            # (a grandchild re-parented to init) are reaped by init.
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
