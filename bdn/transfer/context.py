"""Errors of a transfer say where they happened: the file, and the chunk and its bytes.

Readers and the pool raise errors that know nothing of the file being fetched;
the engine prefixes that context once, on the way out, without changing the
error's type, so callers can still tell a missing object from a full disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from bdn.errors import BdnError

__all__ = ["in_context", "reraise"]


def in_context(err: Exception, context: str, path: Path | None = None) -> Exception:
    """``err`` with ``context`` prefixed to its message, for ``raise`` by the caller.

    A BDN error is updated in place (its type and fields matter to callers); an
    ``OSError`` with an errno is rebuilt, which keeps its builtin subclass
    (``FileNotFoundError``, ...) and names ``path`` when it named no file;
    anything else gets ``context`` as a note.
    """
    if isinstance(err, BdnError):
        if err.args and isinstance(err.args[0], str) and not err.args[0].startswith(context):
            err.args = (f"{context}: {err.args[0]}", *err.args[1:])
        return err
    if isinstance(err, OSError) and err.errno is not None:
        filename = err.filename if err.filename is not None else path
        return OSError(err.errno, f"{context}: {err.strerror}", filename)
    err.add_note(context)
    return err


def reraise(err: Exception, context: str, path: Path | None = None) -> NoReturn:
    """Raise ``err`` with ``context`` (see :func:`in_context`), chained when rebuilt."""
    new = in_context(err, context, path)
    if new is err:
        raise err
    raise new from err
