"""Weights entries, read exactly as a Truss ``config.yaml`` writes them.

A Truss config lists what a model needs under ``weights:``::

    weights:
      - source: "hf://Qwen/Qwen3-8B@main"
        mount_location: "/models/qwen"
        auth: {auth_method: CUSTOM_SECRET, auth_secret_name: hf_access_token}
        allow_patterns: ["*.safetensors", "config.json"]
        ignore_patterns: ["*.md"]

This module turns that into frozen :class:`WeightsEntry` values and rejects
anything wrong with a one-line :class:`~bdn.errors.ConfigError` that starts
with the field path (``weights[0].mount_location: ...``) and says how to fix
it. Accept and refuse follow Truss rule by rule (``docs/truss-parity.md``
lists them, and where BDN is stricter). Other top-level Truss keys are
ignored, except ``model_cache:``, which Truss refuses beside ``weights:``.
Nothing here does network I/O; :func:`load_config` reads one file.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bdn.config.auth import (
    AUTH_METHODS,
    LEGACY_SECRET_KEY,
    AuthConfig,
    AuthMethod,
    parse_auth,
    parse_entry_auth,
)
from bdn.config.patterns import compile_pattern
from bdn.config.uri import DEFAULT_HF_REVISION as DEFAULT_HF_REVISION
from bdn.config.uri import (
    SCHEME_KINDS,
    SUPPORTED_SCHEMES,
    ParsedSource,
    SourceKind,
    normalize_abs,
    parse_source,
    source_from_cli,
)
from bdn.config.validate import reject_unknown_keys, type_name
from bdn.errors import ConfigError

__all__ = [
    "AUTH_METHODS",
    "SCHEME_KINDS",
    "SUPPORTED_SCHEMES",
    "AuthConfig",
    "AuthMethod",
    "ParsedSource",
    "SourceKind",
    "WeightsEntry",
    "load_config",
    "parse_auth",
    "parse_entry",
    "parse_source",
    "parse_weights",
    "source_from_cli",
]

_ENTRY_KEYS = (
    "source",
    "mount_location",
    "auth",
    "allow_patterns",
    "ignore_patterns",
    LEGACY_SECRET_KEY,
)

# Top-level keys of the older Truss weights API. Truss refuses a config that
# sets one of them (non-empty) beside a non-empty ``weights:`` and offers
# ``truss migrate`` to convert; ``hf_cache`` counts only when ``model_cache``
# is absent, since Truss renames it to that.
_OLD_CACHE_KEYS = ("model_cache", "hf_cache")


@dataclass(frozen=True, slots=True)
class WeightsEntry:
    """One item of a Truss ``weights:`` list.

    Attributes:
        source: the source URI as written (see :func:`parse_source`).
        mount_location: absolute directory the model reads the files from,
            normalized (no trailing ``/``). Required in config files; None for
            entries built from the CLI or the Python API without one.
        auth: how to authenticate to the source; None for public sources.
        allow_patterns: only files matching one of these are taken; None takes all.
        ignore_patterns: files matching any of these are skipped; None skips none.
    """

    source: str
    mount_location: str | None = None
    auth: AuthConfig | None = None
    allow_patterns: tuple[str, ...] | None = None
    ignore_patterns: tuple[str, ...] | None = None

    @property
    def parsed_source(self) -> ParsedSource:
        """The source URI split into its parts (parsed on each access; it is cheap).

        Raises:
            ConfigError: the source URI is invalid.
        """
        return parse_source(self.source, field="source")

    @property
    def kind(self) -> SourceKind:
        """The source kind: ``hf``, ``s3``, ``gcs``, ``r2`` or ``local``.

        Raises:
            ConfigError: the source URI is invalid.
        """
        return self.parsed_source.kind

    def to_dict(self) -> dict[str, Any]:
        """The entry in Truss's shape, omitting fields that are None."""
        out: dict[str, Any] = {"source": self.source}
        if self.mount_location is not None:
            out["mount_location"] = self.mount_location
        if self.auth is not None:
            out["auth"] = self.auth.to_dict()
        if self.allow_patterns is not None:
            out["allow_patterns"] = list(self.allow_patterns)
        if self.ignore_patterns is not None:
            out["ignore_patterns"] = list(self.ignore_patterns)
        return out

    def config_hash(self) -> str:
        """SHA-256 hex of the canonical JSON of :meth:`to_dict` without ``mount_location``.

        The hash names the store's ``refs/<config-hash>``: the manifest last
        mirrored for this entry. ``mount_location`` only says where a pod reads
        the files, not which bytes they are, so it is left out: moving weights
        to another directory reuses the mirror instead of re-mirroring.
        Canonical JSON (sorted keys, compact separators, UTF-8 rather than
        ``\\u`` escapes) makes the hash independent of key order and formatting
        in the YAML. The source is hashed in its canonical form and pattern
        lists as sets, so ``hf://a/b`` and ``hf://a/b@main``, or the same
        patterns in another order, name one config and one ref.
        """
        data = self.to_dict()
        data.pop("mount_location", None)
        data["source"] = self.parsed_source.uri
        for key in ("allow_patterns", "ignore_patterns"):
            if key in data:
                data[key] = sorted(set(data[key]))
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_entry(
    data: object, *, where: str = "entry", require_mount_location: bool = True
) -> WeightsEntry:
    """Validate one weights entry mapping and build a :class:`WeightsEntry`.

    Keys whose value is null count as absent. An empty ``ignore_patterns``
    list is stored as None, so it hashes like an absent one. The older
    top-level ``auth_secret_name`` (still accepted by Truss) is stored as the
    ``auth: {auth_method: CUSTOM_SECRET, ...}`` it stands for, so it hashes
    like that form.

    Args:
        data: the mapping as loaded from YAML (or built by the CLI / Python API).
        where: field path for error messages, e.g. ``weights[2]``.
        require_mount_location: True for config files; the CLI and Python API
            may leave the mount location to the caller.

    Raises:
        ConfigError: any field is missing, of the wrong type or malformed.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"must be a mapping with source and mount_location, got {type_name(data)}; "
            "write each entry as a mapping, e.g. - {source: hf://owner/repo, "
            "mount_location: /models/repo}",
            field=where,
        )
    reject_unknown_keys(data, _ENTRY_KEYS, where)
    source, parsed = _parse_entry_source(data.get("source"), f"{where}.source")
    mount = _parse_mount(
        data.get("mount_location"), f"{where}.mount_location", parsed, require_mount_location
    )
    auth = parse_entry_auth(data, parsed, where)
    allow = _parse_patterns(data.get("allow_patterns"), f"{where}.allow_patterns")
    if allow == ():
        raise ConfigError(
            "is an empty list, which would select no files; "
            "remove allow_patterns to take every file",
            field=f"{where}.allow_patterns",
        )
    # An empty ignore list is stored as None, so it hashes like an absent one.
    ignore = _parse_patterns(data.get("ignore_patterns"), f"{where}.ignore_patterns") or None
    return WeightsEntry(
        source=source, mount_location=mount, auth=auth, allow_patterns=allow, ignore_patterns=ignore
    )


def _parse_entry_source(value: object, field: str) -> tuple[str, ParsedSource]:
    """The entry's ``source``, which must be present and a valid URI."""
    if not isinstance(value, str):
        problem = "is missing" if value is None else f"must be a string, got {type_name(value)}"
        raise ConfigError(
            f"{problem}; add source: with a URI such as hf://owner/repo or s3://bucket/prefix",
            field=field,
        )
    return value, parse_source(value, field=field)


