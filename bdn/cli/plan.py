"""``bdn plan``: which instance a model needs and what its cold start costs.

Parsing and rendering only: :func:`bdn.api.plan_model` reads the headers and
fits the model; this module turns its dict into tables (``rich``) or prints it
with ``--json``. Library modules and ``rich`` load only when the command runs.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from bdn.cli.common import Flag, add_flags, add_store_flags, settings, source_entry
from bdn.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from bdn.cli.common import Subparsers

_PLAN_FLAGS: tuple[Flag, ...] = (
    (("--context",), {"type": int, "default": 8192, "metavar": "TOKENS",
                      "help": "tokens of KV cache per sequence (default 8192)"}),
    (("--batch",), {"type": int, "default": 1, "metavar": "N",
                    "help": "concurrent sequences at full context (default 1)"}),
    (("--kv-dtype",), {"default": "fp16", "choices": ("fp16", "bf16", "fp8", "fp32"),
                       "help": "KV-cache element type (default fp16)"}),
    (("--overhead",), {"type": float, "default": 0.10, "metavar": "FRACTION",
                       "help": "runtime overhead on weights + KV cache, plus 1 GiB per GPU "
                       "(default 0.10)"}),
    (("--cpu",), {"metavar": "N", "help": "Truss resources.cpu, e.g. 3 (a 4-vCPU instance)"}),
    (("--memory",), {"metavar": "SIZE", "help": "Truss resources.memory, e.g. 16Gi"}),
    (("--cpu-only",), {"action": "store_true",
                       "help": "plan for CPU-only instances (model memory in RAM)"}),
    (("--provider",), {"metavar": "NAME", "help": "catalog provider (default: the catalog's)"}),
    (("--catalog",), {"metavar": "FILE",
                      "help": "your own instance catalog, same JSON schema as the packaged one"}),
    (("--bandwidth",), {"metavar": "TIER=RATE,…",
                        "help": "bytes/s per tier for the cold-start estimate, e.g. "
                        "origin=800M,peers=3G,disk=2G (default: assumed 1G, 2.5G, 2G)"}),
    (("--allow",), {"action": "append", "metavar": "PATTERN",
                    "help": "with a SOURCE: only files matching (repeatable)"}),
    (("--ignore",), {"action": "append", "metavar": "PATTERN",
                     "help": "with a SOURCE: skip files matching (repeatable)"}),
    (("--auth-secret",), {"metavar": "NAME", "help": "with a SOURCE: its credentials"}),
    (("--json",), {"action": "store_true", "help": "print the plan as JSON"}),
)


def register(sub: Subparsers) -> None:
    """Add ``plan`` to the ``bdn`` parser."""
    p = sub.add_parser(
        "plan",
        help="which instance a model needs, and what its cold start costs",
        description="Read only the safetensors headers (and config.json) of a mirrored "
        "manifest or a model directory; report parameters, bytes by dtype, VRAM with KV "
        "cache, the cheapest instance that fits, the Truss resources to paste, the cold "
        "start per tier and a decode-speed ceiling.",
    )
    p.add_argument("ref", metavar="MANIFEST_ID|SOURCE",
                   help="sha256:<hex> as printed by `bdn mirror`, or a source (./dir, s3://…)")
    add_store_flags(p)
    add_flags(p, _PLAN_FLAGS)
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    """Plan a manifest id or SOURCE; print a table (or --json). Exit 0 even when nothing
    fits: the plan says so, with the nearest instance."""
    import asyncio

    from bdn import api

    request = api.PlanRequest.from_flags(
        cpu=args.cpu, memory=args.memory, bandwidth=args.bandwidth, context=args.context,
        batch=args.batch, kv_dtype=args.kv_dtype, overhead_fraction=args.overhead,
        cpu_only=args.cpu_only, provider=args.provider, catalog=args.catalog,
    )
    plan = asyncio.run(api.plan_model(_target(args), settings(args), request))
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        from rich.console import Console

        render(plan, Console())
    return 0


def _target(args: argparse.Namespace) -> Any:
    from bdn.api import looks_like_manifest_id

    if looks_like_manifest_id(args.ref):
        if args.allow or args.ignore or args.auth_secret:
            raise ConfigError("--allow/--ignore/--auth-secret apply to a SOURCE, not a "
                              "manifest id", field="bdn plan")
        return args.ref.strip()
    if args.ref.startswith("sha256:"):
        raise ConfigError(f"{args.ref!r} is not a manifest id; ids are 'sha256:' and 64 hex "
                          "characters, as printed by `bdn mirror`", field="bdn plan")
    return source_entry(args, args.ref, where="bdn plan")


def _size(n: float | None) -> str:
    from bdn.config.units import format_bytes

    return "?" if n is None else format_bytes(n)


def render(plan: dict[str, Any], console: Console) -> None:
    """The plan as tables: model, memory, instance, resources, cold start, decode, notes."""
    from rich.table import Table

    w, mem, fit = plan["weights"], plan["memory"], plan["fit"]
    params = "?" if w["parameters"] is None else f"{w['parameters']:,}"
    console.print(f"[bold]model[/]: {plan['model']['ref']}", highlight=False)
    head = Table(show_header=True)
    for col in ("dtype", "tensors", "parameters", "bytes"):
        head.add_column(col, justify="left" if col == "dtype" else "right")
    for dtype, c in w["by_dtype"].items():
        head.add_row(dtype, f"{c['tensors']:,}", f"{c['parameters']:,}", _size(c["bytes"]))
    head.add_row("total", "", params, _size(w["bytes"]), style="bold")
    console.print(head)
    need = Table(title="memory", show_header=False)
    need.add_row("weights", _size(mem["weights_bytes"]))
    need.add_row(f"KV cache ({mem['context']:,} tokens x {mem['batch']}, {mem['kv_dtype']})",
                 _size(mem["kv_cache_bytes"]))
    need.add_row(f"overhead ({mem['overhead_fraction']:.0%} + "
                 f"{_size(mem['overhead_per_gpu_bytes'])}/GPU)", "")
    need.add_row("needed on the chosen GPU count", _size(fit["needed_bytes"]), style="bold")
    console.print(need)
    _render_fit(plan, console)
    _render_cold(plan, console)
    for note in plan["notes"]:
        console.print(f"note: {note}", highlight=False)


def _render_fit(plan: dict[str, Any], console: Console) -> None:
    fit = plan["fit"]
    inst = fit["instance"]
    if inst is None:
        near = fit["nearest"]
        if near is None:
            console.print(f"[bold red]no {fit['provider']} instance meets --cpu/--memory"
                          "[/] (see left_out in --json)")
            return
        console.print(
            f"[bold red]fits no {fit['provider']} instance[/]: needs "
            f"{_size(fit['needed_bytes'])}; nearest {near['instance']['name']} "
            f"({_size(near['instance']['vram_bytes'])}) misses by {_size(near['short_bytes'])}",
            highlight=False)
        return
    price = "no price" if inst["usd_per_min"] is None else f"${inst['usd_per_min']:.5f}/min"
    console.print(
        f"[bold]instance[/]: {inst['name']} ({inst['gpu_count']} x {inst['gpu'] or 'CPU'}, "
        f"{_size(inst['vram_bytes'])} VRAM, {price}); tensor parallel "
        f"{fit['tensor_parallel']}", highlight=False)
    for alt in fit["alternatives"]:
        alt_price = "no price" if alt["usd_per_min"] is None else f"${alt['usd_per_min']:.5f}"
        console.print(f"  also fits: {alt['instance']} ({alt_price})", highlight=False)
    _render_decode(plan, console)
    for style, lines in (fit["resources"] or {}).items():
        console.print(f"# {style}", highlight=False)
        console.print("\n".join(lines), highlight=False, markup=False)


def _render_cold(plan: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    cold = Table(title="cold start (bytes onto the node)")
    for col in ("tier", "bandwidth", "seconds", "cost"):
        cold.add_column(col, justify="left" if col == "tier" else "right")
    for row in plan["cold_start"]:
        usd = "-" if row["usd"] is None else f"${row['usd']:.5f}"
        cold.add_row(row["tier"], f"{row['bytes_per_s'] / 1e9:g} GB/s ({row['bandwidth']})",
                     f"{row['seconds']:.2f}", usd)
    console.print(cold)


def _render_decode(plan: dict[str, Any], console: Console) -> None:
    inst, dec = plan["fit"]["instance"], plan["decode_ceiling"]
    if dec is not None:
        console.print(
            f"decode ceiling: {dec['tokens_per_s_per_sequence']:.1f} tokens/s per sequence, "
            f"{dec['tokens_per_s_total']:.1f} total ({_size(dec['bytes_per_step'])} read per "
            f"step at {dec['bandwidth_bytes_per_s'] / 1e9:g} GB/s)", highlight=False)
    else:
        console.print(f"decode ceiling: the catalog gives no memory bandwidth for "
                      f"{inst['name']}", highlight=False)
