"""What ``bdn bench herd`` is asked and what it reports.

- :class:`HerdBenchOptions`: fleet sizes, model size, the shaped links (with
  defaults per mode: loopback or network namespaces);
- :class:`HerdRun` / :class:`HerdCase`: the timed bursts of one (N, variant);
- :class:`HerdReport`: the cases against the issue's :data:`AIMS`, as a table
  or JSON (printed by :func:`bench.report.emit_report`, as every bench's report).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from bdn.config.units import format_bytes
from bdn.errors import ConfigError
from bench.harness import GiB
from bench.herd_fleet import Variant
from bench.herd_origin import OriginTally
from bench.tools import MachineFacts

Mode = Literal["loopback", "netns"]
StartMode = Literal["settled", "together"]
START_MODES: tuple[StartMode, ...] = ("settled", "together")
VARIANTS: tuple[Variant, ...] = ("ring", "fanout", "naive")
OwnerFault = Literal["frozen", "slow"]
OWNER_FAULTS: tuple[OwnerFault, ...] = ("frozen", "slow")
OWNER_AIMS: dict[OwnerFault, float] = {"frozen": 2.0, "slow": 1.3}
"""The issue's aims with one owner faulty: the pulls within this many times the
all-alive ring's wall time (same run, same pullers)."""

DEFAULT_NODES: dict[Mode, tuple[int, ...]] = {"loopback": (2, 4, 8), "netns": (2, 4)}
"""Fleet sizes when ``--nodes`` is not given (the shaped run is slower per node)."""

