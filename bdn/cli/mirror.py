"""``bdn mirror``, ``bdn manifest show`` and ``bdn store check``: the origin side of the CLI.

Parsing only: ``bdn mirror`` hands its entries to :func:`bdn.api.mirror_weights`.
The library modules a command needs are imported when it runs, so building
the parser (``bdn --help``) loads no SDK.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING

from bdn.cli.common import add_store_flags, settings, source_entry
from bdn.errors import ConfigError

if TYPE_CHECKING:
    from bdn.api import MirrorResult
    from bdn.cli.common import Subparsers
    from bdn.config.weights import WeightsEntry
    from bdn.manifest import Manifest

CHUNK_SIZE_HELP = "manifest chunk size, 1.00 MiB to 256.00 MiB (default 64.00 MiB)"
"""Literal, so the parser need not import bdn.digest; tests/cli check it against
``format_bytes`` of ``MIN_CHUNK_SIZE``, ``MAX_CHUNK_SIZE`` and ``DEFAULT_CHUNK_SIZE``."""


def register(sub: Subparsers) -> None:
    """Add ``mirror``, ``manifest`` and ``store`` to the ``bdn`` parser."""
    _add_mirror(sub)
    man = sub.add_parser("manifest", help="inspect manifests")
    man_sub = man.add_subparsers(dest="manifest_command", metavar="ACTION")
    show = man_sub.add_parser("show", help="print a manifest")
    show.add_argument("manifest_id", metavar="ID", help="manifest id (sha256:<hex>)")
    add_store_flags(show)
    show.add_argument("--json", action="store_true", help="print the canonical manifest JSON")
    show.set_defaults(func=cmd_manifest_show)

    st = sub.add_parser("store", help="inspect the blob store")
    st_sub = st.add_subparsers(dest="store_command", metavar="ACTION")
    check = st_sub.add_parser("check", help="verify every manifest and the blobs it names")
    add_store_flags(check)
    check.add_argument("--deep", action="store_true", help="also re-hash every blob")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=cmd_store_check)


def _add_mirror(sub: Subparsers) -> None:
    m = sub.add_parser(
        "mirror",
        help="copy a weights source into the store and print its manifest id",
        description="Copy a weights source (file:///dir, ./dir, s3://bucket/prefix) "
        "into the store, keyed by content; print the manifest id.",
    )
    m.add_argument("source", nargs="?", help="file:///abs/dir, a local path, or s3://bucket/prefix")
    m.add_argument(
        "--config",
        metavar="FILE",
        help="a Truss config.yaml: mirror every entry of its weights: list",
    )
    m.add_argument(
        "--allow",
        action="append",
        metavar="PATTERN",
        dest="allow",
        help="only files matching (repeatable; '*.x' top level, '**/*.x' recursive)",
    )
    m.add_argument(
        "--ignore",
        action="append",
        metavar="PATTERN",
        dest="ignore",
        help="skip files matching (repeatable)",
    )
    m.add_argument(
        "--auth-secret",
        metavar="NAME",
        help="secret holding the source's credentials (file in BDN_SECRETS_DIR or "
        "env BDN_SECRET_<NAME>)",
    )
    m.add_argument("--chunk-size", metavar="SIZE", default=None, help=CHUNK_SIZE_HELP)
    m.add_argument("--workers", metavar="N|auto",
                   help="CPUs copying and hashing files at once (env BDN_WORKERS; default "
                   "auto: the CPUs this process may use, cgroup limit included)")
    add_store_flags(m)
    m.add_argument("--json", action="store_true", help="print a JSON summary instead of the id")
    m.set_defaults(func=cmd_mirror)


# -- commands -----------------------------------------------------------------


def cmd_mirror(args: argparse.Namespace) -> int:
    """Mirror SOURCE (or every entry of --config) and print the manifest id(s)."""
    import asyncio

    from bdn import api
    from bdn.cli.progress import ByteProgress

    entries = _mirror_entries(args)
    chunk_size = _chunk_size(args.chunk_size)
    conf = settings(args)
    if args.workers is not None:
        import dataclasses

        from bdn.config.settings import parse_workers

        conf = dataclasses.replace(conf, workers=parse_workers(args.workers, field="--workers"))
    with ByteProgress() as bar:
        results = asyncio.run(
            api.mirror_weights(
                entries,
                conf,
                chunk_size=chunk_size,
                on_progress=bar.update,
                on_begin=bar.describe,
            )
        )
    if args.json:
        _print_summaries(entries, results, several=bool(args.config))
    else:
        _print_ids(entries, results, several=bool(args.config))
    return 0


def _chunk_size(text: str | None) -> int:
    """``--chunk-size``, held to the user bounds (1 MiB to 256 MiB), or the default."""
    from bdn.config.units import parse_chunk_size
    from bdn.digest import DEFAULT_CHUNK_SIZE

    return parse_chunk_size(text, field="--chunk-size") if text else DEFAULT_CHUNK_SIZE


def _print_summaries(
    entries: tuple[WeightsEntry, ...], results: list[MirrorResult], *, several: bool
) -> None:
    summaries = []
    for entry, res in zip(entries, results, strict=True):
        summary = res.summary()
        if entry.mount_location:
            summary["mount_location"] = entry.mount_location
        summaries.append(summary)
    print(json.dumps(summaries if several else summaries[0], indent=2))


def _print_ids(
    entries: tuple[WeightsEntry, ...], results: list[MirrorResult], *, several: bool
) -> None:
    from bdn.config.units import format_bytes

    for entry, res in zip(entries, results, strict=True):
        print(f"{res.manifest_id}  {entry.mount_location}" if several else res.manifest_id)
        logging.getLogger("bdn.cli.main").info(
            "%s: %d files, %s, %s transferred, %s deduplicated, %.2fs",
            entry.source,
            res.files,
            format_bytes(res.total_bytes),
            format_bytes(res.bytes_transferred),
            format_bytes(res.bytes_deduplicated),
            res.seconds,
        )


def _mirror_entries(args: argparse.Namespace) -> tuple[WeightsEntry, ...]:
    from bdn.config.weights import load_config

    if args.config:
        if args.source or args.allow or args.ignore or args.auth_secret:
            raise ConfigError(
                "give either SOURCE with --allow/--ignore/--auth-secret or --config, not both",
                field="bdn mirror",
            )
        return load_config(args.config)
    if not args.source:
        raise ConfigError(
            "missing SOURCE; e.g. `bdn mirror ./my-model` or "
            "`bdn mirror s3://bucket/prefix --auth-secret aws_credentials`, "
            "or `bdn mirror --config config.yaml`",
            field="bdn mirror",
        )
    return (source_entry(args, args.source, where="bdn mirror"),)


def cmd_manifest_show(args: argparse.Namespace) -> int:
    """Print a manifest: a table of its files, or its canonical JSON with --json."""
    import asyncio

    from bdn import api

    manifest = asyncio.run(api.get_manifest(args.manifest_id, settings(args)))
    if args.json:
        sys.stdout.write(manifest.canonical_bytes().decode() + "\n")
    else:
        _show_manifest(manifest)
    return 0


def _show_manifest(manifest: Manifest) -> None:
    from rich.console import Console
    from rich.table import Table

    from bdn.config.units import format_bytes

    console = Console()
    src = manifest.source
    console.print(f"[bold]manifest[/] {manifest.id}")
    console.print(
        f"source     {src.uri} ({src.kind}"
        + (f", revision {src.revision})" if src.revision else ")")
    )
    if manifest.filters.allow_patterns or manifest.filters.ignore_patterns:
        console.print(
            f"filters    allow={list(manifest.filters.allow_patterns or [])} "
            f"ignore={list(manifest.filters.ignore_patterns or [])}"
        )
    console.print(f"chunk size {format_bytes(manifest.chunk_size)}")
    table = Table(show_edge=False)
    table.add_column("path")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    table.add_column("chunks", justify="right")
    for f in manifest.files:
        table.add_row(f.path, format_bytes(f.size), str(f.sha256)[:19] + "…", str(len(f.chunks)))
    console.print(table)
    console.print(f"{len(manifest.files)} files, {format_bytes(manifest.total_size)}")


def cmd_store_check(args: argparse.Namespace) -> int:
    """Verify every manifest and its blobs; exit 1 when a problem is found.

    A store that does not exist (or, on ``s3://``/``gs://``, holds nothing, which
    looks the same) is a usage error: most likely a mistyped ``--store``. A
    ``file://`` store whose directory exists but holds nothing is ``ok``, and
    says it is empty.
    """
    import asyncio

    from bdn import api

    report = asyncio.run(api.check_store(settings(args), deep=args.deep))
    missing = report.missing()
    if missing is not None:
        raise ConfigError(missing)
    if args.json:
        body = {
            "ok": report.ok,
            "empty": report.empty,
            "manifests": report.manifests,
            "blobs_checked": report.blobs_checked,
            "problems": report.problems,
        }
        print(json.dumps(body, indent=2))
    elif report.empty:
        print(f"ok: store {report.store} is empty: nothing mirrored into it yet, 0 manifests")
    else:
        for problem in report.problems:
            print(f"problem: {problem}")
        print(
            f"{'ok' if report.ok else 'FAILED'}: {report.manifests} manifests, "
            f"{report.blobs_checked} blobs checked, {len(report.problems)} problems"
        )
    return 0 if report.ok else 1