def _parse_mount(value: object, field: str, parsed: ParsedSource, required: bool) -> str | None:
    """Validate a mount location (a string or a path object, for Python callers);
    return it normalized (no trailing ``/``)."""
    example = _example_mount(parsed)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is None:
        if not required:
            return None
        raise ConfigError(
            "is missing (it is required in a config entry); add the absolute directory "
            f"the model reads the files from, e.g. mount_location: {example}",
            field=field,
        )
    if not isinstance(value, str):
        raise ConfigError(
            f"must be a string, got {type_name(value)}; use an absolute path such as {example}",
            field=field,
        )
    if not value:
        raise ConfigError(f"is empty; use an absolute path such as {example}", field=field)
    if not value.startswith("/"):
        relative = posixpath.normpath(value)
        fix = "/" + relative if not relative.startswith("..") and relative != "." else example
        raise ConfigError(f"{value!r} is relative; use an absolute path such as {fix}", field=field)
    if ".." in value.split("/"):
        raise ConfigError(
            f"{value!r} contains '..'; use a normalized absolute path such as "
            f"{normalize_abs(value)}",
            field=field,
        )
    mount = normalize_abs(value)
    if mount == "/":
        raise ConfigError(
            f"{value!r} is the filesystem root; use a directory such as {example}", field=field
        )
    return mount


def _example_mount(parsed: ParsedSource) -> str:
    """A plausible mount location for ``parsed``, for error messages."""
    if parsed.repo_id:
        name = parsed.repo_id.rsplit("/", 1)[-1]
    else:
        tail = (parsed.path or parsed.prefix).rstrip("/").rsplit("/", 1)[-1]
        name = tail or parsed.bucket or "model"
    return f"/models/{name.lower()}"


