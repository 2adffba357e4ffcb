"""Model math: the attention shape from ``config.json`` and the memory a model needs.

Memory needed to serve = weights + KV cache, plus a stated overhead: a fraction
of both (activations, allocator slack, CUDA graphs) and a fixed amount per GPU
(CUDA context and kernels). The KV cache holds a key and a value vector per
layer, per KV head, per token: ``2 x layers x kv_heads x head_dim x bytes x
context x batch``. Grouped-query models (few KV heads) are why ``config.json``
is read rather than guessed from the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The bytes of one KV-cache element per --kv-dtype.
KV_DTYPE_BYTES: Mapping[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}

# Keys different model families use for the same number, first match wins.
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")
_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim")
_POSITIONS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass(frozen=True)
class AttentionShape:
    """What the KV cache depends on, as ``config.json`` states it."""

    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    max_positions: int | None
    experts: int | None

    def kv_bytes_per_token(self, element_bytes: int) -> int:
        """Bytes of K and V one token adds to the cache, all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * element_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "attention_heads": self.attention_heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_positions,
            "experts": self.experts,
        }


def attention_shape(config: Mapping[str, Any] | None) -> tuple[AttentionShape | None, str | None]:
    """The shape from a parsed ``config.json``, or ``(None, why not)``.

    Multimodal configs nest the language model under ``text_config`` or
    ``llm_config``; that one is used when the top level has no layer count.
    """
    if config is None:
        return None, "no config.json in the model: the KV cache is not counted"
    for nested in ("text_config", "llm_config", "language_config"):
        inner = config.get(nested)
        if _first(config, _LAYERS) is None and isinstance(inner, Mapping):
            config = inner
    layers, heads = _first(config, _LAYERS), _first(config, _HEADS)
    hidden, head_dim = _first(config, _HIDDEN), _first(config, ("head_dim",))
    if layers is None or heads is None or (head_dim is None and hidden is None):
        return None, (
            "config.json gives no layer count, attention heads or head size "
            "(num_hidden_layers, num_attention_heads, hidden_size): the KV cache is not counted"
        )
    kv_heads = _first(config, _KV_HEADS)
    if kv_heads is None:
        kv_heads = 1 if config.get("multi_query") is True else heads
    if head_dim is None:
        assert hidden is not None
        head_dim = hidden // heads
    shape = AttentionShape(
        layers=layers,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        max_positions=_first(config, _POSITIONS),
        experts=_first(config, _EXPERTS),
    )
    return shape, None


def _first(config: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` holding a positive integer."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a model needs to serve: weights, KV cache and the stated overhead."""

    weights: int
    kv_cache: int
    overhead_fraction: float
    overhead_per_gpu: int

    def total(self, gpus: int) -> int:
        """Bytes needed across ``gpus`` GPUs (tensor parallel splits weights and cache;
        each GPU pays its own fixed overhead). ``gpus=0`` (CPU-only) pays it once."""
        scaled = math.ceil((self.weights + self.kv_cache) * (1 + self.overhead_fraction))
        return scaled + self.overhead_per_gpu * max(gpus, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights,
            "kv_cache_bytes": self.kv_cache,
            "overhead_fraction": self.overhead_fraction,
            "overhead_per_gpu_bytes": self.overhead_per_gpu,
            "single_gpu_bytes": self.total(1),
        }
