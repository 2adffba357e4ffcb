"""The manifest format: goldens round-trip bit-exactly, their digests are real, every rule holds.

The goldens in ``manifests/examples/`` are the oracle. Their digests are
recomputed here from the content rule in ``manifests/examples/README.md``,
independently of the generator script.
"""

from __future__ import annotations

import copy
import dataclasses
import doctest
import hashlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash
from jsonschema import Draft202012Validator

import bdn.manifest
import bdn.manifest_json
from bdn.digest import Digest
from bdn.errors import ManifestInvalid
from bdn.manifest import (
    SCHEMA_V1,
    SOURCE_KINDS,
    FileEntry,
    Filters,
    Manifest,
    SourceRef,
    json_schema,
    validate_path,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "manifests" / "examples"
GOLDEN_NAMES = (
    "duplicate-content.json",
    "nested-dirs.json",
    "small-model.json",
    "unicode-path.json",
    "zero-byte-file.json",
)
GOLDENS = [EXAMPLES / name for name in GOLDEN_NAMES]
MAX_INT = 2**53 - 1

golden = pytest.mark.parametrize("path", GOLDENS, ids=GOLDEN_NAMES)


def content(size: int) -> bytes:
    """The content rule of manifests/examples/README.md."""
    return hashlib.shake_128(str(size).encode("ascii")).digest(size)


def golden_dict(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_bytes())


# --- goldens ---------------------------------------------------------------


def test_examples_folder_holds_exactly_the_five_goldens() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == list(GOLDEN_NAMES)


@golden
def test_golden_is_valid_for_any_draft_2020_12_validator(path: Path) -> None:
    Draft202012Validator(json_schema()).validate(json.loads(path.read_bytes()))


@golden
def test_golden_round_trips_bit_exactly(path: Path) -> None:
    data = path.read_bytes()
    manifest = Manifest.from_json(data)
    assert manifest.canonical_bytes() == data
    assert not data.endswith(b"\n")
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert manifest.schema == SCHEMA_V1


@golden
def test_golden_id_is_the_sha256_of_the_file(path: Path) -> None:
    data = path.read_bytes()
    hex_digest = hashlib.sha256(data).hexdigest()
    manifest = Manifest.from_json(data, expected_id="sha256:" + hex_digest)
    assert manifest.id == "sha256:" + hex_digest
    # The bare hex of a store key ``manifests/<hex>.json`` is accepted too.
    assert Manifest.from_json(data, expected_id=hex_digest) == manifest


@golden
def test_golden_digests_follow_the_content_rule(path: Path) -> None:
    doc = json.loads(path.read_bytes())
    chunk_size = doc["chunk_size"]
    assert chunk_size == 16
    for entry in doc["files"]:
        data = content(entry["size"])
        assert entry["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest(), entry["path"]
        expected_chunks = [
            xxhash.xxh3_128_hexdigest(data[start : start + chunk_size])
            for start in range(0, len(data), chunk_size)
        ]
        assert entry["chunks"] == expected_chunks, entry["path"]
    assert doc["total_size"] == sum(entry["size"] for entry in doc["files"])


@golden
def test_golden_etags_are_what_the_upstream_reports(path: Path) -> None:
    doc = json.loads(path.read_bytes())
    kind = doc["source"]["kind"]
    for entry in doc["files"]:
        data = content(entry["size"])
        etag = entry["source_etag"]
        if kind in ("s3", "r2"):
            assert etag == '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
        elif kind == "hf" and entry["path"].endswith(".safetensors"):
            assert etag == hashlib.sha256(data).hexdigest()
        elif kind == "hf":
            assert etag == hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()
        elif kind == "local":
            assert etag is None


def test_goldens_cover_the_required_cases() -> None:
    small = Manifest.from_json((EXAMPLES / "small-model.json").read_bytes())
    assert [f.path for f in small.files] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert small.source.revision is not None and len(small.source.revision) == 40

    nested = Manifest.from_json((EXAMPLES / "nested-dirs.json").read_bytes())
    assert any(f.path.count("/") >= 3 for f in nested.files)

    zero = Manifest.from_json((EXAMPLES / "zero-byte-file.json").read_bytes())
    empty = zero.file("added_tokens.json")
    assert (empty.size, empty.chunks) == (0, ())
    assert empty.sha256 == Digest.of_bytes(b"")

    uni = Manifest.from_json((EXAMPLES / "unicode-path.json").read_bytes())
    assert "模型/权重-é.safetensors" in [f.path for f in uni.files]
    # Code point order, not UTF-16 order: U+FF5A before U+1F600.
    assert [f.path for f in uni.files][-2:] == ["ｚ.txt", "😀.txt"]

    dup = Manifest.from_json((EXAMPLES / "duplicate-content.json").read_bytes())
    base = dup.file("base/model-00001-of-00001.safetensors")
    tuned = dup.file("finetune/model-00001-of-00001.safetensors")
    assert (base.sha256, base.chunks) == (tuned.sha256, tuned.chunks)


def test_generator_reproduces_the_goldens(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolves the module's annotations through sys.modules.
    monkeypatch.setitem(sys.modules, "make_examples", module)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert rendered == {name: (EXAMPLES / name).read_bytes() for name in GOLDEN_NAMES}
    assert module.render() == rendered


# --- the schema file -------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"]["const"] == SCHEMA_V1
    assert tuple(schema["properties"]["source"]["properties"]["kind"]["enum"]) == SOURCE_KINDS


def test_manifests_schema_json_is_a_relative_link_to_the_packaged_schema() -> None:
    link = REPO / "manifests" / "schema.json"
    assert link.is_symlink()
    assert os.readlink(link) == "../bdn/schema/manifest.v1.json"
    packaged = REPO / "bdn" / "schema" / "manifest.v1.json"
    assert link.read_bytes() == packaged.read_bytes()
    assert json.loads(packaged.read_bytes()) == json_schema()


# --- validate_path ---------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "a",
        "config.json",
        "a/b/c.safetensors",
        ".gitattributes",
        "a/.keep",
        "...",
        "a/..b",
        "模型/权重-é.safetensors",
        "😀",
        "a b/c\u00a0d",
        "C:/x",
    ],
)
def test_validate_path_accepts(path: str) -> None:
    assert validate_path(path) == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "is empty"),
        ("/abs/a", "is absolute"),
        ("/", "is absolute"),
        ("..", "'..' component"),
        ("../a", "'..' component"),
        ("a/../b", "'..' component"),
        ("a/..", "'..' component"),
        (".", "'.' component"),
        ("./a", "'.' component"),
        ("a/./b", "'.' component"),
        ("a//b", "empty component"),
        ("a\\b", "backslash"),
        ("a/", "ends with '/'"),
        ("a\x00b", "control character U+0000"),
        ("a\nb", "control character U+000A"),
        ("a\x1fb", "control character U+001F"),
        ("a\x7fb", "control character U+007F"),
        ("a\ud800b", "lone surrogate U+D800"),
    ],
)
def test_validate_path_rejects(path: str, reason: str) -> None:
    with pytest.raises(ManifestInvalid, match=re.escape(reason)) as info:
        validate_path(path)
    assert "\n" not in str(info.value)


