"""Manifests: the exact file list a deployment needs, as frozen data with one canonical form.

A manifest names every file of a weights tree with its size, its SHA-256 blob
identity and the xxh3-128 digest of each fixed-size chunk. Its id is the SHA-256
of its canonical bytes, so a manifest fetched by id is verified by hashing it.
The format is specified in ``manifests/SPEC.md``; the JSON Schema that checks
its shape ships inside the package (``bdn/schema/manifest.v1.json``).

Validated manifests come from :meth:`Manifest.from_json`,
:meth:`Manifest.from_dict` or :meth:`Manifest.build`; the plain constructors do
not validate. Nothing here does I/O beyond reading the packaged schema once.

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
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match

from bdn.digest import SHA256_PREFIX, Digest, chunk_count
from bdn.errors import ManifestInvalid

SCHEMA_V1: Final = "bdn.manifest/v1"
"""The ``schema`` string of this format version; readers reject every other value."""

SOURCE_KINDS: Final = ("local", "s3", "hf", "gcs", "r2", "http")
"""Allowed values of ``source.kind`` (the schema's enum, in the same order)."""

_SCHEMA_RESOURCE = ("schema", "manifest.v1.json")
_MAX_MESSAGE = 240

# Control characters (C0 and DEL), the backslash, and lone surrogates, which a
# Python str can hold but UTF-8 (and so the canonical bytes) cannot encode.
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")


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
        _validate(data)
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
        want: Digest | None = None
        if expected_id is not None:
            want = _parse_id(expected_id)
            got = hashlib.sha256(data).hexdigest()
            if got != want.hex:
                raise ManifestInvalid(
                    f"manifest {want}: its bytes hash to {SHA256_PREFIX}{got}; the manifest is "
                    "corrupt or was tampered with; fetch it again from the store"
                )
        manifest = cls.from_dict(_parse_json(data))
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
        _validate(manifest.to_dict())
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
        return _canonical_json(self.to_dict())

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
    problem = _path_problem(path)
    if problem is not None:
        raise ManifestInvalid(f"path {problem}")
    return path


def json_schema() -> dict[str, Any]:
    """The packaged JSON Schema (draft 2020-12) of manifest v1, as a fresh dict."""
    return json.loads(_schema_text())


def _path_problem(path: object) -> str | None:
    """What is wrong with ``path``, phrased to follow it; ``None`` when it is valid."""
    if not isinstance(path, str):
        return f"must be a string, not {type(path).__name__}"
    if not path:
        return "'' is empty"
    bad = _BAD_PATH_CHAR.search(path)
    if bad is not None:
        char = bad.group()
        if char == "\\":
            return f"{path!r} contains a backslash; the separator is '/'"
        if "\ud800" <= char <= "\udfff":
            return f"{path!r} contains lone surrogate U+{ord(char):04X}, which is not Unicode text"
        return f"{path!r} contains control character U+{ord(char):04X}"
    if path.startswith("/"):
        return f"{path!r} is absolute; paths are relative to the mount location"
    if path.endswith("/"):
        return f"{path!r} ends with '/'; only files are listed, not directories"
    for part in path.split("/"):
        if not part:
            return f"{path!r} has an empty component ('//')"
        if part in (".", ".."):
            return f"{path!r} has a {part!r} component; paths must be normalized"
    return None


def _validate(data: object) -> None:
    """Check ``data`` against the schema, then the rules the schema cannot express."""
    data = _check_shape(data)
    _check_text(data, [])
    chunk_size: int = data["chunk_size"]
    files: Sequence[Mapping[str, Any]] = data["files"]
    for i, entry in enumerate(files):
        problem = _path_problem(entry["path"])
        if problem is not None:
            raise ManifestInvalid(f"files[{i}].path: {problem}")
        expected = chunk_count(entry["size"], chunk_size)
        if len(entry["chunks"]) != expected:
            raise ManifestInvalid(
                f"files[{i}].chunks: {len(entry['chunks'])} chunk digests, but a "
                f"{entry['size']}-byte file with chunk_size {chunk_size} has {expected}"
            )
    paths = [entry["path"] for entry in files]
    _check_order(paths)
    _check_clashes(paths)
    total = sum(entry["size"] for entry in files)
    if data["total_size"] != total:
        raise ManifestInvalid(
            f"total_size: {data['total_size']}, but the file sizes add up to {total}"
        )


def _check_shape(data: object) -> dict[str, Any]:
    """Reject unknown schema strings with a clear message, then run the JSON Schema."""
    if not isinstance(data, dict):
        raise ManifestInvalid(f"manifest: expected a JSON object, got {type(data).__name__}")
    if "schema" not in data:
        raise ManifestInvalid("schema: missing; this is not a BDN manifest")
    if data["schema"] != SCHEMA_V1:
        raise ManifestInvalid(
            f"schema: unsupported manifest format {_short_repr(data['schema'])}; this reader "
            f"understands only {SCHEMA_V1!r}; a newer bdn may read it"
        )
    error = best_match(_validator().iter_errors(data))
    if error is not None:
        raise ManifestInvalid(f"{_where(error.absolute_path)}: {_one_line(error.message)}")
    return data


def _check_text(value: object, where: list[str | int]) -> None:
    """Reject lone surrogates anywhere: JSON escapes can carry them, UTF-8 cannot."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ManifestInvalid(
                f"{_where(where)}: contains a lone surrogate, which is not Unicode text"
            ) from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(item, [*where, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, [*where, index])


def _check_order(paths: Sequence[str]) -> None:
    for i in range(1, len(paths)):
        previous, current = paths[i - 1], paths[i]
        if current == previous:
            raise ManifestInvalid(
                f"files[{i}].path: {current!r} is listed twice (also files[{i - 1}])"
            )
        if current < previous:
            raise ManifestInvalid(
                f"files[{i}].path: {current!r} sorts before files[{i - 1}].path {previous!r}; "
                "files must be sorted by path in code point order"
            )


def _check_clashes(paths: Sequence[str]) -> None:
    """Reject a path that is a file and also a directory of another path (``a``, ``a/b``)."""
    index = {path: i for i, path in enumerate(paths)}
    directories: set[str] = set()
    for i, path in enumerate(paths):
        cut = path.rfind("/")
        while cut > 0:
            parent = path[:cut]
            if parent in directories:
                # Its ancestors were checked when it was first seen.
                break
            if parent in index:
                raise ManifestInvalid(
                    f"files[{index[parent]}].path: {parent!r} is a file, but files[{i}].path "
                    f"{path!r} needs it to be a directory"
                )
            directories.add(parent)
            cut = path.rfind("/", 0, cut)


def _parse_json(data: bytes) -> Any:
    """Strict JSON: UTF-8 only, no duplicate keys, no NaN or Infinity."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestInvalid(f"manifest is not UTF-8: invalid byte at offset {err.start}") from err
    try:
        return json.loads(
            text, object_pairs_hook=_object_without_duplicates, parse_constant=_no_constant
        )
    except ManifestInvalid:
        raise
    except json.JSONDecodeError as err:
        raise ManifestInvalid(
            f"manifest is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from err
    except (ValueError, RecursionError) as err:
        # Integers past Python's digit limit and absurd nesting land here.
        raise ManifestInvalid(f"manifest is not valid JSON: {_one_line(str(err))}") from err


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key would let two readers see two different manifests behind one id.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ManifestInvalid(f"manifest is not valid: key {key!r} appears twice in an object")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ManifestInvalid(f"manifest is not valid JSON: {name} is not a JSON number")


def _canonical_json(value: Any) -> bytes:
    # For this data model (ASCII keys, strings, integers below 2**53, null,
    # arrays, objects) json.dumps with these options writes RFC 8785 output:
    # sorting ASCII keys by code point equals JCS's UTF-16 order, and Python
    # escapes exactly '"', '\\' and U+0000..U+001F, with the same short forms
    # and lowercase \u00xx as ECMAScript.
    text = json.dumps(
        value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ManifestInvalid(
            "manifest: a string contains a lone surrogate, which is not Unicode text"
        ) from err


def _parse_id(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except ManifestInvalid:
        raise ManifestInvalid(
            f"expected_id: {_short_repr(text)} is not a manifest id "
            "(expected 'sha256:' followed by 64 lowercase hex)"
        ) from None


def _is_json_integer(checker: object, instance: object) -> bool:
    # Draft 2020-12 calls 1.0 an integer; canonical bytes could not reproduce it.
    return isinstance(instance, int) and not isinstance(instance, bool)


_StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_json_integer),
)


@cache
def _schema_text() -> str:
    resource = resources.files("bdn")
    for part in _SCHEMA_RESOURCE:
        resource = resource.joinpath(part)
    return resource.read_text(encoding="utf-8")


@cache
def _validator() -> Any:
    # Validators keep no per-call state, so one instance serves every thread.
    return _StrictValidator(json.loads(_schema_text()))


def _where(parts: Iterable[str | int]) -> str:
    """``['files', 2, 'path']`` -> ``files[2].path``; the root is ``manifest``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "manifest"


def _one_line(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _short_repr(value: object) -> str:
    return _one_line(repr(value))


def _entry_path(entry: FileEntry) -> str:
    return entry.path


def _list_or_none(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


def _tuple_or_none(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)
