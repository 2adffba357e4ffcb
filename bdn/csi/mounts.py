"""Read-only bind mounts of trees at kubelet's target paths, through the mount syscalls.

A bind mount cannot be made read-only in one call: ``mount(MS_BIND)`` takes
the source's flags, and only a second ``mount(MS_BIND|MS_REMOUNT|MS_RDONLY)``
makes this mount read-only. Between the two the target is writable, so a
failed remount unmounts at once, and a crash between them is found by the
next publish of the volume (:func:`mount_state` reads ``rw``) and fixed
before it answers. The syscalls go through libc (``ctypes``): no ``mount(8)``
binary is needed in the image, and errors come back as ``errno``.

Mount points are read from ``/proc/self/mountinfo``; the topmost mount at a
path (the last line naming it) is the one a pod sees. Linux only; every
function blocks briefly.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Literal

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

MOUNTINFO = Path("/proc/self/mountinfo")

MountState = Literal["none", "ro", "rw"]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _check(result: int, what: str, path: Path) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {path}: {os.strerror(err)}", str(path))


def bind_read_only(tree: Path, target: Path) -> None:
    """Bind-mount ``tree`` at ``target`` (an existing directory), then make it read-only.

    Raises:
        OSError: either call failed (``EPERM``: not root / no CAP_SYS_ADMIN);
            after a failed remount the bind is undone, so ``target`` is
            never left writable.
    """
    libc = _libc()
    _check(libc.mount(os.fsencode(tree), os.fsencode(target), None, MS_BIND, None),
           "bind-mount onto", target)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    try:
        _check(libc.mount(None, os.fsencode(target), None, flags, None),
               "remount read-only", target)
    except OSError:
        unmount(target)
        raise


def remount_read_only(target: Path) -> None:
    """Make the bind mount at ``target`` read-only (one left ``rw`` by a crash)."""
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    _check(_libc().mount(None, os.fsencode(target), None, flags, None),
           "remount read-only", target)


def unmount(target: Path) -> None:
    """Unmount ``target``; lazily (``MNT_DETACH``) when it is busy, so a pod that
    still holds a file open does not wedge the release. Not mounted: no-op.

    Raises:
        OSError: the unmount failed for another reason.
    """
    libc = _libc()
    path = os.fsencode(target)
    if libc.umount2(path, UMOUNT_NOFOLLOW) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EINVAL and mount_state(target) == "none":
        return  # Not a mount point (already unmounted).
    if err == errno.ENOENT:
        return
    if err == errno.EBUSY:
        _check(libc.umount2(path, UMOUNT_NOFOLLOW | MNT_DETACH), "unmount (detach)", target)
        return
    raise OSError(err, f"unmount {target}: {os.strerror(err)}", str(target))


def mount_state(target: Path) -> MountState:
    """``"ro"`` or ``"rw"`` for the topmost mount at ``target``; ``"none"`` if there is none."""
    found: MountState = "none"
    want = os.path.realpath(target) if os.path.lexists(target) else os.path.abspath(target)
    for point, options in _mounts():
        if point == want:
            found = "ro" if "ro" in options.split(",") else "rw"
    return found


def mount_points_under(root: Path) -> list[str]:
    """Every mount point at or below ``root`` (for tests and leak checks)."""
    base = os.path.realpath(root)
    return [p for p, _ in _mounts() if p == base or p.startswith(base + "/")]


def _mounts() -> list[tuple[str, str]]:
    """(mount point, per-mount options) of every line of mountinfo, in order."""
    rows = []
    for line in MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        fields = line.split(" ")
        if len(fields) > 5:
            rows.append((_unescape(fields[4]), fields[5]))
    return rows


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo`` octal escapes."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
