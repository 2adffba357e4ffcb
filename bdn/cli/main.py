"""The ``bdn`` command line: thin argument parsing over the library.

The environment is read once, here (``BDN_STORE``, ``BDN_SECRETS_DIR``,
``AWS_ENDPOINT_URL``), and passed down as values. User mistakes end in one
line on stderr naming the fix and exit status 2; failures of the world
(network, storage) exit 1; neither prints a traceback unless ``-v`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bdn import __version__
from bdn.backends.base import BlobStore
from bdn.cli.common import add_store_flags, settings, with_store
from bdn.cli.progress import ByteProgress
from bdn.config.units import format_bytes, parse_size
from bdn.config.weights import WeightsEntry, load_config, parse_entry, source_from_cli
from bdn.digest import DEFAULT_CHUNK_SIZE
from bdn.errors import BdnError, ConfigError, MountConflict, SecretError
from bdn.mirror import MirrorPlan, MirrorResult, run_mirror
from bdn.store import Store

# Exit statuses: a table, not branches scattered over commands.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_USAGE_ERRORS: tuple[type[BaseException], ...] = (ConfigError, SecretError, MountConflict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bdn",
        description="Mirror model weights once into content-addressed storage; pull them fast.",
    )
    parser.add_argument("--version", action="version", version=f"bdn {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress and debug detail"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    m.add_argument(
        "--chunk-size",
        metavar="SIZE",
        default=None,
        help=f"manifest chunk size (default {format_bytes(DEFAULT_CHUNK_SIZE)})",
    )
    add_store_flags(m)
    m.add_argument("--json", action="store_true", help="print a JSON summary instead of the id")
    m.set_defaults(func=cmd_mirror)

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

    from bdn.cli.agent import register as register_agent
    from bdn.cli.mirror_server import register as register_mirror_server
    from bdn.cli.pull import register as register_pull
    from bdn.demo import register as register_demo

    register_pull(sub)
    register_agent(sub)
    register_mirror_server(sub)
    register_demo(sub)

    _register_bench(sub)
    return parser


def _register_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # The benches ship outside the wheel (bench/ in a checkout): find them there.
    import sys
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "bench" / "__init__.py").is_file() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    from bench import register

    register(sub)


# -- commands -----------------------------------------------------------------


def cmd_mirror(args: argparse.Namespace) -> int:
    entries = _mirror_entries(args)
    chunk_size = (
        parse_size(args.chunk_size, field="--chunk-size") if args.chunk_size else DEFAULT_CHUNK_SIZE
    )
    if chunk_size < 1:
        raise ConfigError("must be at least 1 byte", field="--chunk-size")
    conf = settings(args)
    options = dataclasses.replace(conf.mirror_options(), chunk_size=chunk_size)
    secrets = conf.secrets()

    async def mirror_all(store: BlobStore) -> list[MirrorResult]:
        results = []
        for entry in entries:
            with ByteProgress(f"mirror {entry.source}") as bar:

                def plan(p: MirrorPlan, bar: ByteProgress = bar) -> None:
                    bar.set_total(p.bytes_to_transfer)

                results.append(
                    await run_mirror(
                        entry,
                        store=store,
                        secrets=secrets,
                        options=options,
                        on_progress=bar.advance,
                        on_plan=plan,
                    )
                )
        return results

    results = with_store(args, mirror_all)
    if args.json:
        summaries = []
        for entry, res in zip(entries, results, strict=True):
            summary = res.summary()
            if entry.mount_location:
                summary["mount_location"] = entry.mount_location
            summaries.append(summary)
        print(json.dumps(summaries if args.config else summaries[0], indent=2))
    else:
        for entry, res in zip(entries, results, strict=True):
            print(f"{res.manifest_id}  {entry.mount_location}" if args.config else res.manifest_id)
            logging.getLogger("bdn.cli.main").info(
                "%s: %d files, %s, %s transferred, %s deduplicated, %.2fs",
                entry.source,
                res.files,
                format_bytes(res.total_bytes),
                format_bytes(res.bytes_transferred),
                format_bytes(res.bytes_deduplicated),
                res.seconds,
            )
    return EXIT_OK


def _mirror_entries(args: argparse.Namespace) -> tuple[WeightsEntry, ...]:
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
    data: dict[str, Any] = {"source": source_from_cli(args.source, Path.cwd())}
    if args.auth_secret:
        data["auth"] = {"auth_method": "CUSTOM_SECRET", "auth_secret_name": args.auth_secret}
    if args.allow:
        data["allow_patterns"] = args.allow
    if args.ignore:
        data["ignore_patterns"] = args.ignore
    return (parse_entry(data, where="bdn mirror", require_mount_location=False),)


def cmd_manifest_show(args: argparse.Namespace) -> int:
    manifest = with_store(args, lambda store: Store(store).get_manifest(args.manifest_id))
    if args.json:
        sys.stdout.write(manifest.canonical_bytes().decode() + "\n")
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

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
    return EXIT_OK


def cmd_store_check(args: argparse.Namespace) -> int:
    report = with_store(args, lambda store: Store(store).check(deep=args.deep))
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "manifests": report.manifests,
                    "blobs_checked": report.blobs_checked,
                    "problems": report.problems,
                },
                indent=2,
            )
        )
    else:
        for problem in report.problems:
            print(f"problem: {problem}")
        print(
            f"{'ok' if report.ok else 'FAILED'}: {report.manifests} manifests, "
            f"{report.blobs_checked} blobs checked, {len(report.problems)} problems"
        )
    return EXIT_OK if report.ok else EXIT_FAILURE


# -- plumbing -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``bdn`` console script; returns the exit status."""
    env = dict(os.environ if environ is None else environ)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        # Commands read the environment only through this snapshot.
        args.environ = env
        code: int = func(args)
        return code
    except KeyboardInterrupt:
        print("bdn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BdnError as err:
        if args.verbose:
            logging.getLogger("bdn").exception("failed")
        print(f"bdn: error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, _USAGE_ERRORS) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
