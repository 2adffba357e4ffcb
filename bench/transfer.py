"""``bdn bench transfer``: BDN's transfer engine against curl and aria2c, same run, same nginx.

Two workloads (one big file; several shards) are served by a throwaway nginx on
loopback. Each contender downloads the workload into a fresh directory on the
workdir's filesystem; outputs are verified and deleted between runs so every
run starts cold on the destination side. The BDN row runs the engine the way a
pull does: ranged HTTP reads with every 64 MiB chunk checked against the
xxh3-128 digests a manifest would carry (computed while the data is generated,
outside any timing). The page-cache write ceiling shows how close any
downloader can get on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console

from bdn.config.units import format_bytes, parse_size
from bdn.digest import DEFAULT_CHUNK_SIZE
from bdn.errors import ConfigError
from bdn.http import DEFAULT_HTTP_CONFIG, HttpClient, HttpRangeReader
from bdn.transfer.cores import available_cpus
from bdn.transfer.engine import DEFAULT_TRANSFER_CONFIG, FileTask, TransferEngine
from bench.command import bench_run, common_options, run_command
from bench.fetchers import run_aria2c, run_ceiling, run_checked, run_curl, run_curl_parallel
from bench.harness import DataFile, GiB, MiB, ToolFailed, generate_files, warm_up_writes
from bench.nginx import Nginx
from bench.report import (
    Aim,
    BenchReport,
    Result,
    Role,
    Section,
    Timed,
    measure_rounds,
    progress_console,
)
from bench.tools import missing_references

REFERENCE_TOOLS = ("nginx", "curl", "aria2c")
"""Tools this bench runs; nginx serves, curl and aria2c are the references."""

AIMS = (
    Aim("aria2c", 3.0),
    Aim("curl", 1.3),
    Aim("curl_par", 0.9, "curl, all files in parallel"),
)
"""The issues' targets: BDN >= 3x aria2c, >= 1.3x curl one file after another, and
>= 0.9x curl with every file in parallel (one stream each)."""


@dataclass(frozen=True, slots=True)
class TransferBenchOptions:
    """Sizes and knobs of one ``bdn bench transfer`` run.

    Attributes:
        size: bytes of the single-file workload.
        shards: number of files in the sharded workload.
        shard_size: bytes of each shard.
        repeat: timed runs per contender and workload (best and median reported).
        workdir: parent of the fresh work directory (default: the system temp dir).
        keep: keep the work directory (data, nginx config and logs) afterwards.
        ceiling_threads: writer threads of the page-cache write ceiling.
        chunk_size: manifest chunk size whose xxh3-128 digests the engine checks.
    """

    size: int = 2 * GiB
    shards: int = 8
    shard_size: int = 256 * MiB
    repeat: int = 2
    workdir: Path | None = None
    keep: bool = False
    ceiling_threads: int = 4
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def check(self) -> None:
        """Raise ``ConfigError`` for values no bench can run with."""
        for name in ("size", "shards", "shard_size", "repeat", "ceiling_threads", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError("must be at least 1", field=f"--{name.replace('_', '-')}")


DEFAULT_TRANSFER_BENCH_OPTIONS = TransferBenchOptions()


@dataclass(frozen=True, slots=True)
class Workload:
    """Files served under ``/<name>/`` that every contender downloads in one run."""

    title: str
    name: str
    files: tuple[DataFile, ...]

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)

    def url(self, nginx: Nginx, f: DataFile) -> str:
        return nginx.url(f"{self.name}/{f.path.name}")

    def downloads(self, nginx: Nginx) -> list[tuple[str, DataFile]]:
        """Every file's URL with the file, for the reference downloaders."""
        return [(self.url(nginx, f), f) for f in self.files]


Runner = Callable[[Workload, Nginx, Path, TransferBenchOptions], Timed]


@dataclass(frozen=True, slots=True)
class Contender:
    """One row of the table: what runs, which tool it needs, how its output is checked.

    ``verify``: ``content`` checks size and xxh3-128 chunk digests of every
    output (a fast wrong answer must not count); ``size`` only sizes (the
    ceiling writes a repeated buffer, by design).
    """

    key: str
    label: str
    role: Role
    needs: str | None
    run: Runner
    verify: Literal["content", "size"]


