"""``bdn bench herd``: N node agents cold-pull one model at once, as a ring and each alone.

A generated model (8 shards) is mirrored, untimed, into a fresh ``file://``
store that a throwaway nginx serves as the origin. nginx writes an access log
of ``$bytes_sent`` per request, so origin traffic is counted **at the origin**;
the agents' own ``bdn_origin_bytes_total`` counters are shown beside it only
as a cross-check.

For each N, two cases run in the same process, on the same data:

- **ring**: N ``bdn agent`` processes, each with its own cache and peer port,
  one shared token, every agent listed in ``--peers``; once each sees N
  members, all N pull the manifest at once through their unix sockets;
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
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from rich.console import Console
from rich.table import Table

from bdn.config.units import format_bytes, parse_size
from bdn.errors import ConfigError
from bench.harness import (
    BenchAbort,
    DataFile,
    GiB,
    MiB,
    ToolFailed,
    bench_workdir,
    generate_files,
    require_free_space,
    sigterm_as_exit,
    timeout_for,
    verify_file,
    warm_up_writes,
)
from bench.herd_fleet import (
    ORIGIN_PORT_NETNS,
    AgentProc,
    CountingOrigin,
    Node,
    OriginTally,
    Variant,
    agent_counters,
    loopback_nodes,
    netns_nodes,
    pull_all,
    start_agents,
    stop_agents,
    wait_ready,
)
from bench.netns import NetnsError, Topology, netns_unavailable, new_plan
from bench.pull import mirror_model, remove_tree
from bench.report import progress_console
from bench.tools import MachineFacts, ensure_tools, machine_facts

TOOLS = ("nginx",)
"""nginx serves the store as the origin and counts what it sends."""

Mode = Literal["loopback", "netns"]
VARIANTS: tuple[Variant, ...] = ("ring", "naive")

DEFAULT_NODES: dict[Mode, tuple[int, ...]] = {"loopback": (2, 4, 8), "netns": (2, 4)}
"""Fleet sizes when ``--nodes`` is not given (the shaped run is slower per node)."""

DEFAULT_SIZE: dict[Mode, int] = {"loopback": 2 * GiB, "netns": 1 * GiB}
"""Model size when ``--size`` is not given: at 100 MB/s a naive node needs ~11 s
per GiB, so 1 GiB keeps the shaped run to a few minutes."""

READY_TIMEOUT_S = 90.0
"""Agents get this long to start and see their ring (N Python processes on few cores)."""

BIG_MACHINE_CORES = 16
"""The issue's N = 8 / 8 GiB run is meant for a machine this size (the lent device)."""


@dataclass(frozen=True, slots=True)
class HerdAim:
    """A target of the issue at ``nodes`` agents: ``metric`` must be <= ``limit``.

    ``metric`` is ``wall`` (ring wall time over naive) or ``origin`` (the ring's
    origin bytes over the model size); ``modes`` are the runs it applies to.
    """

    metric: Literal["wall", "origin"]
    nodes: int
    limit: float
    modes: tuple[Mode, ...]
    text: str


AIMS = (
    HerdAim("wall", 4, 0.35, ("netns",), "ring wall time <= {limit:g}x naive"),
    HerdAim("origin", 4, 1.02, ("loopback", "netns"), "ring origin bytes <= {limit:g}x model"),
)
"""The issue's targets (policy as data): the wall-time aim is for the shaped run,
where links, not CPUs, bound a pull."""


# ---------------------------------------------------------------------------
# Options