def _parse_patterns(value: object, field: str) -> tuple[str, ...] | None:
    """Validate an allow/ignore list: None, or a list of valid pattern strings."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        got = f"the string {value!r}" if isinstance(value, str) else type_name(value)
        raise ConfigError(
            f"must be a list of strings, got {got}; use a list, e.g. ['*.safetensors']",
            field=field,
        )
    patterns: list[str] = []
    for index, item in enumerate(value):
        item_field = f"{field}[{index}]"
        if not isinstance(item, str):
            raise ConfigError(
                f"must be a string, got {type_name(item)}; quote it, e.g. '*.safetensors'",
                field=item_field,
            )
        try:
            compile_pattern(item)
        except ConfigError as err:
            raise ConfigError(str(err), field=item_field) from err
        patterns.append(item)
    return tuple(patterns)


def parse_weights(data: object, *, where: str = "weights") -> tuple[WeightsEntry, ...]:
    """Validate a Truss ``weights:`` list.

    The list must not be empty (an empty one would mirror and pull nothing,
    silently). Every entry needs a ``mount_location``; no two entries may
    share one, and none may lie inside another's (compared after normalizing
    trailing slashes): each tree is swapped in whole at its mount location,
    so a nested one would be hidden or replaced by its parent's.

    Args:
        data: the list as loaded from YAML.
        where: field path for error messages.

    Returns:
        The entries, in order.

    Raises:
        ConfigError: ``data`` is not a list or is empty, an entry is invalid,
            or two entries' mount locations are the same or nested.
    """
    if not isinstance(data, list | tuple):
        raise ConfigError(
            f"must be a list of entries, got {type_name(data)}; start each entry with "
            "'- source: ...'",
            field=where,
        )
    if not data:
        raise ConfigError(
            "is an empty list, so there is nothing to mirror or pull; add at least one entry "
            "with source and mount_location",
            field=where,
        )
    entries = tuple(parse_entry(item, where=f"{where}[{index}]") for index, item in enumerate(data))
    _check_mounts_apart(entries, where)
    return entries


def _check_mounts_apart(entries: tuple[WeightsEntry, ...], where: str) -> None:
    """Raise ConfigError when two entries' mount locations are equal or nested."""
    mounts = [(entry.mount_location, index) for index, entry in enumerate(entries)
              if entry.mount_location is not None]  # Always set: parse_entry requires it.
    # Every pair: quadratic, but in the length of a (short) weights list.
    for later, (mount, index) in enumerate(mounts):
        for other, first in mounts[:later]:
            if other == mount:
                relation = "is also"
            elif mount.startswith(other + "/"):
                relation = f"is inside {other!r},"
            elif other.startswith(mount + "/"):
                relation = f"contains {other!r},"
            else:
                continue
            raise ConfigError(
                f"{mount!r} {relation} the mount location of {where}[{first}]; give each "
                "entry its own directory, side by side (e.g. /models/a and /models/b)",
                field=f"{where}[{index}].mount_location",
            )


def load_config(path: str | Path | Mapping[str, Any]) -> tuple[WeightsEntry, ...]:
    """Read the ``weights:`` list of a Truss config.

    Args:
        path: a ``config.yaml`` path, or the already-loaded top-level mapping.
            Top-level keys other than ``weights`` are ignored.

    Returns:
        The validated entries.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML, is
            not a mapping, has no ``weights`` key, sets the older
            ``model_cache`` (or ``hf_cache``), or an entry is invalid.
    """
    if isinstance(path, Mapping):
        data: object = path
        where = "config"
    else:
        where = str(path)
        data = _read_yaml(Path(path))
    if not isinstance(data, Mapping):
        got = "empty" if data is None else type_name(data)
        raise ConfigError(
            f"is {got}, not a mapping; it needs a top-level 'weights:' list", field=where
        )
    _refuse_old_cache_keys(data, where)
    if "weights" not in data:
        raise ConfigError(
            "has no 'weights' key; add a top-level 'weights:' list of entries with "
            "source and mount_location",
            field=where,
        )
    return parse_weights(data["weights"])


def _refuse_old_cache_keys(data: Mapping[Any, Any], where: str) -> None:
    """Refuse ``model_cache:`` (or ``hf_cache:``), as Truss does beside ``weights:``.

    Truss refuses a config with both a non-empty ``model_cache`` and a
    non-empty ``weights``. BDN reads only ``weights``, so a ``model_cache``
    without weights entries (which Truss accepts) is refused too, with the
    same fix, rather than mirroring nothing.
    """
    key = next((k for k in _OLD_CACHE_KEYS if k in data), None)
    if key is None or not data[key]:
        return
    if data.get("weights"):
        problem = f"sets both {key}: and weights:, which Truss refuses"
    else:
        problem = f"has {key}:, the older Truss key, and no weights: entries"
    raise ConfigError(
        f"{problem}; run `truss migrate` to move the {key} entries into weights:, "
        f"then delete {key}:",
        field=where,
    )


def _read_yaml(path: Path) -> object:
    """Load one YAML file, translating every failure to a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "config file not found; pass the path to your Truss config.yaml", field=str(path)
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            "is a directory; pass the path to the config.yaml inside it", field=str(path)
        ) from None
    except UnicodeDecodeError as err:
        raise ConfigError("is not UTF-8 text; save it as UTF-8", field=str(path)) from err
    except OSError as err:
        raise ConfigError(
            f"could not be read ({err.strerror or type(err).__name__}); check its permissions",
            field=str(path),
        ) from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_message(err), field=str(path)) from err


def _yaml_message(err: yaml.YAMLError) -> str:
    """One line describing a YAML error: position and problem, never the snippet."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        problem = (err.problem or "syntax error").replace("\n", " ")
        return (
            f"is not valid YAML: {problem} at line {mark.line + 1}, column {mark.column + 1}; "
            "fix the syntax there"
        )
    return "is not valid YAML; fix the syntax"
