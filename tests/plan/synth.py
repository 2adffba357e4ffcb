"""Synthetic Llama-shaped models for ``bdn plan`` tests: real headers, holes for data.

Each shard is a real safetensors header followed by a hole (``truncate``), so a
405B model costs a few KB of disk. :func:`fake_mirror` writes such a model
into a ``file://`` store directly — blob files, chunk digests and a manifest
that are well-formed but not hashes of the content (hashing hundreds of GB of
zeros would take minutes); ``bdn plan`` reads headers only, so it cannot tell.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from bdn.digest import Digest
from bdn.manifest import FileEntry, Filters, Manifest, SourceRef


@dataclass(frozen=True)
class Llama:
    """The config.json numbers of a Llama-style decoder."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int = 128256

    def tensors(self) -> list[tuple[str, list[int]]]:
        """(name, shape) of every weight, untied embeddings and head."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        out: list[tuple[str, list[int]]] = [("model.embed_tokens.weight", [self.vocab, h])]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "self_attn.q_proj.weight", [h, h]),
                (p + "self_attn.k_proj.weight", [kv, h]),
                (p + "self_attn.v_proj.weight", [kv, h]),
                (p + "self_attn.o_proj.weight", [h, h]),
                (p + "mlp.gate_proj.weight", [self.intermediate, h]),
                (p + "mlp.up_proj.weight", [self.intermediate, h]),
                (p + "mlp.down_proj.weight", [h, self.intermediate]),
                (p + "input_layernorm.weight", [h]),
                (p + "post_attention_layernorm.weight", [h]),
            ]
        return [*out, ("model.norm.weight", [h]), ("lm_head.weight", [self.vocab, h])]

    def config(self) -> dict[str, object]:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "num_hidden_layers": self.layers, "hidden_size": self.hidden,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "intermediate_size": self.intermediate, "vocab_size": self.vocab,
            "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
        }


LLAMA_8B = Llama(layers=32, hidden=4096, heads=32, kv_heads=8, intermediate=14336)
LLAMA_70B = Llama(layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=28672)
LLAMA_405B = Llama(layers=126, hidden=16384, heads=128, kv_heads=8, intermediate=53248)


def header_bytes(tensors: list[tuple[str, list[int]]], dtype: str = "BF16",
                 item: int = 2) -> tuple[bytes, int]:
    """A safetensors header (length prefix included) and the data size it describes."""
    doc: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        n = item
        for d in shape:
            n *= d
        doc[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(doc).encode()
    return struct.pack("<Q", len(raw)) + raw, offset


def write_sparse(path: Path, head: bytes, data_bytes: int) -> None:
    """The header, then a hole as long as the data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(len(head) + data_bytes)


def write_model(root: Path, model: Llama, shard_bytes: int = 5 * 10**9) -> Path:
    """A sparse model directory: shards of at most ~``shard_bytes`` and its config.json."""
    shards: list[list[tuple[str, list[int]]]] = [[]]
    size = 0
    for name, shape in model.tensors():
        n = 2
        for d in shape:
            n *= d
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    for i, tensors in enumerate(shards, 1):
        head, data = header_bytes(tensors)
        write_sparse(root / f"model-{i:05d}-of-{len(shards):05d}.safetensors", head, data)
    (root / "config.json").write_text(json.dumps(model.config()))
    return root


def fake_mirror(model_dir: Path, store_root: Path, chunk_size: int = 64 * 2**20) -> str:
    """Write ``model_dir`` into a file:// store without hashing its data; the manifest id.

    Small files get their real SHA-256; safetensors blobs are named by a hash of
    their path and header and hard-linked (so they stay sparse).
    """
    entries = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel, size = path.relative_to(model_dir).as_posix(), path.stat().st_size
        if path.suffix == ".safetensors":
            with path.open("rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                digest = Digest(hashlib.sha256(rel.encode() + f.read(n)).hexdigest())
        else:
            digest = Digest.of_bytes(path.read_bytes())
        blob = store_root / "blobs" / "sha256" / digest.hex[:2] / digest.hex
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.hardlink_to(path)
        chunks = tuple(f"{i:032x}" for i in range(-(-size // chunk_size)))
        entries.append(FileEntry(rel, size, digest, chunks, None))
    manifest = Manifest.build(SourceRef(f"file://{model_dir}", "local", None),
                              Filters(None, None), chunk_size, entries)
    out = store_root / "manifests" / f"{manifest.id.removeprefix('sha256:')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(manifest.canonical_bytes())
    return manifest.id
