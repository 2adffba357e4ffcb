"""What in a mount location BDN did not put there, so a materialize never deletes it.

Replacing a tree removes the old one, and rebuilding a mount point in place
empties it; both would take a user's file with them. Before either, the
materialize asks this module what the directory holds that is not BDN's and
refuses when anything is.

BDN puts only two kinds of things in a tree, and both are recognizable without
a per-file record:

* files: regular, mode exactly 0444, and either a hardlink of a cached blob
  (the same inode) or a file with no other link (a copied or reflinked tree's
  file, an empty file, or a link whose blob the cache dropped since, e.g.
  ``bdn cache verify --fix``);
* directories: each one holds at least one entry (BDN never makes an empty
  directory below the mount).

Anything else (a file of another mode, a symlink, a socket, an empty
directory, a second link of a file that is not a blob) is foreign. A user
cannot add a file to a tree without first making one of its 0555
directories writable, and a file they write is 0644 or so, so what they add
is caught. Not caught: a file they made 0444 with no other link (``cp`` of a
tree's file, ``install -m 444``), and a file BDN wrote that they edited in
place and made read-only again.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bdn.cache.layout import BLOB_MODE, CacheLayout

SHOWN = 5
"""How many foreign paths an error names before it gives a count of the rest."""


@dataclass(frozen=True, slots=True)
class BlobIdentities:
    """The ``(st_dev, st_ino)`` of the cache's blobs: what a tree's hardlink may be."""

    inodes: frozenset[tuple[int, int]]

    @classmethod
    def of(cls, layout: CacheLayout) -> BlobIdentities:
        """Stat every blob of the cache (one ``scandir`` per shard)."""
        inodes: set[tuple[int, int]] = set()
        for _digest, entry in layout.iter_blob_files():
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # Evicted meanwhile.
            inodes.add((st.st_dev, st.st_ino))
        return cls(frozenset(inodes))

    def is_ours(self, st: os.stat_result) -> bool:
        """Whether a file with this ``lstat`` may be one BDN placed in a tree."""
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != BLOB_MODE:
            return False
        return st.st_nlink == 1 or (st.st_dev, st.st_ino) in self.inodes


def foreign_paths(mount: Path, blobs: BlobIdentities) -> list[str]:
    """Paths under ``mount`` (relative, sorted) that BDN did not put there.

    ``mount`` must be a directory that is not a symlink; nothing is followed.
    """
    found: list[str] = []
    _walk(mount, "", blobs, found)
    return sorted(found)


def _walk(directory: Path, prefix: str, blobs: BlobIdentities, found: list[str]) -> bool:
    """Append the foreign entries of ``directory``; True when it has any entry."""
    with os.scandir(directory) as it:
        entries = list(it)
    for entry in entries:
        rel = prefix + entry.name
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            if not _walk(Path(entry.path), rel + "/", blobs, found):
                found.append(rel + "/")  # An empty directory: BDN never makes one.
        elif not blobs.is_ours(st):
            found.append(rel)
    return bool(entries)


def describe(paths: Sequence[str], shown: int = SHOWN) -> str:
    """``a, b, c`` or ``a, b, c (and 4 more)``: a few paths, then a count.

    >>> describe(["a", "b", "c"], shown=2)
    'a, b (and 1 more)'
    """
    head = ", ".join(paths[:shown])
    rest = len(paths) - shown
    return f"{head} (and {rest} more)" if rest > 0 else head


def top_entries(directory: Path) -> list[str]:
    """The names directly inside ``directory``, sorted (directories end in ``/``).

    For a directory BDN never materialized: it is not walked (it may be huge),
    but naming what is at its top tells the user what would have been lost.
    """
    with os.scandir(directory) as it:
        return sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in it)
