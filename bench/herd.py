"""``bdn bench herd``: N node agents cold-pull one model at once, as a ring and each alone.

A generated model (8 shards) is mirrored, untimed, into a fresh ``file://``
store that a throwaway nginx serves as the origin. nginx writes an access log
of ``$bytes_sent`` per request, so origin traffic is counted **at the origin**;
the agents' own ``bdn_origin_bytes_total`` counters are shown beside it only
as a cross-check.

For each N, three cases run in the same process, on the same data:

- **ring**: N ``bdn agent`` processes, each with its own cache and peer port,
  one shared token, every agent listed in ``--peers``, fan-out off
  (``--fanout 0``); once each sees N members, all N pull the manifest at once
  through their unix sockets;
- **fanout**: the same ring with ``--fanout K`` (``--fanout``, default 4; 0
  skips the case): owners redirect later requesters to holders
  (:mod:`bdn.peer.fanout`). Its figure is the busiest agent's egress;
- **naive**: the same N agents started without ``--peers``, so each one is a
  ring of one and reads the whole model from origin.

The wall time runs from the first pull request to the last completion; every
tree is then verified (size, xxh3-128 per chunk) outside the timing, the
agents are stopped and their caches removed.

On loopback no link is a bottleneck, so it mostly measures origin bytes. With
``--netns`` (:mod:`bench.netns`) every agent runs in its own network
namespace, with its own shaped link to an origin namespace and a shaped link
to a peer switch: the fleet the ring is built for, where the issue's aim
applies (N = 4: ring wall <= 0.35x naive, origin <= 1.02x the model).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import resource
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from bdn.config.units import format_bytes, parse_size
from bdn.fleet import FleetAgent, short_dir, stop_agents
from bench.command import run_command
from bench.harness import (
    BenchAbort,
    GiB,
    MiB,
    ToolFailed,
    bench_workdir,
    require_free_space,
    timeout_for,
    warm_up_writes,
)
from bench.herd_delay import DelayRelay
from bench.herd_fleet import (
    ORIGIN_PORT_NETNS,
    Node,
    Variant,
    agent_counters,
    in_ring,
    loopback_nodes,
    mount,
    netns_nodes,
    pull_all,
    ring_changes_since,
    start_agents,
    variant_flags,
    wait_ready,
)
from bench.herd_origin import CountingOrigin
from bench.herd_report import (
    DEFAULT_HERD_BENCH_OPTIONS,
    HerdBenchOptions,
    HerdCase,
    HerdReport,
    HerdRun,
    OwnerFault,
    StartMode,
    parse_nodes,
)
from bench.model import Model, prepare_model, remove_tree, shard_sizes
from bench.netns import NetnsError, Topology, netns_unavailable, new_plan
from bench.report import progress_console
from bench.tools import MachineFacts, machine_facts

TOOLS = ("nginx",)
"""nginx serves the store as the origin and counts what it sends."""

READY_TIMEOUT_S = 90.0
"""Agents get this long to start and see their ring (N Python processes on few cores)."""

BIG_MACHINE_CORES = 16
"""The issue's N = 8 / 8 GiB run is meant for a machine this size (the lent device)."""


@dataclass(frozen=True, slots=True)
class Fleet:
    """What a case needs from the run around it."""

    model: Model
    origin: CountingOrigin
    area: Path
    sockets: Path
    token_file: Path
    nodes_for: Callable[[int], list[Node]]
    pull_timeout: float
    agent_flags: tuple[str, ...] = ()
    fanout: int = 0
    owner_fault: OwnerFault | None = None
    owner_delay: float = 5.0


@dataclass(frozen=True, slots=True)
class _Burst:
    seconds: float
    started_at: float  # Unix time, to compare with nginx's log
    statuses: list[dict[str, Any]]
    counters: dict[str, int]
    log_offset: int


