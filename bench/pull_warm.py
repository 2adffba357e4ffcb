"""``bdn bench pull``'s pulls, and its warm sections: a warm cache and the Python API.

- :class:`Model` (the mirrored model and its nginx origin) and :func:`pull`,
  one timed ``pull_manifest`` through a node cache, which every section runs;
- :func:`measure_warm`: pulls whose blobs are all cached, into a new and into
  the same mount, against ``cp -r`` of the pulled tree;
- :func:`measure_api`: ``bdn.ensure_weights`` in-process on the warm cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

import bdn
from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.config.units import format_bytes
from bdn.digest import Digest
from bdn.errors import BdnError
from bdn.manifest import Manifest
from bdn.pull import DEFAULT_PULL_OPTIONS, PullOptions, pull_manifest
from bdn.store import blob_key
from bench import model as generated
from bench.harness import DataFile, ToolFailed, run_timed, timeout_for
from bench.model import remove_tree
from bench.report import Aim, Result, Section, Timed, measure_rounds

WARM_AIMS = (Aim("cp", 100.0, "cp -r"),)
"""The issue's target for a pull whose blobs are all cached: >= 100x ``cp -r``."""

_BDN_ENV = ("BDN_STORE", "BDN_CACHE_DIR", "BDN_CACHE_MAX_BYTES", "BDN_AGENT")
"""Variables the API reads that the bench sets (or clears) around each timed call."""


@dataclass(frozen=True, slots=True)
class Model(generated.Model):
    """The generated model once mirrored, and the origin nginx serves its store at."""

    origin: str = ""
    """Base URL of the store as nginx serves it (a read-only HTTP store)."""

    def blob_url(self, f: DataFile) -> str:
        """Where nginx serves the blob of ``f``: the store's key under the origin."""
        return f"{self.origin}/{blob_key(Digest(f.sha256))}"

    def downloads(self) -> list[tuple[str, DataFile]]:
        """Every blob URL with its file, for the reference downloaders."""
        return [(self.blob_url(f), f) for f in self.files]


# ---------------------------------------------------------------------------
# Pulls


@dataclass(frozen=True, slots=True)
class Pulled:
    """One pull: seconds of the ``pull_manifest`` call and what it reported."""

    seconds: float
    from_cache: int
    from_origin: int
    materialized: str


async def _pull(
    manifest: Manifest, mount: Path, *, origin: str, cache_dir: Path,
    options: PullOptions = DEFAULT_PULL_OPTIONS,
) -> Pulled:
    """``pull_manifest`` from ``origin`` through the node cache at ``cache_dir``.

    Only the ``pull_manifest`` call is timed: the store object contacts nothing
    until used, and the cache's open cost is in the ``ensure_weights`` row,
    which times a whole call.
    """
    store = open_store(origin)
    try:
        cache = NodeCache(cache_dir)
        try:
            start = time.perf_counter()
            result = await pull_manifest(manifest, mount, store=store, cache=cache,
                                         options=options)
            seconds = time.perf_counter() - start
        finally:
            cache.close()
    finally:
        await store.close()
    return Pulled(
        seconds, result.bytes_from_node_cache, result.bytes_from_origin, result.materialized
    )


def pull(
    model: Model, mount: Path, cache_dir: Path, options: PullOptions = DEFAULT_PULL_OPTIONS
) -> Pulled:
    """Run one pull of ``model`` into ``mount``; BDN's errors become ``ToolFailed``."""
    try:
        return asyncio.run(_pull(model.manifest, mount, origin=model.origin,
                                 cache_dir=cache_dir, options=options))
    except (BdnError, OSError) as err:  # BdnError subclasses inherit builtins, too.
        raise ToolFailed(f"pull_manifest: {err}") from err


def tiers(p: Pulled) -> str:
    return (
        f"from cache {format_bytes(p.from_cache)}, from origin {format_bytes(p.from_origin)}, "
        f"materialized by {p.materialized}"
    )


# ---------------------------------------------------------------------------
# Warm pull: new mount, same mount, cp -r


def _run_warm_new(r: Result, *, model: Model, cache_dir: Path, area: Path) -> Timed:
    """Pull into a mount never used before; every blob is cached: hardlinks only."""
    mount = area / f"new-{len(r.seconds)}"
    try:
        p = pull(model, mount, cache_dir)
        if p.from_origin:
            raise ToolFailed(f"a warm pull fetched from origin; {tiers(p)}")
        model.verify_tree(mount, sha256=not r.seconds)
        return Timed(p.seconds, f"materialized by {p.materialized}")
    finally:
        remove_tree(mount)


def _run_warm_same(r: Result, *, model: Model, cache_dir: Path, mount: Path) -> Timed:
    """Pull again into the mount that already holds this manifest's tree."""
    p = pull(model, mount, cache_dir)
    if p.from_origin:
        raise ToolFailed(f"a warm re-pull fetched from origin; {tiers(p)}")
    model.verify_tree(mount)
    expected = "" if p.materialized == "unchanged" else " (expected unchanged)"
    return Timed(p.seconds, f"materialized: {p.materialized}{expected}")