def test_validate_path_rejects_non_strings() -> None:
    with pytest.raises(ManifestInvalid, match="must be a string"):
        validate_path(b"a")  # type: ignore[arg-type]


# --- rule violations -------------------------------------------------------

Mutation = Callable[[dict[str, Any]], object]


def set_path(i: int, value: str) -> Mutation:
    return lambda d: d["files"][i].__setitem__("path", value)


def set_file(i: int, key: str, value: object) -> Mutation:
    return lambda d: d["files"][i].__setitem__(key, value)


def set_top(key: str, value: object) -> Mutation:
    return lambda d: d.__setitem__(key, value)


def set_in(section: str, key: str, value: object) -> Mutation:
    return lambda d: d[section].__setitem__(key, value)


def swap_first_two(d: dict[str, Any]) -> None:
    d["files"][0], d["files"][1] = d["files"][1], d["files"][0]


def duplicate_first(d: dict[str, Any]) -> None:
    d["files"].insert(1, copy.deepcopy(d["files"][0]))
    d["total_size"] += d["files"][0]["size"]


def drop_last_chunk(d: dict[str, Any]) -> None:
    d["files"][1]["chunks"].pop()


def add_chunk(d: dict[str, Any]) -> None:
    d["files"][2]["chunks"].append("0" * 32)


