"""Shared machinery of ``bdn bench``: errors, work directory, data and timing.

A benchmark here is only honest if every figure it prints stands next to a
reference measured in the same run, on the same data, on the same machine.
The pieces of that are split by domain:

- this module: the bench's errors, a throwaway work directory, incompressible
  random data generated once per run with its SHA-256 and xxh3-128 chunk
  digests computed while it is written (never inside a timing), and the timing
  helpers with the page-cache write ceiling;
- :mod:`bench.tools`: the reference tools (what to look for, how to install
  it, how to read its version) and the machine facts for the report header;
- :mod:`bench.nginx`: a throwaway nginx on loopback serving the data;
- :mod:`bench.report`: the results model, measured in rounds, rendered as a
  ``rich`` table or as JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rich.console import Console

from bdn.config.units import format_bytes
from bdn.digest import DEFAULT_CHUNK_SIZE, new_xxh3, xxh3_128_hex

MiB = 1 << 20
GiB = 1 << 30

# ---------------------------------------------------------------------------
# Errors


class BenchAbort(Exception):
    """The bench cannot run at all; ``str()`` is the one line to print, ``exit_code`` the status."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ToolFailed(Exception):
    """One measured run failed (a tool's non-zero exit, a timeout, wrong output bytes)."""


# ---------------------------------------------------------------------------
# Work directory, signals, disk space


