"""Choosing an instance, and what a cold start and a decoded token cost on it.

The fitting rule, in order:

1. Candidates are the provider's GPU instances (CPU-only ones with
   ``cpu_only``). ``--cpu``/``--memory`` keep those with at least that many
   vCPUs and that much RAM — Truss's smallest-fit rule, so ``cpu: "3"`` lands
   on a 4-vCPU instance; an instance that publishes no vCPU/RAM cannot be
   shown to meet such an ask and is left out.
2. Tensor parallelism splits attention heads across GPUs, so a multi-GPU
   instance whose GPU count does not divide the head count is left out.
3. An instance fits when its VRAM (RAM for CPU-only) holds
   :meth:`MemoryNeed.total` for its GPU count. Single-GPU instances are tried
   first (no inter-GPU traffic), then multi-GPU; within each, the cheapest
   wins (unpriced ones last, smallest first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bdn.plan.catalog import Instance
    from bdn.plan.model import MemoryNeed


@dataclass(frozen=True)
class Constraints:
    """What the user asked of the instance besides memory."""

    cpu: float | None = None
    memory: int | None = None
    attention_heads: int | None = None
    cpu_only: bool = False


@dataclass
class Fit:
    """The chosen instance (or none), the runners-up, and what was left out and why."""

    chosen: Instance | None
    needed: int
    alternatives: list[tuple[Instance, int]] = field(default_factory=list)
    nearest: tuple[Instance, int] | None = None  # (instance, bytes short) when nothing fits
    left_out: list[str] = field(default_factory=list)


def capacity(inst: Instance, cpu_only: bool) -> int:
    """Bytes of model memory an instance offers: VRAM, or RAM for a CPU-only plan."""
    return (inst.memory_bytes or 0) if cpu_only else inst.vram_bytes


def _rank(inst: Instance, cpu_only: bool) -> tuple[bool, float, int, float]:
    return (inst.usd_per_min is None, inst.usd_per_min or 0.0, capacity(inst, cpu_only),
            inst.vcpu or 0.0)


def choose(instances: list[Instance], need: MemoryNeed, asked: Constraints) -> Fit:
    """Apply the module's rule to ``instances``."""
    candidates, left_out = _candidates(instances, asked)
    fits = [i for i in candidates if capacity(i, asked.cpu_only) >= need.total(i.gpu_count)]
    fits.sort(key=lambda i: (i.gpu_count > 1, *_rank(i, asked.cpu_only)))
    if fits:
        chosen = fits[0]
        others = sorted(fits[1:], key=lambda i: _rank(i, asked.cpu_only))[:3]
        return Fit(chosen, need.total(chosen.gpu_count),
                   [(i, need.total(i.gpu_count)) for i in others], None, left_out)
    if not candidates:
        return Fit(None, need.total(1), left_out=left_out)
    nearest = min(
        candidates,
        key=lambda i: (need.total(i.gpu_count) - capacity(i, asked.cpu_only),
                       *_rank(i, asked.cpu_only)),
    )
    short = need.total(nearest.gpu_count) - capacity(nearest, asked.cpu_only)
    return Fit(None, need.total(nearest.gpu_count), nearest=(nearest, short), left_out=left_out)


def _candidates(instances: list[Instance], asked: Constraints) -> tuple[list[Instance], list[str]]:
    kept, left_out = [], []
    for inst in instances:
        if (inst.gpu_count == 0) != asked.cpu_only:
            continue
        if asked.cpu is not None and (inst.vcpu is None or inst.vcpu < asked.cpu):
            why = "publishes no vCPU count" if inst.vcpu is None else f"has {inst.vcpu:g} vCPU"
            left_out.append(f"{inst.name}: {why} (--cpu {asked.cpu:g})")
            continue
        if asked.memory is not None and (inst.memory_bytes or 0) < asked.memory:
            left_out.append(f"{inst.name}: RAM below --memory")
            continue
        heads = asked.attention_heads
        if inst.gpu_count > 1 and heads is not None and heads % inst.gpu_count:
            left_out.append(
                f"{inst.name}: {heads} attention heads do not split over {inst.gpu_count} GPUs"
            )
            continue
        kept.append(inst)
    return kept, left_out


def resources_lines(inst: Instance, config: str, asked: Constraints) -> dict[str, list[str]]:
    """Config lines that select ``inst``: per style, the lines to paste.

    For Truss, both forms: ``accelerator`` (with the user's cpu/memory asks,
    which Truss resolves by the same smallest-fit rule) and ``instance_type``.
    """
    if config != "truss":
        return {"machine_type": [f'machine_type: "{inst.instance_type}"']}
    fields = ["resources:"]
    if inst.accelerator:
        fields.append(f"  accelerator: {inst.accelerator}")
    cpu = asked.cpu if asked.cpu is not None else (inst.vcpu if inst.gpu_count == 0 else None)
    if cpu is not None:
        fields.append(f'  cpu: "{cpu:g}"')
    memory = asked.memory or (inst.memory_bytes if inst.gpu_count == 0 else None)
    if memory:
        fields.append(f"  memory: {_quantity(memory)}")
    fields.append(f"  use_gpu: {'true' if inst.gpu_count else 'false'}")
    return {
        "accelerator": fields,
        "instance_type": ["resources:", f'  instance_type: "{inst.instance_type}"'],
    }


def _quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity Truss reads (``16Gi``, ``512Mi``)."""
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n % size == 0 or unit == "Ki":
            return f"{-(-n // size)}{unit}"
    return str(n)


TIERS = ("node_cache", "peers", "origin")


def cold_start(total_bytes: int, bandwidth: dict[str, float], usd_per_min: float | None
               ) -> list[dict[str, Any]]:
    """Seconds (and $) to bring ``total_bytes`` onto the node from each tier.

    Node cache: read from local disk. Peers and origin: the network rate,
    capped by the disk the node cache writes to. Process start and the copy
    into GPU memory are not included.
    """
    disk = bandwidth["disk"]
    rows = []
    for tier in TIERS:
        rate = disk if tier == "node_cache" else min(bandwidth[tier], disk)
        seconds = total_bytes / rate
        usd = None if usd_per_min is None else seconds / 60 * usd_per_min
        rows.append({"tier": tier, "bytes_per_s": rate, "seconds": seconds, "usd": usd})
    return rows


def decode_ceiling(inst: Instance, weights: int, kv_cache: int, batch: int
                   ) -> dict[str, Any] | None:
    """The memory-bandwidth bound on decoding, or None when the catalog gives no bandwidth.

    Each decode step reads every weight once and the whole KV cache (at full
    context), split over the GPUs: step time = bytes / (GPUs x bandwidth). A
    step yields one token per sequence. Mixture-of-experts models read less
    per step, so for them this bound is low.
    """
    if inst.gpu_bandwidth is None or inst.gpu_count == 0:
        return None
    bandwidth = inst.gpu_bandwidth * inst.gpu_count
    per_step = weights + kv_cache
    step = per_step / bandwidth
    return {
        "bytes_per_step": per_step,
        "bandwidth_bytes_per_s": bandwidth,
        "tokens_per_s_per_sequence": 1 / step,
        "tokens_per_s_total": batch / step,
    }
