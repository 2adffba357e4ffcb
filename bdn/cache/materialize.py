"""Materialize a manifest's tree at a mount location from cached blobs.

The tree is built beside the mount (``<parent>/.<name>.bdn-<random>``) and
swapped in with one ``rename`` (or ``renameat2(RENAME_EXCHANGE)`` over an
existing tree), so a reader of the mount sees the old tree or the new one,
never a mix and never a partial file. Files are hardlinks of the blobs (0444
because blobs are); only when the cache is on another filesystem are they
reflinked or copied. Directories are made 0555 once populated.

What is already at the mount is replaced only when nothing of a user's would
be lost: a tree BDN recorded there that holds nothing BDN did not put in it
(:mod:`bdn.cache.foreign`), or an empty directory of the user pulling, which
is adopted. Anything else fails with :class:`MountConflict` naming what is
in the way, and nothing is changed.

One materialize per mount path runs at a time on the node (a flock in
``locks/``), so concurrent pulls to one mount serialize and the second finds
the tree ``unchanged``. Everything here blocks; call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bdn.cache.foreign import BlobIdentities, describe, foreign_paths, top_entries
from bdn.cache.index import CacheIndex, TreeRecord
from bdn.cache.layout import BLOB_MODE, TREE_DIR_MODE, CacheLayout
from bdn.cache.lock import file_lock, try_file_lock
from bdn.digest import Digest
from bdn.errors import BlobNotFound, CacheError, ConfigError, MountConflict
from bdn.manifest import FileEntry, Manifest

log = logging.getLogger(__name__)

Mode = Literal["hardlink", "reflink", "copy", "unchanged"]

FICLONE = 0x40049409  # ioctl: share the source file's extents (btrfs, xfs, ...).
RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths atomically (Linux >= 3.15).
AT_FDCWD = -100

# A placed file's mode ranks how far it fell back; the tree reports the worst.
_RANK: dict[str, int] = {"hardlink": 0, "reflink": 1, "copy": 2}
# Errors of os.link that mean "link impossible here", not "something is broken".
_NO_LINK = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP})
# Errors of renameat2(RENAME_EXCHANGE) that mean the filesystem or libc lacks it.
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
# Errors of a rename over the mount that mean it is a mount point or another fs.
_NOT_RENAMEABLE = frozenset({errno.EBUSY, errno.EXDEV})


@dataclass(frozen=True, slots=True)
class Materialized:
    """Where a tree was materialized and how.

    Attributes:
        path: the mount location (absolute, parent symlinks resolved).
        mode: ``hardlink`` (every file a link to its blob), ``reflink`` or
            ``copy`` (the cache is on another filesystem), or ``unchanged``
            (the mount already held exactly this manifest; nothing was done).
    """

    path: Path
    mode: Mode


@dataclass(slots=True)
class _Placer:
    """Places files for one materialize, remembering which methods failed."""

    layout: CacheLayout
    on_copy: Callable[[str], None]
    can_link: bool = True
    can_reflink: bool = True
    worst: Mode = "hardlink"
    dirs: set[Path] = field(default_factory=set)

    def place(self, entry: FileEntry, dst: Path) -> None:
        if dst.parent not in self.dirs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            self.dirs.add(dst.parent)
        if entry.size == 0:
            # An empty file needs no blob (a pull may not even store one).
            os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            os.chmod(dst, BLOB_MODE)
            return
        src = self.layout.blob(entry.sha256)
        try:
            self._place(src, dst)
        except FileNotFoundError as err:
            if err.filename is not None and os.fsdecode(err.filename) == str(src):
                raise _missing(self.layout, entry) from err
            raise

    def _place(self, src: Path, dst: Path) -> None:
        if self.can_link:
            try:
                os.link(src, dst)
                return
            except OSError as err:
                if err.errno not in _NO_LINK:
                    raise
                if err.errno == errno.EXDEV:
                    self.can_link = False
                    self.on_copy(str(dst))
        if self.can_reflink:
            try:
                with open(src, "rb") as s, open(dst, "xb") as d:
                    fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
                    os.fsync(d.fileno())
                os.chmod(dst, BLOB_MODE)
                self._fell_back("reflink")
                return
            except OSError:
                # Any failure (EXDEV, EOPNOTSUPP, ENOTTY, EINVAL...) means this
                # filesystem pair cannot share extents; stop trying for this tree.
                self.can_reflink = False
                dst.unlink(missing_ok=True)
        shutil.copyfile(src, dst)
        with open(dst, "rb") as d:
            # A renamed-in tree must never hold a short file after a power cut.
            os.fsync(d.fileno())
        os.chmod(dst, BLOB_MODE)
        self._fell_back("copy")

    def _fell_back(self, mode: Mode) -> None:
        if _RANK[mode] > _RANK[self.worst]:
            self.worst = mode


def materialize(layout: CacheLayout, index: CacheIndex, manifest: Manifest, mount: Path,
                on_copy: Callable[[str], None]) -> Materialized:
    """Make ``mount`` hold exactly ``manifest``'s tree; see :meth:`NodeCache.materialize`.

    ``on_copy(path)`` is called when a file had to be copied or reflinked
    because the cache is on another filesystem than the mount.
    """
    mount = normalize_mount(mount)
    with file_lock(layout.tree_lock(mount)):
        sweep_leftovers(mount)
        blobs = _stat_blobs(layout, manifest)
        record = index.tree(mount)
        if (record is not None and record.manifest_id == manifest.id
                and holds(mount, manifest, record.mode, blobs)):
            return Materialized(mount, "unchanged")
        exists = _check_replaceable(layout, mount, record, index)
        hexes = sorted({e.sha256.hex for e in manifest.files if e.size})
        previous_hexes = index.tree_blobs(mount) if record is not None else []
        if exists and os.path.ismount(mount):
            return _in_place(layout, index, manifest, mount, hexes, on_copy)
        tmp = _sibling(mount)
        try:
            placer = _populate(layout, manifest, tmp, on_copy, create_root=True)
            # Record first: a crash after the swap must not leave our tree at
            # the mount without a record (the next pull would then refuse it
            # as a stranger's directory). A record ahead of the tree is
            # harmless: the "unchanged" check looks at the files themselves.
            index.put_tree(mount, manifest.id, placer.worst, hexes, time.time())
            try:
                swapped = _swap(tmp, mount, exists)
            except BaseException:
                with contextlib.suppress(Exception):
                    index.restore_tree(mount, record, previous_hexes)
                raise
        finally:
            if tmp.exists():
                _drop_old(tmp)
        if not swapped:
            return _in_place(layout, index, manifest, mount, hexes, on_copy)
        return Materialized(mount, placer.worst)


def normalize_mount(mount: Path) -> Path:
    """Absolute mount path with its parent's symlinks resolved (the record's key).

    Raises:
        ConfigError: ``mount`` is a filesystem root.
    """
    mount = Path(os.path.abspath(mount))
    if not mount.name:
        raise ConfigError(f"mount location {mount} is a filesystem root; name a directory",
                          field="mount_location")
    mount.parent.mkdir(parents=True, exist_ok=True)
    return mount.parent.resolve() / mount.name


def holds(mount: Path, manifest: Manifest, mode: str, blobs: dict[Digest, os.stat_result]) -> bool:
    """True when ``mount`` has exactly the manifest's files (and no others), each still
    its blob's inode (``hardlink`` trees) or of the right size (copies)."""
    try:
        found = set(_walk_files(mount))
    except OSError:
        return False
    if found != {e.path for e in manifest.files}:
        return False
    for entry in manifest.files:
        try:
            st = os.lstat(mount / entry.path)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            return False
        if mode == "hardlink" and entry.size:
            blob = blobs[entry.sha256]
            if (st.st_dev, st.st_ino) != (blob.st_dev, blob.st_ino):
                return False
    return True


