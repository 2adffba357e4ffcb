"""The references the transfer and pull benches run, and how a run's output is checked.

- :func:`run_curl`: one ``curl`` stream per file, in turn;
- :func:`run_curl_parallel`: one ``curl`` per file, all at once (what
  ``xargs -P`` gives a user: the reference for CPU per byte and wall);
- :func:`run_aria2c`: ``aria2c -x16 -s16 -k1M``, every file at once;
- :func:`run_ceiling`: the page-cache write ceiling (optionally with an fsync);
- :func:`check_outputs`: what a run wrote against the generated files
  (contents, or only sizes for the write ceilings, which write a repeated
  buffer by design);
- :func:`run_checked`: one timed run into a fresh directory, its output
  checked outside the timing and then removed;
- :func:`tree_cpu_seconds` / :func:`with_cpu`: user+sys CPU of this process
  and every child it has reaped (curl, aria2c, BDN's worker processes).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
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


def run_curl_parallel(downloads: Sequence[Download], out: Path) -> Timed:
    """One ``curl`` per URL into ``out``, all started at once; timed until the last ends."""
    timeout = timeout_for(sum(f.size for _, f in downloads))
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["curl", "-sS", "--fail", "-o", str(out / f.path.name), url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for url, f in downloads
    ]
    failures = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - start)))
            if proc.returncode != 0:
                tail = err.decode(errors="replace").strip().splitlines()
                failures.append(f"curl exited {proc.returncode}: {tail[-1] if tail else ''}")
    except subprocess.TimeoutExpired:
        failures.append(f"curl timed out after {timeout:.0f}s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failures:
        raise ToolFailed(failures[0])
    return Timed(time.perf_counter() - start, f"{len(procs)} at once")


def tree_cpu_seconds() -> float:
    """User+sys CPU-seconds of this process (all threads) and of its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def with_cpu(run: Callable[[], Timed]) -> Timed:
    """``run()`` with its process tree's CPU-seconds, unless it measured them itself.

    Children count once reaped: every reference tool is waited for, and BDN's
    worker processes are waited for when its engine closes, inside ``run``.
    """
    before = tree_cpu_seconds()
    timed = run()
    if timed.cpu is not None:
        return timed
    return dataclasses.replace(timed, cpu=tree_cpu_seconds() - before)


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
        timed = with_cpu(run)
        check_outputs(out, files, content=content, sha256=sha256)
        return timed
    finally:
        remove_outputs(out)
