"""The flows behind the Python API and the CLI: build a weights entry, mirror, pull
(through the node agent or in-process), read manifests, check the store, plan.

Async and explicit about their settings; :mod:`bdn.api` wraps them into the
blocking calls a model makes from ``__init__``/``load()``. Only this module
decides to mirror a never-mirrored source first; :mod:`bdn.pull` never mirrors.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bdn.backends import store_for
from bdn.cache import NodeCache
from bdn.config.settings import Settings
from bdn.config.weights import WeightsEntry, parse_entry, source_from_cli
from bdn.errors import ConfigError, RefNotFound
from bdn.plan import PlanRequest
from bdn.pull import (
    DEFAULT_PULL_OPTIONS,
    PullOptions,
    PullResult,
    pull_manifest,
    resolve_manifest,
)
from bdn.store import CheckReport, Store

if TYPE_CHECKING:
    from bdn.backends.base import BlobStore
    from bdn.config.secrets import SecretResolver
    from bdn.manifest import Manifest
    from bdn.mirror import MirrorOptions, MirrorResult

log = logging.getLogger(__name__)

T = TypeVar("T")

ProgressCallback = Callable[[int, int], None]
"""``on_progress(bytes_done, bytes_total)`` of the bytes a call has to fetch."""

BeginCallback = Callable[[str], None]
"""``on_begin(label)``: a new piece of work starts moving bytes, e.g.
``"mirror s3://bucket/m"`` or ``"pull sha256:0123456789ab…"`` (for progress bars)."""


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
        data["mount_location"] = mount_location  # parse_entry takes a path, refuses the rest
    if allow_patterns is not None:
        data["allow_patterns"] = _pattern_list(allow_patterns)
    if ignore_patterns is not None:
        data["ignore_patterns"] = _pattern_list(ignore_patterns)
    if auth is not None:
        data["auth"] = auth  # Not copied: parse_auth shows a non-mapping the mapping to write.
    return parse_entry(data, where=where, require_mount_location=False)


def _pattern_list(patterns: Sequence[str]) -> Any:
    # A bare string or a non-iterable is passed through so parse_entry rejects it.
    plain = isinstance(patterns, str) or not isinstance(patterns, Iterable)
    return patterns if plain else list(patterns)


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
            target, settings, on_progress, mount=mount, background=background,
            strict=options.strict,
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
    strict: bool = False,
) -> PullResult:
    """Have the node agent (``BDN_AGENT``) mirror-resolve and pull ``target``;
    ``strict``: the agent proves every blob it uses, as an in-process strict pull does.

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
        request_for(target, where, background=background, strict=strict),
        on_progress=on_progress
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
        if options.trusted_stores is None:  # Whose word the node takes: BDN_TRUSTED_STORES.
            options = dataclasses.replace(options, trusted_stores=settings.trusted_stores)
        options = options.with_workers(settings.workers)  # BDN_WORKERS / --workers
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


async def plan_model(
    target: str | WeightsEntry, settings: Settings, request: PlanRequest
) -> dict[str, Any]:
    """``bdn plan``: the instance ``target`` (manifest id or entry) needs, from its headers."""
    from bdn.plan.run import plan_target

    return await _with_store(settings, lambda store: plan_target(target, store, request))


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


