"""``bdn bench mirror --source https|azure``: a remote source mirrored into a fresh
``file://`` store, against the download tool a user would reach for, in the same run.

- ``https``: a throwaway nginx serves the shards; the reference is curl, one
  process per file, all at once (``xargs -P``). The mirror reads plain HTTP on
  loopback through the https:// source (TLS costs both sides alike and needs a
  certificate the client trusts; it is left out).
- ``azure``: Azurite (npm ``azurite``, what ``.ci/run`` installs) holds the shards;
  the reference is the Azure SDK's own ``download_blob(max_concurrency=8)`` of
  every blob in parallel threads.

Each row notes its CPU-seconds per GB: user+sys of this process (the mirror and
the SDK run in it) or of the curl processes; the server's CPU is left out of
both. An unchanged re-mirror is timed too: it must move zero bytes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from bdn.backends import open_store
from bdn.config.secrets import SecretResolver
from bdn.config.units import format_bytes
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.digest import Digest
from bdn.errors import BdnError
from bdn.http import HttpClient
from bdn.mirror import MirrorOptions, MirrorResult
from bdn.store import Store, blob_key
from bench.command import bench_run
from bench.harness import BenchAbort, DataFile, MiB, ToolFailed, remove_outputs, verify_file
from bench.mirror import MirrorBenchOptions, mirror_twice
from bench.model import generate_shards
from bench.nginx import Nginx
from bench.report import BenchReport, Result, Section, Timed, measure_rounds, progress_console
from bench.tools import missing_tools

__all__ = ["run_mirror_source_bench"]

_REPO = Path(__file__).resolve().parents[1]
_CONTAINER = "bench"

# A mirror runner: (store dir) -> (cold seconds, cold result, again seconds, again result).
_Mirror = Callable[[Path], tuple[float, MirrorResult, float, MirrorResult]]


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_note(cpu_s: float, nbytes: int) -> str:
    return f"CPU {cpu_s / (nbytes / 1e9):.2f} s/GB"


def _check(store_dir: Path, files: list[DataFile], cold: MirrorResult, *, sha256: bool) -> None:
    if cold.files != len(files) or cold.total_bytes != sum(f.size for f in files):
        raise ToolFailed(f"mirror reported {cold.files} files / {cold.total_bytes} bytes")
    for f in files:
        verify_file(store_dir / blob_key(Digest(f.sha256)), f, sha256=sha256)


def _run_bdn(r: Result, *, mirror: _Mirror, files: list[DataFile], store_dir: Path,
             again_row: Result) -> Timed:
    """Mirror cold, re-mirror unchanged; verify the blobs; remove the store."""
    try:
        cpu = _cpu_self()
        try:
            cold_s, cold, again_s, again = mirror(store_dir)
        except (BdnError, OSError) as err:
            raise ToolFailed(f"run_mirror: {err}") from err
        cpu = _cpu_self() - cpu
        _check(store_dir, files, cold, sha256=not r.seconds)
    finally:
        remove_outputs(store_dir)
    again_row.seconds.append(again_s)
    moved = again.bytes_transferred
    again_row.note = f"bytes_transferred {moved}" + ("" if moved == 0 else " (expected 0!)")
    # The CPU covers both mirrors; the unchanged one moves no byte and costs little.
    return Timed(cold_s, _cpu_note(cpu, r.nbytes) + " (with the re-mirror)")


# --------------------------------------------------------------------------- https


async def _https_twice(url: str, names: tuple[str, ...], store_dir: Path
                       ) -> tuple[float, MirrorResult, float, MirrorResult]:
    # Imported here: the source is private to bdn, and plain http:// on loopback is
    # only reachable by building it directly (a weights entry takes https:// only).
    from bdn.backends.http.source import HttpsSource
    from bdn.mirror.run import _mirror

    entry = WeightsEntry(source="https://bench.invalid/m/", allow_patterns=names)
    store = Store(open_store(f"file://{store_dir}"))
    http = HttpClient()
    times: list[float] = []
    results: list[MirrorResult] = []
    try:
        for _ in range(2):
            source = HttpsSource(url, files=names, http=http)
            start = time.perf_counter()
            results.append(await _mirror(entry, source, store, MirrorOptions(), None, None))
            times.append(time.perf_counter() - start)
            await source.close()
    finally:
        await http.close()
        await store.backend.close()
    return times[0], results[0], times[1], results[1]


def _run_curl(r: Result, *, urls: list[str], files: list[DataFile], dest: Path) -> Timed:
    """curl, one process per file, all at once; verified, then removed."""
    dest.mkdir(parents=True, exist_ok=True)
    script = "\n".join(urls) + "\n"
    cpu, start = _cpu_children(), time.perf_counter()
    proc = subprocess.run(["xargs", "-P", str(len(urls)), "-n", "1", "curl", "-sSf",
                           "--remote-name", "--output-dir", str(dest)],
                          input=script.encode(), capture_output=True, check=False)
    seconds, cpu = time.perf_counter() - start, _cpu_children() - cpu
    try:
        if proc.returncode:
            raise ToolFailed(f"curl: {proc.stderr.decode(errors='replace').strip()[:200]}")
        for f in files:
            verify_file(dest / f.path.name, f, sha256=not r.seconds)
    finally:
        remove_outputs(dest)
    return Timed(seconds, _cpu_note(cpu, r.nbytes))


@contextmanager
def _https_workload(wd: Path, files: list[DataFile], src: Path
                    ) -> Iterator[tuple[_Mirror, dict[str, Callable[..., Timed]], str]]:
    missing = missing_tools(("nginx", "curl"))
    if "nginx" in missing:
        raise BenchAbort(f"--source https needs nginx: {missing['nginx']}", exit_code=2)
    names = tuple(f.path.name for f in files)
    with Nginx(src, wd / "nginx") as nginx:
        url = nginx.url("")

        def mirror(store_dir: Path) -> tuple[float, MirrorResult, float, MirrorResult]:
            return asyncio.run(_https_twice(url, names, store_dir))

        refs: dict[str, Callable[..., Timed]] = {}
        if "curl" not in missing:
            refs["ref"] = lambda r: _run_curl(r, urls=[nginx.url(n) for n in names],
                                              files=files, dest=wd / "curl-out")
        yield mirror, refs, f"curl, {len(names)} in parallel (xargs -P)"


# --------------------------------------------------------------------------- azure


def _load_azurite() -> ModuleType:
    path = _REPO / "tests" / "backends" / "azure" / "azurite.py"
    spec = importlib.util.spec_from_file_location("bench_azurite", path)
    if spec is None or spec.loader is None or not path.exists():
        raise BenchAbort(f"--source azure needs {path} from a source checkout", exit_code=2)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def _azurite_process(module: Any, workdir: Path) -> Iterator[str]:
    """Azurite's blob service on loopback, in memory; yields its endpoint."""
    binary = module.azurite_binary()
    if binary is None:
        raise BenchAbort("--source azure needs azurite: run `npm install --prefix .ci/node "
                         "azurite`", exit_code=2)
    workdir.mkdir(parents=True, exist_ok=True)
    with module.running(binary, workdir) as endpoint:
        yield endpoint


