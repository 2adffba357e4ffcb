"""``bdn pull`` and ``bdn cache``: the node side of the CLI.

Parsing only: ``bdn pull`` hands its target to :func:`bdn.api.pull_weights`
(in-process, or through ``--agent``), the same flow ``bdn.ensure_weights``
runs. Library modules are imported when a command runs, so ``bdn pull --help``
loads no SDK.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bdn.cli.common import (
    Flag,
    add_cache_flags,
    add_flags,
    add_store_flags,
    settings,
    source_entry,
)
from bdn.config.settings import parse_workers
from bdn.errors import ConfigError

if TYPE_CHECKING:
    from bdn.api import NodeCache
    from bdn.cli.common import Subparsers
    from bdn.config.weights import WeightsEntry

T = TypeVar("T")


def register(sub: Subparsers) -> None:
    """Add ``pull`` and ``cache`` to the ``bdn`` parser."""
    _add_pull(sub)
    c = sub.add_parser("cache", help="inspect and maintain the node cache")
    cs = c.add_subparsers(dest="cache_command", metavar="ACTION")
    for name, helptext, func in (
        (
            "ls",
            "list cached blobs, their sizes, last use and whether a tree uses them",
            cmd_cache_ls,
        ),
        ("gc", "evict down to the byte budget and drop records of deleted trees", cmd_cache_gc),
        ("verify", "re-hash every cached blob and report corrupt ones", cmd_cache_verify),
    ):
        q = cs.add_parser(name, help=helptext)
        add_cache_flags(q)
        q.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "verify":
            q.add_argument("--fix", action="store_true", help="remove corrupt blobs")
        q.set_defaults(func=func)


# (flags, keyword arguments of add_argument) of `bdn pull` after the store and cache flags.
_PULL_FLAGS: tuple[Flag, ...] = (
    (("--agent",), {"metavar": "ADDR",
                    "help": "node agent, unix:///path.sock or http://host:port (env BDN_AGENT)"}),
    (("--allow",), {"action": "append", "metavar": "PATTERN",
                    "help": "with a SOURCE: only files matching (repeatable)"}),
    (("--ignore",), {"action": "append", "metavar": "PATTERN",
                     "help": "with a SOURCE: skip files matching (repeatable)"}),
    (("--auth-secret",), {"metavar": "NAME",
                          "help": "with a SOURCE: secret holding its credentials"}),
    (("--strict",), {"action": "store_true",
                     "help": "also verify every file's SHA-256 (chunks are always verified)"}),
    (("--background",), {"action": "store_true",
                         "help": "with --agent: a fill nobody waits on (warming a node); the "
                         "agent caps it at its --background-fill-rate so it does not starve "
                         "inference I/O"}),
    (("--fsync",), {"action": "store_true",
                    "help": "flush every blob to disk before committing it (default: blobs "
                    "are marked unflushed and re-verified after a reboot, which keeps the "
                    "flush off the cold start)"}),
    (("--workers",), {"metavar": "N|auto",
                      "help": "processes receiving, writing and verifying the pull's bytes "
                      "(env BDN_WORKERS; default auto: the CPUs this process may use, "
                      "cgroup limit included; 1: one process)"}),
    (("--json",), {"action": "store_true",
                   "help": "print bytes per tier (node cache, peers, origin) and seconds as JSON"}),
)


def _add_pull(sub: Subparsers) -> None:
    p = sub.add_parser(
        "pull",
        help="materialize a model's verified, read-only tree",
        description="Materialize the tree of a manifest (or of a source's mirrored manifest) at "
        "DIR: node cache first, then origin; every chunk verified; files 0444, dirs 0555. "
        "A source never mirrored is mirrored first (embedded mode).",
    )
    p.add_argument(
        "ref",
        metavar="MANIFEST_ID|SOURCE",
        help="sha256:<hex> as printed by `bdn mirror`, or a source (s3://…, ./dir)",
    )
    p.add_argument("--to", required=True, metavar="DIR", help="where the tree appears")
    add_store_flags(p)
    add_cache_flags(p)
    add_flags(p, _PULL_FLAGS)
    p.set_defaults(func=cmd_pull)


def cmd_pull(args: argparse.Namespace) -> int:
    """Pull a manifest id or a SOURCE into --to and print the tree's path (or --json)."""
    import asyncio

    from bdn import api
    from bdn.cli.progress import ByteProgress, source_label

    conf = settings(args)
    if args.workers is not None:
        conf = dataclasses.replace(conf, workers=parse_workers(args.workers, field="--workers"))
    target = _target(args)
    mount = Path(args.to).expanduser().absolute()
    with ByteProgress(f"pull via {conf.agent}" if conf.agent else None,
                      source=source_label(conf.store_uri, conf.agent)) as bar:
        result = asyncio.run(
            api.pull_weights(
                target,
                conf,
                mount=mount,
                options=api.PullOptions(strict=args.strict, fsync=args.fsync),
                background=args.background,
                on_progress=bar.update,
                on_begin=bar.describe,
            )
        )
    print(json.dumps(result.summary(), indent=2) if args.json else result.path)
    return 0


