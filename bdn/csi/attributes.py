"""What a pod's ``csi:`` inline volume asks for: its attributes read as a weights entry.

A pod spec writes the entry in ``volumeAttributes`` (a string -> string map)::

    volumes:
      - name: weights
        csi:
          driver: csi.bdn.dev
          readOnly: true
          volumeAttributes:
            source: hf://Qwen/Qwen2.5-0.5B-Instruct@main   # or manifest_id: sha256:...
            allow_patterns: "*.safetensors, config.json"   # or a JSON list: '["*.json"]'
            ignore_patterns: "*.md"
            auth_secret_name: hf_access_token             # a secret the agent can read

Pattern lists are comma-separated (blanks around each pattern dropped), or a
JSON list of strings when the value starts with ``[`` (for a pattern that
holds a comma). Keys kubelet adds with ``podInfoOnMount``
(``csi.storage.k8s.io/...``) are read for the hold's record, never for the
pull. Any other key is refused, so a misspelt ``allow_pattern`` does not
silently pull the whole repository.

Everything wrong raises :class:`~bdn.errors.ConfigError` with one line naming
the attribute and the fix; the server answers it as ``InvalidArgument``.

>>> want = parse_volume({"manifest_id": "sha256:" + "a" * 64})
>>> want.target == "sha256:" + "a" * 64
True
>>> split_patterns(" *.json , w/ ", "allow_patterns")
('*.json', 'w/')
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bdn.agent.protocol import parse_pull_request, request_for
from bdn.config.weights import WeightsEntry, parse_entry
from bdn.errors import ConfigError

POD_INFO_PREFIX = "csi.storage.k8s.io/"
"""Keys kubelet adds to the attributes (pod name, namespace, uid, ephemeral)."""

_ENTRY_KEYS = ("source", "allow_patterns", "ignore_patterns", "auth_secret_name")
_KEYS = frozenset({"manifest_id", *_ENTRY_KEYS})
_PATTERN_KEYS = ("allow_patterns", "ignore_patterns")
_VOLUME_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_EXAMPLE = "e.g. source: hf://org/repo@main, or manifest_id: sha256:<64 hex>"


@dataclass(frozen=True, slots=True)
class VolumeRequest:
    """A validated volume: what to pull, and who asked.

    Attributes:
        target: a manifest id (``sha256:<hex>``) or the weights entry to look
            up by config hash, as :func:`bdn.agent.protocol.request_for` takes.
        pod: ``namespace/name`` of the pod from kubelet's pod info, or ``""``.
    """

    target: str | WeightsEntry
    pod: str = ""

    def pull_body(self, tree: str) -> dict[str, Any]:
        """The agent's ``POST /v1/pulls`` body for this volume's tree at ``tree``."""
        return request_for(self.target, tree)


def parse_volume(attributes: Mapping[str, str]) -> VolumeRequest:
    """Validate a NodePublishVolume's ``volume_context``.

    Raises:
        ConfigError: an unknown key, both or neither of ``source`` and
            ``manifest_id``, a malformed source, pattern or secret name.
    """
    unknown = sorted(k for k in attributes if k not in _KEYS and not k.startswith(POD_INFO_PREFIX))
    if unknown:
        raise ConfigError(
            f"unknown volume attribute(s) {', '.join(map(repr, unknown))}; accepted: "
            f"{', '.join(sorted(_KEYS))}", field="volumeAttributes")
    pod = "/".join(attributes.get(POD_INFO_PREFIX + k, "") for k in ("pod.namespace", "pod.name"))
    manifest_id = attributes.get("manifest_id", "").strip()
    has_entry = any(attributes.get(k, "").strip() for k in _ENTRY_KEYS)
    if manifest_id and has_entry:
        raise ConfigError(
            "give either manifest_id or source (with its patterns and auth_secret_name), "
            "not both", field="volumeAttributes")
    if manifest_id:
        target: str | WeightsEntry = manifest_id
    elif attributes.get("source", "").strip():
        target = _entry(attributes)
    else:
        raise ConfigError(f"name the weights: {_EXAMPLE}", field="volumeAttributes")
    # The agent's own parser: what it would refuse is refused here, before any work.
    parsed = parse_pull_request(request_for(target, "/csi-check"))
    return VolumeRequest(parsed.target, pod.strip("/"))


def _entry(attributes: Mapping[str, str]) -> WeightsEntry:
    data: dict[str, object] = {"source": attributes["source"].strip()}
    for key in _PATTERN_KEYS:
        if attributes.get(key, "").strip():
            data[key] = list(split_patterns(attributes[key], key))
    secret = attributes.get("auth_secret_name", "").strip()
    if secret:
        data["auth_secret_name"] = secret
    return parse_entry(data, where="volumeAttributes", require_mount_location=False)


def split_patterns(value: str, key: str) -> tuple[str, ...]:
    """A pattern attribute: a JSON list when it starts with ``[``, else comma-separated.

    Raises:
        ConfigError: malformed JSON, or a list of something else than strings.
    """
    text = value.strip()
    if not text.startswith("["):
        return tuple(p.strip() for p in text.split(",") if p.strip())
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"starts with '[' but is not a JSON list ({err.msg}); write "
            '["*.safetensors", "config.json"] or *.safetensors, config.json',
            field=f"volumeAttributes.{key}") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError('must be a JSON list of strings, e.g. ["*.safetensors"]',
                          field=f"volumeAttributes.{key}")
    return tuple(items)


def check_volume_id(volume_id: str) -> str:
    """``volume_id`` when it can name a directory (kubelet's ``csi-<hex>`` ids can).

    Raises:
        ConfigError: empty, over 128 characters, or with characters other than
            letters, digits, ``.``, ``_`` and ``-`` (or not starting with one
            of the first two).
    """
    if not _VOLUME_ID.fullmatch(volume_id):
        raise ConfigError(
            f"{volume_id[:80]!r} cannot name a tree directory; send 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit (kubelet's csi-<hex> ids do)",
            field="volume_id")
    return volume_id