async def _burst(agents: Sequence[FleetAgent], fleet: Fleet, members: int,
                 variant: Variant = "ring") -> _Burst:
    """Pulls on every agent once each sees ``members``; with an owner fault (see
    :class:`~bench.herd_report.HerdBenchOptions`) on all but the first, which is
    frozen first in the ``frozen`` case (and thawed after the pulls)."""
    await wait_ready(agents, members, READY_TIMEOUT_S)
    pullers = agents[1:] if fleet.owner_fault is not None else agents
    offset = fleet.origin.log_offset()
    if variant == "frozen":
        agents[0].signal(signal.SIGSTOP)
    try:
        started_at = time.time()
        seconds, statuses = await pull_all(pullers, fleet.model.manifest_id, fleet.pull_timeout)
    finally:
        if variant == "frozen":
            agents[0].signal(signal.SIGCONT)
    return _Burst(seconds, started_at, statuses, await agent_counters(pullers), offset)


async def _burst_together(agents: Sequence[FleetAgent], fleet: Fleet, launched: float,
                          started_at: float, offset: int) -> _Burst:
    """``--start together``: each pull as soon as its agent's socket opens, timed from launch."""
    seconds, statuses = await pull_all(agents, fleet.model.manifest_id,
                                       fleet.pull_timeout + READY_TIMEOUT_S, when_open=launched)
    return _Burst(seconds, started_at, statuses, await agent_counters(agents), offset)


def run_case(fleet: Fleet, n: int, variant: Variant, start: StartMode = "settled") -> HerdRun:
    """Start ``n`` agents, time one burst, stop them, verify every tree, clean up.

    ``start``: see :class:`~bench.herd_report.HerdBenchOptions`; ``together`` reads
    the origin's log from before the agents' launch.

    Raises:
        ToolFailed: an agent would not start, a pull failed, or a tree is wrong.
    """
    area = fleet.area / f"{variant}-{n}"
    agents: list[FleetAgent] = []
    cpu_before = _children_cpu()
    with contextlib.ExitStack() as stack:
        nodes = fleet.nodes_for(n)
        if variant == "slow":  # Its peers reach the first agent through the relay.
            relay = stack.enter_context(DelayRelay(nodes[0].listen, fleet.owner_delay))
            nodes[0] = dataclasses.replace(nodes[0], advertise=relay.address)
        return _run_case(fleet, n, variant, start, area, nodes, agents, cpu_before)


def _run_case(fleet: Fleet, n: int, variant: Variant, start: StartMode, area: Path,
              nodes: list[Node], agents: list[FleetAgent], cpu_before: float) -> HerdRun:
    """:func:`run_case` once its nodes are placed (a slow owner's relay runs around it)."""
    try:
        offset, started_at, launched = fleet.origin.log_offset(), time.time(), time.perf_counter()
        agents += start_agents(nodes, variant, area, fleet.sockets, fleet.token_file,
                               (*fleet.agent_flags, *variant_flags(variant, fleet.fanout)))
        members = n if in_ring(variant) else 1
        try:
            burst = asyncio.run(
                _burst_together(agents, fleet, launched, started_at, offset)
                if start == "together" else _burst(agents, fleet, members, variant))
        except (aiohttp.ClientError, OSError) as err:
            raise ToolFailed(f"talking to the agents failed: {err}") from err
        stop_agents(agents)
        cpu = _children_cpu() - cpu_before  # The agents have exited and been reaped.
        tally = fleet.origin.tally_since(burst.log_offset)
        pullers = agents[1:] if fleet.owner_fault is not None else agents
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for _ in pool.map(fleet.model.verify_tree, [mount(a) for a in pullers]):
                pass
        from_peers = sum(int(s.get("bytes_from_peers") or 0) for s in burst.statuses)
        busy = tally.last_blob_end - burst.started_at if tally.last_blob_end else None
        changes = sum(ring_changes_since(a, burst.started_at) for a in pullers)
        hedges = {k.removeprefix("hedges_"): v for k, v in burst.counters.items()
                  if k.startswith("hedges_") and v}
        c = burst.counters
        return HerdRun(burst.seconds, tally, busy, c["origin_bytes"], from_peers,
                       c["peer_failures"], changes, hedges, c["peak_egress"], c["redirects"],
                       c["holder_bytes"], cpu)
    finally:
        stop_agents(agents)
        _keep_logs(agents, fleet.area.parent / "logs", f"{variant}-{n}")
        remove_tree(area)


