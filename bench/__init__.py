"""``bdn bench``: speed measured, not asserted.

Every BDN figure is printed next to reference tools measured in the same run
on the same data, as ratios (``bdn bench transfer``: curl, aria2c and the
page-cache write ceiling; ``bdn bench mirror``: ``cp -r``; ``bdn bench pull``:
all of those, around a pull through the node cache; ``bdn bench herd``: N
agents as a ring against the same N pulling alone). Only the argument
definitions live here; the bench modules are imported when a bench runs, so
``bdn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

from bdn.config.units import format_bytes
from bench.harness import GiB, MiB

__all__ = ["build_parser", "main", "register"]


def _add_run_flags(
    p: argparse.ArgumentParser, *, temp_dir: str, repeat: int, runs: str
) -> None:
    """``--workdir``, ``--keep`` and ``--repeat``, which every bench has (see
    :func:`bench.harness.bench_workdir`); ``runs`` says what ``--repeat`` counts."""
    p.add_argument("--workdir", metavar="DIR",
                   help=f"make the fresh work directory inside DIR (default: {temp_dir}); it "
                        "is removed at the end unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    p.add_argument("--repeat", type=int, default=repeat, metavar="N",
                   help=f"{runs}; best and median are reported (default {repeat})")


def _add_common(p: argparse.ArgumentParser) -> None:
    """The flags of the benches over a sharded tree: transfer, mirror and pull."""
    _add_run_flags(p, temp_dir="the system temp dir, i.e. /tmp's filesystem", repeat=2,
                   runs="timed runs per tool")
    p.add_argument("--shards", type=int, default=8, metavar="N",
                   help="files in the sharded tree (default 8)")
    p.add_argument("--shard-size", default="256MiB", metavar="SIZE",
                   help=f"bytes per shard (default {format_bytes(256 * MiB)})")
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    p.add_argument("--no-install", action="store_true",
                   help="never apt-get install missing reference tools; exit 2 naming the "
                        "command instead")


@dataclass(frozen=True, slots=True)
class _Lazy:
    """A sub-command's ``func``: ``module.command(args)``, imported only when the bench
    runs, so that building the parser (``bdn --help``) loads no bench module. Equal
    by value, so the parsers of :func:`register` and :func:`build_parser` agree."""

    module: str
    command: str

    def __call__(self, args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(self.module), self.command)(args))


def _add_herd(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser(
        "herd", help="N agents cold-pull one model at once: a ring vs each alone (origin bytes)",
        description="Mirror a random model into a file:// store served by a throwaway nginx "
                    "that counts the bytes it sends; then, for each N, start N agents as a ring "
                    "and have all of them cold-pull the model at once, and the same N agents "
                    "without a ring, each pulling from origin alone. Reports origin bytes / "
                    "model size and wall time of both. With --netns every agent runs in its "
                    "own network namespace with a shaped origin link and a shaped peer link; "
                    "aim at N = 4: ring wall <= 0.35x naive, origin <= 1.02x the model.")
    _add_run_flags(h, temp_dir="the system temp dir", repeat=1, runs="timed bursts per case")
    h.add_argument("--nodes", metavar="N,N,...",
                   help="fleet sizes (default 2,4,8 on loopback, 2,4 with --netns)")
    h.add_argument("--size", metavar="SIZE",
                   help=f"model size (default {format_bytes(2 * GiB)} on loopback, "
                        f"{format_bytes(GiB)} with --netns)")
    h.add_argument("--shards", type=int, default=8, metavar="N",
                   help="files of the model (default 8)")
    h.add_argument("--start", choices=("settled", "together"), default="settled",
                   help="settled: pulls start once every agent sees its ring (default); "
                        "together: each pull starts as soon as its agent's socket opens, "
                        "timed from the agents' launch (N nodes added at once)")
    h.add_argument("--netns", action="store_true",
                   help="run every agent in its own network namespace with shaped links "
                        "(needs root, ip and tc)")
    h.add_argument("--origin-mbps", type=float, default=100.0, metavar="MB/S",
                   help="with --netns: each node's link to origin, MB/s (default 100)")
    h.add_argument("--peer-mbps", type=float, default=1000.0, metavar="MB/S",
                   help="with --netns: each node's link to its peers, MB/s (default 1000)")
    h.add_argument("--hedge-after", metavar="SECONDS|off",
                   help="the agents' --hedge-after (default: theirs); off: no hedging")
    h.add_argument("--fanout", type=int, default=4, metavar="K",
                   help="also run each N as a ring with the agents' --fanout K (the ring "
                        "case runs with --fanout 0); 0: skip that case (default 4)")
    h.add_argument("--chunk-size", metavar="SIZE",
                   help="the model's chunk size (default: the mirror's); e.g. 8MiB for "
                        "many chunks")
    h.add_argument("--owner-fault", choices=("frozen", "slow"),
                   help="instead of ring/fanout/naive: the settled ring all alive, then with "
                        "its first agent frozen (SIGSTOP) or slow (chunk answers "
                        "--owner-delay late); the other N - 1 agents pull in both; aims "
                        "frozen <= 2x, slow <= 1.3x the all-alive wall time")
    h.add_argument("--owner-delay", type=float, default=5.0, metavar="SECONDS",
                   help="with --owner-fault slow: seconds each chunk request waits (default 5)")
    h.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    h.add_argument("--no-install", action="store_true",
                   help="never apt-get install nginx; exit 2 naming the command instead")
    h.set_defaults(func=_Lazy("bench.herd", "herd_command"))


def _add_mirror_server(sub: argparse._SubParsersAction) -> None:
    ms = sub.add_parser(
        "mirror-server", help="mirror service: 20 jobs at once, 10 identical submissions",
        description="Start a real bdn mirror-server on loopback with a file:// store; submit "
                    "--jobs distinct small models at once (jobs/s, each mirrored exactly "
                    "once) against as many sequential `bdn mirror` runs, then --identical "
                    "identical submissions (one transfer) against as many concurrent "
                    "`bdn mirror` runs.")
    _add_run_flags(ms, temp_dir="the system temp dir", repeat=2, runs="timed runs per row")
    ms.add_argument("--jobs", type=int, default=20, metavar="N",
                    help="distinct models submitted at once (default 20)")
    ms.add_argument("--files", type=int, default=4, metavar="N",
                    help="files per model (default 4)")
    ms.add_argument("--file-size", default="1MiB", metavar="SIZE",
                    help="bytes per file (default 1 MiB)")
    ms.add_argument("--identical", type=int, default=10, metavar="N",
                    help="identical submissions of one model at once (default 10)")
    ms.add_argument("--max-jobs", type=int, default=2, metavar="N",
                    help="the server's --max-jobs (default 2, the server's default)")
    ms.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    ms.set_defaults(func=_Lazy("bench.mirror_server", "mirror_server_command"), no_install=True)


def _add_benches(sub: argparse._SubParsersAction) -> None:
    """The sub-commands ``transfer``, ``mirror``, ``pull``, ``herd`` and ``mirror-server``."""
    t = sub.add_parser(
        "transfer", help="engine vs curl, aria2c and the page-cache write ceiling, over nginx",
        description="Serve random data with a throwaway nginx on loopback and download it "
                    "with BDN's engine, curl and aria2c; also time raw page-cache writes. "
                    "Aims: BDN >= 3x aria2c and >= 1.3x curl.")
    _add_common(t)
    t.add_argument("--size", default="2GiB", metavar="SIZE",
                   help=f"bytes of the single-file workload (default {format_bytes(2 * GiB)})")
    t.set_defaults(func=_Lazy("bench.transfer", "transfer_command"))

    m = sub.add_parser(
        "mirror", help="file -> file mirror through run_mirror vs cp -r",
        description="Mirror a random tree into a fresh file:// store and copy it with cp -r; "
                    "then re-mirror unchanged (0 bytes expected). Aim: >= 0.8x cp -r.")
    _add_common(m)
    m.add_argument("--source", choices=("file", "hf", "https", "azure"), default="file",
                   help="file: a random tree vs cp -r (default); hf: a local Hugging Face-"
                        "compatible server (MiniLM-L6-v2 and --shards x --shard-size) vs "
                        "huggingface_hub.snapshot_download, plus an unchanged re-mirror "
                        "(needs a source checkout: the server lives in tests/); https: "
                        "nginx vs curl in parallel; azure: Azurite vs the SDK's download_blob")
    m.set_defaults(func=_Lazy("bench.mirror", "mirror_command"))

    p = sub.add_parser(
        "pull", help="pull through the node cache: cold vs curl/aria2c, warm vs cp -r, the API",
        description="Mirror a random model into a file:// store served by a throwaway nginx, "
                    "then time cold pulls (empty node cache) against curl, aria2c and the "
                    "page-cache write ceiling, warm pulls into a new and into the same "
                    "mount against cp -r of the tree, and bdn.ensure_weights on the warm "
                    "cache. Aims: cold BDN >= 3x aria2c, >= 1.3x curl, >= 0.85x the write "
                    "ceiling; warm >= 100x cp -r and < 50 ms; ensure_weights < 50 ms.")
    _add_common(p)
    p.set_defaults(func=_Lazy("bench.pull", "pull_command"))

    _add_herd(sub)
    _add_mirror_server(sub)


_DESCRIPTION = "Measure BDN against reference tools in the same run; print ratios."


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` with its sub-commands (see :func:`_add_benches`) to a parser.

    Each sub-command sets ``func``: a callable taking the parsed arguments and
    returning the exit status (0 ok, 1 a run failed, 2 a reference tool missing).
    """
    bench = subparsers.add_parser(
        "bench", help="measure BDN against reference tools (curl, aria2c, cp) in the same run",
        description=_DESCRIPTION)
    _add_benches(bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True))


def build_parser() -> argparse.ArgumentParser:
    """The ``bdn bench`` parser on its own: the sub-commands and flags of :func:`register`."""
    parser = argparse.ArgumentParser(prog="bdn bench", description=_DESCRIPTION)
    _add_benches(parser.add_subparsers(dest="bench_command", metavar="BENCH", required=True))
    return parser


def main(argv: list[str]) -> int:
    """Run ``bdn bench ARGV`` (``argv`` without ``bdn bench``); the exit status.

    0 ok, 1 a run failed, 2 a reference tool missing or bad flags (argparse
    exits). A bad option value raises ``ConfigError``, for the caller to print,
    as every ``bdn`` command's errors are.
    """
    args = build_parser().parse_args(argv)
    return int(args.func(args))
