"""``bdn bench mirror-server``: a real mirror service's job throughput and coalescing.

Two workloads, each next to a reference measured in the same run:

1. ``jobs`` distinct small models (``files`` x ``file_size`` each) submitted
   at once to a fresh ``bdn mirror-server`` on loopback with a ``file://``
   store; timed from the first submission to the last job seen succeeded
   (polled every 10 ms). Every job must succeed and its entry be mirrored
   exactly once (``mirrors == 1`` per job, ``bdn_mirror_runs_total`` equal to
   the job count). Reference: the same models mirrored by as many sequential
   ``bdn mirror`` CLI runs into a fresh store, which is how a push pipeline
   without the service would do it.
2. ``identical`` identical submissions of one model at once: they must
   coalesce into one job and one transfer (bytes read from the source, as
   the service's ``bdn_mirror_bytes_total{kind="read"}`` counts them, equal to
   one model). Reference: as many ``bdn mirror`` CLI runs of that model at
   once into one fresh store (their ``--json`` summaries give the bytes read).

Server start-up is not timed; CLI start-up is, since each CLI run pays it.
:class:`MirrorServerProcess` is also what the end-to-end tests drive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from bdn.config.units import format_bytes, parse_size
from bdn.errors import ConfigError
from bench.command import bench_run, run_command
from bench.harness import MiB, ToolFailed, generate_files, remove_outputs
from bench.mirror_server_process import MirrorServerProcess, parse_metrics, start_mirror_server
from bench.report import BenchReport, Result, Section, Timed, measure_rounds, progress_console

__all__ = [
    "MirrorServerBenchOptions",
    "MirrorServerProcess",
    "mirror_server_command",
    "parse_metrics",
    "run_mirror_server_bench",
    "start_mirror_server",
]

# -- the bench ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MirrorServerBenchOptions:
    """Sizes and knobs of one ``bdn bench mirror-server`` run.

    Attributes:
        jobs: distinct models submitted at once.
        files: files per model.
        file_size: bytes per file.
        identical: identical submissions of one model, for coalescing.
        max_jobs: the server's ``--max-jobs``.
        repeat: timed runs per row (best and median reported).
        workdir: parent of the fresh work directory (default: the system temp dir).
        keep: keep the work directory afterwards.
    """

    jobs: int = 20
    files: int = 4
    file_size: int = 1 * MiB
    identical: int = 10
    max_jobs: int = 2
    repeat: int = 2
    workdir: Path | None = None
    keep: bool = False

    def check(self) -> None:
        """Raise ``ConfigError`` for values no bench can run with."""
        for name in ("jobs", "files", "file_size", "identical", "max_jobs", "repeat"):
            if getattr(self, name) < 1:
                raise ConfigError("must be at least 1", field=f"--{name.replace('_', '-')}")

    @property
    def model_bytes(self) -> int:
        return self.files * self.file_size


def _clean_env(home: Path) -> dict[str, str]:
    """The caller's environment without BDN settings, so only the bench's flags count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BDN_")}
    env["HOME"] = str(home)
    return env


def _weights(src: Path) -> list[dict[str, Any]]:
    return [{"source": f"file://{src}", "mount_location": f"/models/{src.name}"}]


@dataclass
class _Workload:
    wd: Path
    models: list[Path]
    shared: Path
    options: MirrorServerBenchOptions
    env: dict[str, str]
    round: int = 0
    reads: dict[str, list[float]] = field(default_factory=dict)

    def read_note(self, key: str, nbytes: float) -> str:
        """Bytes read as a multiple of the model, for this run and the earlier ones."""
        ratios = self.reads.setdefault(key, [])
        ratios.append(nbytes / self.options.model_bytes)
        return "read " + ", ".join(f"{x:.2f}x" for x in ratios) + " the model (per run)"

    def fresh(self, name: str) -> Path:
        self.round += 1
        path = self.wd / f"{name}-{self.round}"
        path.mkdir()
        return path


