"""The plugin's durable record of which volume holds which tree, mounted where.

One small JSON file per volume, ``<state-dir>/holds/<volume_id>.json``,
written whole to a temporary name, fsynced and renamed (and the directory
fsynced), so a crash leaves the old record or the new one, never half of
one. A record moves through three states:

``publishing``
    written before the plugin asks the agent for the tree or mounts
    anything, so whatever a crash leaves behind (a tree, a mount) is named by
    a record and released by the next unpublish (or the restart sweep).
``published``
    the read-only mount is in place; NodePublishVolume has answered OK.
``releasing``
    written before unmounting and removing the tree; a restart finishes it.

The record is removed only after the mount is gone and the tree deleted, so
neither a restart of the plugin nor one of the agent loses a hold (the tree
stays) or leaks one (a record always exists while a tree or mount does).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

HoldState = Literal["publishing", "published", "releasing"]
_STATES = ("publishing", "published", "releasing")
_SUFFIX = ".json"


@dataclass(frozen=True, slots=True)
class Hold:
    """One volume's hold on one tree.

    Attributes:
        volume_id: kubelet's volume id (a safe file name, see
            :func:`bdn.csi.attributes.check_volume_id`).
        target: where the tree is (or is being) mounted for the pod.
        tree: the tree directory the agent materializes for this volume.
        state: see the module docstring.
        pod: ``namespace/name`` of the pod, for operators; may be empty.
        created: epoch seconds of the first publish.
    """

    volume_id: str
    target: str
    tree: str
    state: HoldState
    pod: str
    created: float


class HoldStore:
    """The ``holds/`` directory. Not locked: the plugin serializes calls per volume
    and is the only writer (one plugin per node)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "holds"

    def open(self) -> None:
        """Create the directory (0700: records name pods' paths)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def get(self, volume_id: str) -> Hold | None:
        """The record of ``volume_id``, or ``None``; a corrupt file reads as none
        (it can only be a leftover temporary: records are renamed in whole)."""
        try:
            data = json.loads((self.dir / (volume_id + _SUFFIX)).read_text(encoding="utf-8"))
            hold = Hold(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None
        return hold if hold.state in _STATES else None

    def put(self, hold: Hold) -> None:
        """Write (or replace) the record of ``hold.volume_id`` durably."""
        path = self.dir / (hold.volume_id + _SUFFIX)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = json.dumps(asdict(hold), sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._sync_dir()

    def delete(self, volume_id: str) -> None:
        """Forget ``volume_id``; no record is fine."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / (volume_id + _SUFFIX)).unlink()
            self._sync_dir()

    def all(self) -> list[Hold]:
        """Every readable record, by volume id."""
        holds = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.dir)):
                if name.endswith(_SUFFIX) and not name.startswith("."):
                    hold = self.get(name[: -len(_SUFFIX)])
                    if hold is not None:
                        holds.append(hold)
        return holds

    def sweep_temporaries(self) -> None:
        """Remove temporary files a crash left mid-write."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        (self.dir / name).unlink()

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