def _run_cp(r: Result, *, model: Model, tree: Path, dest: Path) -> Timed:
    """``cp -r`` of the pulled tree to a new directory on the same filesystem."""
    try:
        seconds = run_timed(["cp", "-r", str(tree), str(dest)], timeout=timeout_for(r.nbytes))
        model.verify_tree(dest)
        return Timed(seconds)
    finally:
        remove_tree(dest)


def measure_warm(
    model: Model, wd: Path, repeat: int, missing: dict[str, str], console: Console
) -> tuple[Section, Section, Result]:
    """The two warm sections (new mount, same mount), measured interleaved.

    Returns both sections and the ``cp -r`` row they share (the API section
    shows it too). The cache is filled by one untimed pull from origin.
    """
    area, cache_dir, same = wd / "warm", wd / "warm" / "cache", wd / "warm" / "same"
    area.mkdir(parents=True)
    n = model.nbytes
    new_row = Result("new", "bdn pull_manifest, warm cache -> new mount", "bdn", n)
    same_row = Result("same", "bdn pull_manifest, warm cache -> same mount", "bdn", n)
    cp_row = Result(
        "cp", "cp -r of the pulled tree (same filesystem)", "reference", n, error=missing.get("cp")
    )
    runners: dict[str, Callable[[Result], Timed]] = {
        "new": functools.partial(_run_warm_new, model=model, cache_dir=cache_dir, area=area),
        "same": functools.partial(_run_warm_same, model=model, cache_dir=cache_dir, mount=same),
        "cp": functools.partial(_run_cp, model=model, tree=same, dest=area / "cp-copy"),
    }
    together = Section("(b) warm pull", "new", [new_row, same_row, cp_row])
    try:
        p = pull(model, same, cache_dir)
        model.verify_tree(same)
    except ToolFailed as err:
        new_row.error = same_row.error = f"filling the cache (untimed) failed: {err}"
        new_row.failed = same_row.failed = True
        cp_row.error = cp_row.error or "no pulled tree to copy"
    else:
        console.print(f"  warm cache filled (untimed): {tiers(p)}")
        measure_rounds(together, runners, repeat=repeat, console=console)
    return (
        Section("(b) warm pull -> new mount (hardlinks)", "new", [new_row, cp_row], WARM_AIMS),
        Section("(c) warm re-pull -> same mount", "same", [same_row, cp_row], WARM_AIMS),
        cp_row,
    )


# ---------------------------------------------------------------------------
# Python API on a warm cache


@contextlib.contextmanager
def bdn_environ(store_uri: str, cache_dir: Path) -> Iterator[None]:
    """Point the API's ``BDN_*`` variables at the bench's store and cache (and clear
    the agent and the budget), restoring the caller's environment afterwards."""
    saved = {name: os.environ.get(name) for name in _BDN_ENV}
    try:
        for name in ("BDN_AGENT", "BDN_CACHE_MAX_BYTES"):
            os.environ.pop(name, None)
        os.environ["BDN_STORE"] = store_uri
        os.environ["BDN_CACHE_DIR"] = str(cache_dir)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ensure_weights(model: Model, mount: Path, cache_dir: Path) -> tuple[float, Path]:
    """One ``bdn.ensure_weights`` call; only the call is timed, not the env juggling."""
    with bdn_environ(f"file://{model.store_dir}", cache_dir):
        try:
            start = time.perf_counter()
            path = bdn.ensure_weights(f"file://{model.src}", mount)
            seconds = time.perf_counter() - start
        except (BdnError, OSError) as err:
            raise ToolFailed(f"ensure_weights: {err}") from err
    if Path(path) != mount:
        raise ToolFailed(f"ensure_weights returned {path}, expected {mount}")
    return seconds, Path(path)


def _run_api(r: Result, *, model: Model, cache_dir: Path, mount: Path) -> Timed:
    seconds, path = _ensure_weights(model, mount, cache_dir)
    model.verify_tree(path)
    return Timed(seconds)


def measure_api(
    model: Model, wd: Path, repeat: int, cp_row: Result, console: Console
) -> Section:
    """``bdn.ensure_weights`` in-process on the warm cache, after one untimed call."""
    cache_dir, mount = wd / "warm" / "cache", wd / "warm" / "api"
    row = Result("api", "bdn.ensure_weights, warm cache, in-process", "bdn", model.nbytes)
    section = Section("(d) Python API, warm cache", "api", [row, cp_row])
    try:
        first, path = _ensure_weights(model, mount, cache_dir)
        model.verify_tree(path)
    except ToolFailed as err:
        row.error, row.failed = str(err), True
        return section
    console.print(f"  ensure_weights, first call (untimed): {first * 1000:.1f} ms")
    runner = functools.partial(_run_api, model=model, cache_dir=cache_dir, mount=mount)
    measure_rounds(section, {"api": runner}, repeat=repeat, console=console)
    return section
