"""A plan as one JSON-ready dict: ``bdn plan --json`` prints it, the table renders it.

Every number a plan states is here, in bytes, seconds and US$, next to the
assumptions it rests on (``memory``'s overhead, ``cold_start``'s bandwidths
and whether each was given or assumed) and ``notes`` for whatever could not
be counted, so a partial answer says so in both outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bdn.plan.fit import Fit
    from bdn.plan.header import HeaderSummary
    from bdn.plan.model import AttentionShape, MemoryNeed
    from bdn.plan.request import PlanRequest

SCHEMA = "bdn.plan/v1"


def assemble(
    *,
    model: dict[str, Any],
    summary: HeaderSummary,
    uncounted: list[tuple[str, int]],
    shape: AttentionShape | None,
    notes: list[str],
    need: MemoryNeed,
    request: PlanRequest,
    fit: Fit,
    provider: str,
    catalog_description: str,
    resources: dict[str, list[str]] | None,
    cold: list[dict[str, Any]],
    decode: dict[str, Any] | None,
) -> dict[str, Any]:
    """The plan dict; see the module docstring."""
    notes = notes + _weight_notes(summary, uncounted) + _shape_notes(shape, request)
    given = request.bandwidth_given
    for row in cold:
        row["bandwidth"] = "given" if row["tier"] in given or (
            row["tier"] == "node_cache" and "disk" in given) else "assumed"
    if any(row["bandwidth"] == "assumed" for row in cold):
        notes.append("cold start uses assumed bandwidths for some tiers; pass measured ones "
                     "with --bandwidth origin=…,peers=…,disk=…")
    return {
        "schema": SCHEMA,
        "model": model,
        "weights": {
            "parameters": summary.parameters if summary.by_dtype else None,
            "bytes": need.weights,
            "complete": not uncounted and not summary.unknown_dtypes and bool(summary.by_dtype),
            "by_dtype": {d: vars(c) for d, c in sorted(summary.by_dtype.items())},
            "not_counted": [{"path": p, "size": s} for p, s in uncounted],
        },
        "config": None if shape is None else shape.to_dict(),
        "memory": {"context": request.context, "batch": request.batch,
                   "kv_dtype": request.kv_dtype, **need.to_dict()},
        "fit": _fit(fit, provider, resources),
        "cold_start": cold,
        "decode_ceiling": decode,
        "catalog": catalog_description,
        "notes": notes,
    }


def _fit(fit: Fit, provider: str, resources: dict[str, list[str]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "provider": provider,
        "fits": fit.chosen is not None,
        "needed_bytes": fit.needed,
        "instance": None if fit.chosen is None else fit.chosen.to_dict(),
        "tensor_parallel": None if fit.chosen is None else max(fit.chosen.gpu_count, 1),
        "resources": resources,
        "alternatives": [
            {"instance": i.name, "usd_per_min": i.usd_per_min, "needed_bytes": n,
             "vram_bytes": i.vram_bytes, "gpu_count": i.gpu_count}
            for i, n in fit.alternatives
        ],
        "nearest": None,
        "left_out": fit.left_out,
    }
    if fit.nearest is not None:
        inst, short = fit.nearest
        out["nearest"] = {"instance": inst.to_dict(), "short_bytes": short}
    return out


def _weight_notes(summary: HeaderSummary, uncounted: list[tuple[str, int]]) -> list[str]:
    notes = []
    for dtype in sorted(summary.unknown_dtypes):
        count = summary.by_dtype[dtype]
        notes.append(
            f"dtype {dtype} is unknown to bdn: its {count.tensors} tensors are counted by "
            "shape and by the header's byte offsets, which could not be checked"
        )
    if uncounted and summary.by_dtype:
        names = ", ".join(p for p, _ in uncounted[:3]) + (" …" if len(uncounted) > 3 else "")
        notes.append(f"not counted: {names} (not safetensors; usually the same weights in "
                     "another format)")
    elif uncounted:
        names = ", ".join(p for p, _ in uncounted[:3]) + (" …" if len(uncounted) > 3 else "")
        notes.append(f"no safetensors: parameters and dtypes unknown; weight bytes are the "
                     f"file sizes of {names} (headers of these formats are not read)")
    return notes


def _shape_notes(shape: AttentionShape | None, request: PlanRequest) -> list[str]:
    if shape is None:
        return []
    notes = []
    if shape.max_positions is not None and request.context > shape.max_positions:
        notes.append(f"--context {request.context} exceeds the model's "
                     f"max_position_embeddings {shape.max_positions}")
    if shape.experts:
        notes.append(f"mixture of {shape.experts} experts: decoding reads only the active "
                     "experts, so the decode ceiling here is a lower bound")
    return notes