@dataclass(frozen=True, slots=True)
class HerdBenchOptions:
    """Sizes and knobs of one ``bdn bench herd`` run.

    Attributes:
        nodes: fleet sizes to run, in order (``None``: :data:`DEFAULT_NODES`).
        size: model bytes, split over ``shards`` files (``None``: :data:`DEFAULT_SIZE`).
        shards: files of the model.
        repeat: timed runs of each case (best and median reported).
        netns: run the shaped variant in network namespaces instead of loopback.
        origin_mbps: each node's origin link in the shaped run, MB/s.
        peer_mbps: each node's link to its peers in the shaped run, MB/s.
        workdir: parent of the fresh work directory (default: the system temp dir).
        keep: keep the work directory afterwards.
    """

    nodes: tuple[int, ...] | None = None
    size: int | None = None
    shards: int = 8
    repeat: int = 1
    netns: bool = False
    origin_mbps: float = 100.0
    peer_mbps: float = 1000.0
    workdir: Path | None = None
    keep: bool = False

    @property
    def mode(self) -> Mode:
        return "netns" if self.netns else "loopback"

    @property
    def fleet_sizes(self) -> tuple[int, ...]:
        return self.nodes if self.nodes is not None else DEFAULT_NODES[self.mode]

    @property
    def model_bytes(self) -> int:
        return self.size if self.size is not None else DEFAULT_SIZE[self.mode]

    def check(self) -> None:
        """Raise ``ConfigError`` for values no run can use."""
        for name in ("shards", "repeat"):
            if getattr(self, name) < 1:
                raise ConfigError("must be at least 1", field=f"--{name}")
        if not self.fleet_sizes or any(not 2 <= n <= 64 for n in self.fleet_sizes):
            raise ConfigError("every fleet size must be 2..64 agents", field="--nodes")
        if self.model_bytes < self.shards:
            raise ConfigError(f"must be at least {self.shards} bytes (one per shard)",
                              field="--size")
        for name in ("origin_mbps", "peer_mbps"):
            if not getattr(self, name) > 0:
                raise ConfigError("must be a positive rate in MB/s",
                                  field=f"--{name.replace('_', '-')}")


DEFAULT_HERD_BENCH_OPTIONS = HerdBenchOptions()


def parse_nodes(text: str) -> tuple[int, ...]:
    """``"2,4,8"`` into ``(2, 4, 8)`` (order kept, repeats dropped).

    >>> parse_nodes("4, 2,4")
    (4, 2)
    """
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"{text!r} is not a list of agent counts; e.g. 2,4,8", field="--nodes")
    return tuple(dict.fromkeys(values))


# ---------------------------------------------------------------------------
# One case: N agents, ring or naive, one timed burst


@dataclass(frozen=True, slots=True)
class HerdRun:
    """One timed burst.

    Attributes:
        seconds: first request to last completion.
        origin: what nginx logged for the burst (the figure that counts).
        origin_seconds: first request to the end of the last blob response at
            the origin: how long the origin links were busy. Wall time beyond it
            is fan-out between peers, writing and verifying (CPU and disk).
        agents_origin_bytes: the agents' own ``bdn_origin_bytes_total``, summed.
        from_peers: bytes the pulls got from peers, summed over agents.
        peer_failures: chunk requests to an owner that failed and went to origin
            instead (``bdn_peer_failures_total``, summed): each is one chunk
            more at the origin.
        ring_changes: membership changes the agents logged during the burst
            (summed): a peer dropped from a ring (a probe timed out) or back.
    """

    seconds: float
    origin: OriginTally
    origin_seconds: float | None
    agents_origin_bytes: int
    from_peers: int
    peer_failures: int = 0
    ring_changes: int = 0


