"""``bdn bench mirror``: a file -> file mirror through ``run_mirror`` against ``cp -r``.

The mirror reads every byte, hashes it (SHA-256 for the blob identity,
xxh3-128 per chunk) and commits content-addressed blobs; ``cp -r`` of the same
tree onto the same filesystem is the floor any copy pays. The issue's aim is a
mirror at >= 0.8x the speed of ``cp -r`` while hashing. A second, unchanged
mirror into the same store is timed too: it must move zero bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bdn.backends import open_store
from bdn.config.secrets import SecretResolver
from bdn.config.units import format_bytes
from bdn.config.weights import WeightsEntry
from bdn.digest import Digest
from bdn.errors import BdnError, ConfigError
from bdn.mirror import DEFAULT_MIRROR_OPTIONS, MirrorOptions, MirrorResult, run_mirror
from bdn.store import blob_key
from bench.command import bench_run, common_options, run_command
from bench.harness import (
    DataFile,
    MiB,
    ToolFailed,
    remove_outputs,
    run_timed,
    timeout_for,
    verify_file,
    warm_up_writes,
)
from bench.model import generate_shards
from bench.report import Aim, BenchReport, Result, Section, Timed, measure_rounds, progress_console
from bench.tools import missing_tools

REFERENCE_TOOLS = ("cp", "sync")
AIMS = (Aim("cp", 0.8, "cp -r"),)
"""The issue's target: a mirror at >= 0.8x the speed of ``cp -r`` while hashing."""


@dataclass(frozen=True, slots=True)
class MirrorBenchOptions:
    """Sizes and knobs of one ``bdn bench mirror`` run.

    Attributes:
        shards: files in the source tree.
        shard_size: bytes of each file.
        repeat: timed runs per contender (best and median reported).
        workdir: parent of the fresh work directory (default: the system temp dir).
        keep: keep the work directory afterwards.
    """

    shards: int = 8
    shard_size: int = 256 * MiB
    repeat: int = 2
    workdir: Path | None = None
    keep: bool = False

    def check(self) -> None:
        """Raise ``ConfigError`` for values no bench can run with."""
        for name in ("shards", "shard_size", "repeat"):
            if getattr(self, name) < 1:
                raise ConfigError("must be at least 1", field=f"--{name.replace('_', '-')}")

    @property
    def nbytes(self) -> int:
        return self.shards * self.shard_size


DEFAULT_MIRROR_BENCH_OPTIONS = MirrorBenchOptions()


def _run_cp(r: Result, *, src: Path, files: list[DataFile], dest: Path) -> Timed:
    """``cp -r`` of the source tree onto the same filesystem, verified, then removed."""
    try:
        seconds = run_timed(["cp", "-r", str(src), str(dest)], timeout=timeout_for(r.nbytes))
        for f in files:
            verify_file(dest / f.path.name, f)
        return Timed(seconds)
    finally:
        remove_outputs(dest)


def _run_cp_sync(r: Result, *, src: Path, files: list[DataFile], dest: Path) -> Timed:
    """``cp -r`` then ``sync -f``: the copy made as durable as the mirror's store.

    The store fsyncs every blob before publishing its name (so a power loss
    never leaves a short file under a real key); plain ``cp -r`` leaves its
    bytes in the page cache. This row compares like with like. Dirty data of
    earlier runs is flushed first, untimed, so only this copy is timed.
    """
    try:
        run_timed(["sync"], timeout=timeout_for(r.nbytes))
        seconds = run_timed(["cp", "-r", str(src), str(dest)], timeout=timeout_for(r.nbytes))
        seconds += run_timed(["sync", "-f", str(dest)], timeout=timeout_for(r.nbytes))
        for f in files:
            verify_file(dest / f.path.name, f)
        return Timed(seconds)
    finally:
        remove_outputs(dest)


async def _mirror_twice(
    src: Path, store_dir: Path
) -> tuple[float, MirrorResult, float, MirrorResult]:
    """A cold mirror into a fresh store, then the same mirror again (unchanged source)."""
    # Plain file:// URIs: BDN takes file paths literally (no percent-decoding).
    store = open_store(f"file://{store_dir}")
    entry = WeightsEntry(source=f"file://{src}")
    secrets = SecretResolver(secrets_dir=None, environ={})
    try:
        start = time.perf_counter()
        cold = await run_mirror(entry, store=store, secrets=secrets, options=DEFAULT_MIRROR_OPTIONS)
        middle = time.perf_counter()
        again = await run_mirror(
            entry, store=store, secrets=secrets, options=DEFAULT_MIRROR_OPTIONS
        )
        end = time.perf_counter()
    finally:
        await store.close()
    return middle - start, cold, end - middle, again


def _check_store(
    store_dir: Path, files: list[DataFile], cold: MirrorResult, *, sha256: bool
) -> None:
    """The mirror's blobs must be the source's bytes, under their SHA-256 keys."""
    if cold.files != len(files) or cold.total_bytes != sum(f.size for f in files):
        raise ToolFailed(
            f"mirror reported {cold.files} files / {cold.total_bytes} bytes, "
            f"expected {len(files)} / {sum(f.size for f in files)}"
        )
    for f in files:
        verify_file(store_dir / blob_key(Digest(f.sha256)), f, sha256=sha256)