@contextlib.contextmanager
def bench_workdir(parent: Path | None, *, keep: bool, console: Console) -> Iterator[Path]:
    """A fresh directory for one bench run, removed on exit unless ``keep``.

    With ``parent`` (``--workdir``) the fresh directory is made inside it, so a
    bench never deletes anything it did not create. Without, it lands in the
    system temp dir (the filesystem of /tmp unless ``TMPDIR`` says otherwise).
    """
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="bdn-bench-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            console.print(f"kept workdir {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` while a bench runs, so its cleanup (stopping
    nginx, removing the workdir) runs on ``kill`` as it does on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def require_free_space(path: Path, needed: int) -> None:
    """Raise ``BenchAbort`` (exit 1) when ``path``'s filesystem has less than ``needed`` free."""
    free = shutil.disk_usage(path).free
    if free < needed:
        raise BenchAbort(
            f"the bench needs about {format_bytes(needed)} free under {path}, "
            f"only {format_bytes(free)} is; pass --workdir on a larger "
            "filesystem or smaller --size/--shard-size",
            exit_code=1,
        )


def remove_outputs(path: Path) -> None:
    """Delete a run's outputs and flush the page cache's dirty pages, so the next run
    starts cold on the destination side and no write-back of this run bills it."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.sync()


# ---------------------------------------------------------------------------
# Data


@dataclass(frozen=True, slots=True)
class DataFile:
    """A generated file with the digests a pull would find in its manifest."""

    path: Path
    size: int
    sha256: str
    chunks: tuple[str, ...]
    chunk_size: int


def _random_source() -> Callable[[int], bytes]:
    """numpy's generator when numpy is importable (faster), else ``os.urandom``."""
    try:
        import numpy
    except ImportError:
        return os.urandom
    rng = numpy.random.default_rng()
    lock = threading.Lock()  # A numpy Generator is not safe to share between threads.

    def _bytes(n: int) -> bytes:
        with lock:
            return bytes(rng.bytes(n))

    return _bytes


def generate_files(
    specs: Sequence[tuple[Path, int]], *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> list[DataFile]:
    """Write incompressible random files and return them with their digests.

    Random pieces are produced one chunk at a time in worker threads (both
    ``os.urandom`` and numpy release the GIL) while this thread hashes and
    writes the previous piece, so generation costs about max(random, hash).
    Compressible data would flatter any tool that compresses or dedups.
    """
    pieces = [
        (i, min(chunk_size, size - start))
        for i, (_, size) in enumerate(specs)
        for start in range(0, size, chunk_size)
    ]
    sha = [hashlib.sha256() for _ in specs]
    chunks: list[list[str]] = [[] for _ in specs]
    random_bytes = _random_source()
    workers = max(1, min(4, os.cpu_count() or 1))
    ahead = workers + 1  # Pieces in flight: bounds memory to ahead x chunk_size.
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(path, "wb")) for path, _ in specs]
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers))
        pending = deque(pool.submit(random_bytes, n) for _, n in pieces[:ahead])
        for position, (index, _) in enumerate(pieces):
            data = pending.popleft().result()
            if position + ahead < len(pieces):
                pending.append(pool.submit(random_bytes, pieces[position + ahead][1]))
            files[index].write(data)
            sha[index].update(data)
            chunks[index].append(xxh3_128_hex(data))
    out = [
        DataFile(path, size, h.hexdigest(), tuple(c), chunk_size)
        for (path, size), h, c in zip(specs, sha, chunks, strict=True)
    ]
    os.sync()
    return out


def verify_file(path: Path, expected: DataFile, *, sha256: bool = False) -> None:
    """Check an output against its source: size and xxh3-128 chunk digests, and with
    ``sha256`` the whole-file SHA-256 too. Raises ``ToolFailed`` naming the mismatch."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ToolFailed(f"{path.name} was not written") from None
    if size != expected.size:
        raise ToolFailed(f"{path.name} has {size} bytes, expected {expected.size}")
    sha = hashlib.sha256() if sha256 else None
    with open(path, "rb", buffering=0) as f:
        for index, want in enumerate(expected.chunks):
            hasher = new_xxh3()
            left = min(expected.chunk_size, size - index * expected.chunk_size)
            while left:
                block = f.read(min(left, 8 * MiB))
                if not block:
                    raise ToolFailed(f"{path.name} ended early")
                hasher.update(block)
                if sha is not None:
                    sha.update(block)
                left -= len(block)
            if hasher.hexdigest() != want:
                raise ToolFailed(f"{path.name} chunk {index} has wrong bytes (xxh3-128)")
    if sha is not None and sha.hexdigest() != expected.sha256:
        raise ToolFailed(f"{path.name} has sha256 {sha.hexdigest()}, expected {expected.sha256}")


# ---------------------------------------------------------------------------
# Timing


def timeout_for(nbytes: int) -> float:
    """A bounded but generous timeout for moving ``nbytes`` (assumes >= 20 MB/s)."""
    return 60.0 + nbytes / 20e6


def run_timed(argv: Sequence[str], *, timeout: float, cwd: Path | None = None) -> float:
    """Run a command, return its wall-clock seconds; ``ToolFailed`` on non-zero exit or timeout."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{argv[0]} timed out after {timeout:.0f}s") from None
    except OSError as err:
        raise ToolFailed(f"{argv[0]}: {err}") from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ToolFailed(f"{argv[0]} exited {proc.returncode}: {tail[-1] if tail else ''}")
    return seconds


def write_ceiling(
    files: Sequence[tuple[Path, int]], *, threads: int = 4, block: int = 8 * MiB
) -> float:
    """Seconds to write ``files`` (path, size) from memory with ``os.pwrite`` from
    ``threads`` threads: the page-cache write ceiling that no downloader writing
    the same bytes to the same filesystem can beat. Opening and closing count."""
    buffer = memoryview(os.urandom(block))
    jobs = [
        (i, off, min(block, size - off))
        for i, (_, size) in enumerate(files)
        for off in range(0, size, block)
    ]
    start = time.perf_counter()
    fds = [
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        for path, _ in files
    ]

    def _write(job: tuple[int, int, int]) -> None:
        index, offset, length = job
        done = 0
        while done < length:
            done += os.pwrite(fds[index], buffer[done:length], offset + done)

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(_write, jobs):
                pass
    finally:
        for fd in fds:
            os.close(fd)
    return time.perf_counter() - start


_SOURCE_BUFFER = bytearray(8 * MiB)


def warm_up_writes(directory: Path, nbytes: int, sources: Sequence[Path] = ()) -> None:
    """Write ``nbytes`` into ``directory`` untimed, then delete them.

    A large write into memory that was freed a few seconds earlier runs
    several times slower than one into memory just used: on this VM, 2 GiB of
    page cache written after a 6 s pause took 2.4-4.7 s at 1.7-3.4 CPU-s/GB,
    and 0.6-0.9 s at 0.4-0.7 right after a warm-up (the host takes freed guest
    pages back and backs them again on first touch). Then everything still
    dirty is written back (``sync``): a run that starts while the kernel is
    flushing the generated data or an earlier tool's output pays for that
    write-back too (the same page-cache write measured 1.2-3.1 s without the
    sync and 1.36 s with it, in one bench run). Run right before every timed
    run, so no contender pays for what ran before it.

    ``sources`` (the files the origin serves) are read through once, so the
    origin sends every contender its bytes from the page cache: this VM's
    proactive reclaim pages out files left unread for a few seconds.
    """
    for source in sources:
        with source.open("rb", buffering=0) as f:
            while f.readinto(_SOURCE_BUFFER):
                pass
    directory.mkdir(parents=True, exist_ok=True)
    try:
        write_ceiling([(directory / "warm-up", nbytes)])
    finally:
        remove_outputs(directory)
    os.sync()
