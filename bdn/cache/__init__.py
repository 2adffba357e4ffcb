"""The node cache: node-local content-addressed blobs that pulls read and fill.

Pulls look blobs up here, fetch missing ones into resumable partial files under
a per-blob cross-process lock and commit them atomically (the write path,
:func:`fill_blob`), and materialize read-only trees from hardlinks. Least
recently used blobs that no live tree references are evicted to respect the
disk and a byte budget (docs/DESIGN.md, "Pull" and "Eviction"). Each blob's
admission (proven by this node, or vouched for by a store) is recorded, so a
cache shared by pulls of several stores never serves one store's unproven word
to another's pull (:mod:`bdn.cache.trust`).
"""

from __future__ import annotations

from bdn.cache.evict import BlobInfo
from bdn.cache.fill import FetchInto, fill_blob, recheck_after_reboot
from bdn.cache.materialize import Materialized
from bdn.cache.node import (
    DEFAULT_PARTIAL_MAX_AGE_S,
    CorruptBlob,
    GcReport,
    NodeCache,
    VerifyReport,
)
from bdn.cache.partial import Partial, PartialInfo
from bdn.cache.trust import Trust

__all__ = [
    "DEFAULT_PARTIAL_MAX_AGE_S",
    "BlobInfo",
    "CorruptBlob",
    "FetchInto",
    "GcReport",
    "Materialized",
    "NodeCache",
    "Partial",
    "PartialInfo",
    "Trust",
    "VerifyReport",
    "fill_blob",
    "recheck_after_reboot",
]