def _children_cpu() -> float:
    """User + system CPU seconds of this process's reaped children (the agents)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _keep_logs(agents: Sequence[FleetAgent], logs: Path, prefix: str) -> None:
    """Copy the agents' logs out of the area about to be removed (kept with --keep).

    Best effort: this runs during cleanup, where an error must not stop the rest.
    """
    with contextlib.suppress(OSError):
        logs.mkdir(parents=True, exist_ok=True)
        for a in agents:
            if a.log.exists():
                # Numbered by the bursts of this case before it, so repeats never clash.
                runs = len(list(logs.glob(f"{prefix}-*-{a.name}.log")))
                shutil.copyfile(a.log, logs / f"{prefix}-{runs + 1}-{a.name}.log")


def _describe(run: HerdRun, model_bytes: int) -> str:
    busy = "" if run.origin_seconds is None else f" (origin busy {run.origin_seconds:.2f} s)"
    return (
        f"{run.seconds:.2f} s{busy}, origin {run.origin.bytes_sent / model_bytes:.3f}x model "
        f"({format_bytes(run.origin.bytes_sent)} at nginx, agents say "
        f"{format_bytes(run.agents_origin_bytes)}), from peers {format_bytes(run.from_peers)}"
        + f", peak egress {format_bytes(run.peak_egress)}"
        + (f", {run.redirects} redirects, holders passed on {format_bytes(run.holder_bytes)}"
           if run.redirects else "")
        + (f", {run.peer_failures} peer failures" if run.peer_failures else "")
        + (f", {run.ring_changes} ring changes" if run.ring_changes else "")
        + (", hedges " + " ".join(f"{k}={v}" for k, v in sorted(run.hedges.items()))
           if run.hedges else "")
    )


def measure(fleet: Fleet, options: HerdBenchOptions, console: Console) -> list[HerdCase]:
    """Every case, ``repeat`` rounds; the ring/naive order alternates each round."""
    model_bytes = fleet.model.nbytes
    variants = options.variants
    cases = {(n, v): HerdCase(n, v, model_bytes) for n in options.fleet_sizes for v in variants}
    for round_ in range(options.repeat):
        for n in options.fleet_sizes:
            order = variants if round_ % 2 == 0 else variants[::-1]
            for variant in order:
                case = cases[(n, variant)]
                if case.error is not None:
                    continue
                where = (f"  {options.mode} · {options.start} · N={n} · {variant} · run"
                         f" {round_ + 1}/{options.repeat}")
                try:
                    run = run_case(fleet, n, variant, options.start)
                except ToolFailed as err:
                    case.error = str(err)
                    console.print(f"{where}: [red]failed[/] ({err})")
                    continue
                case.runs.append(run)
                console.print(f"{where}: {_describe(run, model_bytes)}")
    return list(cases.values())


# ---------------------------------------------------------------------------
# The bench


def _prepare_model(wd: Path, options: HerdBenchOptions, console: Console) -> Model:
    """Generate the shards and mirror them into ``wd/store`` (all untimed)."""
    console.print(f"generating {format_bytes(options.model_bytes)} in {options.shards} shards")
    return prepare_model(wd, shard_sizes(options.model_bytes, options.shards), console,
                         options.chunk_size)


def _notes(options: HerdBenchOptions, facts: MachineFacts) -> list[str]:
    o = options
    notes = [
        f"model: {format_bytes(o.model_bytes)} in {o.shards} shards"
        + (" (the shaped run's default: a few minutes at 100 MB/s; --size changes it)"
           if o.netns and o.size is None else ""),
        f"chunks of {format_bytes(o.chunk_size)}" if o.chunk_size else "chunks: the mirror's "
        "default size",
        "ring: every agent lists all N in --peers, --fanout 0; "
        + (f"fanout: the same ring with --fanout {o.fanout}; " if o.fanout else "")
        + "naive: the same agents without --peers "
        "(each a ring of one, reading origin itself through its own chunk service, which "
        "also keeps each chunk in its chunk cache: it writes the model twice)",
        "agents' counters = their bdn_origin_bytes_total (blob bodies only) summed; a "
        "cross-check of nginx's count, which includes headers and manifests",
        "every tree verified after each burst (size + xxh3-128 per chunk), outside the timing; "
        f"{format_bytes(_warm_up_bytes(o, facts))} written and deleted untimed before the "
        "first burst (first-touch memory); ring and naive alternate which goes first each round",
    ]
    if o.owner_fault is not None:
        notes[2] = (
            "all alive: the ring (--fanout 0) settles, then every agent but the first pulls; "
            + ("frozen: the same, with the first agent stopped (SIGSTOP) once the ring "
               "settled, resumed after the pulls" if o.owner_fault == "frozen" else
               f"slow: the same, with every chunk request to the first agent held "
               f"{o.owner_delay:g} s by a relay it advertises (its health probes pass at "
               "once)")
            + "; CPU-s/GB over the N - 1 copies pulled")
    notes.append(
        "start together: agents launched and each pull sent as soon as its agent's pod "
        "socket answers; wall time from the launch (agent start-up included)"
        if o.start == "together" else
        "start settled: pulls sent once every agent sees its whole ring; wall time from "
        "the first pull request")
    notes.append("hedging: the agents' default (--hedge-after = --peer-timeout)"
                 if o.hedge_after is None else f"hedging: --hedge-after {o.hedge_after}")
    if o.netns:
        notes.append(
            f"shaped: each agent in its own network namespace; its own link to the origin "
            f"namespace at {o.origin_mbps:g} MB/s (tbf, origin side), its link to the peer "
            f"switch at {o.peer_mbps:g} MB/s each way; addresses 10.213.0.0/16 exist only in "
            "those namespaces"
        )
    else:
        notes.append(
            "loopback: no link is a bottleneck, so wall time is bounded by CPU and disk "
            f"({facts.cores} cores for N agents and nginx); the issue's wall-time aim "
            "is for the shaped run (--netns)"
        )
    big = f"`bdn bench herd --nodes 8 --size 8GiB{' --netns' if o.netns else ''}`"
    if facts.cores < BIG_MACHINE_CORES:
        notes.append(f"the issue's N = 8 / 8 GiB run is for a {BIG_MACHINE_CORES}-core machine "
                     f"(the lent device): run {big} there")
    elif not (8 in o.fleet_sizes and o.model_bytes >= 8 * GiB):
        notes.append(f"this machine has {facts.cores} cores: the issue also wants {big}")
    return notes


def _warm_up_bytes(options: HerdBenchOptions, facts: MachineFacts) -> int:
    """Bytes to write untimed before the first burst: what the largest case puts in
    the page cache (node caches and chunk caches), at most half the RAM.

    On a VM whose memory is backed on first touch the first burst would otherwise
    pay for it (the first ring run measured 14.5 s against 8.3-9.1 s later).
    """
    return min(2 * max(options.fleet_sizes) * options.model_bytes, facts.ram_bytes // 2)


def _required_space(options: HerdBenchOptions) -> int:
    # Source + store, then the largest naive case: every agent holds the model
    # in its node cache and again in its chunk cache (removed after each case).
    return (2 + 2 * max(options.fleet_sizes)) * options.model_bytes + 512 * MiB


@dataclass(frozen=True, slots=True)
class _Origin:
    """The counting origin of a run and how its agents reach it."""

    origin: CountingOrigin
    nodes_for: Callable[[int], list[Node]]
    title: str
    extra_timeout: float = 0.0


def _start_origin(stack: contextlib.ExitStack, wd: Path, sockets: Path,
                  options: HerdBenchOptions, model: Model, console: Console) -> _Origin:
    """Start nginx (and with ``--netns`` the namespaces first) until ``stack`` closes."""
    if not options.netns:
        origin = stack.enter_context(CountingOrigin(
            wd / "store", wd / "nginx", unix_socket=sockets / "origin.sock"))
        url = f"http://127.0.0.1:{origin.port}"
        return _Origin(origin, lambda n: loopback_nodes(n, url),
                       f"herd on loopback: {format_bytes(model.nbytes)} model, nginx origin")
    n_max = max(options.fleet_sizes)
    plan = new_plan(n_max, origin_mbps=options.origin_mbps, peer_mbps=options.peer_mbps)
    console.print(f"building {n_max} node namespaces {plan.tag}-* (shaped links)")
    try:
        stack.enter_context(Topology(plan))
    except NetnsError as err:
        raise BenchAbort(f"--netns: {err}", exit_code=1) from err
    origin = stack.enter_context(CountingOrigin(
        wd / "store", wd / "nginx", unix_socket=sockets / "origin.sock",
        listen=[f"{plan.origin_addr(i)}:{ORIGIN_PORT_NETNS}" for i in range(n_max)],
        argv_prefix=("ip", "netns", "exec", plan.origin_ns),
    ))
    title = (f"herd in network namespaces: origin link {options.origin_mbps:g} MB/s "
             f"per node, peer links {options.peer_mbps:g} MB/s; "
             f"{format_bytes(model.nbytes)} model")
    # A naive node moves the whole model over its origin link.
    return _Origin(origin, lambda n: netns_nodes(n, plan), title,
                   model.nbytes / (options.origin_mbps * 1e6) * 2)


def _token_file(wd: Path) -> Path:
    """A fresh peer token, readable by its owner only."""
    token_file = wd / "token"
    token_file.write_text(secrets.token_hex(24) + "\n")
    token_file.chmod(0o600)
    return token_file


def run_herd_bench(
    options: HerdBenchOptions = DEFAULT_HERD_BENCH_OPTIONS,
    *,
    console: Console | None = None,
) -> HerdReport:
    """Run ``bdn bench herd`` and return its report (the function API; installs nothing).

    Raises:
        ConfigError: an option is out of range.
        BenchAbort: nginx is missing, namespaces cannot be built (``--netns``),
            the disk is too small, nginx would not start, or mirroring failed.
    """
    options.check()
    load_before = os.getloadavg()[0]
    console = console or progress_console()
    if shutil.which("nginx") is None:
        raise BenchAbort("needs nginx to serve the store as the origin; install with: "
                         "apt-get install -y --no-install-recommends nginx")
    if options.netns and (why := netns_unavailable()):
        raise BenchAbort(f"--netns: {why}")
    with bench_workdir(options.workdir, keep=options.keep, console=console) as wd, \
            short_dir("bdn-herd-") as sockets, contextlib.ExitStack() as stack:
        require_free_space(wd, _required_space(options))
        facts = machine_facts(TOOLS, wd)
        model = _prepare_model(wd, options, console)
        warm_up_writes(wd / "warm-up", _warm_up_bytes(options, facts))
        served = _start_origin(stack, wd, sockets, options, model, console)
        console.print(
            f"origin: nginx serving the store, logging bytes sent to {served.origin.access_log}")
        timeout = timeout_for(max(options.fleet_sizes) * model.nbytes) + served.extra_timeout
        fleet = Fleet(model, served.origin, wd / "runs", sockets, _token_file(wd),
                      served.nodes_for, timeout, options.agent_flags, options.fanout,
                      options.owner_fault, options.owner_delay)
        report = HerdReport(facts, options, served.title, notes=_notes(options, facts))
        report.cases = measure(fleet, options, console)
        report.notes.append(
            f"1-minute load average {load_before:.2f} when the bench started, "
            f"{os.getloadavg()[0]:.2f} after the last burst ({facts.cores} cores): the "
            "bursts load the machine themselves; a high figure at the start means something "
            "else was running"
        )
    return report


def options_from_args(args: argparse.Namespace) -> HerdBenchOptions:
    """Build options from the parsed ``bdn bench herd`` flags."""
    return HerdBenchOptions(
        nodes=parse_nodes(args.nodes) if args.nodes is not None else None,
        size=parse_size(args.size, field="--size") if args.size is not None else None,
        shards=args.shards,
        repeat=args.repeat,
        netns=args.netns,
        origin_mbps=args.origin_mbps,
        peer_mbps=args.peer_mbps,
        workdir=Path(args.workdir) if args.workdir else None,
        keep=args.keep,
        start=args.start,
        hedge_after=args.hedge_after,
        fanout=args.fanout,
        chunk_size=parse_size(args.chunk_size, field="--chunk-size")
        if args.chunk_size is not None else None,
        owner_fault=getattr(args, "owner_fault", None),
        owner_delay=getattr(args, "owner_delay", 5.0),
    )


def herd_command(args: argparse.Namespace) -> int:
    """``bdn bench herd``: install nginx if allowed, run, print; the exit status
    (0 ok, 1 a run failed, 2 a tool or facility missing), with the herd's own table."""
    options = options_from_args(args)
    options.check()

    def run(console: Console, missing: dict[str, str]) -> HerdReport:
        if missing:
            raise BenchAbort(f"needs nginx: {missing['nginx']}")
        return run_herd_bench(options, console=console)

    return run_command("herd", args, run, tools=TOOLS)
