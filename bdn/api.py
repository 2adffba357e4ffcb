"""The Python API, and the one orchestrator of mirror and pull that the CLI calls too.

>>> import bdn                                                     # doctest: +SKIP
>>> path = bdn.ensure_weights("s3://bucket/qwen", "/models/qwen",
...                           auth={"auth_method": "CUSTOM_SECRET",
...                                 "auth_secret_name": "aws_credentials"})  # doctest: +SKIP

Everything works in-process (no agent, no mirror service): the manifest is
looked up in the store by config hash (mirrored first when there is none),
blobs come through the node cache, and the tree is materialized read-only.
When ``BDN_AGENT`` names a node agent, the work is handed to it instead
(the seam is :func:`pull_weights`). The environment is read once per call.

``bdn mirror`` and ``bdn pull`` parse their flags and call
:func:`weights_entry`, :func:`mirror_weights` and :func:`pull_weights`, so the
command line and a model's ``load()`` run the same flow. Only this module
decides to mirror a never-mirrored source first; :mod:`bdn.pull` never mirrors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bdn.backends import store_for
from bdn.cache import NodeCache
from bdn.config.settings import Settings
from bdn.config.weights import WeightsEntry, load_config, parse_entry, source_from_cli
from bdn.errors import ConfigError, RefNotFound
from bdn.pull import (
    DEFAULT_PULL_OPTIONS,
    PullOptions,
    PullResult,
    looks_like_manifest_id,
    pull_manifest,
    resolve_manifest,
)
from bdn.store import CheckReport, Store

if TYPE_CHECKING:
    from bdn.backends.base import BlobStore
    from bdn.config.secrets import SecretResolver
    from bdn.manifest import Manifest
    from bdn.mirror import MirrorOptions, MirrorResult

__all__ = [
    "PullOptions",
    "PullResult",
    "WeightsHandle",
    "check_store",
    "ensure_weights",
    "ensure_weights_from_config",
    "get_manifest",
    "looks_like_manifest_id",
    "mirror_weights",
    "prefetch_weights",
    "pull_in_process",
    "pull_through_agent",
    "pull_weights",
    "weights_entry",
    "with_node_cache",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

ProgressCallback = Callable[[int, int], None]
"""``on_progress(bytes_done, bytes_total)`` of the bytes a call has to fetch."""

BeginCallback = Callable[[str], None]
"""``on_begin(label)``: a new piece of work starts moving bytes, e.g.
``"mirror s3://bucket/m"`` or ``"pull sha256:0123456789ab…"`` (for progress bars)."""


def ensure_weights(
    source: str,
    mount_location: str | os.PathLike[str] | None = None,
    *,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    auth: Mapping[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Block until ``mount_location`` holds the verified, read-only tree of ``source``.

    Args:
        source: ``s3://bucket/prefix``, ``file:///abs/dir`` or a local path (and
            the other schemes of a Truss ``weights:`` entry as they arrive).
        mount_location: absolute directory for the tree; default: a directory
            under the node cache named after the config.
        allow_patterns / ignore_patterns: Truss filters (``*.x`` top level,
            ``**/*.x`` recursive).
        auth: the entry's ``auth`` block, e.g. ``{"auth_method": "CUSTOM_SECRET",
            "auth_secret_name": "aws_credentials"}``.
        on_progress: called with ``(bytes_done, bytes_total)`` while fetching.

    Returns:
        The path of the complete tree.

    Raises:
        ConfigError / SecretError: bad arguments or credentials (the message says the fix).
        InsufficientSpace: the node cache cannot hold the model.
        TransferError / AuthError / NotFound: origin could not deliver.
    """
    entry = weights_entry(source, mount_location, allow_patterns=allow_patterns,
                          ignore_patterns=ignore_patterns, auth=auth)
    return _run_sync(_tree_of(entry, on_progress))


