"""Regenerate the golden manifests in this folder from the content rule in README.md.

Run from the repository root with bdn importable (``pip install -e .`` or
``PYTHONPATH=.``)::

    python manifests/examples/make_examples.py          # rewrite the goldens
    python manifests/examples/make_examples.py --check  # exit 1 if one differs

The output depends on nothing but this file: no clock, no randomness, no I/O
besides writing the goldens.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bdn.digest import Digest, chunk_bounds, xxh3_128_hex
from bdn.manifest import FileEntry, Filters, Manifest, SourceRef

CHUNK_SIZE = 16
"""Small enough that most files span several chunks."""

HERE = Path(__file__).resolve().parent


def content(size: int) -> bytes:
    """The content rule: the first ``size`` bytes of SHAKE-128 of ``size`` in ASCII decimal."""
    return hashlib.shake_128(b"%d" % size).digest(size)


def git_blob_oid(data: bytes) -> str:
    """What Hugging Face reports for a file kept in git: its git blob SHA-1."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_oid(data: bytes) -> str:
    """What Hugging Face reports for an LFS file: the content's SHA-256."""
    return hashlib.sha256(data).hexdigest()


def quoted_md5(data: bytes) -> str:
    """A single-part S3/R2 ETag: the MD5 in double quotes, as the API returns it."""
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def gcs_generation(index: int) -> Callable[[bytes], str]:
    """A fixed GCS object generation (GCS numbers them; the content does not matter)."""
    return lambda _data: str(1_717_000_000_000_000 + index)


def no_etag(_data: bytes) -> None:
    """Local directories have no version tag."""
    return None


@dataclass(frozen=True)
class Example:
    """One golden: its file name, source, filters and ``(path, size, etag rule)`` files."""

    name: str
    source: SourceRef
    filters: Filters
    files: tuple[tuple[str, int, Callable[[bytes], str | None]], ...]


EXAMPLES = (
    Example(
        name="small-model.json",
        source=SourceRef(
            uri="hf://acme/tiny-llm@main",
            kind="hf",
            # A pinned commit: hf revisions are always resolved to a commit SHA.
            revision=hashlib.sha1(b"bdn golden small-model").hexdigest(),
        ),
        filters=Filters(allow_patterns=("*.json", "*.safetensors"), ignore_patterns=None),
        files=(
            ("tokenizer.json", 33, git_blob_oid),
            ("model.safetensors", 100, lfs_oid),
            ("config.json", 40, git_blob_oid),
        ),
    ),
    Example(
        name="nested-dirs.json",
        source=SourceRef(uri="s3://weights-bucket/llama/v2/", kind="s3", revision=None),
        filters=Filters(allow_patterns=None, ignore_patterns=("**/*.bin", "*.md5")),
        files=(
            ("tokenizer/merges.txt", 16, quoted_md5),
            ("a/b/c/weights-00002-of-00002.safetensors", 17, quoted_md5),
            ("a/b/c/weights-00001-of-00002.safetensors", 48, quoted_md5),
            # Sorts before "a/b/c/..." because '.' (U+002E) < '/' (U+002F).
            ("a/b.json", 5, quoted_md5),
            ("README.md", 12, quoted_md5),
        ),
    ),
    Example(
        name="zero-byte-file.json",
        source=SourceRef(uri="file:///srv/models/tiny-bert", kind="local", revision=None),
        filters=Filters(allow_patterns=None, ignore_patterns=None),
        files=(
            ("model.safetensors", 20, no_etag),
            ("added_tokens.json", 0, no_etag),
        ),
    ),
    Example(
        name="unicode-path.json",
        source=SourceRef(uri="gs://acme-weights/多语言/v1", kind="gcs", revision=None),
        filters=Filters(
            allow_patterns=("**/*.safetensors", "**/*.json", "*.txt"), ignore_patterns=None
        ),
        files=(
            # U+1F600 sorts after U+FF5A by code point, though not by UTF-16 code unit.
            ("😀.txt", 4, gcs_generation(3)),
            ("ｚ.txt", 3, gcs_generation(2)),
            ("模型/配置.json", 9, gcs_generation(1)),
            ("模型/权重-é.safetensors", 50, gcs_generation(0)),
        ),
    ),
    Example(
        name="duplicate-content.json",
        source=SourceRef(uri="r2://0123456789abcdef.weights/llama-ft", kind="r2", revision=None),
        filters=Filters(allow_patterns=None, ignore_patterns=None),
        files=(
            # Same size, so the same content: one blob, named by two paths.
            ("finetune/model-00001-of-00001.safetensors", 64, quoted_md5),
            ("finetune/adapter_config.json", 23, quoted_md5),
            ("base/model-00001-of-00001.safetensors", 64, quoted_md5),
        ),
    ),
)


def entry(path: str, size: int, etag: Callable[[bytes], str | None]) -> FileEntry:
    """The manifest entry of a file whose bytes follow the content rule."""
    data = content(size)
    return FileEntry(
        path=path,
        size=size,
        sha256=Digest.of_bytes(data),
        chunks=tuple(xxh3_128_hex(data[a:b]) for a, b in chunk_bounds(size, CHUNK_SIZE)),
        source_etag=etag(data),
    )


def render() -> dict[str, bytes]:
    """Every golden's file name mapped to its canonical bytes."""
    return {
        example.name: Manifest.build(
            example.source,
            example.filters,
            CHUNK_SIZE,
            [entry(path, size, etag) for path, size, etag in example.files],
        ).canonical_bytes()
        for example in EXAMPLES
    }


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: make_examples.py [--check]", file=sys.stderr)
        return 2
    stale = []
    for name, data in render().items():
        target = HERE / name
        if check:
            if not target.is_file() or target.read_bytes() != data:
                stale.append(name)
        else:
            target.write_bytes(data)
    for name in stale:
        print(f"{name} is out of date; run make_examples.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