DEFAULT_SIZE: dict[Mode, int] = {"loopback": 2 * GiB, "netns": 1 * GiB}
"""Model size when ``--size`` is not given: at 100 MB/s a naive node needs ~11 s
per GiB, so 1 GiB keeps the shaped run to a few minutes."""

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
        start: ``settled``: every agent sees its ring before the pulls start,
            timed from the first pull request; ``together``: each pull starts
            the moment its agent's pod socket answers, timed from the agents'
            launch (an autoscaler adding N nodes at once).
        hedge_after: the agents' ``--hedge-after`` (``None``: their default).
        fanout: K of the ``fanout`` case (the agents' ``--fanout``); 0: that case is
            not run (``ring`` always runs with ``--fanout 0``).
        chunk_size: the model's chunk size (``None``: the mirror's default); small
            chunks make many chunks, which is where fan-out shows.
        owner_fault: run the settled ring twice instead, all alive and with its
            first agent ``frozen`` (SIGSTOP once the ring settled) or ``slow`` (its
            chunk answers ``owner_delay`` seconds late, through a relay); the other
            N - 1 agents pull in both (``None``: the usual ring/fanout/naive cases).
        owner_delay: seconds a slow owner holds each chunk request.
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
    start: StartMode = "settled"
    hedge_after: str | None = None
    fanout: int = 4
    chunk_size: int | None = None
    owner_fault: OwnerFault | None = None
    owner_delay: float = 5.0

    @property
    def variants(self) -> tuple[Variant, ...]:
        """The cases run at every N: ``fanout`` only with K > 0; with an owner fault,
        the ring and the ring with that fault."""
        if self.owner_fault is not None:
            return ("ring", self.owner_fault)
        return tuple(v for v in VARIANTS if v != "fanout" or self.fanout > 0)

    @property
    def agent_flags(self) -> tuple[str, ...]:
        """Flags every agent of the run gets beyond the bench's own."""
        return () if self.hedge_after is None else ("--hedge-after", self.hedge_after)

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
        if self.fanout < 0:
            raise ConfigError("must be 0 (no fanout case) or more", field="--fanout")
        if self.start not in START_MODES:
            raise ConfigError(f"must be one of {', '.join(START_MODES)}", field="--start")
        if self.owner_fault is not None and self.owner_fault not in OWNER_FAULTS:
            raise ConfigError(f"must be one of {', '.join(OWNER_FAULTS)}",
                              field="--owner-fault")
        if self.owner_fault == "slow" and self.netns:
            raise ConfigError("the slow owner's relay runs on loopback; drop --netns",
                              field="--owner-fault")
        if self.owner_fault is not None and self.start != "settled":
            raise ConfigError("an owner fault is injected once the ring settled; use "
                              "--start settled", field="--owner-fault")
        if not self.owner_delay > 0:
            raise ConfigError("must be positive seconds", field="--owner-delay")
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
        hedges: ``bdn_peer_hedges_total`` by outcome, summed (won and lost
            hedges each read a chunk a second time, maybe from origin).
        peak_egress: chunk bytes the busiest agent sent to peers
            (``bdn_peer_bytes_served_total``, the largest).
        redirects: fan-out redirects the owners issued, summed.
        holder_bytes: chunk bytes agents passed on as holders (not owners), summed.
        cpu_seconds: user + system CPU of the agents (their whole process trees).
    """

    seconds: float
    origin: OriginTally
    origin_seconds: float | None
    agents_origin_bytes: int
    from_peers: int
    peer_failures: int = 0
    ring_changes: int = 0
    hedges: dict[str, int] = field(default_factory=dict)
    peak_egress: int = 0
    redirects: int = 0
    holder_bytes: int = 0
    cpu_seconds: float | None = None


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
                    "peak_egress_bytes": r.peak_egress,
                    "fanout_redirects": r.redirects,
                    "holder_bytes": r.holder_bytes,
                    "cpu_seconds": r.cpu_seconds,
                    "cpu_s_per_gb": _cpu_per_gb(r, self.nodes, self.model_bytes),
                }
                for r in self.runs
            ],
            "error": self.error,
        }


# ---------------------------------------------------------------------------
# The report


def _cpu_per_gb(run: HerdRun, nodes: int, model_bytes: int) -> float | None:
    """The agents' CPU-seconds per GB delivered (N copies of the model)."""
    if run.cpu_seconds is None or not model_bytes:
        return None
    return round(run.cpu_seconds / (nodes * model_bytes / 1e9), 3)


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

    def fault_ratio(self, n: int) -> float | None:
        """With an owner fault: its wall time over the all-alive ring's (best runs)."""
        fault = self.options.owner_fault
        ring, faulty = self.case(n, "ring"), self.case(n, fault) if fault else None
        if ring is None or faulty is None or faulty.best is None or not ring.best:
            return None
        return faulty.best / ring.best

    def owner_table(self) -> Table | None:
        """All-alive ring against the ring with one faulty owner, per N (``None``:
        no owner fault ran)."""
        fault = self.options.owner_fault
        if fault is None:
            return None
        def row(n: int, v: Variant, case: HerdCase, best: HerdRun) -> list[str]:
            cpu = _cpu_per_gb(best, n - 1, case.model_bytes)
            faulty = v == fault
            return [str(n), "all alive" if v == "ring" else v, _secs(case, self.options.repeat),
                    _ratio(self.fault_ratio(n)) if faulty else "",
                    f"<= {OWNER_AIMS[fault]:g}x" if faulty else "",
                    _ratio(case.origin_ratio),
                    " ".join(f"{k}={c}" for k, c in sorted(best.hedges.items())) or "none",
                    "—" if cpu is None else f"{cpu:.2f}"]

        return self._case_table(
            f"one owner {fault} vs all alive, the other N - 1 agents pulling, same run",
            ("N", "case", "wall s", f"{fault}÷alive", "aim", "origin×", "hedges", "CPU-s/GB"),
            row)

    def _case_table(self, title: str, columns: tuple[str, ...],
                    row: Callable[[int, Variant, HerdCase, HerdRun], list[str]]) -> Table:
        """A table with one ``row`` per fleet size and case that ran; a case without a
        finished run gets "failed" or "—" in its cells."""
        table = Table(title=title, title_justify="left", header_style="bold")
        for name in columns:
            table.add_column(name, justify="left" if name in ("N", "case") else "right")
        for n in self.options.fleet_sizes:
            for v in self.options.variants:
                case = self.case(n, v)
                best = case.best_run if case is not None else None
                if case is None or best is None:
                    table.add_row(str(n), v, "failed" if case and case.error else "—",
                                  *["—"] * (len(columns) - 3))
                    continue
                table.add_row(*row(n, v, case, best))
        return table

    def aim_lines(self) -> list[tuple[HerdAim, float | None, bool]]:
        out: list[tuple[HerdAim, float | None, bool]] = []
        if self.options.owner_fault is not None:
            return out
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
            "start": o.start,
            "repeat": o.repeat,
            "model_bytes": o.model_bytes,
            "shards": o.shards,
            "chunk_size": o.chunk_size,
            "fanout": o.fanout,
            "links_mbps": {"origin": o.origin_mbps, "peer": o.peer_mbps} if o.netns else None,
            "nodes": [
                {
                    "nodes": n,
                    **{v: c.to_dict() for v in self.options.variants
                       if (c := self.case(n, v)) is not None},
                    "wall_ratio": self.wall_ratio(n),
                    "fault_ratio": self.fault_ratio(n),
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

    def fanout_table(self) -> Table | None:
        """Ring against fan-out per N: origin, wall, and the busiest agent's egress
        (what fan-out spreads); ``None`` when no fanout case ran."""
        if "fanout" not in self.options.variants:
            return None
        def row(n: int, v: Variant, case: HerdCase, best: HerdRun) -> list[str]:
            cpu = _cpu_per_gb(best, n, case.model_bytes)
            return [str(n), v, _secs(case, self.options.repeat), _ratio(case.origin_ratio),
                    format_bytes(best.peak_egress), _ratio(best.peak_egress / case.model_bytes),
                    str(best.redirects), format_bytes(best.holder_bytes),
                    "—" if cpu is None else f"{cpu:.2f}"]

        return self._case_table(
            f"ring vs fanout (K = {self.options.fanout}) vs naive, same run",
            ("N", "case", "wall s", "origin×", "peak egress", "peak÷model", "redirects",
             "passed on by holders", "CPU-s/GB"),
            row)

    def table(self) -> Table:
        """One row per fleet size: ring and naive side by side (legend in :meth:`render`)."""
        table = Table(title=self.title, title_justify="left", header_style="bold")
        for name in ("N", "ring s", "naive s", "ring÷naive", "origin× ring", "origin× naive",
                     "busy s ring", "busy s naive", "peers→ring", "ring trouble",
                     "agents' origin× ring / naive"):
            table.add_column(name, justify="left" if name == "N" else "right")
        for n in self.options.fleet_sizes:
            ring, naive = self.case(n, "ring"), self.case(n, "naive")
            if ring is None or naive is None:
                continue  # An owner-fault run: its own table.
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
        owners = self.owner_table()
        if owners is None:
            console.print(self.table())
        else:
            console.print(owners)
        fan = self.fanout_table()
        if fan is not None:
            console.print("peak egress: chunk bytes the busiest agent sent to peers "
                          "(bdn_peer_bytes_served_total); redirects: fan-out redirects the "
                          "owners issued; passed on by holders: bytes sent by non-owners; "
                          "CPU-s/GB: the agents' user+sys over N copies of the model")
            console.print(fan)
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
