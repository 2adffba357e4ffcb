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
import os
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bdn.api.flows import (
    BeginCallback,
    ProgressCallback,
    T,
    check_store,
    get_manifest,
    mirror_weights,
    plan_model,
    pull_in_process,
    pull_through_agent,
    pull_weights,
    weights_entry,
    with_node_cache,
)
from bdn.config.settings import Settings
from bdn.config.weights import WeightsEntry, load_config
from bdn.plan import PlanRequest
from bdn.pull import PullOptions, PullResult, looks_like_manifest_id

if TYPE_CHECKING:
    # Types the CLI names without importing the library's internals itself.
    from bdn.cache import NodeCache as NodeCache
    from bdn.mirror import MirrorResult as MirrorResult

__all__ = [
    "BeginCallback",
    "PlanRequest",
    "ProgressCallback",
    "PullOptions",
    "PullResult",
    "WeightsHandle",
    "check_store",
    "ensure_weights",
    "ensure_weights_from_config",
    "get_manifest",
    "looks_like_manifest_id",
    "mirror_weights",
    "plan_model",
    "prefetch_weights",
    "pull_in_process",
    "pull_through_agent",
    "pull_weights",
    "weights_entry",
    "with_node_cache",
]






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