def bump_total(d: dict[str, Any]) -> None:
    d["total_size"] += 1


def drop_key(d: dict[str, Any]) -> None:
    del d["files"][0]["source_etag"]


VIOLATIONS: list[tuple[str, Mutation, str]] = [
    # Paths.
    ("absolute path", set_path(0, "/config.json"), r"files\[0\]\.path: .* is absolute"),
    ("dotdot", set_path(0, "../config.json"), r"files\[0\]\.path: .*'\.\.' component"),
    ("dot prefix", set_path(0, "./config.json"), r"files\[0\]\.path: .*'\.' component"),
    ("double slash", set_path(1, "a//model.safetensors"), r"files\[1\]\.path: .*empty component"),
    ("backslash", set_path(0, "dir\\config.json"), r"files\[0\]\.path: .*backslash"),
    ("trailing slash", set_path(0, "config.json/"), r"files\[0\]\.path: .*ends with '/'"),
    ("control char", set_path(0, "config\x01.json"), r"files\[0\]\.path: .*U\+0001"),
    ("nul char", set_path(0, "config\x00.json"), r"files\[0\]\.path: .*U\+0000"),
    ("del char", set_path(0, "config\x7f.json"), r"files\[0\]\.path: .*U\+007F"),
    ("lone surrogate", set_path(0, "config\udc80.json"), r"files\[0\]\.path: .*surrogate"),
    ("empty path", set_path(0, ""), r"files\[0\]\.path: "),
    # Order, uniqueness, clashes.
    ("unsorted", swap_first_two, r"files\[1\]\.path: .*sorts before"),
    ("duplicate", duplicate_first, r"files\[1\]\.path: 'config\.json' is listed twice"),
    (
        "file and dir clash",
        set_path(1, "config.json/model.safetensors"),
        r"files\[0\]\.path: 'config\.json' is a file, but files\[1\]\.path",
    ),
    # Chunks and totals.
    ("too few chunks", drop_last_chunk, r"files\[1\]\.chunks: 6 chunk digests.* has 7"),
    ("too many chunks", add_chunk, r"files\[2\]\.chunks: 4 chunk digests.* has 3"),
    ("wrong total", bump_total, r"total_size: 174, but the file sizes add up to 173"),
    # Integers are JSON integers.
    ("float size", set_file(0, "size", 40.0), r"files\[0\]\.size: .*integer"),
    ("bool size", set_file(0, "size", True), r"files\[0\]\.size: .*integer"),
    ("negative size", set_file(0, "size", -1), r"files\[0\]\.size: "),
    ("size past 2**53", set_file(0, "size", MAX_INT + 1), r"files\[0\]\.size: "),
    ("float chunk_size", set_top("chunk_size", 16.0), r"chunk_size: .*integer"),
    ("bool chunk_size", set_top("chunk_size", True), r"chunk_size: .*integer"),
    ("zero chunk_size", set_top("chunk_size", 0), r"chunk_size: "),
    ("float total", set_top("total_size", 173.0), r"total_size: .*integer"),
    # Digests.
    ("digest no prefix", set_file(0, "sha256", "a" * 64), r"files\[0\]\.sha256: "),
    ("digest uppercase", set_file(0, "sha256", "sha256:" + "A" * 64), r"files\[0\]\.sha256: "),
    ("digest short", set_file(0, "sha256", "sha256:" + "a" * 63), r"files\[0\]\.sha256: "),
    ("digest newline", set_file(0, "sha256", "sha256:" + "a" * 64 + "\n"), r"files\[0\]\.sha256"),
    ("chunk uppercase", set_file(0, "chunks", ["A" * 32] * 3), r"files\[0\]\.chunks\[\d\]: "),
    ("chunk short", set_file(0, "chunks", ["a" * 31] * 3), r"files\[0\]\.chunks\[\d\]: "),
    ("chunk newline", set_file(0, "chunks", ["a" * 32 + "\n"] * 3), r"files\[0\]\.chunks\[\d\]"),
    # Schema string and shape.
    (
        "schema v2",
        set_top("schema", "bdn.manifest/v2"),
        r"schema: unsupported .*'bdn\.manifest/v2'",
    ),
    ("schema missing", lambda d: d.pop("schema"), r"schema: missing"),
    ("extra top key", set_top("comment", "hi"), r"manifest: Additional properties .*'comment'"),
    ("extra source key", set_in("source", "token", "x"), r"source: Additional properties"),
    ("extra filters key", set_in("filters", "x", None), r"filters: Additional properties"),
    ("extra file key", set_file(0, "mode", 420), r"files\[0\]: Additional properties"),
    ("missing file key", drop_key, r"files\[0\]: 'source_etag' is a required property"),
    ("unknown kind", set_in("source", "kind", "ftp"), r"source\.kind: "),
    ("empty uri", set_in("source", "uri", ""), r"source\.uri: "),
    ("empty revision", set_in("source", "revision", ""), r"source\.revision: "),
    ("empty etag", set_file(0, "source_etag", ""), r"files\[0\]\.source_etag: "),
    ("pattern not string", set_in("filters", "allow_patterns", [1]), r"allow_patterns\[0\]: "),
    ("etag surrogate", set_file(0, "source_etag", "\ud800"), r"files\[0\]\.source_etag: .*surr"),
]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [pytest.param(mutate, message, id=name) for name, mutate, message in VIOLATIONS],
)
def test_rule_violation_raises_manifest_invalid(mutate: Mutation, message: str) -> None:
    doc = golden_dict("small-model.json")
    Manifest.from_dict(doc)  # The unmutated document is valid.
    mutate(doc)
    with pytest.raises(ManifestInvalid, match=message) as info:
        Manifest.from_dict(doc)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_deep_file_and_dir_clash_is_found() -> None:
    source = SourceRef("file:///m", "local", None)
    files = [_entry("a/b"), _entry("a/b/c/d"), _entry("a/b.txt")]
    with pytest.raises(ManifestInvalid, match=r"'a/b' is a file, but .*'a/b/c/d'"):
        Manifest.build(source, Filters(None, None), 4, files)