@dataclass(slots=True)
class HerdCase:
    """Every run of one (N, variant), or why it has none."""

    nodes: int
    variant: Variant
    model_bytes: int
    runs: list[HerdRun] = field(default_factory=list)
    error: str | None = None

    @property
    def best(self) -> float | None:
        return min(r.seconds for r in self.runs) if self.runs and not self.error else None

    @property
    def median(self) -> float | None:
        return statistics.median(r.seconds for r in self.runs) if self.runs and not self.error \
            else None

    @property
    def best_run(self) -> HerdRun | None:
        return min(self.runs, key=lambda r: r.seconds) if self.runs and not self.error else None

    @property
    def origin_ratio(self) -> float | None:
        """The worst run's origin bytes (every byte nginx sent) over the model size."""
        if not self.runs or self.error:
            return None
        return max(r.origin.bytes_sent for r in self.runs) / self.model_bytes

    @property
    def agents_ratio(self) -> float | None:
        if not self.runs or self.error:
            return None
        return max(r.agents_origin_bytes for r in self.runs) / self.model_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "variant": self.variant,
            "model_bytes": self.model_bytes,
            "best_s": self.best,
            "median_s": self.median,
            "origin_ratio": self.origin_ratio,
            "agents_origin_ratio": self.agents_ratio,
            "runs": [
                {
                    "seconds": round(r.seconds, 4),
                    "origin_busy_s": None if r.origin_seconds is None
                    else round(r.origin_seconds, 4),
                    "origin_bytes_sent": r.origin.bytes_sent,
                    "origin_blob_body_bytes": r.origin.blob_body_bytes,
                    "origin_requests": r.origin.requests,
                    "agents_origin_bytes": r.agents_origin_bytes,
                    "from_peers": r.from_peers,
                    "peer_failures": r.peer_failures,
                    "ring_changes": r.ring_changes,
                }
                for r in self.runs
            ],
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Model:
    """The mirrored model: its manifest id and the files every tree must match."""

    src: Path
    manifest_id: str
    files: tuple[DataFile, ...]

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)

    def verify_tree(self, root: Path) -> None:
        for f in self.files:
            verify_file(root / f.path.relative_to(self.src), f)


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


@dataclass(frozen=True, slots=True)
class _Burst:
    seconds: float
    started_at: float  # Unix time, to compare with nginx's log
    statuses: list[dict[str, Any]]
    counters: dict[str, int]
    log_offset: int


async def _burst(agents: Sequence[AgentProc], fleet: Fleet, members: int) -> _Burst:
    await wait_ready(agents, members, READY_TIMEOUT_S)
    offset = fleet.origin.log_offset()
    started_at = time.time()
    seconds, statuses = await pull_all(agents, fleet.model.manifest_id, fleet.pull_timeout)
    return _Burst(seconds, started_at, statuses, await agent_counters(agents), offset)


def run_case(fleet: Fleet, n: int, variant: Variant) -> HerdRun:
    """Start ``n`` agents, time one burst, stop them, verify every tree, clean up.

    Raises:
        ToolFailed: an agent would not start, a pull failed, or a tree is wrong.
    """
    area = fleet.area / f"{variant}-{n}"
    agents: list[AgentProc] = []
    try:
        agents = start_agents(fleet.nodes_for(n), variant, area, fleet.sockets, fleet.token_file)
        members = n if variant == "ring" else 1
        try:
            burst = asyncio.run(_burst(agents, fleet, members))
        except (aiohttp.ClientError, OSError) as err:
            raise ToolFailed(f"talking to the agents failed: {err}") from err
        stop_agents(agents)
        tally = fleet.origin.tally_since(burst.log_offset)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for _ in pool.map(fleet.model.verify_tree, [a.paths.mount for a in agents]):
                pass
        from_peers = sum(int(s.get("bytes_from_peers") or 0) for s in burst.statuses)
        busy = tally.last_blob_end - burst.started_at if tally.last_blob_end else None
        changes = sum(a.ring_changes_since(burst.started_at) for a in agents)
        return HerdRun(burst.seconds, tally, busy, burst.counters["origin_bytes"], from_peers,
                       burst.counters["peer_failures"], changes)
    finally:
        stop_agents(agents)
        _keep_logs(agents, fleet.area.parent / "logs", f"{variant}-{n}")
        remove_tree(area)


def _keep_logs(agents: Sequence[AgentProc], logs: Path, prefix: str) -> None:
    """Copy the agents' logs out of the area about to be removed (kept with --keep).

    Best effort: this runs during cleanup, where an error must not stop the rest.
    """
    with contextlib.suppress(OSError):
        logs.mkdir(parents=True, exist_ok=True)
        for a in agents:
            if a.paths.log.exists():
                # Numbered by the bursts of this case before it, so repeats never clash.
                runs = len(list(logs.glob(f"{prefix}-*-{a.node.name}.log")))
                shutil.copyfile(a.paths.log, logs / f"{prefix}-{runs + 1}-{a.node.name}.log")