def sweep_leftovers(mount: Path) -> int:
    """Remove temp trees a crashed materialize left beside ``mount``; returns how many.

    Call only while holding the mount's tree lock (see :func:`try_sweep_leftovers`).
    """
    pattern = re.compile(re.escape(f".{mount.name}.bdn-") + "[0-9a-f]{16}")
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
            os.scandir(mount.parent) as it:
        stale = [Path(e.path) for e in it
                 if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
        for path in stale:
            remove_tree(path)
        return len(stale)
    return 0


def try_sweep_leftovers(layout: CacheLayout, mount: Path) -> int:
    """:func:`sweep_leftovers` unless a materialize of ``mount`` is running (gc)."""
    with try_file_lock(layout.tree_lock(mount)) as held:
        return sweep_leftovers(mount) if held else 0


def remove_tree(path: Path) -> None:
    """Delete a tree we built: make its directories writable, then remove it.

    Only directories are chmodded; files of a hardlinked tree share their
    inode (and so their mode) with the cache's blobs, which must stay 0444.
    """
    with contextlib.suppress(FileNotFoundError):
        for directory, _subdirs, _files in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(directory, 0o755)
        shutil.rmtree(path)


# --------------------------------------------------------------------------- helpers


def _stat_blobs(layout: CacheLayout, manifest: Manifest) -> dict[Digest, os.stat_result]:
    blobs: dict[Digest, os.stat_result] = {}
    for entry in manifest.files:
        if not entry.size or entry.sha256 in blobs:
            continue
        path = layout.blob(entry.sha256)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise _missing(layout, entry) from None
        if st.st_size != entry.size:
            raise CacheError(
                f"blob {entry.sha256} in node cache {layout.root} has {st.st_size} bytes, the "
                f"manifest says {entry.size} (for {entry.path}); run `bdn cache verify --fix` "
                "and pull again", path=str(path))
        blobs[entry.sha256] = st
    return blobs


def _missing(layout: CacheLayout, entry: FileEntry) -> BlobNotFound:
    return BlobNotFound(
        f"blob {entry.sha256} (for {entry.path}) is not in node cache {layout.root}; "
        "it may have been evicted meanwhile; run `bdn pull` again", digest=str(entry.sha256))


def _check_replaceable(layout: CacheLayout, mount: Path, record: TreeRecord | None,
                       index: CacheIndex) -> bool:
    """Whether ``mount`` exists; raises MountConflict unless replacing it loses nothing.

    Replaceable: a tree BDN recorded there that holds nothing BDN did not put
    in it (see :mod:`bdn.cache.foreign`), or an empty directory that the user
    running the pull owns (adopted: the tree takes its place). Never: a
    non-empty directory BDN did not materialize, another user's directory, a
    file, a symlink.
    """
    try:
        st = os.lstat(mount)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        what = "a file" if stat.S_ISREG(st.st_mode) else "not a directory"
        raise MountConflict(
            f"mount location {mount} is {what} that BDN did not materialize; refusing to "
            "replace it: remove it, or choose another mount location", path=str(mount))
    if record is not None:
        foreign = foreign_paths(mount, BlobIdentities.of(layout))
        if foreign:
            raise MountConflict(
                f"mount location {mount} holds {len(foreign)} path(s) BDN did not put there: "
                f"{describe(foreign)}; refusing to replace the tree, so nothing of yours is "
                "lost: move them out (its directories are read-only: chmod u+w first), or "
                "choose another mount location", path=str(mount))
        return True
    entries = top_entries(mount)
    if entries:
        raise MountConflict(
            f"mount location {mount} is a directory that BDN did not materialize (no record "
            f"in {index.path}) and it holds {describe(entries)}; refusing to replace it: "
            "empty it, or choose another mount location", path=str(mount))
    if st.st_uid != os.geteuid():
        raise MountConflict(
            f"mount location {mount} is an empty directory owned by uid {st.st_uid}, not by "
            f"the user pulling (uid {os.geteuid()}); BDN only adopts an empty directory of "
            "its own user: remove it, or choose another mount location", path=str(mount))
    log.info("adopting the empty directory %s as the mount location", mount)
    return True


def _sibling(mount: Path) -> Path:
    return mount.parent / f".{mount.name}.bdn-{secrets.token_hex(8)}"


def _populate(layout: CacheLayout, manifest: Manifest, root: Path,
              on_copy: Callable[[str], None], *, create_root: bool) -> _Placer:
    placer = _Placer(layout, on_copy)
    if create_root:
        root.mkdir()
    placer.dirs.add(root)
    for entry in manifest.files:
        placer.place(entry, root / entry.path)
    # mkdir(parents=True) made every directory between root and a file's
    # parent, but only the deepest was remembered: collect the rest.
    dirs: set[Path] = set()
    for directory in placer.dirs:
        while directory not in dirs:
            dirs.add(directory)
            if directory == root:
                break
            directory = directory.parent
    # Read-only last, deepest first, once nothing more is created inside.
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            os.chmod(directory, TREE_DIR_MODE)
        except OSError:
            # The root of an in-place tree is a mount point, whose mode may
            # belong to the volume (read-only bind, foreign owner).
            if create_root or directory != root:
                raise
    return placer


def _swap(tmp: Path, mount: Path, exists: bool) -> bool:
    """Put ``tmp`` at ``mount``; False when ``mount`` cannot be renamed over."""
    if not exists:
        os.rename(tmp, mount)
        return True
    try:
        _exchange(tmp, mount)
    except OSError as err:
        if err.errno in _NOT_RENAMEABLE:
            return False
        if err.errno not in _NO_EXCHANGE:
            raise
    else:
        _drop_old(tmp)  # The old tree now lives at the temp name.
        return True
    # No atomic exchange here (old libc, or a filesystem without it, e.g. some
    # FUSE and NFS): move the old tree aside and the new one in. Between the two
    # renames the mount briefly does not exist; a reader sees ENOENT, never a
    # mixed tree.
    aside = _sibling(mount)
    try:
        os.rename(mount, aside)
    except OSError as err:
        if err.errno in _NOT_RENAMEABLE:
            return False
        raise
    try:
        os.rename(tmp, mount)
    except BaseException:
        os.rename(aside, mount)
        raise
    _drop_old(aside)
    return True


def _drop_old(path: Path) -> None:
    # A temp tree (the replaced one, or an unused new one): failing to delete
    # it must not fail (or mask the error of) the materialize. Its name is a
    # leftover name, swept by the next materialize of this mount or by gc.
    try:
        remove_tree(path)
    except OSError as err:
        log.warning("could not remove the temporary tree %s (%s); it will be swept later",
                    path, err)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None  # glibc < 2.28, musl < 1.2.? or not Linux: no wrapper.
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _exchange(a: Path, b: Path) -> None:
    func = _renameat2()
    if func is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(b))
    if func(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(b))


