"""Shared machinery of ``bdn bench``: tools, data, nginx, timing and the result table.

A benchmark here is only honest if every figure it prints stands next to a
reference measured in the same run, on the same data, on the same machine.
This module owns what every bench needs for that:

- the reference tools (a table of what to look for, how to install it, how to
  read its version), and installing them with apt-get when we may;
- machine facts for the report header;
- incompressible random data, generated once per run, with its SHA-256 and
  xxh3-128 chunk digests computed while it is written (never inside a timing);
- a throwaway nginx on loopback serving that data;
- timing helpers, the page-cache write ceiling, and the results model that
  renders as a ``rich`` table or as JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from bdn._units import format_bytes
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
# Reference tools


@dataclass(frozen=True, slots=True)
class Tool:
    """A program a bench needs: how to find it, install it and name its version."""

    name: str
    binary: str
    apt_package: str
    version_argv: tuple[str, ...]
    version_pattern: str


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("nginx", "nginx", "nginx", ("nginx", "-v"), r"nginx/(\S+)"),
        Tool("curl", "curl", "curl", ("curl", "--version"), r"curl (\S+)"),
        Tool("aria2c", "aria2c", "aria2", ("aria2c", "--version"), r"aria2 version (\S+)"),
        Tool("cp", "cp", "coreutils", ("cp", "--version"), r"coreutils\)? (\S+)"),
        Tool("sync", "sync", "coreutils", ("sync", "--version"), r"coreutils\)? (\S+)"),
    )
}
"""Every external program a bench may run, by name (policy as data, not branches)."""

_APT_TIMEOUT_S = 600


def tool_version(name: str) -> str | None:
    """The installed version of tool ``name``, or ``None`` when it is not on PATH."""
    tool = TOOLS[name]
    if shutil.which(tool.binary) is None:
        return None
    try:
        proc = subprocess.run(list(tool.version_argv), capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(tool.version_pattern, proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"


def install_command(tools: Sequence[Tool]) -> str:
    """The exact shell command that installs ``tools`` on Debian/Ubuntu."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    packages = " ".join(dict.fromkeys(t.apt_package for t in tools))
    return f"{sudo}apt-get install -y --no-install-recommends {packages}"