def _describe(run: HerdRun, model_bytes: int) -> str:
    busy = "" if run.origin_seconds is None else f" (origin busy {run.origin_seconds:.2f} s)"
    return (
        f"{run.seconds:.2f} s{busy}, origin {run.origin.bytes_sent / model_bytes:.3f}x model "
        f"({format_bytes(run.origin.bytes_sent)} at nginx, agents say "
        f"{format_bytes(run.agents_origin_bytes)}), from peers {format_bytes(run.from_peers)}"
        + (f", {run.peer_failures} peer failures" if run.peer_failures else "")
        + (f", {run.ring_changes} ring changes" if run.ring_changes else "")
    )


def measure(fleet: Fleet, options: HerdBenchOptions, console: Console) -> list[HerdCase]:
    """Every case, ``repeat`` rounds; the ring/naive order alternates each round."""
    model_bytes = fleet.model.nbytes
    cases = {(n, v): HerdCase(n, v, model_bytes) for n in options.fleet_sizes for v in VARIANTS}
    for round_ in range(options.repeat):
        for n in options.fleet_sizes:
            order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                case = cases[(n, variant)]
                if case.error is not None:
                    continue
                where = f"  {options.mode} · N={n} · {variant} · run {round_ + 1}/{options.repeat}"
                try:
                    run = run_case(fleet, n, variant)
                except ToolFailed as err:
                    case.error = str(err)
                    console.print(f"{where}: [red]failed[/] ({err})")
                    continue
                case.runs.append(run)
                console.print(f"{where}: {_describe(run, model_bytes)}")
    return list(cases.values())


# ---------------------------------------------------------------------------
# The report


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}x"


def _secs(case: HerdCase, repeat: int) -> str:
    if case.error is not None:
        return "failed"
    if case.best is None or case.median is None:
        return "—"
    return f"{case.best:.2f}" if repeat == 1 else f"{case.best:.2f} ({case.median:.2f})"


def _trouble(run: HerdRun | None) -> str:
    if run is None:
        return "—"
    issues = [f"{n} {what}" for n, what in ((run.peer_failures, "peer failures"),
                                            (run.ring_changes, "ring changes")) if n]
    return ", ".join(issues) or "none"


def _busy(case: HerdCase) -> str:
    best = case.best_run
    return "—" if best is None or best.origin_seconds is None else f"{best.origin_seconds:.2f}"