def _in_place(layout: CacheLayout, index: CacheIndex, manifest: Manifest, mount: Path,
              hexes: list[str], on_copy: Callable[[str], None]) -> Materialized:
    """Rebuild the tree inside ``mount`` itself: NOT atomic, for mount points only.

    ``mount`` is a mount point (a volume mounted there), which cannot be renamed
    over; readers may see the tree half built until this returns. On failure
    the mount is emptied rather than left half built.
    """
    log.info("%s is a mount point; materializing in place (not atomic)", mount)
    index.put_tree(mount, manifest.id, "hardlink", hexes, time.time())
    _clear(mount)
    try:
        placer = _populate(layout, manifest, mount, on_copy, create_root=False)
    except BaseException:
        with contextlib.suppress(OSError):
            _clear(mount)
        raise
    index.put_tree(mount, manifest.id, placer.worst, hexes, time.time())
    return Materialized(mount, placer.worst)


def _clear(mount: Path) -> None:
    with contextlib.suppress(OSError):
        os.chmod(mount, 0o755)
    with os.scandir(mount) as it:
        children = [Path(e.path) for e in it]
    for child in children:
        if child.is_dir() and not child.is_symlink():
            remove_tree(child)
        else:
            child.unlink()


def _walk_files(root: Path) -> Iterator[str]:
    if not root.is_dir() or root.is_symlink():
        raise NotADirectoryError(str(root))
    for directory, _dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        for name in files:
            yield name if rel == "." else f"{rel}/{name}"