def _apt_install(packages: Sequence[str]) -> str | None:
    """Install packages with apt-get (``update`` and retry once); the error text or ``None``."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    error = None
    for attempt in (install, ["apt-get", "update"], install):
        try:
            proc = subprocess.run(attempt, capture_output=True, text=True, env=env,
                                  timeout=_APT_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"{' '.join(attempt)}: {err}"
        if proc.returncode == 0 and attempt is install:
            return None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            error = f"{' '.join(attempt[:2])} exited {proc.returncode}: {tail[-1] if tail else ''}"
    return error


def missing_tools(names: Sequence[str]) -> dict[str, str]:
    """``{name: reason}`` for each of the tools ``names`` that is not on PATH."""
    return {n: f"{TOOLS[n].binary} not on PATH; install with: {install_command([TOOLS[n]])}"
            for n in names if shutil.which(TOOLS[n].binary) is None}


def ensure_tools(names: Sequence[str], *, allow_install: bool,
                 console: Console) -> dict[str, str]:
    """Make sure the tools ``names`` are on PATH, installing them when we may.

    Installs with apt-get only when running as root, apt-get exists and
    ``allow_install`` is set, and says so on ``console``.

    Returns:
        ``{name: reason}`` for tools still missing after an install attempt, so
        the report can show them as "not available (reason)".

    Raises:
        BenchAbort: (exit 2) a tool is missing and we may not install it; the
            message is the one line naming the command that installs it (the
            caller prefixes it with the bench's name).
    """
    missing = [TOOLS[n] for n in names if shutil.which(TOOLS[n].binary) is None]
    if not missing:
        return {}
    listed = ", ".join(t.binary for t in missing)
    if not (allow_install and os.geteuid() == 0 and shutil.which("apt-get")):
        raise BenchAbort(f"needs {listed} (not on PATH); "
                         f"install with: {install_command(missing)}")
    packages = list(dict.fromkeys(t.apt_package for t in missing))
    console.print(f"[bold]installing missing reference tools:[/] {install_command(missing)}")
    error = _apt_install(packages)
    unavailable: dict[str, str] = {}
    for tool in missing:
        if shutil.which(tool.binary) is None:
            why = f"install failed: {error}" if error else "still not on PATH after install"
            unavailable[tool.name] = f"{tool.binary} not on PATH; {why}"
        else:
            console.print(f"installed {tool.name} {tool_version(tool.name)}")
    return unavailable


# ---------------------------------------------------------------------------
# Machine facts


@dataclass(frozen=True, slots=True)
class MachineFacts:
    """What the reader needs to judge the figures: hardware, kernel and tool versions."""

    cores: int
    ram_bytes: int
    kernel: str
    python: str
    filesystem: str
    tools: dict[str, str]

    def summary(self) -> str:
        tools = " · ".join(f"{k} {v}" for k, v in self.tools.items())
        return (f"{self.cores} cores · {format_bytes(self.ram_bytes)} RAM · "
                f"Linux {self.kernel} · Python {self.python} · workdir on {self.filesystem}"
                + (f" · {tools}" if tools else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"cores": self.cores, "ram_bytes": self.ram_bytes, "kernel": self.kernel,
                "python": self.python, "filesystem": self.filesystem, "tools": dict(self.tools)}


def _ram_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def filesystem_of(path: Path) -> str:
    """``"<fstype> (<device>)"`` of the mount holding ``path``, from /proc/mounts."""
    target = str(path.resolve())
    best = ("", "unknown", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, device)
    return f"{best[1]} ({best[2]})"


def machine_facts(tool_names: Sequence[str], workdir: Path) -> MachineFacts:
    """Collect the header facts; tools not installed are listed as ``missing``."""
    return MachineFacts(
        cores=os.cpu_count() or 1,
        ram_bytes=_ram_bytes(),
        kernel=platform.release(),
        python=platform.python_version(),
        filesystem=filesystem_of(workdir),
        tools={n: tool_version(n) or "missing" for n in tool_names},
    )


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
        raise BenchAbort(f"the bench needs about {format_bytes(needed)} free under {path}, "
                         f"only {format_bytes(free)} is; pass --workdir on a larger "
                         "filesystem or smaller --size/--shard-size", exit_code=1)


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


def generate_files(specs: Sequence[tuple[Path, int]], *,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[DataFile]:
    """Write incompressible random files and return them with their digests.

    Random pieces are produced one chunk at a time in worker threads (both
    ``os.urandom`` and numpy release the GIL) while this thread hashes and
    writes the previous piece, so generation costs about max(random, hash).
    Compressible data would flatter any tool that compresses or dedups.
    """
    pieces = [(i, min(chunk_size, size - start))
              for i, (_, size) in enumerate(specs) for start in range(0, size, chunk_size)]
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
    out = [DataFile(path, size, h.hexdigest(), tuple(c), chunk_size)
           for (path, size), h, c in zip(specs, sha, chunks, strict=True)]
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
# nginx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if it is taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_config(*, port: int, root: Path, state_dir: Path, as_root: bool) -> str:
    """A minimal nginx.conf: static files from ``root`` on 127.0.0.1:``port``.

    Everything nginx writes (pid, error log, temp paths) lives in ``state_dir``,
    so it runs unprivileged, or as root without touching /var. As root the
    workers stay root: the data usually sits under a 0700 temp dir (or /root)
    that the default ``nobody`` worker could not read, and the server listens
    on loopback only, serving random bytes, for the length of one bench.
    """
    temp = {name: state_dir / name for name in
            ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    lines = [
        "daemon off;",
        "worker_processes auto;",
        f"pid {state_dir / 'nginx.pid'};",
        f"error_log {state_dir / 'error.log'} warn;",
        *(["user root;"] if as_root else []),
        "events { worker_connections 4096; }",
        "http {",
        "    access_log off;",
        "    sendfile on;",
        "    tcp_nopush on;",
        "    keepalive_requests 100000;",
        "    default_type application/octet-stream;",
        *(f"    {name}_temp_path {path};" for name, path in temp.items()),
        "    server {",
        f"        listen 127.0.0.1:{port};",
        f"        root {root};",
        "        location / { }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


class Nginx:
    """A throwaway nginx serving ``root`` on loopback; a context manager that always stops it.

    ``nginx`` runs in the foreground (``daemon off``) in its own process group,
    so stopping it means signalling only the processes this object started.
    """

    START_TIMEOUT_S = 15.0
    STOP_TIMEOUT_S = 10.0

    def __init__(self, root: Path, state_dir: Path, *, binary: str = "nginx") -> None:
        self.root = root
        self.state_dir = state_dir
        self.binary = binary
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, relative: str) -> str:
        return f"http://127.0.0.1:{self.port}/{relative}"

    def __enter__(self) -> Nginx:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        # A port found free can be taken before nginx binds it; try a few.
        for _ in range(3):
            self.port = free_port()
            conf = self.state_dir / "nginx.conf"
            conf.write_text(nginx_config(port=self.port, root=self.root,
                                         state_dir=self.state_dir, as_root=os.geteuid() == 0))
            argv = [self.binary, "-p", str(self.state_dir), "-e", str(self.state_dir / "error.log"),
                    "-c", str(conf)]
            # stderr goes to a file, not a pipe: nobody drains a pipe while the bench
            # runs, and a full one would stall nginx mid-measurement.
            with open(self.state_dir / "stderr.log", "wb") as stderr:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=stderr,
                                              process_group=0)
            try:
                last_error = self._wait_ready()
            except BaseException:
                self.stop()
                raise
            if not last_error:
                return self
            self.stop()
        raise BenchAbort(f"nginx did not start: {last_error}", exit_code=1)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _wait_ready(self) -> str:
        """Poll until nginx answers HTTP; return ``""`` when ready, else why not."""
        assert self._proc is not None
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                logs = [self.state_dir / "stderr.log", self.state_dir / "error.log"]
                text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
                lines = [line for line in text.strip().splitlines() if line]
                # The first [emerg] says why (e.g. bind() failed: address in use); later
                # lines are nginx giving up ("still could not bind()").
                emerg = [line for line in lines if "[emerg]" in line]
                if emerg or lines:
                    return (emerg or lines)[0 if emerg else -1]
                return f"exited with status {self._proc.returncode}"
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                conn.request("HEAD", "/")
                conn.getresponse()  # Any status (403 for a bare dir) means it serves.
                return ""
            except OSError:
                time.sleep(0.05)
            finally:
                conn.close()
        return f"no answer on 127.0.0.1:{self.port} within {self.START_TIMEOUT_S:.0f}s"

    def stop(self) -> None:
        """Stop nginx (SIGTERM: fast shutdown), then SIGKILL its process group if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(self.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # The master is still unreaped, so its pid (our group id) cannot have
                # been reused: the group kill reaches only the nginx we started.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.STOP_TIMEOUT_S)


# ---------------------------------------------------------------------------
# Timing


def timeout_for(nbytes: int) -> float:
    """A bounded but generous timeout for moving ``nbytes`` (assumes >= 20 MB/s)."""
    return 60.0 + nbytes / 20e6


def run_timed(argv: Sequence[str], *, timeout: float, cwd: Path | None = None) -> float:
    """Run a command, return its wall-clock seconds; ``ToolFailed`` on non-zero exit or timeout."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(list(argv), cwd=cwd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{argv[0]} timed out after {timeout:.0f}s") from None
    except OSError as err:
        raise ToolFailed(f"{argv[0]}: {err}") from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ToolFailed(f"{argv[0]} exited {proc.returncode}: {tail[-1] if tail else ''}")
    return seconds


def write_ceiling(files: Sequence[tuple[Path, int]], *, threads: int = 4,
                  block: int = 8 * MiB) -> float:
    """Seconds to write ``files`` (path, size) from memory with ``os.pwrite`` from
    ``threads`` threads: the page-cache write ceiling that no downloader writing
    the same bytes to the same filesystem can beat. Opening and closing count."""
    buffer = memoryview(os.urandom(block))
    jobs = [(i, off, min(block, size - off))
            for i, (_, size) in enumerate(files) for off in range(0, size, block)]
    start = time.perf_counter()
    fds = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
           for path, _ in files]

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


def warm_up_writes(directory: Path, nbytes: int) -> None:
    """Write ``nbytes`` into ``directory`` untimed, then delete them.

    The first large write after the data is generated runs several times
    slower than every later one (measured 1.9 s against 0.35 s for 2 GiB on a
    2-core VM, where fresh guest memory is backed on first touch). Without
    this, whichever contender runs first would pay for the machine's warm-up.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        write_ceiling([(directory / "warm-up", nbytes)])
    finally:
        remove_outputs(directory)


# ---------------------------------------------------------------------------
# Results

Role = Literal["bdn", "reference", "ceiling", "info"]


@dataclass(slots=True)
class Result:
    """One row: a tool's timed runs over ``nbytes``, or why it has no figure.

    ``error`` set with no ``seconds`` shows as "not available (error)";
    ``failed`` marks a tool that was present but whose run broke or produced
    wrong bytes (it counts as a failure of the bench, not as "unavailable").
    """

    key: str
    label: str
    role: Role
    nbytes: int
    seconds: list[float] = field(default_factory=list)
    error: str | None = None
    failed: bool = False
    note: str = ""

    @property
    def best(self) -> float | None:
        return min(self.seconds) if self.seconds and self.error is None else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds and self.error is None else None

    @property
    def gbps(self) -> float | None:
        """Throughput of the best run in GB/s (10^9 bytes per second); ``None`` for
        ``info`` rows (a no-op re-mirror moves no bytes, so a rate would mislead)."""
        best = self.best
        return self.nbytes / best / 1e9 if best and self.role != "info" else None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "role": self.role, "bytes": self.nbytes,
                "seconds": [round(s, 4) for s in self.seconds], "best_s": self.best,
                "median_s": self.median, "gbps": self.gbps, "error": self.error,
                "failed": self.failed, "note": self.note}


@dataclass(frozen=True, slots=True)
class Timed:
    """Seconds of one run, and anything worth a note in its table row."""

    seconds: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class Aim:
    """A target of the issue: BDN must be at least ``factor`` times as fast as the row
    ``reference`` (a result key); ``name`` is how the aim line calls it."""

    reference: str
    factor: float
    name: str = ""


def ratio(bdn: Result, other: Result) -> float | None:
    """BDN's speed over ``other``'s (best runs); > 1 means BDN is faster."""
    a, b = bdn.gbps, other.gbps
    return a / b if a and b else None


def format_ratio(value: float | None) -> str:
    """``2.37x``, or ``—`` when either side has no figure."""
    return "—" if value is None else f"{value:.2f}x"


def format_seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_gbps(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


@dataclass(slots=True)
class Section:
    """One workload's rows; ``bdn_key`` names the row every ratio is taken against."""

    title: str
    bdn_key: str
    results: list[Result]
    aims: tuple[Aim, ...] = ()

    def get(self, key: str) -> Result:
        return next(r for r in self.results if r.key == key)

    def ratio_to(self, key: str) -> float | None:
        return ratio(self.get(self.bdn_key), self.get(key))

    def aim_lines(self) -> list[tuple[Aim, float | None, bool]]:
        """``(aim, achieved ratio, met)`` for each aim of this section."""
        out = []
        for aim in self.aims:
            achieved = self.ratio_to(aim.reference)
            out.append((aim, achieved, achieved is not None and achieved >= aim.factor))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "results": [{**r.to_dict(), "bdn_ratio": self.ratio_to(r.key)} for r in self.results],
            "aims": [{"reference": a.reference, "aim": a.factor, "achieved": got, "met": met}
                     for a, got, met in self.aim_lines()],
        }


@dataclass(slots=True)
class BenchReport:
    """A whole bench run: header facts, one section per workload, free-form notes."""

    command: str
    facts: MachineFacts
    repeat: int
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 if any run failed, 2 if a tool was not available, else 0 (aims missed is 0:
        a bench measures; it is not a gate)."""
        results = [r for s in self.sections for r in s.results]
        if any(r.failed for r in results):
            return 1
        return 2 if any(r.error for r in results) else 0

    def to_dict(self) -> dict[str, Any]:
        return {"command": f"bdn bench {self.command}", "machine": self.facts.to_dict(),
                "repeat": self.repeat, "sections": [s.to_dict() for s in self.sections],
                "notes": list(self.notes), "exit_code": self.exit_code}


def measure_rounds(section: Section, runners: Mapping[str, Callable[[Result], Timed]], *,
                   repeat: int, console: Console) -> None:
    """Run each row of ``section`` that has a runner ``repeat`` times, in rounds.

    The order rotates each round so no tool always runs first (the coldest
    machine) or last (after the most write-back). A runner gets its row (to
    see earlier runs) and raises ``ToolFailed`` to mark the row failed; rows
    already holding an error (tool not available) are not run.
    """
    keys = [r.key for r in section.results if r.key in runners]
    for round_ in range(repeat):
        shift = round_ % max(1, len(keys))
        for key in keys[shift:] + keys[:shift]:
            row = section.get(key)
            if row.error is not None:
                continue
            try:
                timed = runners[key](row)
            except ToolFailed as err:
                row.error, row.failed = str(err), True
                console.print(f"  {section.title} · {key}: [red]failed[/] ({err})")
                continue
            row.seconds.append(timed.seconds)
            row.note = timed.note or row.note
            rate = "" if row.role == "info" else \
                f" ({row.nbytes / max(timed.seconds, 1e-9) / 1e9:.2f} GB/s)"
            console.print(f"  {section.title} · run {round_ + 1}/{repeat} · {key}: "
                          f"{timed.seconds:.3f} s{rate}")


def _result_row(section: Section, r: Result) -> list[str]:
    if r.error is not None:
        status = "failed" if r.failed else "not available"
        return [r.label, format_bytes(r.nbytes), f"{status} ({r.error})", "", "", "", r.note]
    compared = r.role in ("reference", "ceiling")
    vs = format_ratio(section.ratio_to(r.key)) if compared else "—"
    return [r.label, format_bytes(r.nbytes), format_seconds(r.best), format_seconds(r.median),
            format_gbps(r.gbps), vs, r.note]


def build_table(section: Section) -> Table:
    """The ``rich`` table of one section."""
    table = Table(title=section.title, title_justify="left", header_style="bold")
    table.add_column("tool")
    table.add_column("bytes", justify="right")
    table.add_column("best s", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("GB/s", justify="right")
    table.add_column("BDN ÷ tool", justify="right")
    table.add_column("notes")
    for r in section.results:
        table.add_row(*_result_row(section, r))
    return table


def aim_text(aim: Aim, achieved: float | None, met: bool, title: str) -> str:
    """One line: the aim stated by the issue next to the achieved ratio."""
    verdict = "met" if met else ("no figure" if achieved is None else "below aim")
    return (f"{title}: aim BDN >= {aim.factor:g}x {aim.name or aim.reference}; "
            f"achieved {format_ratio(achieved)} ({verdict})")


def emit_report(report: BenchReport, *, as_json: bool) -> None:
    """Print ``report`` on stdout: JSON with ``as_json``, else the rich tables.

    Off a terminal rich would wrap at 80 columns; the table is wider than that.
    """
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    render_report(report, Console(soft_wrap=True) if sys.stdout.isatty()
                  else Console(width=160, soft_wrap=True))


def progress_console() -> Console:
    """Where benches print progress: stderr, lines never hard-wrapped (logs stay greppable)."""
    return Console(stderr=True, soft_wrap=True, highlight=False)


def render_report(report: BenchReport, console: Console) -> None:
    """Print the header, one table per section, the aim lines and the notes."""
    console.print(f"[bold]bdn bench {report.command}[/]  {report.facts.summary()}")
    console.print(f"best and median of {report.repeat} run(s); GB/s = 10^9 bytes/s of the best "
                  "run; BDN ÷ tool = BDN's GB/s over that row's (> 1: BDN is faster)")
    for section in report.sections:
        console.print(build_table(section))
    for section in report.sections:
        for aim, achieved, met in section.aim_lines():
            style = "green" if met else "red"
            console.print(f"[{style}]{aim_text(aim, achieved, met, section.title)}[/]")
    for note in report.notes:
        console.print(f"note: {note}")
