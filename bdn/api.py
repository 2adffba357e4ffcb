"""The Python API a model calls from ``__init__``/``load()``.

>>> import bdn                                                     # doctest: +SKIP
>>> path = bdn.ensure_weights("s3://bucket/qwen", "/models/qwen",
...                           auth={"auth_method": "CUSTOM_SECRET",
...                                 "auth_secret_name": "aws_credentials"})  # doctest: +SKIP

Everything works in-process (no agent, no mirror service): the manifest is
looked up in the store by config hash (mirrored first when there is none),
blobs come through the node cache, and the tree is materialized read-only.
When ``BDN_AGENT`` names a node agent, the work is handed to it instead
(the seam is :func:`_backend`). The environment is read once per call.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from bdn.cache import NodeCache
from bdn.config.settings import Settings
from bdn.config.weights import WeightsEntry, load_config, parse_entry, source_from_cli
from bdn.errors import ConfigError
from bdn.pull import DEFAULT_PULL_OPTIONS, PullOptions, PullResult, pull_manifest, resolve_manifest

T = TypeVar("T")

ProgressCallback = Callable[[int, int], None]
"""``on_progress(bytes_done, bytes_total)`` of the bytes a call has to fetch."""


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
    entry = _entry(source, mount_location, allow_patterns, ignore_patterns, auth)
    settings = Settings.from_env(os.environ)
    return _run_sync(lambda: _backend(settings)(entry, settings, on_progress)).path


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
        backend = _backend(settings)
        return [(await backend(e, settings, on_progress)).path for e in entries]

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
    entry = _entry(source, mount_location, allow_patterns, ignore_patterns, auth)
    settings = Settings.from_env(os.environ)
    future: Future[Path] = Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = asyncio.run(_backend(settings)(entry, settings, on_progress))
        except BaseException as err:
            future.set_exception(err)
        else:
            future.set_result(result.path)

    threading.Thread(target=work, name="bdn-prefetch", daemon=True).start()
    return WeightsHandle(future)


# -- internals ---------------------------------------------------------------------

Backend = Callable[
    [WeightsEntry, Settings, ProgressCallback | None], Coroutine[Any, Any, PullResult]
]


def _backend(settings: Settings) -> Backend:
    """Where the work happens: in-process, or the node agent named by ``BDN_AGENT``."""
    return pull_through_agent if settings.agent else pull_in_process


async def pull_through_agent(
    entry: WeightsEntry,
    settings: Settings,
    on_progress: ProgressCallback | None = None,
) -> PullResult:
    """Have the node agent (``BDN_AGENT``) mirror-resolve and pull ``entry``.

    The agent needs an absolute mount location it can write on the node; with
    none given, this raises ConfigError rather than guessing a node path.
    """
    from bdn.agent.client import AgentClient, request_for, to_pull_result

    assert settings.agent is not None
    if not entry.mount_location:
        raise ConfigError(
            "is required when BDN_AGENT names a node agent: pass an absolute directory the "
            "agent can write, e.g. ensure_weights(source, '/models/my-model')",
            field="mount_location",
        )
    status = await AgentClient(settings.agent).pull(
        request_for(entry, entry.mount_location), on_progress=on_progress
    )
    return to_pull_result(status)


async def pull_in_process(
    entry: WeightsEntry,
    settings: Settings,
    on_progress: ProgressCallback | None = None,
    *,
    options: PullOptions = DEFAULT_PULL_OPTIONS,
) -> PullResult:
    """Resolve (mirroring first if needed) and pull ``entry`` with no agent."""
    store = settings.open_store()
    cache = NodeCache(settings.cache_dir, max_bytes=settings.cache_max_bytes)
    mount = (
        Path(entry.mount_location)
        if entry.mount_location
        else settings.cache_dir / "trees" / entry.config_hash()[:32]
    )
    try:
        manifest = await resolve_manifest(
            entry,
            store,
            secrets=settings.secrets(),
            mirror_options=settings.mirror_options(),
            mirror_if_missing=True,
        )
        done, total = 0, 0

        def plan(nbytes: int) -> None:
            nonlocal total
            total = nbytes

        def progress(delta: int) -> None:
            nonlocal done
            done += delta
            if on_progress is not None:
                on_progress(done, total)

        return await pull_manifest(
            manifest,
            mount,
            store=store,
            cache=cache,
            options=options,
            on_progress=progress,
            on_plan=plan,
        )
    finally:
        cache.close()
        await store.close()


def _entry(
    source: str,
    mount_location: str | os.PathLike[str] | None,
    allow_patterns: Sequence[str] | None,
    ignore_patterns: Sequence[str] | None,
    auth: Mapping[str, str] | None,
) -> WeightsEntry:
    if not isinstance(source, str):
        raise ConfigError(
            f"must be a string such as 's3://bucket/model', got {type(source).__name__}",
            field="source",
        )
    data: dict[str, Any] = {"source": source_from_cli(source, Path.cwd())}
    if mount_location is not None:
        data["mount_location"] = os.fspath(mount_location)
    if allow_patterns is not None:
        data["allow_patterns"] = (
            list(allow_patterns) if not isinstance(allow_patterns, str) else allow_patterns
        )
    if ignore_patterns is not None:
        data["ignore_patterns"] = (
            list(ignore_patterns) if not isinstance(ignore_patterns, str) else ignore_patterns
        )
    if auth is not None:
        data["auth"] = dict(auth)
    return parse_entry(data, where="ensure_weights", require_mount_location=False)


def _run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop
    (a model's async ``load()``): then it runs on a private thread and loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: Future[T] = Future()

    def work() -> None:
        try:
            box.set_result(asyncio.run(make()))
        except BaseException as err:
            box.set_exception(err)

    thread = threading.Thread(target=work, name="bdn-ensure-weights")
    thread.start()
    thread.join()
    return box.result()
