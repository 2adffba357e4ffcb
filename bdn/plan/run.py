"""The ``bdn plan`` flow: find the model's files, read their headers, fit, estimate.

A manifest id, or a source mirrored into the store, is read from the store:
each ``*.safetensors`` blob through :meth:`BlobStore.reader` (two small range
reads) and ``config.json`` whole (it is small, and checked against its
SHA-256). A local directory never mirrored is read in place, through the same
range-reader seam, rather than mirrored: mirroring hashes every byte, and a
plan needs a few KB of them. The result is one JSON-ready dict; the CLI
renders it as a table or prints it as is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bdn.errors import ConfigError, IntegrityError, RefNotFound
from bdn.plan.catalog import load_catalog
from bdn.plan.fit import Constraints, choose, cold_start, decode_ceiling, resources_lines
from bdn.plan.header import HeaderError, HeaderSummary, read_header, read_range
from bdn.plan.model import KV_DTYPE_BYTES, MemoryNeed, attention_shape
from bdn.plan.report import assemble
from bdn.pull import resolve_manifest
from bdn.store import blob_key

if TYPE_CHECKING:
    from bdn.backends.base import BlobStore, RangeReader
    from bdn.config.weights import WeightsEntry
    from bdn.plan.request import PlanRequest

# Weight formats whose headers a plan does not parse: counted by file size only.
OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".gguf", ".ggml", ".ckpt", ".h5", ".msgpack",
                 ".onnx", ".pkl", ".npz", ".tflite")
_MAX_CONFIG_BYTES = 4 * 2**20
_PARALLEL_READS = 16


@dataclass(frozen=True)
class ModelFile:
    """One file of the model and a reader of it; ``sha256`` (hex) when from a manifest."""

    path: str
    size: int
    reader: RangeReader
    sha256: str | None


async def plan_target(
    target: str | WeightsEntry, store: BlobStore, request: PlanRequest
) -> dict[str, Any]:
    """Plan ``target`` (a manifest id, or a weights entry) against the request's catalog.

    Raises:
        ConfigError: a bad catalog, provider, or a model with no weight files.
        HeaderError: a safetensors header that is malformed or disagrees with its file.
        ManifestNotFound / RefNotFound: nothing mirrored under that name (and not local).
    """
    catalog = load_catalog(request.catalog)  # A bad --catalog fails before any read.
    provider, instances = catalog.of_provider(request.provider)
    files, model = await _model_files(target, store)
    try:
        summary, uncounted = await _read_weights(files, model["ref"])
        config, config_note = await _read_config(files)
    finally:
        await asyncio.gather(*(f.reader.close() for f in files))
    shape, shape_note = attention_shape(config)
    kv = 0 if shape is None else (
        shape.kv_bytes_per_token(KV_DTYPE_BYTES[request.kv_dtype]) * request.context
        * request.batch)
    weights_bytes = summary.bytes if summary.by_dtype else sum(s for _, s in uncounted)
    need = MemoryNeed(weights_bytes, kv, request.overhead_fraction, request.overhead_per_gpu)
    asked = Constraints(request.cpu, request.memory,
                        None if shape is None else shape.attention_heads, request.cpu_only)
    fit = choose(instances, need, asked)
    chosen = fit.chosen
    model["total_bytes"] = sum(f.size for f in files)
    return assemble(
        model=model, summary=summary, uncounted=uncounted, shape=shape,
        notes=[n for n in (config_note, shape_note) if n], need=need, request=request,
        fit=fit, provider=provider, catalog_description=catalog.description,
        resources=None if chosen is None else resources_lines(
            chosen, catalog.provider_config[provider], asked),
        cold=cold_start(model["total_bytes"], dict(request.bandwidth),
                        None if chosen is None else chosen.usd_per_min),
        decode=None if chosen is None else decode_ceiling(chosen, weights_bytes, kv,
                                                           request.batch),
    )


async def _model_files(
    target: str | WeightsEntry, store: BlobStore
) -> tuple[list[ModelFile], dict[str, Any]]:
    """The model's files with readers, and how the model was found."""
    try:
        manifest = await resolve_manifest(target, store)
    except RefNotFound:
        if isinstance(target, str) or target.kind != "local":
            raise
        return await _local_files(target)
    files = [
        ModelFile(e.path, e.size, store.reader(blob_key(e.sha256), e.size), e.sha256.hex)
        for e in manifest.files
    ]
    return files, {"ref": manifest.id, "manifest_id": manifest.id, "store": store.uri,
                   "source": manifest.source.uri}


async def _local_files(entry: WeightsEntry) -> tuple[list[ModelFile], dict[str, Any]]:
    """A never-mirrored local directory, read in place (with the entry's filters)."""
    from bdn.backends.local.source import local_source_from_entry
    from bdn.config.patterns import make_filter

    source = local_source_from_entry(entry)
    selected = make_filter(entry.allow_patterns, entry.ignore_patterns)
    objs = [o for o in await source.list() if selected(o.path)]
    files = [ModelFile(o.path, o.size, source.reader(o), None) for o in objs]
    return files, {"ref": entry.source, "manifest_id": None, "store": None,
                   "source": entry.source}


async def _read_weights(
    files: list[ModelFile], ref: str
) -> tuple[HeaderSummary, list[tuple[str, int]]]:
    """Every safetensors header summed, and the weight files of other formats."""
    tensors = [f for f in files if f.path.endswith(".safetensors")]
    others = [(f.path, f.size) for f in files if f.path.lower().endswith(OTHER_WEIGHTS)]
    if not tensors and not others:
        raise ConfigError(
            f"{ref} holds no weight files (*.safetensors, *.bin, *.gguf, ...); point "
            "`bdn plan` at a model's manifest id or directory",
            field="bdn plan",
        )
    gate = asyncio.Semaphore(_PARALLEL_READS)

    async def one(f: ModelFile) -> HeaderSummary:
        async with gate:
            return await read_header(f.reader, f.size, f.path)

    total = HeaderSummary()
    for summary in await asyncio.gather(*(one(f) for f in tensors)):
        total.add(summary)
    return total, others


async def _read_config(files: list[ModelFile]) -> tuple[dict[str, Any] | None, str | None]:
    """The top-level ``config.json``, parsed (checked against its SHA-256 from a store)."""
    found = next((f for f in files if f.path == "config.json"), None)
    if found is None:
        return None, None
    if found.size > _MAX_CONFIG_BYTES:
        return None, f"config.json is {found.size} bytes, too big to be a model config: not read"
    raw = await read_range(found.reader, 0, found.size)
    if found.sha256 is not None and hashlib.sha256(raw).hexdigest() != found.sha256:
        raise IntegrityError(
            "config.json does not match its manifest SHA-256; run `bdn store check --deep`"
        )
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeaderError(f"config.json is not JSON ({err}); fix the model's config") from None
    if not isinstance(config, dict):
        return None, "config.json is not a JSON object: the KV cache is not counted"
    return config, None
