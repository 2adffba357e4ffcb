"""What a plan is asked: context, batch, overhead, bandwidths, instance constraints.

Parsing of the user's strings (``--bandwidth origin=1G,disk=2G``, ``--memory
16Gi``, ``--cpu 3``) lives here so the CLI and the Python API accept the same
forms and fail with the same one-line errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bdn.errors import ConfigError
from bdn.plan.model import KV_DTYPE_BYTES

# Stated, not measured: a bucket read with parallel ranges, a 20 Gbit/s NIC
# between nodes, and an NVMe disk. `--bandwidth` replaces any of them.
DEFAULT_BANDWIDTH: Mapping[str, float] = {"origin": 1e9, "peers": 2.5e9, "disk": 2e9}


@dataclass(frozen=True)
class PlanRequest:
    """The knobs of a plan; defaults are what ``bdn plan`` uses without flags."""

    context: int = 8192
    batch: int = 1
    kv_dtype: str = "fp16"
    overhead_fraction: float = 0.10
    overhead_per_gpu: int = 2**30
    cpu: float | None = None
    memory: int | None = None
    cpu_only: bool = False
    provider: str | None = None
    catalog: str | None = None
    bandwidth: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_BANDWIDTH))
    bandwidth_given: frozenset[str] = frozenset()

    @classmethod
    def from_flags(
        cls, *, cpu: str | None = None, memory: str | None = None,
        bandwidth: str | None = None, **rest: Any,
    ) -> PlanRequest:
        """A request from the user's strings (``cpu="3"``, ``memory="16Gi"``,
        ``bandwidth="origin=1G"``); ``rest`` are the typed fields as they are."""
        rates, given = parse_bandwidth(bandwidth)
        return cls(cpu=parse_cpu(cpu), memory=parse_memory(memory), bandwidth=rates,
                   bandwidth_given=given, **rest)

    def __post_init__(self) -> None:
        if self.context < 1 or self.batch < 1:
            raise ConfigError("--context and --batch must be at least 1", field="bdn plan")
        if self.kv_dtype not in KV_DTYPE_BYTES:
            raise ConfigError(f"{self.kv_dtype!r} is not a KV-cache dtype; use one of "
                              f"{', '.join(KV_DTYPE_BYTES)}", field="--kv-dtype")
        if not 0 <= self.overhead_fraction <= 10:
            raise ConfigError("--overhead must be a fraction such as 0.1 (10%)",
                              field="--overhead")


def parse_bandwidth(text: str | None) -> tuple[dict[str, float], frozenset[str]]:
    """``origin=1G,peers=2.5G,disk=2G`` (bytes/s; a trailing ``/s`` is fine) over the
    defaults; returns the rates and the tiers the user gave."""
    from bdn.config.units import parse_size

    rates = dict(DEFAULT_BANDWIDTH)
    given: set[str] = set()
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        tier, sep, value = part.partition("=")
        tier = tier.strip()
        if not sep or tier not in rates:
            raise ConfigError(
                f"{part!r} is not TIER=RATE; use e.g. origin=800M,peers=3G,disk=2G "
                "(tiers: origin, peers, disk; bytes per second)",
                field="--bandwidth",
            )
        rate = parse_size(value.strip().removesuffix("/s"), field="--bandwidth")
        if rate <= 0:
            raise ConfigError(f"{part!r}: a rate must be above zero", field="--bandwidth")
        rates[tier] = float(rate)
        given.add(tier)
    return rates, frozenset(given)


def parse_cpu(text: str | None) -> float | None:
    """A Truss ``cpu`` value: ``"3"``, ``"0.5"`` or millicores ``"500m"``."""
    if text is None:
        return None
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{text!r} is not a CPU count; use e.g. 3, 0.5 or 500m",
                          field="--cpu")
    return value


def parse_memory(text: str | None) -> int | None:
    """A Truss ``memory`` value such as ``16Gi`` or ``512Mi`` (``16G`` is SI)."""
    if text is None:
        return None
    from bdn.config.units import parse_size

    size = parse_size(text, field="--memory")
    if size <= 0:
        raise ConfigError(f"{text!r}: memory must be above zero, e.g. 16Gi", field="--memory")
    return size