def _in_server(load: _Workload, run: Callable[[MirrorServerProcess], Any]) -> Any:
    """Start a fresh server (untimed), ``run`` the coroutine it gets, stop it (exit 0)."""
    root = load.fresh("server")

    async def go() -> Any:
        server = start_mirror_server(root, store=f"file://{root / 'store'}", env=load.env,
                                     token=secrets.token_hex(16),
                                     allow=[f"file://{load.wd / 'src'}"],
                                     extra=["--max-jobs", str(load.options.max_jobs)])
        try:
            await server.wait_ready()
            return await run(server)
        finally:
            await server.close()
            code = server.stop()
            if code != 0:
                raise ToolFailed(f"mirror-server exited {code} on SIGTERM:\n"
                                 + server.logs()[-2000:])

    try:
        return asyncio.run(go())
    except RuntimeError as err:
        raise ToolFailed(str(err)) from err
    finally:
        remove_outputs(root)


def _run_server_jobs(r: Result, *, load: _Workload) -> Timed:
    async def timed(server: MirrorServerProcess) -> Timed:
        start = time.perf_counter()
        ids = await asyncio.gather(*(server.submit(_weights(m)) for m in load.models))
        bodies = await server.wait_jobs(ids)
        seconds = time.perf_counter() - start
        m = await server.metrics()
        bad = [b for b in bodies.values() if b["state"] != "succeeded" or b["mirrors"] != 1]
        runs = m.get('bdn_mirror_runs_total{outcome="succeeded"}', 0)
        if len(set(ids)) != len(load.models) or bad or runs != len(load.models):
            raise ToolFailed(f"expected {len(load.models)} jobs each mirrored once; got "
                             f"{len(set(ids))} ids, runs={runs:.0f}, not once: {bad[:2]}")
        n = len(load.models)
        return Timed(seconds, f"{n}/{n} succeeded, each mirrored exactly once "
                     f"(runs={runs:.0f})")

    result: Timed = _in_server(load, timed)
    return result


def _run_cli_jobs(r: Result, *, load: _Workload) -> Timed:
    store = load.fresh("cli-store")
    try:
        start = time.perf_counter()
        for m in load.models:
            _cli_mirror(m, store, load.env)
        seconds = time.perf_counter() - start
    finally:
        remove_outputs(store)
    return Timed(seconds, "each exited 0")


