"""The JSON form of a manifest: strict parsing, canonical bytes and every validity rule.

:mod:`bdn.manifest` holds the frozen dataclasses; this module holds what they
need to come from and go to bytes, and works on the plain JSON data model
(dicts, lists, strings, integers), so it never imports the dataclasses. Kept
apart because the rules are most of the code and change on their own schedule
(a new SPEC rule), while the data model stays put.

Nothing here does I/O beyond reading the packaged JSON Schema once.

>>> canonical_json({"b": 1, "a": [None, "x y"]})
b'{"a":[null,"x y"],"b":1}'
>>> path_problem("a/../b")
"'a/../b' has a '..' component; paths must be normalized"
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Final

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match

from bdn.digest import SHA256_PREFIX, Digest, chunk_count
from bdn.errors import ManifestInvalid

__all__ = [
    "SCHEMA_V1",
    "canonical_json",
    "check_id",
    "parse_id",
    "parse_json",
    "path_problem",
    "schema_text",
    "validate_data",
]

SCHEMA_V1: Final = "bdn.manifest/v1"
"""The ``schema`` string of this format version; readers reject every other value."""

_SCHEMA_RESOURCE = ("schema", "manifest.v1.json")
_MAX_MESSAGE = 240

# Control characters (C0 and DEL), the backslash, and lone surrogates, which a
# Python str can hold but UTF-8 (and so the canonical bytes) cannot encode.
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")


def path_problem(path: object) -> str | None:
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


def validate_data(data: object) -> None:
    """Check parsed JSON against the schema, then the rules the schema cannot express.

    Raises:
        ManifestInvalid: the first broken rule, naming its field (``files[2].path: ...``).
    """
    data = _check_shape(data)
    _check_text(data, [])
    chunk_size: int = data["chunk_size"]
    files: Sequence[Mapping[str, Any]] = data["files"]
    for i, entry in enumerate(files):
        problem = path_problem(entry["path"])
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


def parse_json(data: bytes) -> Any:
    """Parse strict JSON: UTF-8 only, no duplicate keys, no NaN or Infinity.

    Raises:
        ManifestInvalid: the bytes break one of those rules or are not JSON at all.
    """
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


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of a JSON value: sorted keys, no whitespace (RFC 8785 here)."""
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


def parse_id(text: str) -> Digest:
    """A manifest id (``sha256:<hex>`` or bare hex) as a digest; ManifestInvalid if malformed."""
    try:
        return Digest.parse(text)
    except ManifestInvalid:
        raise ManifestInvalid(
            f"expected_id: {_short_repr(text)} is not a manifest id "
            "(expected 'sha256:' followed by 64 lowercase hex)"
        ) from None


def check_id(data: bytes, expected_id: str) -> Digest:
    """Check that ``data`` hashes to ``expected_id``; return the id as a digest.

    Raises:
        ManifestInvalid: ``expected_id`` is not a manifest id, or the bytes
            hash to something else (corrupt, or tampered with).
    """
    want = parse_id(expected_id)
    got = hashlib.sha256(data).hexdigest()
    if got != want.hex:
        raise ManifestInvalid(
            f"manifest {want}: its bytes hash to {SHA256_PREFIX}{got}; the manifest is "
            "corrupt or was tampered with; fetch it again from the store"
        )
    return want


def _is_json_integer(checker: object, instance: object) -> bool:
    # Draft 2020-12 calls 1.0 an integer; canonical bytes could not reproduce it.
    return isinstance(instance, int) and not isinstance(instance, bool)


_StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_json_integer),
)


@cache
def schema_text() -> str:
    """The packaged JSON Schema of manifest v1, read once per process."""
    resource = resources.files("bdn")
    for part in _SCHEMA_RESOURCE:
        resource = resource.joinpath(part)
    return resource.read_text(encoding="utf-8")


@cache
def _validator() -> Any:
    # Validators keep no per-call state, so one instance serves every thread.
    return _StrictValidator(json.loads(schema_text()))


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