def ensure_weights_from_config(
    config: str | os.PathLike[str] | Mapping[str, Any],
    *,
    on_progress: ProgressCallback | None = None,
) -> list[Path]:
    """Do every entry of a Truss ``weights:`` list (a config.yaml path or its dict).

    Returns the trees' paths in entry order. Raises as :func:`ensure_weights`.
    """
    cfg = Path(config) if isinstance(config, str | os.PathLike) else config
    entries = load_config(cfg)
    settings = Settings.from_env(os.environ)

    async def all_entries() -> list[Path]:
        return [(await pull_weights(e, settings, on_progress=on_progress)).path for e in entries]

    return _run_sync(all_entries)


class WeightsHandle:
    """A transfer started by :func:`prefetch_weights`; :meth:`wait` for its tree."""

    def __init__(self, future: Future[Path]) -> None:
        self._future = future

    def done(self) -> bool:
        """True once the transfer has finished, successfully or not."""
        return self._future.done()

    def wait(self, timeout: float | None = None) -> Path:
        """Block until the tree is complete and return its path.

        Raises:
            TimeoutError: not complete within ``timeout`` seconds (the transfer
                goes on; call ``wait`` again).
            Whatever :func:`ensure_weights` raised.
        """
        try:
            return self._future.result(timeout)
        except TimeoutError:
            raise TimeoutError(
                f"weights not ready after {timeout}s; the transfer continues, call wait() again"
            ) from None


