"""The CSI Node service's work, without gRPC: publish a tree read-only, release it.

NodePublishVolume for volume ``V`` at ``target``:

1. validate the volume id, the target and the attributes (``InvalidArgument``);
2. record the hold ``V -> target, tree`` as ``publishing`` (:mod:`bdn.csi.holds`);
3. ask the node agent (pod API) for the tree at ``<trees-root>/csi/V`` and
   wait until it reports it done: the agent swaps a tree in only once it is
   complete and verified, so the directory is never partial;
4. bind-mount the tree read-only at ``target``; mark the hold ``published``.

Each volume gets its own tree, hardlinked from the node cache, so two pods
with the same weights share every blob (the same inodes) while neither's
release can pull a file from under the other. A publish of the same volume
and target again, after success or a crash at any step, resumes from what is
there (the agent joins or finds the tree; a mount left ``rw`` is remounted
read-only) and answers OK.

NodeUnpublishVolume marks the hold ``releasing``, unmounts, removes the
mount directory if it is empty, deletes the tree (its blobs lose a link, so
``bdn cache gc`` or the next pull that needs room may evict them) and drops
the record. An unknown volume or target is already released: OK.

Calls for one volume are serialized; different volumes run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from bdn.agent.client import AgentClient
from bdn.cache.materialize import remove_tree
from bdn.csi import mounts
from bdn.csi.attributes import check_volume_id, parse_volume
from bdn.csi.errors import FAILED_PRECONDITION, INTERNAL, INVALID_ARGUMENT, CsiError, to_csi_error
from bdn.csi.holds import Hold, HoldStore
from bdn.errors import ConfigError

log = logging.getLogger(__name__)

CSI_TREES_DIR = "csi"
"""The plugin's directory under the agent's trees root: one tree per volume, and
nothing else (a directory there without a hold is swept as a leftover)."""


class NodeService:
    """Publishes and releases volumes; see the module docstring.

    Args:
        agent: the node agent's pod API client.
        trees_root: a trees root of that agent (``bdn agent --trees-root``);
            trees go in ``<trees_root>/csi/<volume id>``.
        holds: the durable hold records.
    """

    def __init__(self, agent: AgentClient, trees_root: Path, holds: HoldStore) -> None:
        self.agent = agent
        self.trees = trees_root / CSI_TREES_DIR
        self.holds = holds
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- publish -----------------------------------------------------------------------
    async def publish(self, volume_id: str, target: str, attributes: Mapping[str, str],
                      *, block: bool = False) -> None:
        """Make ``target`` a read-only mount of the volume's complete tree (idempotent).

        Raises:
            CsiError: with the code for what failed; after a final code
                (kubelet then considers nothing mounted) the hold is released.
        """
        try:
            check_volume_id(volume_id)
            path = _target(target)
            if block:
                raise ConfigError("block volumes are not supported; mount the weights as a "
                                  "filesystem (csi: inline volumes are)", field="volume_capability")
            want = parse_volume(attributes)
        except ConfigError as err:
            raise CsiError(INVALID_ARGUMENT, str(err)) from None
        async with self._lock(volume_id):
            hold = await self._hold_for_publish(volume_id, path, want.pod)
            try:
                await self._publish_held(hold, want.pull_body(hold.tree))
            except Exception as err:
                failure = to_csi_error(err)
                if failure.final:
                    await self._release(hold)
                raise failure from err

    async def _hold_for_publish(self, volume_id: str, target: Path, pod: str) -> Hold:
        hold = self.holds.get(volume_id)
        if hold is not None and hold.target != str(target):
            raise CsiError(FAILED_PRECONDITION,
                           f"volume {volume_id} is already published at {hold.target}; an "
                           f"ephemeral volume has one target, unpublish it before {target}")
        if hold is not None and hold.state == "releasing":
            await self._release(hold)
            hold = None
        if hold is None:
            if await asyncio.to_thread(mounts.mount_state, target) != "none":
                raise CsiError(FAILED_PRECONDITION,
                               f"{target} is already a mount point this plugin did not make; "
                               "unmount it, or publish at an empty directory")
            hold = Hold(volume_id, str(target), str(self.trees / volume_id), "publishing",
                        pod, time.time())
            await asyncio.to_thread(self.holds.put, hold)
        return hold

    async def _publish_held(self, hold: Hold, body: dict[str, object]) -> None:
        target, tree = Path(hold.target), Path(hold.tree)
        if hold.state != "published" or await asyncio.to_thread(mounts.mount_state,
                                                                target) == "none":
            # Blocks until the agent reports the tree complete and verified.
            await self.agent.pull(body)
            if not tree.is_dir():
                raise CsiError(INTERNAL, f"the agent reported {tree} done but it is not a "
                               "directory; check the agent's --trees-root and its log")
        try:
            await asyncio.to_thread(_mount, tree, target)
        except OSError as err:
            raise CsiError(INTERNAL, f"could not mount {tree} read-only at {target} ({err}); "
                           "`bdn csi` must run as root, in a privileged container whose "
                           "kubelet directory has Bidirectional mount propagation") from err
        if hold.state != "published":
            await asyncio.to_thread(self.holds.put, dataclasses.replace(hold, state="published"))

    # -- unpublish ---------------------------------------------------------------------
    async def unpublish(self, volume_id: str, target: str) -> None:
        """Unmount ``target`` and release the volume's tree; unknown ones are fine.

        Raises:
            CsiError: ``INVALID_ARGUMENT`` for a missing id or target;
                ``INTERNAL`` when the unmount or the removal failed (the hold
                stays ``releasing`` and the next call or restart finishes it).
        """
        if not volume_id or not target:
            raise CsiError(INVALID_ARGUMENT, "volume_id and target_path are required; "
                           "send the ones NodePublishVolume was given")
        async with self._lock(volume_id):
            hold = self.holds.get(volume_id)
            if hold is None or hold.target != os.path.normpath(target):
                return  # Never published here (or released already): nothing to undo.
            await self._release(hold)
        await self.sweep_orphans()

    async def _release(self, hold: Hold) -> None:
        """Unmount, remove the mount dir if empty, delete the tree, drop the record."""
        try:
            if hold.state != "releasing":
                hold = dataclasses.replace(hold, state="releasing")
                await asyncio.to_thread(self.holds.put, hold)
            await asyncio.to_thread(_unmount_and_clear, Path(hold.target))
            tree = Path(hold.tree)
            if tree.parent == self.trees:  # Only ever our own trees.
                await asyncio.to_thread(remove_tree, tree)
            await asyncio.to_thread(self.holds.delete, hold.volume_id)
        except OSError as err:
            raise CsiError(INTERNAL, f"could not release volume {hold.volume_id} ({err}); "
                           "the plugin retries on the next unpublish or restart") from err

    # -- start-up ----------------------------------------------------------------------
    async def recover(self) -> None:
        """At start: finish interrupted releases, release holds whose pod directory is
        gone (kubelet will not call again for those), and sweep leftover trees."""
        await asyncio.to_thread(self.holds.open)
        await asyncio.to_thread(self.holds.sweep_temporaries)
        for hold in await asyncio.to_thread(self.holds.all):
            gone = not Path(hold.target).parent.exists()
            if hold.state == "releasing" or gone:
                log.info("releasing volume %s (%s)", hold.volume_id,
                         "interrupted release" if not gone else "its pod directory is gone")
                async with self._lock(hold.volume_id):
                    await self._release(hold)
        await self.sweep_orphans()

    async def sweep_orphans(self) -> int:
        """Delete trees under ``<trees_root>/csi`` that no hold names; returns how many.

        They are what a publish left when the pod went away while the agent
        was still building its tree. Names starting with ``.`` are the
        agent's temporaries (its ``cache gc`` sweeps them).
        """
        held = {h.volume_id for h in await asyncio.to_thread(self.holds.all)}
        try:
            names = await asyncio.to_thread(os.listdir, self.trees)
        except FileNotFoundError:
            return 0
        swept = 0
        for name in names:
            if name.startswith(".") or name in held or name in self._locks:
                continue
            path = self.trees / name
            if path.is_dir() and not path.is_symlink():
                log.info("removing tree %s: no volume holds it", path)
                await asyncio.to_thread(remove_tree, path)
                swept += 1
        return swept

    @contextlib.asynccontextmanager
    async def _lock(self, volume_id: str) -> AsyncIterator[None]:
        """Serialize calls for one volume; the entry goes when nobody waits on it."""
        lock, users = self._locks.get(volume_id, (asyncio.Lock(), 0))
        self._locks[volume_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[volume_id]
            if users <= 1:
                del self._locks[volume_id]
            else:
                self._locks[volume_id] = (lock, users - 1)


def _target(target: str) -> Path:
    """The target path: absolute, normalized, with an existing parent (kubelet makes it)."""
    if not target.startswith("/") or ".." in target.split("/"):
        raise ConfigError(f"{target!r} must be an absolute path without '..'",
                          field="target_path")
    path = Path(os.path.normpath(target))
    if not path.parent.is_dir():
        raise ConfigError(f"the parent of {path} does not exist; kubelet creates it before "
                          "publishing, so check the target path sent", field="target_path")
    return path


def _mount(tree: Path, target: Path) -> None:
    """Make ``target`` a read-only bind mount of ``tree`` (creating the directory)."""
    with contextlib.suppress(FileExistsError):
        target.mkdir(mode=0o750)
    state = mounts.mount_state(target)
    if state == "none":
        mounts.bind_read_only(tree, target)
    elif state == "rw":
        mounts.remount_read_only(target)


def _unmount_and_clear(target: Path) -> None:
    """Unmount ``target`` and remove it when it is an empty directory (never anything else)."""
    if mounts.mount_state(target) != "none":
        mounts.unmount(target)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, OSError):
        if mounts.mount_state(target) == "none":
            target.rmdir()  # Fails (and is left) when not empty.