def _target(args: argparse.Namespace) -> str | WeightsEntry:
    """A manifest id as given, or the entry of a SOURCE and its --allow/--ignore/--auth-secret."""
    from bdn.api import looks_like_manifest_id

    if args.ref.startswith("sha256:") and not looks_like_manifest_id(args.ref):
        raise ConfigError(
            f"{args.ref!r} is not a manifest id; ids are 'sha256:' and 64 hex "
            "characters, as printed by `bdn mirror`",
            field="bdn pull",
        )
    if not looks_like_manifest_id(args.ref):
        return source_entry(args, args.ref, where="bdn pull")
    if args.allow or args.ignore or args.auth_secret:
        raise ConfigError(
            "--allow/--ignore/--auth-secret apply to a SOURCE, not a manifest id "
            "(its filters were fixed when it was mirrored)",
            field="bdn pull",
        )
    stripped: str = args.ref.strip()
    return stripped


# -- bdn cache ------------------------------------------------------------------


def _with_cache(args: argparse.Namespace, use: Callable[[NodeCache], T]) -> T:
    """Open the node cache the flags and environment name, run ``use`` on it, close it."""
    from bdn import api

    return api.with_node_cache(settings(args), use)


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2))


def _jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, int | float | bool | str) or value is None:
        return value
    return str(value)


def cmd_cache_ls(args: argparse.Namespace) -> int:
    """List cached blobs (most recently used first) and partial downloads."""
    from bdn.config.units import format_bytes

    blobs, partials = _with_cache(args, lambda cache: (cache.ls(), cache.ls_partials()))
    if args.json:
        _print_json({"blobs": blobs, "partials": partials})
        return 0
    for b in sorted(blobs, key=lambda b: b.last_used, reverse=True):
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(b.last_used)) if b.last_used else "-"
        print(
            f"{b.digest}  {format_bytes(b.size):>11}  {used}  "
            f"{'in use' if b.referenced else 'evictable'}"
        )
    for part in partials:
        print(
            f"{part.digest}  {format_bytes(part.bytes_on_disk):>11}  partial, "
            f"{len(part.done_chunks)} chunks done"
        )
    total = sum(b.size for b in blobs)
    print(f"{len(blobs)} blobs, {format_bytes(total)}; {len(partials)} partial")
    return 0


def cmd_cache_gc(args: argparse.Namespace) -> int:
    """Evict down to the byte budget and forget deleted trees."""
    report = _with_cache(args, lambda cache: cache.gc())
    if args.json:
        _print_json(report)
    else:
        print(report.describe())
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    """Re-hash every cached blob; exit 1 on corruption unless --fix removed it."""
    report = _with_cache(args, lambda cache: cache.verify(fix=args.fix))
    if args.json:
        _print_json(report)
    else:
        print(report.describe())
    return 0 if report.ok or args.fix else 1