def test_from_dict_rejects_non_objects() -> None:
    with pytest.raises(ManifestInvalid, match="expected a JSON object, got list"):
        Manifest.from_dict([])  # type: ignore[arg-type]


# --- from_json -------------------------------------------------------------


def test_from_json_rejects_a_wrong_expected_id() -> None:
    data = (EXAMPLES / "small-model.json").read_bytes()
    other = hashlib.sha256((EXAMPLES / "nested-dirs.json").read_bytes()).hexdigest()
    with pytest.raises(ManifestInvalid, match="corrupt or was tampered with"):
        Manifest.from_json(data, expected_id="sha256:" + other)


def test_from_json_rejects_a_flipped_byte() -> None:
    data = (EXAMPLES / "small-model.json").read_bytes()
    manifest_id = "sha256:" + hashlib.sha256(data).hexdigest()
    # Still a valid manifest after the flip: one changed chunk digest.
    chunk = json.loads(data)["files"][0]["chunks"][0].encode()
    flipped = chunk[:-1] + (b"0" if chunk[-1:] != b"0" else b"1")
    tampered = data.replace(chunk, flipped, 1)
    Manifest.from_json(tampered)
    with pytest.raises(ManifestInvalid, match="corrupt or was tampered with"):
        Manifest.from_json(tampered, expected_id=manifest_id)


