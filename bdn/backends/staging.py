"""Names of temp files in a store's staging area (``BlobStore.staging_dir()``).

Writers that stage files there (the mirror, the transfer engine) name them with
:func:`staging_name`, so that a later writer can tell a dead writer's leftovers
from a live writer's file (:func:`dead_local_writer`) without coordinating.
"""

from __future__ import annotations

import os
import re
import secrets
import socket

# "tmp.<pid>.<random>.<pid namespace>.<host>[.<anything>]": dots in the host
# name are replaced, so a writer may add a suffix for a companion file and it
# is still attributed (and swept) like the file it belongs to.
_TEMP_NAME = re.compile(r"tmp\.(\d+)\.[0-9a-f]+\.(\d+)\.([A-Za-z0-9_-]+)(?:\..*)?")
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


def staging_name() -> str:
    """A unique temp file name for a store's staging area (``staging_dir()``)."""
    # Unique per host, pid namespace, process and call: several processes,
    # possibly on several hosts sharing this store over NFS, may write the
    # same key at once, and flock is unreliable on NFS/Lustre, so writers never
    # coordinate: each owns its temp name and the final os.replace is atomic.
    # Host, pid namespace and pid let a sweep recognise a dead writer's
    # leftovers without touching a live one's (containers of one pod share a
    # host name but not, by default, a pid namespace).
    return f"tmp.{os.getpid()}.{secrets.token_hex(8)}.{_pid_namespace()}.{_host()}"


def dead_local_writer(name: str) -> bool | None:
    """Whether the writer of the staged file ``name`` is gone.

    ``True``/``False`` for a :func:`staging_name` of this host and pid
    namespace, whose writer can be checked; ``None`` for any other name (another
    host's writer, or a file nobody here named), which only its age can judge.
    """
    match = _TEMP_NAME.fullmatch(name)
    if match is None or match.group(3) != _host() or int(match.group(2)) != _pid_namespace():
        return None
    return not _pid_alive(int(match.group(1)))


def _host() -> str:
    return _HOST_UNSAFE.sub("_", socket.gethostname()) or "localhost"


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # Exists, owned by another user.
    return True
