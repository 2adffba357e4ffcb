"""``bdn pull`` and ``bdn cache``: the node side of the CLI."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from bdn.cache import NodeCache
from bdn.cli.common import add_cache_flags, add_store_flags, settings
from bdn.cli.progress import ByteProgress
from bdn.config.units import format_bytes
from bdn.config.weights import WeightsEntry, parse_entry, source_from_cli
from bdn.errors import ConfigError
from bdn.pull import (
    PullOptions,
    PullResult,
    looks_like_manifest_id,
    pull_manifest,
    resolve_manifest,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pull`` and ``cache`` to the ``bdn`` parser."""
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
    p.add_argument(
        "--agent",
        metavar="ADDR",
        help="node agent, unix:///path.sock or http://host:port (env BDN_AGENT)",
    )
    p.add_argument(
        "--allow",
        action="append",
        metavar="PATTERN",
        help="with a SOURCE: only files matching (repeatable)",
    )
    p.add_argument(
        "--ignore",
        action="append",
        metavar="PATTERN",
        help="with a SOURCE: skip files matching (repeatable)",
    )
    p.add_argument(
        "--auth-secret", metavar="NAME", help="with a SOURCE: secret holding its credentials"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="also verify every file's SHA-256 (chunks are always verified)",
    )
    p.add_argument(
        "--background",
        action="store_true",
        help="with --agent: a fill nobody waits on (warming a node); the agent caps it at "
        "its --background-fill-rate so it does not starve inference I/O",
    )
    p.add_argument(
        "--fsync",
        action="store_true",
        help="flush every blob to disk before committing it (default: blobs are marked "
        "unflushed and re-verified after a reboot, which keeps the flush off the cold start)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print bytes per tier (node cache, peers, origin) and seconds as JSON",
    )
    p.set_defaults(func=cmd_pull)

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


def cmd_pull(args: argparse.Namespace) -> int:
    conf = settings(args)
    target: str | WeightsEntry = args.ref.strip()
    if args.ref.startswith("sha256:") and not looks_like_manifest_id(args.ref):
        raise ConfigError(
            f"{args.ref!r} is not a manifest id; ids are 'sha256:' and 64 hex "
            "characters, as printed by `bdn mirror`",
            field="bdn pull",
        )
    if not looks_like_manifest_id(args.ref):
        target = _entry(args)
    elif args.allow or args.ignore or args.auth_secret:
        raise ConfigError(
            "--allow/--ignore/--auth-secret apply to a SOURCE, not a manifest id "
            "(its filters were fixed when it was mirrored)",
            field="bdn pull",
        )
    mount = Path(args.to).expanduser().absolute()
    if conf.agent:
        return _pull_through_agent(args, conf.agent, target, mount)

    async def go() -> PullResult:
        store = conf.open_store()
        cache = NodeCache(conf.cache_dir, max_bytes=conf.cache_max_bytes)
        try:
            started = time.monotonic()
            manifest = await resolve_manifest(
                target,
                store,
                secrets=conf.secrets(),
                mirror_options=conf.mirror_options(),
                mirror_if_missing=True,
            )
            with ByteProgress(f"pull {manifest.id[:19]}…") as bar:
                result = await pull_manifest(
                    manifest,
                    mount,
                    store=store,
                    cache=cache,
                    options=PullOptions(strict=args.strict, fsync=args.fsync),
                    on_progress=bar.advance,
                    on_plan=bar.set_total,
                )
            result.seconds = time.monotonic() - started
            return result
        finally:
            cache.close()
            await store.close()

    result = asyncio.run(go())
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:
        print(result.path)
    return 0


def _pull_through_agent(
    args: argparse.Namespace, agent: str, target: str | WeightsEntry, mount: Path
) -> int:
    """Hand the pull to the node agent and follow its progress."""
    from bdn.agent.client import AgentClient, request_for, to_pull_result

    client = AgentClient(agent)

    async def go() -> dict[str, Any]:
        with ByteProgress(f"pull via {agent}") as bar:
            done = 0

            def progress(now: int, total: int) -> None:
                nonlocal done
                bar.set_total(total)
                bar.advance(now - done)
                done = now

            return await client.pull(
                request_for(target, mount, background=args.background), on_progress=progress
            )

    result = to_pull_result(asyncio.run(go()))
    print(json.dumps(result.summary(), indent=2) if args.json else result.path)
    return 0


def _entry(args: argparse.Namespace) -> WeightsEntry:
    data: dict[str, Any] = {"source": source_from_cli(args.ref, Path.cwd())}
    if args.auth_secret:
        data["auth"] = {"auth_method": "CUSTOM_SECRET", "auth_secret_name": args.auth_secret}
    if args.allow:
        data["allow_patterns"] = args.allow
    if args.ignore:
        data["ignore_patterns"] = args.ignore
    return parse_entry(data, where="bdn pull", require_mount_location=False)


def _cache(args: argparse.Namespace) -> NodeCache:
    conf = settings(args)
    return NodeCache(conf.cache_dir, max_bytes=conf.cache_max_bytes)


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2))


def _jsonable(value: Any) -> Any:
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
    cache = _cache(args)
    try:
        blobs, partials = cache.ls(), cache.ls_partials()
    finally:
        cache.close()
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
    cache = _cache(args)
    try:
        report = cache.gc()
    finally:
        cache.close()
    if args.json:
        _print_json(report)
    else:
        print(report.describe())
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    cache = _cache(args)
    try:
        report = cache.verify(fix=args.fix)
    finally:
        cache.close()
    if args.json:
        _print_json(report)
    else:
        print(report.describe())
    return 0 if report.ok or args.fix else 1