def test_from_json_rejects_a_malformed_expected_id() -> None:
    data = (EXAMPLES / "small-model.json").read_bytes()
    with pytest.raises(ManifestInvalid, match=r"expected_id: .*not a manifest id"):
        Manifest.from_json(data, expected_id="md5:abc")


def test_from_json_rejects_non_canonical_bytes_behind_an_id() -> None:
    doc = golden_dict("small-model.json")
    pretty = json.dumps(doc, indent=2).encode()
    manifest = Manifest.from_json(pretty)  # Without an id, any valid spelling parses.
    assert (
        manifest.id
        == "sha256:" + hashlib.sha256((EXAMPLES / "small-model.json").read_bytes()).hexdigest()
    )
    with pytest.raises(ManifestInvalid, match="not in canonical form"):
        Manifest.from_json(pretty, expected_id=hashlib.sha256(pretty).hexdigest())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"schema":"bdn.manifest/v1","schema":"bdn.manifest/v1"}', "'schema' appears twice"),
        (b'{"total_size":NaN}', "NaN is not a JSON number"),
        (b'{"total_size":-Infinity}', "-Infinity is not a JSON number"),
        (b"[]", "expected a JSON object"),
        (b'{"schema":"bdn.manifest/v0"}', "unsupported manifest format"),
    ],
    ids=[
        "utf16-bom",
        "empty",
        "truncated",
        "utf8-bom",
        "deep",
        "dup-key",
        "nan",
        "inf",
        "array",
        "v0",
    ],
)
def test_from_json_rejects_bad_bytes(data: bytes, message: str) -> None:
    with pytest.raises(ManifestInvalid, match=message) as info:
        Manifest.from_json(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spelling", [b'"size":40.0', b'"size":4e1', b'"size":true'])
def test_from_json_rejects_integers_spelled_otherwise(spelling: bytes) -> None:
    data = (EXAMPLES / "small-model.json").read_bytes()
    assert data.count(b'"size":40,') == 1
    with pytest.raises(ManifestInvalid, match=r"files\[0\]\.size: .*integer"):
        Manifest.from_json(data.replace(b'"size":40', spelling))


def test_duplicate_key_inside_a_file_entry_is_rejected() -> None:
    data = (EXAMPLES / "small-model.json").read_bytes()
    data = data.replace(b'"size":40,', b'"size":40,"size":41,', 1)
    with pytest.raises(ManifestInvalid, match="'size' appears twice"):
        Manifest.from_json(data)


# --- canonical form --------------------------------------------------------


def test_canonical_bytes_follow_jcs_for_a_hand_written_manifest() -> None:
    manifest = Manifest.build(
        SourceRef(uri='file:///m/q"b\\c\x1fd\x7fé\n😀', kind="local", revision=None),
        Filters(allow_patterns=("*",), ignore_patterns=None),
        4,
        [_entry("é", etag="\t")],
    )
    sha = hashlib.sha256(b"").hexdigest()
    expected = (
        '{"chunk_size":4,"files":[{"chunks":[],"path":"é","sha256":"sha256:' + sha + '",'
        '"size":0,"source_etag":"\\t"}],"filters":{"allow_patterns":["*"],'
        '"ignore_patterns":null},"schema":"bdn.manifest/v1","source":{"kind":"local",'
        '"revision":null,"uri":"file:///m/q\\"b\\\\c\\u001fd\x7fé\\n😀"},"total_size":0}'
    ).encode("utf-8")
    assert manifest.canonical_bytes() == expected
    assert manifest.id == "sha256:" + hashlib.sha256(expected).hexdigest()
    assert Manifest.from_json(expected, expected_id=manifest.id) == manifest


# --- build, lookup, dataclasses --------------------------------------------


@golden
def test_build_reproduces_a_golden_from_shuffled_files(path: Path) -> None:
    data = path.read_bytes()
    parsed = Manifest.from_json(data)
    built = Manifest.build(
        parsed.source, parsed.filters, parsed.chunk_size, list(reversed(parsed.files))
    )
    assert built == parsed
    assert built.canonical_bytes() == data


def test_build_computes_total_and_accepts_no_files() -> None:
    empty = Manifest.build(SourceRef("s3://b/p", "s3", None), Filters(None, None), 1, [])
    assert (empty.files, empty.total_size) == ((), 0)
    assert Manifest.from_json(empty.canonical_bytes(), expected_id=empty.id) == empty


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: dataclasses.replace(e, path="../x"), r"files\[0\]\.path: .*'\.\.'"),
        (lambda e: dataclasses.replace(e, size=5), r"files\[0\]\.chunks: "),
        (lambda e: dataclasses.replace(e, size=True), r"files\[0\]\.size: "),
        (lambda e: dataclasses.replace(e, chunks=("x",)), r"files\[0\]\.chunks\[0\]: "),
    ],
    ids=["path", "chunk-count", "bool-size", "chunk-digest"],
)
def test_build_validates(change: Callable[[FileEntry], FileEntry], message: str) -> None:
    with pytest.raises(ManifestInvalid, match=message):
        Manifest.build(
            SourceRef("file:///m", "local", None), Filters(None, None), 4, [change(_entry("x"))]
        )


