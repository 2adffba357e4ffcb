"""Where the agent may put trees: only under the roots its operator allowed.

A pod names a ``mount_location`` and the agent (often more privileged than the
pod) writes a tree there, replacing what was there if it was BDN's. So the
location is checked before anything is written:

* it lies strictly under one of the agent's trees roots (``--trees-root``;
  default ``<cache>/trees``), never at a root itself nor above another one;
* no component below its root is a symlink (a link would carry the tree, and
  the replacement of whatever it points at, anywhere on the node);
* it neither lies inside nor holds the node cache or a ``file://`` store,
  unless its root itself is inside (the default root is ``<cache>/trees``).

The roots are checked when the agent starts (:func:`check_roots`), the
locations on every ``POST /v1/pulls`` (:func:`check_mount`). Both raise
:class:`~bdn.errors.ConfigError` with a one-line message naming the path,
the allowed roots and the fix. A symlink made inside a root after the check
is not caught here; whoever may write under a root is trusted as much as
the operator.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from bdn.errors import ConfigError

DEFAULT_TREES_DIR = "trees"
"""The trees root inside the cache directory when no ``--trees-root`` is given."""

_FIELD = "mount_location"


def store_dir(store_uri: str) -> Path | None:
    """The directory of a ``file://`` store, else ``None`` (a remote store is not on disk)."""
    return Path(store_uri[len("file://"):]) if store_uri.startswith("file://") else None


def protected_dirs(cache_dir: Path, store_uri: str) -> tuple[Path, ...]:
    """The resolved directories a tree must stay out of: the cache, a local store."""
    store = store_dir(store_uri)
    return tuple(p.resolve() for p in (cache_dir, store) if p is not None)


def check_roots(roots: Sequence[Path], cache_dir: Path, store_uri: str) -> None:
    """Refuse trees roots that would let a tree land on the cache, the store or ``/``.

    Raises:
        ConfigError: a relative root, the filesystem root, a root that is
            (or is inside) the store, or the cache, or a directory inside the
            cache other than ``<cache>/trees``. A root may hold the cache or
            the store: :func:`check_mount` keeps trees off them.
    """
    cache, store = cache_dir.resolve(), store_dir(store_uri)
    inside_cache = cache / DEFAULT_TREES_DIR
    for given in roots:
        if not given.is_absolute() or ".." in given.parts:
            raise ConfigError(f"{given} must be an absolute directory without '..'",
                              field="--trees-root")
        root = given.resolve()
        if root == Path(root.anchor):
            raise ConfigError("must not be the filesystem root: name the directory trees "
                              "go in, e.g. /var/lib/bdn/trees", field="--trees-root")
        if store is not None and root.is_relative_to(store.resolve()):
            raise ConfigError(f"{given} is (or is inside) the store {store}; give a directory "
                              "outside it", field="--trees-root")
        if root.is_relative_to(cache) and not root.is_relative_to(inside_cache):
            raise ConfigError(
                f"{given} is (or is inside) the node cache {cache}; the only trees root "
                f"allowed there is {inside_cache}", field="--trees-root")


def check_mount(mount: str, roots: Sequence[Path], protected: Sequence[Path]) -> None:
    """Refuse a pod's ``mount_location`` (absolute, normalized) outside the rules above.

    Raises:
        ConfigError: one line naming the location, what is wrong, the
            allowed roots and how to fix it.
    """
    path = Path(mount)
    if not roots:
        raise ConfigError(f"{mount}: this agent has no trees root; start it with "
                          "`bdn agent --trees-root DIR`", field=_FIELD)
    allowed = ", ".join(map(str, roots))
    for other in roots:
        if other.is_relative_to(path):
            raise ConfigError(
                f"{mount} is (or holds) the trees root {other}; name a directory inside "
                f"it, e.g. {other}/my-model", field=_FIELD)
    root = next((r for r in roots if path.is_relative_to(r)), None)
    if root is None:
        raise ConfigError(
            f"{mount} is outside the directories this agent may write trees in ({allowed}); "
            f"use a path under one of them, e.g. {roots[0]}/my-model, or have the operator "
            "add a root with `bdn agent --trees-root DIR`", field=_FIELD)
    _refuse_symlinks(path, root)
    real = root.resolve() / path.relative_to(root)
    for place in protected:
        inside = real.is_relative_to(place) and not root.resolve().is_relative_to(place)
        if inside or place.is_relative_to(real):
            raise ConfigError(
                f"{mount} would put a tree on the agent's own files ({place}); use a path "
                f"under {allowed}, e.g. {roots[0]}/my-model", field=_FIELD)


def _refuse_symlinks(path: Path, root: Path) -> None:
    """Raise when a component of ``path`` below ``root`` is a symlink (missing ones end it)."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        try:
            st = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(
                f"{path}: {current} is a symlink, and the agent follows none below its trees "
                f"root {root}; use the real directory, without links", field=_FIELD)