@dataclass(slots=True)
class HerdReport:
    """One ``bdn bench herd`` run: header facts, the cases, aims and notes."""

    facts: MachineFacts
    options: HerdBenchOptions
    title: str
    cases: list[HerdCase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def case(self, n: int, variant: Variant) -> HerdCase | None:
        return next((c for c in self.cases if (c.nodes, c.variant) == (n, variant)), None)

    def wall_ratio(self, n: int) -> float | None:
        """Ring wall time over naive wall time at ``n`` agents (best runs)."""
        ring, naive = self.case(n, "ring"), self.case(n, "naive")
        if ring is None or naive is None or ring.best is None or not naive.best:
            return None
        return ring.best / naive.best

    def aim_lines(self) -> list[tuple[HerdAim, float | None, bool]]:
        out = []
        for aim in AIMS:
            if self.options.mode not in aim.modes:
                continue
            ring = self.case(aim.nodes, "ring")
            got = self.wall_ratio(aim.nodes) if aim.metric == "wall" else (
                ring.origin_ratio if ring is not None else None)
            out.append((aim, got, got is not None and got <= aim.limit))
        return out

    @property
    def exit_code(self) -> int:
        """1 if any case failed, else 0 (a missed aim is 0: a bench measures, it is not a gate)."""
        return 1 if any(c.error for c in self.cases) else 0

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        return {
            "command": "bdn bench herd",
            "machine": self.facts.to_dict(),
            "mode": o.mode,
            "repeat": o.repeat,
            "model_bytes": o.model_bytes,
            "shards": o.shards,
            "links_mbps": {"origin": o.origin_mbps, "peer": o.peer_mbps} if o.netns else None,
            "nodes": [
                {
                    "nodes": n,
                    "ring": self.case(n, "ring").to_dict(),  # type: ignore[union-attr]
                    "naive": self.case(n, "naive").to_dict(),  # type: ignore[union-attr]
                    "wall_ratio": self.wall_ratio(n),
                }
                for n in o.fleet_sizes
            ],
            "aims": [
                {"nodes": a.nodes, "metric": a.metric, "limit": a.limit, "achieved": got,
                 "met": met}
                for a, got, met in self.aim_lines()
            ],
            "notes": list(self.notes),
            "exit_code": self.exit_code,
        }

    def table(self) -> Table:
        """One row per fleet size: ring and naive side by side (legend in :meth:`render`)."""
        table = Table(title=self.title, title_justify="left", header_style="bold")
        for name in ("N", "ring s", "naive s", "ring÷naive", "origin× ring", "origin× naive",
                     "busy s ring", "busy s naive", "peers→ring", "ring trouble",
                     "agents' origin× ring / naive"):
            table.add_column(name, justify="left" if name == "N" else "right")
        for n in self.options.fleet_sizes:
            ring, naive = self.case(n, "ring"), self.case(n, "naive")
            assert ring is not None and naive is not None
            best = ring.best_run
            table.add_row(
                str(n), _secs(ring, self.options.repeat), _secs(naive, self.options.repeat),
                _ratio(self.wall_ratio(n)), _ratio(ring.origin_ratio),
                _ratio(naive.origin_ratio), _busy(ring), _busy(naive),
                format_bytes(best.from_peers) if best else "—", _trouble(best),
                f"{_ratio(ring.agents_ratio)} / {_ratio(naive.agents_ratio)}",
            )
        return table

    def render(self, console: Console) -> None:
        console.print(f"[bold]bdn bench herd[/]  {self.facts.summary()}")
        console.print(
            f"seconds: best of {self.options.repeat} run(s) (median in brackets when more), "
            "first pull request to last completion; ring÷naive: of those wall times; "
            "origin×: every byte nginx sent (its access log) ÷ model size (worst run); "
            "busy s: first request to the last blob byte at the origin; peers→ring: bytes "
            "the ring's agents got from peers; ring trouble: chunk requests to peers that "
            "failed over to origin, and ring membership changes during the burst; agents' "
            "origin×: their own bdn_origin_bytes_total ÷ model size (a cross-check)"
        )
        console.print(self.table())
        for case in self.cases:
            if case.error:
                console.print(f"[red]N={case.nodes} {case.variant} failed: {case.error}[/]")
        for aim, got, met in self.aim_lines():
            verdict = "met" if met else "below aim" if got is not None else (
                "no figure" if aim.nodes in self.options.fleet_sizes
                else f"N = {aim.nodes} not run")
            style = "green" if met else "red"
            console.print(f"[{style}]{self.options.mode} · N={aim.nodes}: aim "
                          f"{aim.text.format(limit=aim.limit)}; achieved {_ratio(got)} "
                          f"({verdict})[/]")
        for note in self.notes:
            console.print(f"note: {note}")


def emit(report: HerdReport, *, as_json: bool) -> None:
    """Print ``report`` on stdout (JSON, or the table; 160 columns off a terminal)."""
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    report.render(
        Console(soft_wrap=True) if sys.stdout.isatty() else Console(width=160, soft_wrap=True)
    )


# ---------------------------------------------------------------------------
# The bench


def _prepare_model(wd: Path, options: HerdBenchOptions, console: Console) -> Model:
    """Generate the shards and mirror them into ``wd/store`` (all untimed)."""
    src, store_dir = wd / "src", wd / "store"
    src.mkdir()
    base, extra = divmod(options.model_bytes, options.shards)
    width = len(str(options.shards))
    specs = [
        (src / f"model-{i + 1:0{width}d}-of-{options.shards}.safetensors",
         base + (extra if i == options.shards - 1 else 0))
        for i in range(options.shards)
    ]
    console.print(f"generating {format_bytes(options.model_bytes)} in {options.shards} shards")
    files = generate_files(specs)
    console.print(f"mirroring it into file://{store_dir} (untimed)")
    manifest = mirror_model(src, store_dir, files)
    return Model(src, str(manifest.id), tuple(files))


@contextlib.contextmanager
def _short_dir() -> Iterator[Path]:
    """A directory with a short path for unix sockets (sun_path holds 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bdn-herd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _notes(options: HerdBenchOptions, facts: MachineFacts) -> list[str]:
    o = options
    notes = [
        f"model: {format_bytes(o.model_bytes)} in {o.shards} shards"
        + (" (the shaped run's default: a few minutes at 100 MB/s; --size changes it)"
           if o.netns and o.size is None else ""),
        "ring: every agent lists all N in --peers; naive: the same agents without --peers "
        "(each a ring of one, reading origin itself through its own chunk service, which "
        "also keeps each chunk in its chunk cache: it writes the model twice)",
        "agents' counters = their bdn_origin_bytes_total (blob bodies only) summed; a "
        "cross-check of nginx's count, which includes headers and manifests",
        "every tree verified after each burst (size + xxh3-128 per chunk), outside the timing; "
        f"{format_bytes(_warm_up_bytes(o, facts))} written and deleted untimed before the "
        "first burst (first-touch memory); ring and naive alternate which goes first each round",
    ]
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
            _short_dir() as sockets, contextlib.ExitStack() as stack:
        require_free_space(wd, _required_space(options))
        facts = machine_facts(TOOLS, wd)
        model = _prepare_model(wd, options, console)
        warm_up_writes(wd / "warm-up", _warm_up_bytes(options, facts))
        token_file = wd / "token"
        token_file.write_text(secrets.token_hex(24) + "\n")
        token_file.chmod(0o600)
        n_max = max(options.fleet_sizes)
        timeout = timeout_for(n_max * model.nbytes)
        if options.netns:
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
            # A naive node moves the whole model over its origin link.
            timeout += model.nbytes / (options.origin_mbps * 1e6) * 2

            def nodes_for(n: int) -> list[Node]:
                return netns_nodes(n, plan)

            title = (f"herd in network namespaces: origin link {options.origin_mbps:g} MB/s "
                     f"per node, peer links {options.peer_mbps:g} MB/s; "
                     f"{format_bytes(model.nbytes)} model")
        else:
            origin = stack.enter_context(CountingOrigin(
                wd / "store", wd / "nginx", unix_socket=sockets / "origin.sock"))
            url = f"http://127.0.0.1:{origin.port}"

            def nodes_for(n: int) -> list[Node]:
                return loopback_nodes(n, url)

            title = f"herd on loopback: {format_bytes(model.nbytes)} model, nginx origin"
        console.print(f"origin: nginx serving the store, logging bytes sent to {origin.access_log}")
        fleet = Fleet(model, origin, wd / "runs", sockets, token_file, nodes_for, timeout)
        report = HerdReport(facts, options, title, notes=_notes(options, facts))
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
    )


def herd_command(args: argparse.Namespace) -> int:
    """``bdn bench herd``: install nginx if allowed, run, print; the exit status.

    Like :func:`bench.command.run_command` (0 ok, 1 a run failed, 2 a tool
    or facility missing), with the herd's own table.
    """
    console = progress_console()
    try:
        options = options_from_args(args)
        options.check()
        with sigterm_as_exit():
            missing = ensure_tools(TOOLS, allow_install=not args.no_install, console=console)
            if missing:
                raise BenchAbort(f"needs nginx: {missing['nginx']}")
            report = run_herd_bench(options, console=console)
    except BenchAbort as err:
        print(f"bdn bench herd: {err}", file=sys.stderr)
        return err.exit_code
    emit(report, as_json=args.json)
    return report.exit_code