def test_build_rejects_duplicates_and_bad_kinds() -> None:
    filters = Filters(None, None)
    with pytest.raises(ManifestInvalid, match="listed twice"):
        Manifest.build(SourceRef("file:///m", "local", None), filters, 4, [_entry("a")] * 2)
    with pytest.raises(ManifestInvalid, match=r"source\.kind: "):
        Manifest.build(SourceRef("ftp://m", "ftp", None), filters, 4, [_entry("a")])


def test_file_looks_up_by_path() -> None:
    manifest = Manifest.from_json((EXAMPLES / "unicode-path.json").read_bytes())
    for entry in manifest.files:
        assert manifest.file(entry.path) is entry
    for missing in ("", "模型", "模型/", "zzz", "\U0010ffff"):
        with pytest.raises(KeyError):
            manifest.file(missing)


def test_manifest_types_are_frozen_and_slotted() -> None:
    manifest = Manifest.from_json((EXAMPLES / "small-model.json").read_bytes())
    for value in (manifest, manifest.source, manifest.filters, manifest.files[0]):
        assert not hasattr(value, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, dataclasses.fields(value)[0].name, None)
    assert hash(manifest) == hash(Manifest.from_dict(manifest.to_dict()))


def test_to_dict_returns_a_fresh_json_data_model() -> None:
    data = (EXAMPLES / "small-model.json").read_bytes()
    manifest = Manifest.from_json(data)
    doc = manifest.to_dict()
    assert doc == json.loads(data)
    doc["files"].clear()
    assert len(manifest.to_dict()["files"]) == 3


def test_module_doctests_pass() -> None:
    assert doctest.testmod(bdn.manifest).failed == 0
    assert doctest.testmod(bdn.manifest_json).failed == 0


def _entry(path: str, data: bytes = b"", etag: str | None = None) -> FileEntry:
    chunks = tuple(xxhash.xxh3_128_hexdigest(data[i : i + 4]) for i in range(0, len(data), 4))
    return FileEntry(path, len(data), Digest.of_bytes(data), chunks, etag)
