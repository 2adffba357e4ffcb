"""The figures of a simulated burst, as JSON or a ``rich`` table.

The JSON is deterministic for a scenario (same seed, same bytes out); how long
the simulation itself took is shown in the table only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from bdn.config.units import format_bytes
from bdn.simulate.scenario import Scenario

__all__ = ["Result", "assumptions", "result_table", "sweep_table"]


@dataclass(frozen=True, slots=True)
class Result:
    """What one burst gave.

    Attributes:
        scenario: what was simulated.
        p50_s, p99_s, max_s, mean_s: per-node time-to-ready (own start to last
            chunk landed), seconds.
        origin_bytes: bytes all nodes read from origin together.
        peak_egress_bytes_per_node: the most bytes one node sent to peers.
        mean_egress_bytes_per_node: bytes sent to peers, averaged over nodes.
        refused: chunk requests a busy node refused (its gate full), each read
            from origin by its requester instead.
        rate_solves: how often the flow rates were solved (a cost figure).
        compute_s: wall seconds the simulation took (not in the JSON).
    """

    scenario: Scenario
    p50_s: float
    p99_s: float
    max_s: float
    mean_s: float
    origin_bytes: int
    peak_egress_bytes_per_node: int
    mean_egress_bytes_per_node: float
    refused: int
    rate_solves: int
    compute_s: float

    @property
    def origin_ratio(self) -> float:
        """Origin bytes over the model size (1.0: origin served the model once)."""
        return self.origin_bytes / self.scenario.model_bytes

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``bdn simulate --json`` (stable keys; rates in bytes/s)."""
        s = self.scenario
        return {
            "policy": s.policy,
            "nodes": s.nodes,
            "model_bytes": s.model_bytes,
            "chunk_bytes": s.chunk_bytes,
            "chunks": s.chunks,
            "replicas": s.replicas,
            "fanout": s.fanout,
            "nic_bytes_per_s": s.nic,
            "disk_bytes_per_s": s.disk,
            "origin_bytes_per_s": s.origin_total,
            "origin_per_node_bytes_per_s": None if math.isinf(s.origin_per_node)
            else s.origin_per_node,
            "cpu_s_per_gb": s.cpu_per_gb,
            "parallel": s.parallel,
            "chunk_order": s.chunk_order,
            "seed": s.seed,
            "p50_s": round(self.p50_s, 6),
            "p99_s": round(self.p99_s, 6),
            "max_s": round(self.max_s, 6),
            "mean_s": round(self.mean_s, 6),
            "origin_bytes": self.origin_bytes,
            "origin_ratio": round(self.origin_ratio, 6),
            "peak_egress_bytes_per_node": self.peak_egress_bytes_per_node,
            "mean_egress_bytes_per_node": round(self.mean_egress_bytes_per_node, 1),
            "refused": self.refused,
            "rate_solves": self.rate_solves,
        }


def _rate(value: float) -> str:
    if math.isinf(value):
        return "unlimited"
    gbit = value * 8 / 1e9
    return f"{gbit:g} Gbit/s ({value / 1e9:g} GB/s)"


def assumptions(s: Scenario) -> str:
    """One line naming the links and costs a result rests on."""
    cpu = f"{s.cpu_per_gb:g} CPU-s/GB" if s.cpu_per_gb else "no CPU cap"
    return (
        f"NIC {_rate(s.nic)} each way, disk {s.disk / 1e9:g} GB/s, origin "
        f"{s.origin_total / 1e9:g} GB/s in total, {_rate(s.origin_per_node)} per node; "
        f"{cpu}; {format_bytes(s.chunk_bytes)} chunks, {s.parallel} fetches in flight per node"
        f" ({s.chunk_order})"
    )


def result_table(r: Result) -> Table:
    """One burst: time-to-ready, origin bytes, peak egress."""
    s = r.scenario
    extra = f", fan-out {s.fanout}" if s.policy == "fanout" else ""
    table = Table(
        title=f"bdn simulate: {s.policy}{extra}, {s.nodes} nodes, "
        f"{format_bytes(s.model_bytes)} ({s.chunks} chunks)",
        caption=f"{assumptions(s)}. Simulated in {r.compute_s:.2f} s "
        f"({r.rate_solves} rate solves), seed {s.seed}.",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in (
        ("time-to-ready p50", f"{r.p50_s:.2f} s"),
        ("time-to-ready p99", f"{r.p99_s:.2f} s"),
        ("time-to-ready max", f"{r.max_s:.2f} s"),
        ("origin bytes", f"{format_bytes(r.origin_bytes)} ({r.origin_ratio:.2f}x model)"),
        ("peak egress per node", format_bytes(r.peak_egress_bytes_per_node)),
        ("mean egress per node", format_bytes(r.mean_egress_bytes_per_node)),
        ("requests refused (read origin)", str(r.refused)),
    ):
        table.add_row(name, value)
    return table


def sweep_table(results: Sequence[Result]) -> Table:
    """Many bursts, one row each (the figures ``--plot`` draws)."""
    table = Table(title="bdn simulate: time-to-ready against fleet size",
                  caption=assumptions(results[0].scenario) if results else None)
    for name in ("policy", "nodes", "p50", "p99", "max", "origin", "peak egress/node"):
        table.add_column(name, justify="left" if name == "policy" else "right")
    for r in results:
        table.add_row(r.scenario.policy, str(r.scenario.nodes), f"{r.p50_s:.2f} s",
                      f"{r.p99_s:.2f} s", f"{r.max_s:.2f} s",
                      f"{r.origin_ratio:.2f}x", format_bytes(r.peak_egress_bytes_per_node))
    return table