def _run_bdn(
    r: Result, *, src: Path, files: list[DataFile], store_dir: Path, again_row: Result
) -> Timed:
    """Mirror into a fresh ``file://`` store and re-mirror unchanged; verify; remove the store.

    The re-mirror's time lands in ``again_row``; its bytes_transferred in its note.
    """
    try:
        try:
            cold_s, cold, again_s, again = asyncio.run(_mirror_twice(src, store_dir))
        except (BdnError, OSError) as err:
            raise ToolFailed(f"run_mirror: {err}") from err
        _check_store(store_dir, files, cold, sha256=not r.seconds)
    finally:
        remove_outputs(store_dir)
    again_row.seconds.append(again_s)
    moved = again.bytes_transferred
    again_row.note = f"bytes_transferred {moved}" + ("" if moved == 0 else " (expected 0!)")
    return Timed(
        cold_s,
        f"bytes_transferred {cold.bytes_transferred} ({format_bytes(cold.bytes_transferred)})",
    )


def _section(options: MirrorBenchOptions, missing: dict[str, str]) -> tuple[Section, Result]:
    """The bench's one section, empty, and its row of the unchanged re-mirror."""
    title = f"file -> file mirror, {options.shards} files of {format_bytes(options.shard_size)}"
    again = Result("again", "bdn re-mirror, unchanged", "info", options.nbytes)
    section = Section(
        title,
        "bdn",
        [
            Result("bdn", "bdn mirror (sha256 + xxh3-128)", "bdn", options.nbytes),
            Result("cp", "cp -r", "reference", options.nbytes, error=missing.get("cp")),
            Result(
                "cp_sync",
                "cp -r + sync (durable, like the store)",
                "reference",
                options.nbytes,
                error=missing.get("cp") or missing.get("sync"),
            ),
            again,
        ],
        AIMS,
    )
    return section, again


def run_mirror_bench(
    options: MirrorBenchOptions = DEFAULT_MIRROR_BENCH_OPTIONS, *, console: Console | None = None
) -> BenchReport:
    """Run ``bdn bench mirror`` and return its report (the function API; installs nothing).

    Raises:
        BenchAbort: ``cp`` is missing or the disk is too small.
        ConfigError: an option is out of range.
    """
    options.check()
    console = console or progress_console()
    missing = missing_tools(REFERENCE_TOOLS)
    # Source + one copy (cp or store) at a time + staging headroom.
    needs = 2 * options.nbytes + 256 * MiB
    run = bench_run("mirror", options, console, needs=needs, tools=REFERENCE_TOOLS)
    with run as (wd, report):
        src = wd / "src"
        console.print(f"generating {format_bytes(options.nbytes)} of random data in {src}")
        files = generate_shards(src, [options.shard_size] * options.shards)
        section, again = _section(options, missing)
        runners: dict[str, Callable[[Result], Timed]] = {
            "bdn": functools.partial(
                _run_bdn, src=src, files=files, store_dir=wd / "store", again_row=again
            ),
            "cp": functools.partial(_run_cp, src=src, files=files, dest=wd / "cp-copy"),
            "cp_sync": functools.partial(
                _run_cp_sync, src=src, files=files, dest=wd / "cp-sync-copy"
            ),
        }
        measure_rounds(
            section,
            runners,
            repeat=options.repeat,
            console=console,
            prepare=functools.partial(
                warm_up_writes, wd / "warm-up", options.nbytes, [f.path for f in files]
            ),
        )
        report.sections.append(section)
    report.notes.append(
        "each run mirrors into a fresh file:// store on the workdir's "
        "filesystem; blobs verified (size + xxh3-128, sha256 once) outside "
        "the timing; an untimed warm-up write of the same size, a read of the "
        "source and a sync precede every run"
    )
    if "expected 0" in again.note:
        report.notes.append("an unchanged re-mirror transferred bytes; dedup is not working")
    return report


def options_from_args(args: argparse.Namespace) -> MirrorBenchOptions:
    """Build options from the parsed ``bdn bench mirror`` flags."""
    return MirrorBenchOptions(**common_options(args))


def mirror_command(args: argparse.Namespace) -> int:
    """``bdn bench mirror``: run, print; the exit status (``--source hf``: see mirror_hf;
    ``https``/``azure``: see mirror_sources)."""
    source = getattr(args, "source", "file")
    if source == "hf":
        from bench.mirror_hf import mirror_hf_command

        return mirror_hf_command(args)
    options = options_from_args(args)
    if source in ("https", "azure"):
        from bench.mirror_sources import run_mirror_source_bench

        return run_command(
            f"mirror --source {source}",
            args,
            lambda console, _: run_mirror_source_bench(source, options, console=console),
        )
    return run_command(
        "mirror",
        args,
        lambda console, _: run_mirror_bench(options, console=console),
        tools=REFERENCE_TOOLS,
    )


async def mirror_twice(
    entry: WeightsEntry, store_dir: Path, secrets: SecretResolver, options: MirrorOptions
) -> tuple[float, MirrorResult, float, MirrorResult]:
    """A cold mirror into a fresh ``file://`` store, then the same mirror again (unchanged)."""
    store = open_store(f"file://{store_dir}")
    try:
        start = time.perf_counter()
        cold = await run_mirror(entry, store=store, secrets=secrets, options=options)
        middle = time.perf_counter()
        again = await run_mirror(entry, store=store, secrets=secrets, options=options)
        end = time.perf_counter()
    finally:
        await store.close()
    return middle - start, cold, end - middle, again
