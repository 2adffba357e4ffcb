"""Results of ``bdn bench``: rows and sections, measured in rounds, rendered as a table or JSON.

Every ratio is BDN's speed over a reference row of the same section; aims are
printed next to what was achieved, and a missed aim does not fail the bench.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from rich.console import Console
from rich.table import Table

from bdn.config.units import format_bytes
from bench.harness import ToolFailed
from bench.tools import MachineFacts

Role = Literal["bdn", "reference", "ceiling", "info", "scaling"]
"""``scaling``: BDN itself with another worker count, set beside the ceiling."""


@dataclass(slots=True)
class Result:
    """One row: a tool's timed runs over ``nbytes``, or why it has no figure.

    ``error`` set with no ``seconds`` shows as "not available (error)";
    ``failed`` marks a tool that was present but whose run broke or produced
    wrong bytes (it counts as a failure of the bench, not as "unavailable").
    """

    key: str
    label: str
    role: Role
    nbytes: int
    seconds: list[float] = field(default_factory=list)
    error: str | None = None
    failed: bool = False
    note: str = ""
    cpu: list[float] = field(default_factory=list)

    @property
    def cpu_per_gb(self) -> float | None:
        """Median user+sys CPU-seconds of the row's whole process tree per GB (10^9 B)."""
        if not self.cpu or self.error is not None or not self.nbytes or self.role == "info":
            return None
        return statistics.median(self.cpu) / (self.nbytes / 1e9)

    @property
    def best(self) -> float | None:
        return min(self.seconds) if self.seconds and self.error is None else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds and self.error is None else None

    @property
    def gbps(self) -> float | None:
        """Throughput of the best run in GB/s (10^9 bytes per second); ``None`` for
        ``info`` rows (a no-op re-mirror moves no bytes, so a rate would mislead)."""
        best = self.best
        return self.nbytes / best / 1e9 if best and self.role != "info" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "role": self.role,
            "bytes": self.nbytes,
            "seconds": [round(s, 4) for s in self.seconds],
            "best_s": self.best,
            "median_s": self.median,
            "gbps": self.gbps,
            "cpu_s": [round(c, 4) for c in self.cpu],
            "cpu_s_per_gb": self.cpu_per_gb,
            "error": self.error,
            "failed": self.failed,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Timed:
    """Seconds of one run, and anything worth a note in its table row."""

    seconds: float
    note: str = ""
    cpu: float | None = None
    """User+sys CPU-seconds of the run's whole process tree (``None``: not measured)."""


@dataclass(frozen=True, slots=True)
class Aim:
    """A target of the issue: BDN must be at least ``factor`` times as fast as the row
    ``reference`` (a result key); ``name`` is how the aim line calls it."""

    reference: str
    factor: float
    name: str = ""


def ratio(bdn: Result, other: Result) -> float | None:
    """BDN's speed over ``other``'s (best runs); > 1 means BDN is faster."""
    a, b = bdn.gbps, other.gbps
    return a / b if a and b else None


def cpu_ratio(bdn: Result, other: Result) -> float | None:
    """BDN's CPU-seconds per GB over ``other``'s; < 1 means BDN spends less CPU per byte."""
    a, b = bdn.cpu_per_gb, other.cpu_per_gb
    return a / b if a and b else None


def format_ratio(value: float | None) -> str:
    """``2.37x``, or ``—`` when either side has no figure."""
    return "—" if value is None else f"{value:.2f}x"


def format_seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_gbps(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


@dataclass(slots=True)
class Section:
    """One workload's rows; ``bdn_key`` names the row every ratio is taken against."""

    title: str
    bdn_key: str
    results: list[Result]
    aims: tuple[Aim, ...] = ()

    def get(self, key: str) -> Result:
        return next(r for r in self.results if r.key == key)

    def ratio_to(self, key: str) -> float | None:
        return ratio(self.get(self.bdn_key), self.get(key))

    def cpu_ratio_to(self, key: str) -> float | None:
        return cpu_ratio(self.get(self.bdn_key), self.get(key))

    def note_ceiling(self, ceiling_key: str = "ceiling") -> None:
        """Add "N.NNx the write ceiling" to the notes of the BDN and scaling rows."""
        ceiling = self.get(ceiling_key)
        for r in self.results:
            if r.role in ("bdn", "scaling") and r.gbps and ceiling.gbps:
                share = f"{r.gbps / ceiling.gbps:.2f}x the write ceiling"
                r.note = f"{share}; {r.note}" if r.note else share

    def aim_lines(self) -> list[tuple[Aim, float | None, bool]]:
        """``(aim, achieved ratio, met)`` for each aim of this section."""
        out = []
        for aim in self.aims:
            achieved = self.ratio_to(aim.reference)
            out.append((aim, achieved, achieved is not None and achieved >= aim.factor))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "results": [
                {**r.to_dict(), "bdn_ratio": self.ratio_to(r.key),
                 "bdn_cpu_ratio": self.cpu_ratio_to(r.key)}
                for r in self.results
            ],
            "aims": [
                {"reference": a.reference, "aim": a.factor, "achieved": got, "met": met}
                for a, got, met in self.aim_lines()
            ],
        }