def _run_curl(w: Workload, nginx: Nginx, out: Path, _: TransferBenchOptions) -> Timed:
    return run_curl(w.downloads(nginx), out)


def _run_curl_parallel(w: Workload, nginx: Nginx, out: Path, _: TransferBenchOptions) -> Timed:
    return run_curl_parallel(w.downloads(nginx), out)


def _run_aria2c(w: Workload, nginx: Nginx, out: Path, _: TransferBenchOptions) -> Timed:
    listing = None if len(w.files) == 1 else out.parent / f"aria2c-{w.name}.txt"
    return run_aria2c(w.downloads(nginx), out, listing=listing)


async def _engine_fetch(
    w: Workload, nginx: Nginx, out: Path, chunk_size: int, workers: int
) -> Timed:
    """The pull's data path: ranged reads, every chunk checked against its xxh3-128,
    over ``workers`` data-plane processes (the engine's loop and ``workers - 1`` more)."""
    start = time.perf_counter()
    client = HttpClient(DEFAULT_HTTP_CONFIG)
    readers = [HttpRangeReader(client, w.url(nginx, f), f.size) for f in w.files]
    try:
        tasks = [
            FileTask(
                reader,
                f.size,
                out / f.path.name,
                chunk_size,
                expected_chunks=f.chunks,
                label=f.path.name,
            )
            for reader, f in zip(readers, w.files, strict=True)
        ]
        config = dataclasses.replace(DEFAULT_TRANSFER_CONFIG, workers=workers)
        async with TransferEngine(config) as engine:
            results = await engine.fetch_all(tasks)
    finally:
        for reader in readers:
            await reader.close()
        await client.close()
    seconds = time.perf_counter() - start
    for f, r in zip(w.files, results, strict=True):
        if r.size != f.size:
            raise ToolFailed(f"engine reported {r.size} bytes for {f.path.name}, expected {f.size}")
    retries = sum(r.retries for r in results)
    fetched = sum(r.bytes_fetched for r in results)
    extra = f", fetched {format_bytes(fetched)}" if fetched != w.nbytes else ""
    return Timed(seconds, f"{retries} retries{extra}")


def _run_bdn(
    w: Workload, nginx: Nginx, out: Path, options: TransferBenchOptions, *, workers: int
) -> Timed:
    try:
        return asyncio.run(_engine_fetch(w, nginx, out, options.chunk_size, workers))
    except (OSError, ValueError) as err:  # BdnError subclasses inherit these builtins.
        raise ToolFailed(f"bdn engine: {err}") from err


def _run_ceiling(w: Workload, _: Nginx, out: Path, options: TransferBenchOptions) -> Timed:
    return run_ceiling(w.files, out, threads=options.ceiling_threads)


def contenders(options: TransferBenchOptions) -> tuple[Contender, ...]:
    """The rows of each workload's table, BDN first (with the automatic worker count,
    as ``bdn pull`` runs it), then the references, the ceiling and the scaling rows."""
    auto = available_cpus()
    return (
        Contender("bdn", f"bdn engine (xxh3-128 chunk verify, workers auto = {auto})", "bdn",
                  None, functools.partial(_run_bdn, workers=auto), "content"),
        Contender(
            "curl", "curl (1 stream per file, in turn)", "reference", "curl", _run_curl, "content"
        ),
        Contender("curl_par", "curl, all files in parallel, one stream each", "reference",
                  "curl", _run_curl_parallel, "content"),
        Contender("aria2c", "aria2c -x16 -s16 -k1M", "reference", "aria2c", _run_aria2c, "content"),
        Contender(
            "ceiling",
            f"page-cache write ceiling (pwrite, {options.ceiling_threads} threads)",
            "ceiling",
            None,
            _run_ceiling,
            "size",
        ),
        *(
            Contender(f"bdn_w{n}", f"bdn engine, workers = {n}", "scaling", None,
                      functools.partial(_run_bdn, workers=n), "content")
            for n in (1, 2)
            if n != auto
        ),
    )


def _make_workloads(data: Path, options: TransferBenchOptions) -> list[Workload]:
    single, shards = data / "single", data / "shards"
    single.mkdir(parents=True)
    shards.mkdir(parents=True)
    width = len(str(options.shards))
    specs = [(single / "model.safetensors", options.size)] + [
        (shards / f"model-{i + 1:0{width}d}-of-{options.shards}.safetensors", options.shard_size)
        for i in range(options.shards)
    ]
    files = generate_files(specs, chunk_size=options.chunk_size)
    return [
        Workload(f"(a) one {format_bytes(options.size)} file", "single", (files[0],)),
        Workload(
            f"(b) {options.shards} files of {format_bytes(options.shard_size)}",
            "shards",
            tuple(files[1:]),
        ),
    ]