def prefetch_weights(
    source: str,
    mount_location: str | os.PathLike[str] | None = None,
    *,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    auth: Mapping[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> WeightsHandle:
    """Start :func:`ensure_weights` in the background (call in ``__init__``), and
    ``.wait()`` for it in ``load()``. Arguments are validated now, so a bad
    config fails at once rather than at ``wait()``."""
    entry = weights_entry(source, mount_location, allow_patterns=allow_patterns,
                          ignore_patterns=ignore_patterns, auth=auth)
    future, _ = _run_in_thread(_tree_of(entry, on_progress), name="bdn-prefetch", daemon=True)
    return WeightsHandle(future)


def _tree_of(
    entry: WeightsEntry, on_progress: ProgressCallback | None
) -> Callable[[], Coroutine[Any, Any, Path]]:
    """The work of :func:`ensure_weights` and :func:`prefetch_weights`: the environment
    is read now, in the caller; the returned coroutine function pulls the tree and
    gives its path."""
    settings = Settings.from_env(os.environ)

    async def tree() -> Path:
        return (await pull_weights(entry, settings, on_progress=on_progress)).path

    return tree


def weights_entry(
    source: str,
    mount_location: str | os.PathLike[str] | None = None,
    *,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    auth: Mapping[str, str] | None = None,
    where: str = "ensure_weights",
) -> WeightsEntry:
    """One Truss ``weights:`` entry from arguments, validated as a config.yaml entry is.

    The API and ``bdn mirror``/``bdn pull`` (``where`` names the caller in
    errors) build entries only here. A local path becomes ``file://`` absolute.

    Raises:
        ConfigError: a malformed source, pattern list or auth block.
    """
    if not isinstance(source, str):
        raise ConfigError(
            f"must be a string such as 's3://bucket/model', got {type(source).__name__}",
            field="source",
        )
    data: dict[str, Any] = {"source": source_from_cli(source, Path.cwd())}
    if mount_location is not None:
        data["mount_location"] = os.fspath(mount_location)
    if allow_patterns is not None:
        data["allow_patterns"] = _pattern_list(allow_patterns)
    if ignore_patterns is not None:
        data["ignore_patterns"] = _pattern_list(ignore_patterns)
    if auth is not None:
        data["auth"] = dict(auth)
    return parse_entry(data, where=where, require_mount_location=False)


def _pattern_list(patterns: Sequence[str]) -> Any:
    # A bare string is passed through so parse_entry rejects it with its own message.
    return patterns if isinstance(patterns, str) else list(patterns)


async def mirror_weights(
    entries: Sequence[WeightsEntry],
    settings: Settings,
    *,
    chunk_size: int | None = None,
    on_progress: ProgressCallback | None = None,
    on_begin: BeginCallback | None = None,
) -> list[MirrorResult]:
    """Mirror each entry, in order, into the store ``settings`` names (``bdn mirror``).

    ``chunk_size`` overrides the manifest chunk size; ``on_begin`` is called as
    each entry starts and ``on_progress`` counts that entry's bytes.

    Raises:
        Anything :func:`bdn.mirror.run_mirror` raises.
    """
    options = _mirror_options(settings)
    if chunk_size is not None:
        options = dataclasses.replace(options, chunk_size=chunk_size)
    secrets = settings.secrets()

    async def mirror_all(store: BlobStore) -> list[MirrorResult]:
        results = []
        for entry in entries:
            if on_begin is not None:
                on_begin(f"mirror {entry.source}")
            results.append(await _mirror_one(entry, store, secrets, options, on_progress))
        return results

    return await _with_store(settings, mirror_all)


async def pull_weights(
    target: str | WeightsEntry,
    settings: Settings,
    *,
    mount: Path | None = None,
    options: PullOptions = DEFAULT_PULL_OPTIONS,
    background: bool = False,
    on_progress: ProgressCallback | None = None,
    on_begin: BeginCallback | None = None,
) -> PullResult:
    """Pull a manifest id or a weights entry: the one pull flow of the API and ``bdn pull``.

    Through the node agent when ``settings.agent`` names one (``background``
    asks it for a rate-capped fill), else in-process. ``mount`` overrides the
    entry's mount location (required with a manifest id).
    """
    if settings.agent:
        return await pull_through_agent(
            target, settings, on_progress, mount=mount, background=background
        )
    return await pull_in_process(
        target, settings, on_progress, mount=mount, options=options, on_begin=on_begin
    )


async def pull_through_agent(
    target: str | WeightsEntry,
    settings: Settings,
    on_progress: ProgressCallback | None = None,
    *,
    mount: Path | None = None,
    background: bool = False,
) -> PullResult:
    """Have the node agent (``BDN_AGENT``) mirror-resolve and pull ``target``.

    The agent needs an absolute mount location it can write on the node; with
    none given, this raises ConfigError rather than guessing a node path.
    """
    from bdn.agent.client import AgentClient, request_for, to_pull_result

    assert settings.agent is not None
    where = mount if mount is not None else _entry_mount(target)
    if not where:
        raise ConfigError(
            "is required when BDN_AGENT names a node agent: pass an absolute directory the "
            "agent can write, e.g. ensure_weights(source, '/models/my-model')",
            field="mount_location",
        )
    status = await AgentClient(settings.agent).pull(
        request_for(target, where, background=background), on_progress=on_progress
    )
    return to_pull_result(status)


async def pull_in_process(
    target: str | WeightsEntry,
    settings: Settings,
    on_progress: ProgressCallback | None = None,
    *,
    mount: Path | None = None,
    options: PullOptions = DEFAULT_PULL_OPTIONS,
    on_begin: BeginCallback | None = None,
) -> PullResult:
    """Resolve (mirroring a source first if needed) and pull ``target`` with no agent.

    The result's ``seconds`` include the resolution (and any mirroring).
    """
    tree = mount if mount is not None else _default_mount(target, settings)
    store = store_for(settings)
    cache = NodeCache(settings.cache_dir, max_bytes=settings.cache_max_bytes)
    try:
        started = time.monotonic()
        manifest = await _manifest_for(target, store, settings)
        if on_begin is not None:
            on_begin(f"pull {manifest.id[:19]}…")
        counter = _ByteCounter(on_progress)
        result = await pull_manifest(
            manifest,
            tree,
            store=store,
            cache=cache,
            options=options,
            on_progress=counter.advance,
            on_plan=counter.plan,
        )
        result.seconds = time.monotonic() - started
        return result
    finally:
        cache.close()
        await store.close()


async def get_manifest(manifest_id: str, settings: Settings) -> Manifest:
    """The manifest ``manifest_id``, read and verified from the store ``settings`` names.

    Raises:
        ManifestNotFound: the store holds no such manifest.
    """
    return await _with_store(settings, lambda store: Store(store).get_manifest(manifest_id))


async def check_store(settings: Settings, *, deep: bool = False) -> CheckReport:
    """Verify every manifest of the store and the blobs it names (``deep``: re-hash them)."""
    return await _with_store(settings, lambda store: Store(store).check(deep=deep))


def with_node_cache(settings: Settings, use: Callable[[NodeCache], T]) -> T:
    """Open the node cache ``settings`` names, return ``use(cache)``, close the cache."""
    cache = NodeCache(settings.cache_dir, max_bytes=settings.cache_max_bytes)
    try:
        return use(cache)
    finally:
        cache.close()


# -- internals ---------------------------------------------------------------------


async def _with_store(settings: Settings, use: Callable[[BlobStore], Awaitable[T]]) -> T:
    store = store_for(settings)
    try:
        return await use(store)
    finally:
        await store.close()


async def _manifest_for(
    target: str | WeightsEntry, store: BlobStore, settings: Settings
) -> Manifest:
    """The manifest to pull; embedded mode (no agent, no mirror service) mirrors a
    source that was never mirrored into this store first."""
    try:
        return await resolve_manifest(target, store)
    except RefNotFound:
        if isinstance(target, str):
            raise
    log.info("%s not mirrored yet; mirroring into %s first", target.source, store.uri)
    mirrored = await _mirror_one(
        target, store, settings.secrets(), _mirror_options(settings), on_progress=None
    )
    return await Store(store).get_manifest(mirrored.manifest_id)


def _mirror_options(settings: Settings) -> MirrorOptions:
    # Imported here for the same reason as in _mirror_one.
    from bdn.mirror import MirrorOptions

    return MirrorOptions.from_settings(settings)


async def _mirror_one(
    entry: WeightsEntry,
    store: BlobStore,
    secrets: SecretResolver,
    options: MirrorOptions,
    on_progress: ProgressCallback | None,
) -> MirrorResult:
    # bdn.mirror (and the source SDKs it reaches) loads only when something is mirrored.
    from bdn.mirror import run_mirror

    counter = _ByteCounter(on_progress)
    return await run_mirror(
        entry,
        store=store,
        secrets=secrets,
        options=options,
        on_progress=counter.advance,
        on_plan=lambda plan: counter.plan(plan.bytes_to_transfer),
    )


class _ByteCounter:
    """Turns a plan (bytes to move) and byte deltas into ``on_progress(done, total)``."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self._report = on_progress
        self.done = 0
        self.total = 0

    def plan(self, total: int) -> None:
        self.total = total

    def advance(self, delta: int) -> None:
        self.done += delta
        if self._report is not None:
            self._report(self.done, self.total)


def _entry_mount(target: str | WeightsEntry) -> str | None:
    return None if isinstance(target, str) else target.mount_location


def _default_mount(target: str | WeightsEntry, settings: Settings) -> Path:
    """The entry's mount location, else a directory under the node cache named after
    its config."""
    if isinstance(target, str):
        raise ConfigError("is required to pull a manifest id", field="mount")
    if target.mount_location:
        return Path(target.mount_location)
    return settings.cache_dir / "trees" / target.config_hash()[:32]


def _run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop
    (a model's async ``load()``): then it runs on a private thread and loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box, thread = _run_in_thread(make, name="bdn-ensure-weights", daemon=False)
    thread.join()
    return box.result()


def _run_in_thread(
    make: Callable[[], Coroutine[Any, Any, T]], *, name: str, daemon: bool
) -> tuple[Future[T], threading.Thread]:
    """Start ``make()`` on a new thread with its own event loop; the future gets its
    result or its exception (unless it was cancelled before the thread began)."""
    box: Future[T] = Future()

    def work() -> None:
        if not box.set_running_or_notify_cancel():
            return
        try:
            box.set_result(asyncio.run(make()))
        except BaseException as err:
            box.set_exception(err)

    thread = threading.Thread(target=work, name=name, daemon=daemon)
    thread.start()
    return box, thread