async def _azure_twice(endpoint: str, module: Any, store_dir: Path
                       ) -> tuple[float, MirrorResult, float, MirrorResult]:
    entry = WeightsEntry(source=f"azure://{module.ACCOUNT}/{_CONTAINER}", auth=AuthConfig(
        auth_method="CUSTOM_SECRET", auth_secret_name="azure_credentials"))
    secrets = SecretResolver(None, {"BDN_SECRET_AZURE_CREDENTIALS": json.dumps(
        {"account_key": module.ACCOUNT_KEY})})
    return await mirror_twice(entry, store_dir, secrets,
                              MirrorOptions(azure_endpoint_url=endpoint))


def _run_sdk(r: Result, *, client: Any, files: list[DataFile], dest: Path) -> Timed:
    """The SDK's download_blob of every blob at once, into files; verified, removed."""
    dest.mkdir(parents=True, exist_ok=True)

    def one(f: DataFile) -> None:
        with open(dest / f.path.name, "wb") as out:
            client.get_blob_client(_CONTAINER, f.path.name).download_blob(
                max_concurrency=8).readinto(out)

    cpu, start = _cpu_self(), time.perf_counter()
    try:
        with ThreadPoolExecutor(len(files)) as pool:
            list(pool.map(one, files))
        seconds, cpu = time.perf_counter() - start, _cpu_self() - cpu
        for f in files:
            verify_file(dest / f.path.name, f, sha256=not r.seconds)
    except Exception as err:  # A reference tool's failure marks its row only.
        if isinstance(err, ToolFailed):
            raise
        raise ToolFailed(f"download_blob: {type(err).__name__}: {err}") from err
    finally:
        remove_outputs(dest)
    return Timed(seconds, _cpu_note(cpu, r.nbytes))


