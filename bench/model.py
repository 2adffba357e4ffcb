"""The generated model of the pull and herd benches: random shards, mirrored untimed.

:func:`prepare_model` writes ``model-I-of-N.safetensors`` shards of random
bytes into ``wd/src`` (their digests computed while writing) and mirrors them
into a fresh ``file://`` store in ``wd/store``; :class:`Model` then checks
any tree materialized from it against those digests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bdn.backends import open_store
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.digest import DEFAULT_CHUNK_SIZE
from bdn.errors import BdnError
from bdn.manifest import Manifest
from bdn.mirror import MirrorOptions, run_mirror
from bdn.store import Store
from bench.harness import BenchAbort, DataFile, generate_files, remove_outputs, verify_file


@dataclass(frozen=True, slots=True)
class Model:
    """The generated model once mirrored: its files and manifest."""

    src: Path
    store_dir: Path
    manifest: Manifest
    files: tuple[DataFile, ...]

    @property
    def manifest_id(self) -> str:
        return str(self.manifest.id)

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)

    def relative(self, f: DataFile) -> str:
        return f.path.relative_to(self.src).as_posix()

    def verify_tree(self, root: Path, *, sha256: bool = False) -> None:
        """Every file of the model under ``root``: size and xxh3-128 per chunk
        (and SHA-256 with ``sha256``); ``ToolFailed`` on the first mismatch."""
        for f in self.files:
            verify_file(root / self.relative(f), f, sha256=sha256)


def shard_sizes(nbytes: int, shards: int) -> list[int]:
    """``nbytes`` over ``shards`` files, the remainder in the last one.

    >>> shard_sizes(10, 3)
    [3, 3, 4]
    """
    base, extra = divmod(nbytes, shards)
    return [base + (extra if i == shards - 1 else 0) for i in range(shards)]


def generate_shards(src: Path, sizes: Sequence[int]) -> list[DataFile]:
    """``model-I-of-N.safetensors`` in ``src`` (created), one per size, random bytes."""
    src.mkdir(parents=True)
    width = len(str(len(sizes)))
    return generate_files(
        [
            (src / f"model-{i + 1:0{width}d}-of-{len(sizes)}.safetensors", size)
            for i, size in enumerate(sizes)
        ],
        chunk_size=DEFAULT_CHUNK_SIZE,
    )


def prepare_model(wd: Path, sizes: Sequence[int], console: Console,
                  chunk_size: int | None = None) -> Model:
    """Generate one shard per size in ``wd/src`` and mirror them into ``wd/store``
    (all untimed; ``chunk_size``: the manifest's, default the mirror's); see
    :func:`mirror_model` for what can go wrong."""
    src, store_dir = wd / "src", wd / "store"
    files = generate_shards(src, sizes)
    console.print(f"mirroring it into file://{store_dir} (untimed)")
    manifest = mirror_model(src, store_dir, files, chunk_size)
    return Model(src, store_dir, manifest, tuple(files))


async def _mirror(src: Path, store_dir: Path, chunk_size: int | None = None) -> Manifest:
    # Plain file:// URIs: BDN takes file paths literally (no percent-decoding).
    store = open_store(f"file://{store_dir}")
    options = MirrorOptions() if chunk_size is None else MirrorOptions(chunk_size=chunk_size)
    try:
        result = await run_mirror(
            WeightsEntry(source=f"file://{src}"), store=store, secrets=SecretResolver(None, {}),
            options=options,
        )
        return await Store(store).get_manifest(result.manifest_id)
    finally:
        await store.close()


def mirror_model(src: Path, store_dir: Path, files: Sequence[DataFile],
                 chunk_size: int | None = None) -> Manifest:
    """Mirror the generated tree into a fresh ``file://`` store; check its manifest.

    Raises:
        BenchAbort: (exit 1) the mirror failed or its manifest does not list
            exactly the generated files (nothing after it would mean anything).
    """
    try:
        manifest = asyncio.run(_mirror(src, store_dir, chunk_size))
    except BdnError as err:
        raise BenchAbort(f"mirroring the generated model failed: {err}", exit_code=1) from err
    want = {f.path.relative_to(src).as_posix(): (f.size, f.sha256) for f in files}
    got = {e.path: (e.size, e.sha256.hex) for e in manifest.files}
    if got != want:
        raise BenchAbort(
            f"the manifest of the mirrored model lists {len(got)} files that do not match the "
            f"{len(want)} generated ones",
            exit_code=1,
        )
    return manifest


def remove_tree(path: Path) -> None:
    """Delete a materialized tree (or a ``cp -r`` of one) and flush dirty pages.

    Trees are read-only (directories 0555), which stops anyone but root from
    deleting their entries; the directories are made writable first.
    """
    if path.is_dir():
        for directory, _, _ in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(directory, 0o755)
    remove_outputs(path)
