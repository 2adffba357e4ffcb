"""The references the transfer and pull benches run, and how a run's output is checked.

- :func:`run_curl`: one ``curl`` stream per file, in turn;
- :func:`run_aria2c`: ``aria2c -x16 -s16 -k1M``, every file at once;
- :func:`run_ceiling`: the page-cache write ceiling (optionally with an fsync);
- :func:`check_outputs`: what a run wrote against the generated files
  (contents, or only sizes for the write ceilings, which write a repeated
  buffer by design);
- :func:`run_checked`: one timed run into a fresh directory, its output
  checked outside the timing and then removed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness import (
    DataFile,
    ToolFailed,
    remove_outputs,
    run_timed,
    timeout_for,
    verify_file,
    write_ceiling,
)
from bench.report import Timed

ARIA2C_FLAGS = (
    "-x16",
    "-s16",
    "-k1M",
    "--file-allocation=none",
    "--quiet=true",
    "--allow-overwrite=true",
    "--auto-file-renaming=false",
)
"""aria2c as both benches run it: 16 connections per file, 1 MiB pieces."""

Download = tuple[str, DataFile]
"""A URL and the generated file it serves (saved under the file's name)."""


def run_curl(downloads: Sequence[Download], out: Path) -> Timed:
    """``curl`` each URL into ``out``, one after the other; timed as a whole."""
    start = time.perf_counter()
    for url, f in downloads:
        run_timed(
            ["curl", "-sS", "--fail", "-o", str(out / f.path.name), url],
            timeout=timeout_for(f.size),
        )
    return Timed(time.perf_counter() - start)


def run_aria2c(downloads: Sequence[Download], out: Path, *, listing: Path | None) -> Timed:
    """One ``aria2c`` run fetching every URL into ``out`` at once.

    With ``listing``, the URLs go through that input file (``-j`` = their
    number); without, there must be one URL, given on the command line.
    """
    argv = ["aria2c", *ARIA2C_FLAGS]
    if listing is None:
        ((url, f),) = downloads
        argv += ["-d", str(out), "-o", f.path.name, url]
        note = ""
    else:
        listing.write_text("".join(f"{url}\n  out={f.path.name}\n" for url, f in downloads))
        argv += ["-j", str(len(downloads)), "-d", str(out), "-i", str(listing)]
        note = f"-j {len(downloads)} via input file"
    nbytes = sum(f.size for _, f in downloads)
    return Timed(run_timed(argv, timeout=timeout_for(nbytes)), note)


def check_outputs(
    out: Path, files: Sequence[DataFile], *, content: bool, sha256: bool = False
) -> None:
    """Every file of a run in ``out``: size and xxh3-128 per chunk (with ``sha256``
    the SHA-256 too), or with ``content=False`` only its size; ``ToolFailed`` if not."""
    for f in files:
        if content:
            verify_file(out / f.path.name, f, sha256=sha256)
        elif (size := (out / f.path.name).stat().st_size) != f.size:
            raise ToolFailed(f"{f.path.name} has {size} bytes, expected {f.size}")


def run_ceiling(
    files: Sequence[DataFile], out: Path, *, threads: int, durable: bool = False
) -> Timed:
    """The page-cache write ceiling for ``files`` in ``out``; with ``durable``, plus an
    fsync of every file, which is what ``bdn pull --fsync`` makes the node cache do
    before publishing a blob."""
    targets = [(out / f.path.name, f.size) for f in files]
    if not durable:
        return Timed(write_ceiling(targets, threads=threads))
    os.sync()  # Earlier runs' dirty pages must not be billed to this one.
    seconds = write_ceiling(targets, threads=threads)
    start = time.perf_counter()
    for path, _ in targets:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return Timed(seconds + time.perf_counter() - start)


def run_checked(
    out: Path,
    files: Sequence[DataFile],
    run: Callable[[], Timed],
    *,
    content: bool,
    sha256: bool = False,
) -> Timed:
    """``run`` (timed by itself) writing ``files`` into a fresh ``out``; then, outside
    the timing, :func:`check_outputs` (a fast wrong answer must not count) and the
    outputs removed, so the next run starts cold on the destination side."""
    out.mkdir(parents=True)
    try:
        timed = run()
        check_outputs(out, files, content=content, sha256=sha256)
        return timed
    finally:
        remove_outputs(out)