@contextmanager
def _azure_workload(wd: Path, files: list[DataFile], src: Path
                    ) -> Iterator[tuple[_Mirror, dict[str, Callable[..., Timed]], str]]:
    module = _load_azurite()
    # The SDK's threads outnumber urllib3's pool; it says so once per request.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    with _azurite_process(module, wd / "azurite") as endpoint:
        client = module.Azurite(endpoint=endpoint).client()
        client.create_container(_CONTAINER)
        for f in files:  # Untimed: the data the mirror and the SDK then read.
            with f.path.open("rb") as data:
                client.get_blob_client(_CONTAINER, f.path.name).upload_blob(
                    data, length=f.size, overwrite=True, max_concurrency=4)

        def mirror(store_dir: Path) -> tuple[float, MirrorResult, float, MirrorResult]:
            return asyncio.run(_azure_twice(endpoint, module, store_dir))

        refs: dict[str, Callable[..., Timed]] = {
            "ref": lambda r: _run_sdk(r, client=client, files=files, dest=wd / "sdk-out")}
        yield mirror, refs, "azure SDK download_blob(max_concurrency=8), all blobs at once"


# --------------------------------------------------------------------------- bench


def run_mirror_source_bench(source: str, options: MirrorBenchOptions, *,
                            console: Console | None = None) -> BenchReport:
    """Run ``bdn bench mirror --source https|azure`` and return its report.

    Raises:
        BenchAbort: nginx / Azurite missing, or too little disk.
        ConfigError: an option is out of range.
    """
    options.check()
    console = console or progress_console()
    workload = {"https": _https_workload, "azure": _azure_workload}[source]
    needs = 3 * options.nbytes + 256 * MiB
    with bench_run(f"mirror --source {source}", options, console, needs=needs) as (wd, report):
        src = wd / "src"
        console.print(f"generating {format_bytes(options.nbytes)} of random data in {src}")
        files = generate_shards(src, [options.shard_size] * options.shards)
        with workload(wd, files, src) as (mirror, refs, ref_label):
            again = Result("again", "bdn re-mirror, unchanged", "info", options.nbytes)
            section = Section(
                f"{source} -> file mirror, {options.shards} files of "
                f"{format_bytes(options.shard_size)}",
                "bdn",
                [Result("bdn", "bdn mirror (sha256 + xxh3-128, fsync)", "bdn", options.nbytes),
                 Result("ref", ref_label, "reference", options.nbytes,
                        error=None if refs else "not available"),
                 again],
            )
            runners: dict[str, Callable[[Result], Timed]] = {
                "bdn": lambda r: _run_bdn(r, mirror=mirror, files=files,
                                          store_dir=wd / "store", again_row=again),
                **refs,
            }
            measure_rounds(section, runners, repeat=options.repeat, console=console)
            report.sections.append(section)
    report.notes.append(
        "CPU s/GB: user+sys of this process (bdn, the SDK) or of the curl processes; "
        "the server's CPU (nginx, Azurite) is not counted for either; the bdn row's CPU "
        "includes its unchanged re-mirror. Wall figures on a shared machine vary with load."
    )
    if "expected 0" in again.note:
        report.notes.append("an unchanged re-mirror transferred bytes; dedup is not working")
    return report