def _run_once(
    c: Contender, r: Result, *, w: Workload, nginx: Nginx, out: Path, options: TransferBenchOptions
) -> Timed:
    """One timed run of ``c``, then its output check (outside the timing) and cleanup."""
    return run_checked(
        out,
        w.files,
        lambda: c.run(w, nginx, out, options),
        content=c.verify == "content",
        # SHA-256 of BDN's output once: the identity check a pull skips.
        sha256=c.role == "bdn" and not r.seconds,
    )


def _measure(
    w: Workload,
    nginx: Nginx,
    out: Path,
    options: TransferBenchOptions,
    missing: Mapping[str, str],
    console: Console,
) -> Section:
    """Every contender over workload ``w``, ``repeat`` rounds."""
    rows = contenders(options)
    section = Section(
        w.title,
        "bdn",
        [
            Result(
                c.key, c.label, c.role, w.nbytes, error=missing.get(c.needs) if c.needs else None
            )
            for c in rows
        ],
        AIMS,
    )
    runners: dict[str, Callable[[Result], Timed]] = {
        c.key: functools.partial(_run_once, c, w=w, nginx=nginx, out=out, options=options)
        for c in rows
    }
    measure_rounds(
        section,
        runners,
        repeat=options.repeat,
        console=console,
        prepare=functools.partial(warm_up_writes, out, w.nbytes, [f.path for f in w.files]),
    )
    section.note_ceiling()
    return section


def run_transfer_bench(
    options: TransferBenchOptions = DEFAULT_TRANSFER_BENCH_OPTIONS,
    *,
    console: Console | None = None,
    unavailable: Mapping[str, str] | None = None,
) -> BenchReport:
    """Run ``bdn bench transfer`` and return its report (the function API; installs nothing).

    Args:
        options: sizes, repeats and the work directory.
        console: where progress lines go (default: stderr).
        unavailable: ``{tool: reason}`` already known missing (from an install
            attempt); any other reference tool not on PATH is added here too,
            so it shows as "not available (reason)", never silently skipped.

    Raises:
        BenchAbort: nginx is not available (nothing could be measured), the
            disk is too small, or nginx would not start.
        ConfigError: an option is out of range.
    """
    options.check()
    console = console or progress_console()
    missing = missing_references(REFERENCE_TOOLS, unavailable, nginx_serves="the data")
    data_bytes = options.size + options.shards * options.shard_size
    # Source data, plus one output tree at a time, plus room for write-back lag.
    needs = data_bytes + max(options.size, options.shards * options.shard_size) + 256 * MiB
    run = bench_run("transfer", options, console, needs=needs, tools=REFERENCE_TOOLS)
    with run as (wd, report):
        console.print(f"generating {format_bytes(data_bytes)} of random data in {wd}")
        workloads = _make_workloads(wd / "data", options)
        with Nginx(wd / "data", wd / "nginx") as nginx:
            console.print(f"nginx serving {wd / 'data'} on 127.0.0.1:{nginx.port}")
            for w in workloads:
                report.sections.append(_measure(w, nginx, wd / "out", options, missing, console))
    report.notes.append(
        "outputs verified (size + xxh3-128 per chunk; BDN also sha256 once) "
        "outside the timing; source data served from the page cache; an "
        "untimed warm-up write of each workload's size precedes its runs"
    )
    return report


def options_from_args(args: argparse.Namespace) -> TransferBenchOptions:
    """Build options from the parsed ``bdn bench transfer`` flags."""
    return TransferBenchOptions(size=parse_size(args.size, field="--size"), **common_options(args))


def transfer_command(args: argparse.Namespace) -> int:
    """``bdn bench transfer``: install missing tools if allowed, run, print; the exit status."""
    options = options_from_args(args)
    return run_command(
        "transfer",
        args,
        lambda console, unavailable: run_transfer_bench(
            options, console=console, unavailable=unavailable
        ),
        tools=REFERENCE_TOOLS,
    )