def _cli_mirror(src: Path, store: Path, env: Mapping[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bdn", "mirror", f"file://{src}", "--store",
                           f"file://{store}", "--json"], capture_output=True, text=True,
                          env=dict(env), timeout=600, check=False)
    if proc.returncode != 0:
        raise ToolFailed(f"bdn mirror exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def _run_server_coalesce(r: Result, *, load: _Workload) -> Timed:
    n, size = load.options.identical, load.options.model_bytes

    async def timed(server: MirrorServerProcess) -> Timed:
        start = time.perf_counter()
        ids = await asyncio.gather(*(server.submit(_weights(load.shared)) for _ in range(n)))
        bodies = await server.wait_jobs(sorted(set(ids)))
        seconds = time.perf_counter() - start
        m = await server.metrics()
        runs = m.get('bdn_mirror_runs_total{outcome="succeeded"}', 0)
        read = m.get('bdn_mirror_bytes_total{kind="read"}', 0)
        coalesced = m.get('bdn_mirror_submissions_total{outcome="coalesced"}', 0)
        ok = len(set(ids)) == 1 and runs == 1 and read == size and coalesced == n - 1
        if not ok or any(b["state"] != "succeeded" for b in bodies.values()):
            raise ToolFailed(f"{n} identical submissions: {len(set(ids))} job(s), "
                             f"{runs:.0f} transfer(s), {read:.0f} bytes read (model {size})")
        return Timed(seconds, f"{n} submissions -> 1 job, {runs:.0f} transfer, "
                     f"{coalesced:.0f} coalesced; {load.read_note('server', read)}")

    result: Timed = _in_server(load, timed)
    return result


def _run_cli_concurrent(r: Result, *, load: _Workload) -> Timed:
    n = load.options.identical
    store = load.fresh("cli-store")

    async def all_at_once() -> list[dict[str, Any]]:
        return list(await asyncio.gather(
            *(asyncio.to_thread(_cli_mirror, load.shared, store, load.env) for _ in range(n))))

    try:
        start = time.perf_counter()
        summaries = asyncio.run(all_at_once())
        seconds = time.perf_counter() - start
    finally:
        remove_outputs(store)
    read = sum(int(s["bytes_transferred"]) for s in summaries)
    return Timed(seconds, f"{n} runs, each exited 0; {load.read_note('cli', read)}")


def _generate_models(wd: Path, o: MirrorServerBenchOptions,
                     console: Console) -> tuple[list[Path], Path]:
    """``o.jobs`` distinct models, and one more for the identical submissions."""
    console.print(f"generating {o.jobs + 1} models of {o.files} x "
                  f"{format_bytes(o.file_size)} in {wd / 'src'}")
    models = [wd / "src" / f"model-{i:02d}" for i in range(o.jobs + 1)]
    for m in models:
        m.mkdir(parents=True)
    generate_files([(m / f"shard-{k}.safetensors", o.file_size)
                    for m in models for k in range(o.files)])
    return models[:-1], models[-1]


def _sections(o: MirrorServerBenchOptions) -> tuple[Section, Section]:
    """The distinct-jobs section and the identical-submissions section, empty."""
    jobs = Section(
        f"{o.jobs} distinct jobs of {format_bytes(o.model_bytes)} submitted at once "
        f"(--max-jobs {o.max_jobs})",
        "server",
        [Result("server", "bdn mirror-server, all submitted at once", "bdn",
                o.jobs * o.model_bytes),
         Result("cli", f"{o.jobs} sequential `bdn mirror` CLI runs", "reference",
                o.jobs * o.model_bytes)],
    )
    same = Section(
        f"{o.identical} identical submissions of one {format_bytes(o.model_bytes)} model "
        "at once",
        "server",
        [Result("server", "bdn mirror-server, coalesced", "bdn", o.model_bytes),
         Result("cli", f"{o.identical} concurrent `bdn mirror` CLI runs", "reference",
                o.model_bytes)],
    )
    return jobs, same


def run_mirror_server_bench(
    options: MirrorServerBenchOptions = MirrorServerBenchOptions(),
    *, console: Console | None = None,
) -> BenchReport:
    """Run ``bdn bench mirror-server`` and return its report (installs nothing).

    Raises:
        BenchAbort: the disk is too small.
        ConfigError: an option is out of range.
    """
    options.check()
    console = console or progress_console()
    o = options
    # Sources, plus one store copy per contender at a time, plus headroom.
    needs = 3 * (o.jobs + 1) * o.model_bytes + 256 * MiB
    with bench_run("mirror-server", o, console, needs=needs) as (wd, report):
        load = _Workload(wd, *_generate_models(wd, o, console), o, _clean_env(wd))
        jobs, same = _sections(o)
        measure_rounds(jobs, {"server": lambda r: _run_server_jobs(r, load=load),
                              "cli": lambda r: _run_cli_jobs(r, load=load)},
                       repeat=o.repeat, console=console)
        for row in jobs.results:
            if row.best and row.median:
                row.note = (f"{o.jobs / row.best:.1f} jobs/s best, {o.jobs / row.median:.1f} "
                            f"median; {row.note}")
        measure_rounds(same, {"server": lambda r: _run_server_coalesce(r, load=load),
                              "cli": lambda r: _run_cli_concurrent(r, load=load)},
                       repeat=o.repeat, console=console)
        report.sections += [jobs, same]
    report.notes += [
        "server rows: from the first POST to the last job seen succeeded (polled every "
        "10 ms); a fresh server, file:// store and state dir per run, started untimed",
        "CLI rows include each run's Python start-up, as a pipeline without the service pays",
        "bytes read = the service's bdn_mirror_bytes_total{kind=\"read\"}, or the sum of the "
        "CLI runs' --json bytes_transferred",
    ]
    return report


def options_from_args(args: argparse.Namespace) -> MirrorServerBenchOptions:
    """Build options from the parsed ``bdn bench mirror-server`` flags."""
    return MirrorServerBenchOptions(
        jobs=args.jobs, files=args.files,
        file_size=parse_size(args.file_size, field="--file-size"),
        identical=args.identical, max_jobs=args.max_jobs, repeat=args.repeat,
        workdir=Path(args.workdir) if args.workdir else None, keep=args.keep,
    )


def mirror_server_command(args: argparse.Namespace) -> int:
    """``bdn bench mirror-server``: run, print; the exit status."""
    options = options_from_args(args)
    return run_command("mirror-server", args,
                       lambda console, _: run_mirror_server_bench(options, console=console))
