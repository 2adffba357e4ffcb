"""CSI status codes for BDN's errors: a table, so every RPC maps failures alike.

A code is the name of a ``grpc.StatusCode`` member; :mod:`bdn.csi.server`
turns it into the gRPC status, so the node logic does not depend on gRPC.
Whether kubelet retries depends on the code: it treats ``UNAVAILABLE``,
``RESOURCE_EXHAUSTED``, ``ABORTED``, ``DEADLINE_EXCEEDED`` and ``CANCELLED``
as "maybe mounted" (it retries, or unpublishes when the pod goes) and any
other code as "not mounted" (see :data:`NON_FINAL`).

>>> from bdn import errors
>>> code_for(errors.RefNotFound("never mirrored"))
'NOT_FOUND'
>>> code_for(errors.InsufficientSpace("full", needed=1, free=0, evictable=0, path="/c"))
'RESOURCE_EXHAUSTED'
"""

from __future__ import annotations

from bdn import errors

INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
PERMISSION_DENIED = "PERMISSION_DENIED"
UNAVAILABLE = "UNAVAILABLE"
ABORTED = "ABORTED"
INTERNAL = "INTERNAL"

NON_FINAL = frozenset({UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, "DEADLINE_EXCEEDED",
                       "CANCELLED"})
"""Codes after which kubelet may still think the volume is mounted."""

_CODES: tuple[tuple[type[errors.BdnError], str], ...] = (
    # Most specific first: InsufficientSpace is a CacheError, IntegrityError a TransferError.
    (errors.InsufficientSpace, RESOURCE_EXHAUSTED),
    (errors.ConfigError, INVALID_ARGUMENT),
    (errors.ManifestInvalid, INVALID_ARGUMENT),
    (errors.SecretError, FAILED_PRECONDITION),
    (errors.AuthError, PERMISSION_DENIED),
    (errors.NotFound, NOT_FOUND),
    (errors.MountConflict, ABORTED),
    (errors.TransferError, UNAVAILABLE),
    (errors.StoreError, UNAVAILABLE),
    (errors.SourceError, UNAVAILABLE),
)

_FULL_DISK_WORDS = ("not enough space", "is full")
"""The agent's client raises a full cache as a plain CacheError (``error_type``
InsufficientSpace maps to its base class); its message still says which."""


class CsiError(Exception):
    """A failed RPC: the status ``code`` and a one-line message naming the fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def final(self) -> bool:
        """Kubelet will treat the volume as not mounted (so the plugin releases it)."""
        return self.code not in NON_FINAL


def code_for(err: BaseException) -> str:
    """The CSI code of a BDN error (``INTERNAL`` for anything the table lacks)."""
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code
    if isinstance(err, errors.CacheError) and any(w in str(err) for w in _FULL_DISK_WORDS):
        return RESOURCE_EXHAUSTED
    return INTERNAL


def to_csi_error(err: BaseException) -> CsiError:
    """``err`` as a :class:`CsiError` with its code and its own message."""
    if isinstance(err, CsiError):
        return err
    return CsiError(code_for(err), str(err) or type(err).__name__)
