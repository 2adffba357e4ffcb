"""Manifests: the exact file list a deployment needs, as frozen data with one canonical form.

A manifest names every file of a weights tree with its size, its SHA-256 blob
identity and the xxh3-128 digest of each fixed-size chunk. Its id is the SHA-256
of its canonical bytes, so a manifest fetched by id is verified by hashing it.
The format is specified in ``manifests/SPEC.md``; the JSON Schema that checks
its shape ships inside the package (``bdn/schema/manifest.v1.json``).

Validated manifests come from :meth:`Manifest.from_json`,
:meth:`Manifest.from_dict` or :meth:`Manifest.build`; the plain constructors do
not validate. The JSON side (strict parsing, canonical bytes, every validity
rule) lives in :mod:`bdn.manifest_json`; this module is the data model over
it. Nothing here does I/O beyond reading the packaged schema once.

>>> from bdn.digest import xxh3_128_hex
>>> data = b"hello"
>>> entry = FileEntry("w/a.bin", 5, Digest.of_bytes(data), (xxh3_128_hex(data),), None)
>>> source = SourceRef("file:///models/a", "local", None)
>>> m = Manifest.build(source, Filters(None, None), 16, [entry])
>>> m.total_size, m.file("w/a.bin").size
(5, 5)
>>> Manifest.from_json(m.canonical_bytes(), expected_id=m.id) == m
True
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from bdn.digest import SHA256_PREFIX, Digest
from bdn.errors import ManifestInvalid
from bdn.manifest_json import SCHEMA_V1 as SCHEMA_V1
from bdn.manifest_json import (
    canonical_json,
    check_id,
    parse_json,
    path_problem,
    schema_text,
    validate_data,
)

SOURCE_KINDS: Final = ("local", "s3", "hf", "gcs", "r2", "http", "azure", "cw")
"""Allowed values of ``source.kind`` (the schema's enum, in the same order)."""


@dataclass(frozen=True, slots=True)
class SourceRef:
    """The upstream a manifest's files were mirrored from.

    Attributes:
        uri: the source as configured (``hf://org/repo@main``,
            ``s3://bucket/prefix``, ``file:///srv/models/x``), never carrying
            credentials; non-empty.
        kind: the upstream family, one of :data:`SOURCE_KINDS`.
        revision: what the mirror resolved and pinned: the commit SHA for
            ``hf`` (so a moving branch never changes a mirrored manifest);
            ``None`` where the upstream has no revision.
    """

    uri: str
    kind: str
    revision: str | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON data model of this object (``source`` in a manifest)."""
        return {"uri": self.uri, "kind": self.kind, "revision": self.revision}


@dataclass(frozen=True, slots=True)
class Filters:
    """The patterns that selected the mirrored files, recorded as configured.

    They document how the file list was produced; a pull never re-applies them.

    Attributes:
        allow_patterns: only paths matching one of these were mirrored;
            ``None`` when no allow list was configured (everything allowed).
        ignore_patterns: paths matching one of these were skipped; ``None``
            when no ignore list was configured.
    """

    allow_patterns: tuple[str, ...] | None
    ignore_patterns: tuple[str, ...] | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON data model of this object (``filters`` in a manifest)."""
        return {
            "allow_patterns": _list_or_none(self.allow_patterns),
            "ignore_patterns": _list_or_none(self.ignore_patterns),
        }


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the tree.

    Attributes:
        path: relative, normalized, ``/``-separated path under the mount
            location (see :func:`validate_path`).
        size: size in bytes.
        sha256: the blob identity; the content's key in every store and cache.
        chunks: xxh3-128 (32 lowercase hex) of each ``chunk_size`` piece of the
            content in order, the last piece shorter; ``()`` for an empty file.
            A pull checks every chunk against these before accepting it.
        source_etag: the upstream's version tag for this object at mirror
            time (S3/R2 ETag, GCS generation, HF oid), used to detect that the
            upstream object changed; ``None`` where the upstream has none.
    """

    path: str
    size: int
    sha256: Digest
    chunks: tuple[str, ...]
    source_etag: str | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON data model of this object (an item of ``files``)."""
        return {
            "path": self.path,
            "size": self.size,
            "sha256": str(self.sha256),
            "chunks": list(self.chunks),
            "source_etag": self.source_etag,
        }


@dataclass(frozen=True, slots=True)
class Manifest:
    """A version-1 manifest: the exact tree a deployment mounts.

    Attributes:
        schema: the format identifier, always :data:`SCHEMA_V1`.
        source: where the files came from.
        filters: the patterns that selected them.
        chunk_size: bytes per chunk for every file's ``chunks``.
        files: every file, sorted by path in code point order, paths unique,
            no path both a file and a directory of another.
        total_size: the sum of all file sizes.
    """

    schema: str
    source: SourceRef
    filters: Filters
    chunk_size: int
    files: tuple[FileEntry, ...]
    total_size: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Validate parsed JSON and build a manifest from it.

        Args:
            data: a manifest in its JSON data model (as ``json.loads`` gives it).

        Returns:
            The manifest.

        Raises:
            ManifestInvalid: the schema string is unknown, the data breaks the
                JSON Schema, or a rule of ``manifests/SPEC.md``; the message
                names the offending field (``files[2].path: ...``).
        """
        validate_data(data)
        source, filters = data["source"], data["filters"]
        return cls(
            schema=data["schema"],
            source=SourceRef(source["uri"], source["kind"], source["revision"]),
            filters=Filters(
                _tuple_or_none(filters["allow_patterns"]),
                _tuple_or_none(filters["ignore_patterns"]),
            ),
            chunk_size=data["chunk_size"],
            files=tuple(
                FileEntry(
                    path=entry["path"],
                    size=entry["size"],
                    sha256=Digest.parse(entry["sha256"]),
                    chunks=tuple(entry["chunks"]),
                    source_etag=entry["source_etag"],
                )
                for entry in data["files"]
            ),
            total_size=data["total_size"],
        )

    @classmethod
    def from_json(cls, data: bytes, *, expected_id: str | None = None) -> Manifest:
        """Parse and validate manifest bytes, optionally checking them against an id.

        Args:
            data: the manifest's bytes (UTF-8 JSON).
            expected_id: the id the bytes were fetched by (``sha256:<hex>``, or
                the bare hex of a store key). When given, the bytes must hash
                to it and must be in canonical form, so the result's
                :attr:`id` equals it.

        Returns:
            The manifest.

        Raises:
            ManifestInvalid: the bytes do not hash to ``expected_id`` (corrupt
                or tampered with), are not UTF-8 JSON (duplicate keys, NaN and
                Infinity included), are not canonical while ``expected_id`` is
                given, or fail :meth:`from_dict`.
        """
        want = None if expected_id is None else check_id(data, expected_id)
        manifest = cls.from_dict(parse_json(data))
        if want is not None and manifest.canonical_bytes() != bytes(data):
            raise ManifestInvalid(
                f"manifest {want}: valid, but its bytes are not in canonical form, so its id "
                "is not the hash of its content; a non-conforming writer stored it, re-mirror "
                "the source"
            )
        return manifest

    @classmethod
    def build(
        cls,
        source: SourceRef,
        filters: Filters,
        chunk_size: int,
        files: Iterable[FileEntry],
    ) -> Manifest:
        """Assemble a validated manifest from mirrored files (in any order).

        Sorts ``files`` by path, computes ``total_size`` and checks every rule.

        Raises:
            ManifestInvalid: a value breaks the schema or a rule (bad path,
                duplicate path, chunk count not matching size, ...).
        """
        ordered = tuple(sorted(files, key=_entry_path))
        manifest = cls(
            schema=SCHEMA_V1,
            source=source,
            filters=filters,
            chunk_size=chunk_size,
            files=ordered,
            total_size=sum(entry.size for entry in ordered),
        )
        validate_data(manifest.to_dict())
        return manifest

    def to_dict(self) -> dict[str, Any]:
        """The manifest in its JSON data model; a fresh object the caller may change."""
        return {
            "schema": self.schema,
            "source": self.source.to_dict(),
            "filters": self.filters.to_dict(),
            "chunk_size": self.chunk_size,
            "files": [entry.to_dict() for entry in self.files],
            "total_size": self.total_size,
        }

    def canonical_bytes(self) -> bytes:
        """The canonical serialization (RFC 8785 for this data model) that the id hashes.

        UTF-8, object keys sorted, no whitespace, non-ASCII written literally,
        no trailing newline. This is exactly what a store holds at
        ``manifests/<hex>.json``.

        Raises:
            ManifestInvalid: a string holds a lone surrogate (possible only for
                a manifest built with the unvalidated constructor).
        """
        return canonical_json(self.to_dict())

    @property
    def id(self) -> str:
        """``sha256:<hex>`` of :meth:`canonical_bytes` (serializes on each access)."""
        return SHA256_PREFIX + hashlib.sha256(self.canonical_bytes()).hexdigest()

    def file(self, path: str) -> FileEntry:
        """The entry for ``path`` (binary search over the sorted files).

        Raises:
            KeyError: no file has this path.
        """
        index = bisect_left(self.files, path, key=_entry_path)
        if index < len(self.files) and self.files[index].path == path:
            return self.files[index]
        raise KeyError(path)


def validate_path(path: str) -> str:
    """Check that ``path`` is a relative, normalized, ``/``-separated manifest path.

    Rejected: the empty string, a leading or trailing ``/``, empty (``//``),
    ``.`` or ``..`` components, backslashes, control characters (U+0000 to
    U+001F and U+007F) and lone surrogates. Paths are not Unicode-normalized;
    two spellings of ``é`` are two different paths.

    >>> validate_path("模型/权重-é.safetensors")
    '模型/权重-é.safetensors'

    Returns:
        ``path`` itself.

    Raises:
        ManifestInvalid: the path breaks a rule; the message says which.
    """
    problem = path_problem(path)
    if problem is not None:
        raise ManifestInvalid(f"path {problem}")
    return path


def json_schema() -> dict[str, Any]:
    """The packaged JSON Schema (draft 2020-12) of manifest v1, as a fresh dict."""
    return json.loads(schema_text())


def _entry_path(entry: FileEntry) -> str:
    return entry.path


def _list_or_none(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


def _tuple_or_none(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)
