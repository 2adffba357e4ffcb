"""The instance catalog: which machines a plan may choose, as data.

The packaged ``catalog.json`` carries the providers' published facts (its
``description`` and each provider's say where from); ``--catalog FILE`` takes
a user's own file in the same schema (``catalog.schema.json``, checked with
``jsonschema``), because prices and machine shapes change faster than releases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bdn.errors import ConfigError

GIB = 2**30
GB = 10**9


@dataclass(frozen=True)
class Instance:
    """One instance type. Sizes are bytes; ``None`` where the provider publishes nothing."""

    name: str
    provider: str
    instance_type: str
    accelerator: str | None
    gpu: str | None
    gpu_count: int
    vcpu: float | None
    memory_bytes: int | None
    vram_bytes: int
    usd_per_min: float | None
    gpu_bandwidth: float | None  # bytes/s of one GPU

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        mem, bw = d.get("memory_gib"), d.get("gpu_bandwidth_gb_per_s")
        return cls(
            name=d["name"],
            provider=d["provider"],
            instance_type=d["instance_type"],
            accelerator=d.get("accelerator"),
            gpu=d.get("gpu"),
            gpu_count=d["gpu_count"],
            vcpu=d.get("vcpu"),
            memory_bytes=None if mem is None else round(mem * GIB),
            vram_bytes=round(d["vram_gib"] * GIB),
            usd_per_min=d["usd_per_min"],
            gpu_bandwidth=None if bw is None else bw * GB,
        )

    def to_dict(self) -> dict[str, Any]:
        """The instance as a plan's JSON reports it (bytes, not GiB)."""
        return {
            "name": self.name,
            "provider": self.provider,
            "instance_type": self.instance_type,
            "accelerator": self.accelerator,
            "gpu": self.gpu,
            "gpu_count": self.gpu_count,
            "vcpu": self.vcpu,
            "memory_bytes": self.memory_bytes,
            "vram_bytes": self.vram_bytes,
            "usd_per_min": self.usd_per_min,
            "gpu_bandwidth_bytes_per_s": self.gpu_bandwidth,
        }


@dataclass(frozen=True)
class Catalog:
    """A validated catalog: its description, providers (name -> config style) and instances."""

    description: str
    default_provider: str
    provider_config: dict[str, str]
    instances: tuple[Instance, ...]

    def of_provider(self, provider: str | None) -> tuple[str, list[Instance]]:
        """``provider`` (default: the catalog's) and its instances; ConfigError if unknown."""
        name = provider or self.default_provider
        if name not in self.provider_config:
            known = ", ".join(sorted(self.provider_config))
            raise ConfigError(f"{name!r} is not in the catalog; use one of: {known}",
                              field="--provider")
        return name, [i for i in self.instances if i.provider == name]


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The packaged catalog, or the user's file at ``path`` checked against the schema.

    Raises:
        ConfigError: unreadable, not JSON or not in the schema (one line: where and what).
    """
    if path is None:
        text = resources.files("bdn.plan").joinpath("catalog.json").read_text("utf-8")
        where = "packaged catalog"
    else:
        where = str(path)
        try:
            text = Path(path).expanduser().read_text("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read {where}: {err}; pass a readable JSON file",
                              field="--catalog") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where} is not JSON ({err}); fix the file", field="--catalog") from None
    _validate(data, where)
    providers = {name: p["config"] for name, p in data["providers"].items()}
    instances = tuple(Instance.from_dict(d) for d in data["instances"])
    for problem in _cross_checks(data["default_provider"], providers, instances):
        raise ConfigError(f"{where}: {problem}", field="--catalog")
    return Catalog(data["description"], data["default_provider"], providers, instances)


def catalog_schema() -> dict[str, Any]:
    """The packaged JSON Schema of a catalog."""
    text = resources.files("bdn.plan").joinpath("catalog.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _validate(data: Any, where: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(catalog_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message if len(error.message) < 160 else error.message[:157] + "..."
        raise ConfigError(
            f"{where} does not match the catalog schema at {at}: {message}; see "
            "bdn/plan/catalog.schema.json",
            field="--catalog",
        )


def _cross_checks(
    default: str, providers: dict[str, str], instances: tuple[Instance, ...]
) -> list[str]:
    """Rules a JSON Schema cannot say: names unique, providers declared, GPUs have VRAM."""
    problems = []
    if default not in providers:
        problems.append(f"default_provider {default!r} is not under providers")
    seen: set[tuple[str, str]] = set()
    for inst in instances:
        if inst.provider not in providers:
            problems.append(f"instance {inst.name!r} names undeclared provider {inst.provider!r}")
        if (inst.provider, inst.name) in seen:
            problems.append(f"instance {inst.name!r} appears twice for {inst.provider!r}")
        seen.add((inst.provider, inst.name))
        if inst.gpu_count > 0 and inst.vram_bytes == 0:
            problems.append(f"instance {inst.name!r} has GPUs but vram_gib 0")
    return problems
