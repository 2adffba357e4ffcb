"""``bdn simulate``: a discrete-event model of a burst (N nodes cold-pull one model at once).

Parsing and printing only; the model is :mod:`bdn.simulate` (loaded, with
simpy and numpy, only when the command runs; matplotlib only for ``--plot``).
Every flag is read as text and checked here, so a bad value is one line
naming the flag, not argparse's usage dump.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bdn.cli.common import Flag, add_flags
from bdn.errors import ConfigError

if TYPE_CHECKING:
    from bdn.cli.common import Subparsers
    from bdn.simulate import Result, Scenario

DEFAULT_NODES_LIST = "10,100,1000"
"""Fleet sizes ``--plot`` draws when ``--nodes-list`` is not given."""

_FLAGS: tuple[Flag, ...] = (
    ("--nodes", {"metavar": "N", "help": "nodes that pull at once"}),
    ("--model-size", {"metavar": "SIZE", "help": "model bytes, e.g. 3GB or 140G"}),
    ("--chunk-size", {"metavar": "SIZE", "default": "64MiB",
                      "help": "manifest chunk size (default 64MiB)"}),
    ("--replicas", {"metavar": "R", "default": "1",
                    "help": "ring owners per chunk (default 1; the first is asked, the "
                    "others stand in on failure, which is not simulated)"}),
    ("--policy", {"metavar": "naive|ring|fanout",
                  "help": "naive: every node reads origin; ring: every node reads each chunk "
                  "from its owner; fanout: the owner's tree of holders"}),
    ("--fanout", {"metavar": "K", "default": "4",
                  "help": "fanout: requesters the owner and each holder serve a chunk to "
                  "(default 4)"}),
    ("--nic", {"metavar": "RATE", "default": "25Gbit/s",
               "help": "per-node NIC rate, each direction (default 25Gbit/s)"}),
    ("--disk", {"metavar": "RATE", "default": "3GB/s",
                "help": "per-node disk write rate (default 3GB/s)"}),
    ("--origin-bandwidth", {"metavar": "RATE", "default": "10GB/s",
                            "help": "origin bandwidth in total (default 10GB/s)"}),
    ("--origin-per-node", {"metavar": "RATE",
                           "help": "each node's own origin link (default: only its NIC)"}),
    ("--cpu-per-gb", {"metavar": "SECONDS", "default": "0",
                      "help": "agent CPU seconds per GB received, as measured by `bdn bench`; "
                      "caps a node's intake at 1/SECONDS GB/s (default 0: no cap)"}),
    ("--chunk-order", {"metavar": "hashed|in-order|rotated", "default": "hashed",
                       "help": "hashed: each node starts at a chunk picked from its name and "
                       "the blob, as the agents do (default); in-order: every node starts at "
                       "chunk 0; rotated: node i of N starts at chunk i*M/N"}),
    ("--seed", {"metavar": "S", "default": "0",
                "help": "spreads node start times over 50 ms and picks the blob digest "
                "(hence the owners); same seed, same figures (default 0)"}),
    ("--json", {"action": "store_true", "help": "print the figures as JSON"}),
    ("--plot", {"metavar": "FILE.png",
                "help": "run all three policies at every --nodes-list size and draw "
                "time-to-ready against N into FILE.png (needs matplotlib)"}),
    ("--nodes-list", {"metavar": "N,N,…",
                      "help": f"fleet sizes for --plot (default {DEFAULT_NODES_LIST})"}),
)


def register(sub: Subparsers) -> None:
    """Add ``simulate`` to the ``bdn`` parser."""
    p = sub.add_parser(
        "simulate",
        help="model a burst of N nodes pulling one model: time-to-ready, origin bytes, egress",
        description="A flow-level discrete-event model (simpy) of N nodes cold-pulling one "
        "model at once under a fan-out policy, with bandwidth shared fairly on every NIC, "
        "disk and the origin. Prints time-to-ready p50/p99/max per node, origin bytes and "
        "peak egress per node. docs/DESIGN.md, 'Simulation', states its assumptions.",
    )
    add_flags(p, _FLAGS)
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run one burst (or, with ``--plot``, the sweep) and print it."""
    from bdn.simulate import POLICY_NAMES, simulate

    if args.plot is None:
        if args.nodes_list is not None:
            raise ConfigError("only with --plot FILE.png", field="--nodes-list")
        for flag, value in (("--nodes", args.nodes), ("--policy", args.policy)):
            if value is None:
                raise ConfigError("is required (or give --plot FILE.png for a sweep)",
                                  field=flag)
        result = simulate(_scenario(args, int(_int(args.nodes, "--nodes")), args.policy))
        _print_one(result, args.json)
        return 0
    if not args.plot.lower().endswith(".png"):
        raise ConfigError(f"{args.plot!r} must name a .png file", field="--plot")
    folder = Path(args.plot).parent
    if not folder.is_dir():
        raise ConfigError(f"cannot write {args.plot}: {folder} is not a folder; "
                          "pick a writable folder", field="--plot")
    sizes = _nodes_list(args.nodes_list or DEFAULT_NODES_LIST)
    base = _scenario(args, sizes[0], "naive")  # Checks every flag before the first run.
    base.check()
    from bdn.simulate.plot import write_plot

    results = [simulate(_scenario(args, n, policy)) for policy in POLICY_NAMES for n in sizes]
    write_plot(results, Path(args.plot))
    _print_sweep(results, args.plot, args.json)
    return 0


def _scenario(args: argparse.Namespace, nodes: int, policy: Any) -> Scenario:
    from bdn.config.units import parse_chunk_size, parse_size
    from bdn.simulate import Scenario, parse_rate

    if args.model_size is None:
        raise ConfigError("is required, e.g. --model-size 3GB", field="--model-size")
    per_node = (math.inf if args.origin_per_node is None
                else parse_rate(args.origin_per_node, field="--origin-per-node"))
    scenario = Scenario(
        nodes=nodes,
        model_bytes=parse_size(args.model_size, field="--model-size"),
        policy=policy,
        chunk_bytes=parse_chunk_size(args.chunk_size, field="--chunk-size"),
        replicas=_int(args.replicas, "--replicas"),
        fanout=_int(args.fanout, "--fanout"),
        nic=parse_rate(args.nic, field="--nic"),
        disk=parse_rate(args.disk, field="--disk"),
        origin_total=parse_rate(args.origin_bandwidth, field="--origin-bandwidth"),
        origin_per_node=per_node,
        cpu_per_gb=_float(args.cpu_per_gb, "--cpu-per-gb"),
        seed=_int(args.seed, "--seed", low=None),
        chunk_order=args.chunk_order,
    )
    scenario.check()
    return scenario


def _int(text: str, flag: str, *, low: int | None = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a whole number", field=flag) from None
    if low is not None and value < low:
        raise ConfigError(f"{text!r} is too small; use at least {low}", field=flag)
    return value


def _float(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{text!r} is not a number of seconds, 0 or more", field=flag)
    return value


def _nodes_list(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{text!r} is not a list of fleet sizes; e.g. 10,100,1000",
                          field="--nodes-list")
    return sorted({_int(p, "--nodes-list") for p in parts})


def _print_one(result: Result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    from rich.console import Console

    from bdn.simulate.report import result_table

    Console().print(result_table(result))


def _print_sweep(results: list[Result], plot: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"plot": plot, "results": [r.to_dict() for r in results]}, indent=2))
        return
    from rich.console import Console

    from bdn.simulate.report import sweep_table

    console = Console()
    console.print(sweep_table(results))
    console.print(f"plot: {plot}", highlight=False)