@dataclass(slots=True)
class BenchReport:
    """A whole bench run: header facts, one section per workload, free-form notes."""

    command: str
    facts: MachineFacts
    repeat: int
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 if any run failed, 2 if a tool was not available, else 0 (aims missed is 0:
        a bench measures; it is not a gate)."""
        results = [r for s in self.sections for r in s.results]
        if any(r.failed for r in results):
            return 1
        return 2 if any(r.error for r in results) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": f"bdn bench {self.command}",
            "machine": self.facts.to_dict(),
            "repeat": self.repeat,
            "sections": [s.to_dict() for s in self.sections],
            "notes": list(self.notes),
            "exit_code": self.exit_code,
        }

    def render(self, console: Console) -> None:
        """Print the header, one table per section, the aim lines and the notes."""
        console.print(f"[bold]bdn bench {self.command}[/]  {self.facts.summary()}")
        console.print(
            f"best and median of {self.repeat} run(s); GB/s = 10^9 bytes/s of the best "
            "run; BDN ÷ tool = BDN's GB/s over that row's (> 1: BDN is faster); CPU-s/GB = "
            "median user+sys CPU of the run's whole process tree per 10^9 bytes; CPU BDN ÷ "
            "tool < 1: BDN spends less CPU per byte"
        )
        for section in self.sections:
            console.print(build_table(section))
        for section in self.sections:
            for aim, achieved, met in section.aim_lines():
                style = "green" if met else "red"
                console.print(f"[{style}]{aim_text(aim, achieved, met, section.title)}[/]")
        for note in self.notes:
            console.print(f"note: {note}")


def measure_rounds(
    section: Section,
    runners: Mapping[str, Callable[[Result], Timed]],
    *,
    repeat: int,
    console: Console,
    prepare: Callable[[], None] | None = None,
) -> None:
    """Run each row of ``section`` that has a runner ``repeat`` times, in rounds.

    The order rotates each round so no tool always runs first (the coldest
    machine) or last (after the most write-back). A runner gets its row (to
    see earlier runs) and raises ``ToolFailed`` to mark the row failed; rows
    already holding an error (tool not available) are not run. ``prepare``
    runs, untimed, right before every run, so each starts from the same
    machine state (see :func:`bench.harness.warm_up_writes`).
    """
    keys = [r.key for r in section.results if r.key in runners]
    for round_ in range(repeat):
        shift = round_ % max(1, len(keys))
        for key in keys[shift:] + keys[:shift]:
            row = section.get(key)
            if row.error is not None:
                continue
            if prepare is not None:
                prepare()
            try:
                timed = runners[key](row)
            except ToolFailed as err:
                row.error, row.failed = str(err), True
                console.print(f"  {section.title} · {key}: [red]failed[/] ({err})")
                continue
            row.seconds.append(timed.seconds)
            if timed.cpu is not None:
                row.cpu.append(timed.cpu)
            row.note = timed.note or row.note
            rate = (
                ""
                if row.role == "info"
                else f" ({row.nbytes / max(timed.seconds, 1e-9) / 1e9:.2f} GB/s)"
            )
            cpu = (
                f", {timed.cpu / (row.nbytes / 1e9):.2f} CPU-s/GB"
                if timed.cpu is not None and row.nbytes and row.role != "info"
                else ""
            )
            console.print(
                f"  {section.title} · run {round_ + 1}/{repeat} · {key}: "
                f"{timed.seconds:.3f} s{rate}{cpu}"
            )


def _result_row(section: Section, r: Result) -> list[str]:
    if r.error is not None:
        status = "failed" if r.failed else "not available"
        return [r.label, format_bytes(r.nbytes), f"{status} ({r.error})", "", "", "", "", "",
                r.note]
    compared = r.role in ("reference", "ceiling", "scaling")
    vs = format_ratio(section.ratio_to(r.key)) if compared else "—"
    cpu_vs = format_ratio(section.cpu_ratio_to(r.key)) if compared else "—"
    return [
        r.label,
        format_bytes(r.nbytes),
        format_seconds(r.best),
        format_seconds(r.median),
        format_gbps(r.gbps),
        vs,
        format_gbps(r.cpu_per_gb),
        cpu_vs,
        r.note,
    ]


def build_table(section: Section) -> Table:
    """The ``rich`` table of one section."""
    table = Table(title=section.title, title_justify="left", header_style="bold")
    table.add_column("tool")
    table.add_column("bytes", justify="right")
    table.add_column("best s", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("GB/s", justify="right")
    table.add_column("BDN ÷ tool", justify="right")
    table.add_column("CPU-s/GB", justify="right")
    table.add_column("CPU BDN ÷ tool", justify="right")
    table.add_column("notes")
    for r in section.results:
        table.add_row(*_result_row(section, r))
    return table


def aim_text(aim: Aim, achieved: float | None, met: bool, title: str) -> str:
    """One line: the aim stated by the issue next to the achieved ratio."""
    verdict = "met" if met else ("no figure" if achieved is None else "below aim")
    return (
        f"{title}: aim BDN >= {aim.factor:g}x {aim.name or aim.reference}; "
        f"achieved {format_ratio(achieved)} ({verdict})"
    )


class Report(Protocol):
    """What every bench's report has (:class:`BenchReport`, the herd's own): an exit
    status (1 if a run failed), a JSON form and a rendering as tables."""

    @property
    def exit_code(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...

    def render(self, console: Console) -> None: ...


def emit_report(report: Report, *, as_json: bool) -> None:
    """Print ``report`` on stdout: JSON with ``as_json``, else the rich tables.

    Off a terminal rich would wrap at 80 columns; the table is wider than that.
    """
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    report.render(
        Console(soft_wrap=True) if sys.stdout.isatty() else Console(width=160, soft_wrap=True)
    )


def progress_console() -> Console:
    """Where benches print progress: stderr, lines never hard-wrapped (logs stay greppable)."""
    return Console(stderr=True, soft_wrap=True, highlight=False)
