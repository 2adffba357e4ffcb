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
it. Other top-level Truss keys are ignored. Nothing here does network I/O;
:func:`load_config` reads one file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from bdn.errors import ConfigError
from bdn.patterns import compile_pattern
from bdn.secrets import is_valid_secret_name

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

SourceKind = Literal["hf", "s3", "gcs", "r2", "local"]
AuthMethod = Literal["CUSTOM_SECRET", "AWS_OIDC", "GCP_OIDC"]

#: Valid ``auth.auth_method`` values, in the order error messages list them.
AUTH_METHODS: tuple[str, ...] = get_args(AuthMethod)

#: URI scheme -> source kind. The scheme is what users write; the kind names
#: the ``bdn.sources`` module that reads it.
SCHEME_KINDS: Mapping[str, SourceKind] = {
    "hf": "hf",
    "s3": "s3",
    "gs": "gcs",
    "r2": "r2",
    "file": "local",
}
SUPPORTED_SCHEMES: tuple[str, ...] = tuple(SCHEME_KINDS)

# The form each scheme takes, quoted by error messages.
_SOURCE_FORMS: Mapping[str, str] = {
    "hf": "hf://owner/repo[@revision], e.g. hf://Qwen/Qwen3-8B@main "
    "(pick files or subfolders with allow_patterns)",
    "s3": "s3://bucket[/prefix], e.g. s3://my-bucket/models/qwen",
    "gs": "gs://bucket[/prefix], e.g. gs://my-bucket/models/qwen",
    "r2": "r2://account_id.bucket[/prefix], e.g. r2://0123abcd.my-bucket/models/qwen",
    "file": "file:///absolute/dir, e.g. file:///data/models/qwen",
}

# Schemes people reach for by habit, and what they mean here.
_SCHEME_HINTS: Mapping[str, str] = {
    "gcs": "for Google Cloud Storage write gs://bucket/prefix",
    "http": "for Hugging Face write hf://owner/repo",
    "https": "for Hugging Face write hf://owner/repo",
    "s3a": "write s3://bucket/prefix",
    "huggingface": "write hf://owner/repo",
}

DEFAULT_HF_REVISION = "main"

_ENTRY_KEYS = ("source", "mount_location", "auth", "allow_patterns", "ignore_patterns")
_AUTH_KEYS = (
    "auth_method",
    "auth_secret_name",
    "aws_oidc_role_arn",
    "aws_oidc_region",
    "gcp_oidc_service_account",
    "gcp_oidc_workload_id_provider",
)

_URI_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_HF_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_HF_REPO_RE = re.compile(rf"{_HF_NAME}/{_HF_NAME}")
_HF_REVISION_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._/-]*")
# Lenient enough for legacy and S3-compatible bucket names; it exists to catch
# typos (spaces, empty names, a stray "/"), not to replay AWS's naming rules.
# Length limits are left to the server, so short test buckets ("b") still parse.
_S3_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_GCS_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,221}")
_R2_ACCOUNT_RE = re.compile(r"[A-Za-z0-9]+")
_R2_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

_ROLE_ARN_RE = re.compile(r"arn:aws(?:-cn|-us-gov)?:iam::\d{12}:role/[\w+=,.@/-]+")
_AWS_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_WIF_PROVIDER_RE = re.compile(
    r"projects/\d+/locations/global/workloadIdentityPools/[^/\s]+/providers/[^/\s]+"
)


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True, slots=True)
class ParsedSource:
    """A validated source URI, split into the parts a source module needs.

    Attributes:
        scheme: the URI scheme as written, lower-cased (``hf``, ``s3``, ``gs``,
            ``r2``, ``file``).
        kind: the source kind (``hf``, ``s3``, ``gcs``, ``r2``, ``local``).
        repo_id: ``owner/repo`` for Hugging Face, else None.
        revision: branch, tag or commit for Hugging Face (default ``main``), else None.
        bucket: bucket name for s3, gcs and r2, else None.
        account_id: Cloudflare account id for r2, else None.
        prefix: key prefix inside the bucket with no leading or trailing ``/``;
            ``""`` means the whole bucket (empty for hf and local).
        path: absolute, normalized directory for local sources, else None.
    """

    scheme: str
    kind: SourceKind
    repo_id: str | None = None
    revision: str | None = None
    bucket: str | None = None
    account_id: str | None = None
    prefix: str = ""
    path: str | None = None

    @property
    def uri(self) -> str:
        """The canonical URI: explicit HF revision, no trailing ``/``.

        >>> parse_source("hf://Qwen/Qwen3-8B").uri
        'hf://Qwen/Qwen3-8B@main'
        """
        if self.kind == "hf":
            return f"hf://{self.repo_id}@{self.revision}"
        if self.kind == "local":
            return f"file://{self.path}"
        host = f"{self.account_id}.{self.bucket}" if self.kind == "r2" else f"{self.bucket}"
        return f"{self.scheme}://{host}" + (f"/{self.prefix}" if self.prefix else "")


def parse_source(text: str, *, field: str | None = None) -> ParsedSource:
    """Validate a source URI and split it into its parts.

    Accepted forms: ``hf://owner/repo[@revision]`` (revision defaults to
    ``main``), ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]``,
    ``r2://account_id.bucket[/prefix]`` and ``file:///absolute/dir``.

    Args:
        text: the URI as written.
        field: the field path to start error messages with, e.g. ``weights[0].source``.

    Returns:
        The parsed source.

    Raises:
        ConfigError: the scheme is missing, unknown or ``bt://`` (Baseten
            Training, which only exists inside Baseten), or the rest of the URI
            does not fit the scheme's form.

    >>> src = parse_source("r2://acct.my-bucket/a/b/")
    >>> src.kind, src.account_id, src.bucket, src.prefix
    ('r2', 'acct', 'my-bucket', 'a/b')
    """
    if not isinstance(text, str):
        raise ConfigError(
            f"must be a string URI, got {_type_name(text)}; use e.g. hf://owner/repo",
            field=field,
        )
    match = _URI_RE.fullmatch(text)
    if match is None:
        hint = ""
        if _HF_REPO_RE.fullmatch(text):
            hint = f" (did you mean hf://{text}?)"
        elif text.startswith("/"):
            hint = f" (did you mean file://{text}?)"
        raise ConfigError(f"{text!r} has no scheme{hint}; use one of {_scheme_list()}", field=field)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "bt":
        raise ConfigError(
            f"{text!r}: Baseten Training sources are not available outside Baseten; "
            "mirror the checkpoint to s3://, gs:// or hf:// and use that URI",
            field=field,
        )
    parser = _SOURCE_PARSERS.get(scheme)
    if parser is None:
        advice = _SCHEME_HINTS.get(scheme)
        raise ConfigError(
            f"unknown scheme {scheme + '://'!r} in {text!r}"
            + (f"; {advice}" if advice else "")
            + f"; supported schemes: {_scheme_list()}",
            field=field,
        )
    if scheme == "file" and rest and not rest.startswith("/"):
        raise ConfigError(
            f"{text!r} has a relative path; use an absolute path with three slashes, "
            "e.g. file:///data/models/qwen",
            field=field,
        )
    parsed = parser(rest)
    if parsed is None:
        raise ConfigError(
            f"malformed {scheme}:// source {text!r}; use {_SOURCE_FORMS[scheme]}", field=field
        )
    return parsed


def _scheme_list() -> str:
    return ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)


def _parse_hf(rest: str) -> ParsedSource | None:
    repo_id, at, revision = rest.partition("@")
    if not at:
        revision = DEFAULT_HF_REVISION
    if not _HF_REPO_RE.fullmatch(repo_id) or ".." in repo_id:
        return None
    if not _HF_REVISION_RE.fullmatch(revision) or ".." in revision:
        return None
    return ParsedSource(scheme="hf", kind="hf", repo_id=repo_id, revision=revision)


def _split_bucket(rest: str) -> tuple[str, str]:
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def _parse_s3(rest: str) -> ParsedSource | None:
    bucket, prefix = _split_bucket(rest)
    if not _S3_BUCKET_RE.fullmatch(bucket):
        return None
    return ParsedSource(scheme="s3", kind="s3", bucket=bucket, prefix=prefix)


def _parse_gs(rest: str) -> ParsedSource | None:
    bucket, prefix = _split_bucket(rest)
    if not _GCS_BUCKET_RE.fullmatch(bucket):
        return None
    return ParsedSource(scheme="gs", kind="gcs", bucket=bucket, prefix=prefix)


def _parse_r2(rest: str) -> ParsedSource | None:
    host, prefix = _split_bucket(rest)
    account_id, dot, bucket = host.partition(".")
    if not dot or not _R2_ACCOUNT_RE.fullmatch(account_id) or not _R2_BUCKET_RE.fullmatch(bucket):
        return None
    return ParsedSource(scheme="r2", kind="r2", bucket=bucket, account_id=account_id, prefix=prefix)


def _parse_file(rest: str) -> ParsedSource | None:
    if not rest.startswith("/"):
        return None
    return ParsedSource(scheme="file", kind="local", path=_normalize_abs(rest))


_SOURCE_PARSERS: Mapping[str, Callable[[str], ParsedSource | None]] = {
    "hf": _parse_hf,
    "s3": _parse_s3,
    "gs": _parse_gs,
    "r2": _parse_r2,
    "file": _parse_file,
}


def _normalize_abs(path: str) -> str:
    """Normalize an absolute POSIX path: no trailing ``/``, no ``.``/``..``, one leading ``/``."""
    # normpath keeps a leading "//" (POSIX leaves it implementation-defined); we do not.
    return "/" + posixpath.normpath(path).lstrip("/")


def source_from_cli(text: str, cwd: Path) -> str:
    """Turn a CLI ``SOURCE`` argument into a source URI.

    A plain path (``./my-model``, ``/data/m``) becomes ``file:///abs/path``,
    resolved against ``cwd`` and normalized but not following symlinks; a
    URI (anything with ``scheme://``) is returned unchanged, to be checked by
    :func:`parse_source`. The path is not percent-encoded: ``file://`` URIs in
    BDN carry the path literally.

    Args:
        text: the argument as typed.
        cwd: the directory relative paths are relative to (the caller's
            working directory, resolved once at the entry point).

    Raises:
        ConfigError: ``text`` is empty, or the path stays relative because
            ``cwd`` is relative.

    >>> source_from_cli("./my-model", Path("/home/me"))
    'file:///home/me/my-model'
    >>> source_from_cli("hf://Qwen/Qwen3-8B", Path("/home/me"))
    'hf://Qwen/Qwen3-8B'
    """
    if not text:
        raise ConfigError(
            "is empty; pass a directory or a URI such as hf://owner/repo", field="source"
        )
    if _URI_RE.fullmatch(text):
        return text
    path = cwd / text
    if not path.is_absolute():
        raise ConfigError(
            f"{text!r} is relative to {str(cwd)!r}, which is not absolute; "
            "pass an absolute path or an absolute working directory",
            field="source",
        )
    return "file://" + _normalize_abs(path.as_posix())


# ------------------------------------------------------------------------------ auth


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How to authenticate to a source, as a Truss ``auth:`` mapping.

    Attributes:
        auth_method: ``CUSTOM_SECRET`` (a named secret: an HF token, S3/R2 JSON
            credentials or a GCP service-account JSON), ``AWS_OIDC`` or ``GCP_OIDC``
            (workload identity federation; no stored secret).
        auth_secret_name: secret name, for ``CUSTOM_SECRET``.
        aws_oidc_role_arn: IAM role to assume, for ``AWS_OIDC``.
        aws_oidc_region: AWS region, for ``AWS_OIDC``.
        gcp_oidc_service_account: service account email, for ``GCP_OIDC``.
        gcp_oidc_workload_id_provider: full provider resource name, for ``GCP_OIDC``.
    """

    auth_method: AuthMethod
    auth_secret_name: str | None = None
    aws_oidc_role_arn: str | None = None
    aws_oidc_region: str | None = None
    gcp_oidc_service_account: str | None = None
    gcp_oidc_workload_id_provider: str | None = None

    def to_dict(self) -> dict[str, str]:
        """The Truss ``auth:`` mapping, omitting unset fields."""
        return {key: value for key in _AUTH_KEYS if (value := getattr(self, key)) is not None}


@dataclass(frozen=True, slots=True)
class _AuthRule:
    """One field an auth method requires: its check, its expected shape and an example."""

    key: str
    valid: Callable[[str], bool]
    shape: str
    example: str


# Which fields each method needs, and which source kinds it can authenticate.
# Fields of other methods are rejected, so a leftover from switching methods
# cannot silently linger (and change the config hash).
_AUTH_RULES: Mapping[str, tuple[_AuthRule, ...]] = {
    "CUSTOM_SECRET": (
        _AuthRule(
            "auth_secret_name",
            is_valid_secret_name,
            "a secret name without '/' or '..'",
            "hf_access_token",
        ),
    ),
    "AWS_OIDC": (
        _AuthRule(
            "aws_oidc_role_arn",
            lambda v: _ROLE_ARN_RE.fullmatch(v) is not None,
            "arn:aws:iam::<12 digits>:role/<name>",
            "arn:aws:iam::123456789012:role/bdn-reader",
        ),
        _AuthRule(
            "aws_oidc_region",
            lambda v: _AWS_REGION_RE.fullmatch(v) is not None,
            "an AWS region",
            "us-east-1",
        ),
    ),
    "GCP_OIDC": (
        _AuthRule(
            "gcp_oidc_service_account",
            lambda v: _EMAIL_RE.fullmatch(v) is not None,
            "a service account email",
            "bdn-reader@my-project.iam.gserviceaccount.com",
        ),
        _AuthRule(
            "gcp_oidc_workload_id_provider",
            lambda v: _WIF_PROVIDER_RE.fullmatch(v) is not None,
            "projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>",
            "projects/123456789/locations/global/workloadIdentityPools/my-pool/providers/my-provider",
        ),
    ),
}
_AUTH_SOURCE_KINDS: Mapping[str, frozenset[SourceKind]] = {
    "CUSTOM_SECRET": frozenset({"hf", "s3", "gcs", "r2"}),
    "AWS_OIDC": frozenset({"s3"}),
    "GCP_OIDC": frozenset({"gcs"}),
}


def parse_auth(data: object, *, where: str = "auth") -> AuthConfig:
    """Validate a Truss ``auth:`` mapping.

    Keys whose value is null or ``""`` count as absent, since a serializer
    may write every field. An :class:`AuthConfig` is accepted too (and
    re-validated), for Python callers that built one.

    Args:
        data: the mapping as loaded from YAML, or an :class:`AuthConfig`.
        where: field path for error messages, e.g. ``weights[0].auth``.

    Raises:
        ConfigError: not a mapping; unknown keys; missing or unknown
            ``auth_method``; a field the method needs is missing or malformed;
            a field of another method is present.
    """
    if isinstance(data, AuthConfig):
        data = data.to_dict()
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"must be a mapping, got {_type_name(data)}; use e.g. "
            "{auth_method: CUSTOM_SECRET, auth_secret_name: hf_access_token}",
            field=where,
        )
    _reject_unknown_keys(data, _AUTH_KEYS, where)
    values = {key: data[key] for key in _AUTH_KEYS if data.get(key) not in (None, "")}
    method = values.get("auth_method")
    if method is None:
        raise ConfigError(
            f"auth_method is missing; set it to one of {', '.join(AUTH_METHODS)}", field=where
        )
    if not isinstance(method, str) or method not in _AUTH_RULES:
        close = [m for m in AUTH_METHODS if str(method).upper() == m]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"unknown auth_method {method!r}{hint}; use one of {', '.join(AUTH_METHODS)}",
            field=f"{where}.auth_method",
        )
    rules = _AUTH_RULES[method]
    needed = {rule.key for rule in rules}
    for key in values:
        if key != "auth_method" and key not in needed:
            owner = next(m for m, rs in _AUTH_RULES.items() if any(r.key == key for r in rs))
            raise ConfigError(
                f"is not used by auth_method {method} (only by {owner}); remove it "
                f"or set auth_method: {owner}",
                field=f"{where}.{key}",
            )
    for rule in rules:
        value = values.get(rule.key)
        field = f"{where}.{rule.key}"
        if value is None:
            raise ConfigError(
                f"is required when auth_method is {method}; add {rule.key}: {rule.example}",
                field=field,
            )
        if not isinstance(value, str) or not rule.valid(value):
            shown = repr(value) if isinstance(value, str) else _type_name(value)
            raise ConfigError(
                f"{shown} does not look like {rule.shape}; use e.g. {rule.example}"
                + _provider_hint(rule.key, value),
                field=field,
            )
    return AuthConfig(**values)


def _provider_hint(key: str, value: object) -> str:
    """A hint for pasting the ``//iam.googleapis.com/`` audience instead of the provider name."""
    if key == "gcp_oidc_workload_id_provider" and isinstance(value, str) and value.startswith("//"):
        return " (drop the //iam.googleapis.com/ prefix)"
    return ""


# --------------------------------------------------------------------------- entries


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
    list is stored as None, so it hashes like an absent one.

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
            f"must be a mapping with source and mount_location, got {_type_name(data)}; "
            "write each entry as a mapping, e.g. - {source: hf://owner/repo, "
            "mount_location: /models/repo}",
            field=where,
        )
    _reject_unknown_keys(data, _ENTRY_KEYS, where)
    source = data.get("source")
    if not isinstance(source, str):
        problem = "is missing" if source is None else f"must be a string, got {_type_name(source)}"
        raise ConfigError(
            f"{problem}; add source: with a URI such as hf://owner/repo or s3://bucket/prefix",
            field=f"{where}.source",
        )
    parsed = parse_source(source, field=f"{where}.source")
    mount = _parse_mount(
        data.get("mount_location"), f"{where}.mount_location", parsed, require_mount_location
    )
    auth = None
    if data.get("auth") is not None:
        auth = parse_auth(data["auth"], where=f"{where}.auth")
        _check_auth_fits_source(auth, parsed, f"{where}.auth.auth_method")
    allow = _parse_patterns(data.get("allow_patterns"), f"{where}.allow_patterns")
    if allow == ():
        raise ConfigError(
            "is an empty list, which would select no files; "
            "remove allow_patterns to take every file",
            field=f"{where}.allow_patterns",
        )
    ignore = _parse_patterns(data.get("ignore_patterns"), f"{where}.ignore_patterns") or None
    return WeightsEntry(
        source=source,
        mount_location=mount,
        auth=auth,
        allow_patterns=allow,
        ignore_patterns=ignore,
    )


def _check_auth_fits_source(auth: AuthConfig, parsed: ParsedSource, field: str) -> None:
    """Refuse an auth method that cannot authenticate this kind of source."""
    kinds = _AUTH_SOURCE_KINDS[auth.auth_method]
    if parsed.kind in kinds:
        return
    schemes = ", ".join(f"{s}://" for s, k in SCHEME_KINDS.items() if k in kinds)
    fix = (
        "remove auth: local directories need none"
        if parsed.kind == "local"
        else "use CUSTOM_SECRET or remove auth"
    )
    raise ConfigError(
        f"{auth.auth_method} cannot authenticate a {parsed.scheme}:// source "
        f"(it works with {schemes}); {fix}",
        field=field,
    )


def _parse_mount(value: object, field: str, parsed: ParsedSource, required: bool) -> str | None:
    """Validate a mount location; return it normalized (no trailing ``/``)."""
    example = _example_mount(parsed)
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
            f"must be a string, got {_type_name(value)}; use an absolute path such as {example}",
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
            f"{_normalize_abs(value)}",
            field=field,
        )
    mount = _normalize_abs(value)
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
        got = f"the string {value!r}" if isinstance(value, str) else _type_name(value)
        raise ConfigError(
            f"must be a list of strings, got {got}; use a list, e.g. ['*.safetensors']",
            field=field,
        )
    patterns: list[str] = []
    for index, item in enumerate(value):
        item_field = f"{field}[{index}]"
        if not isinstance(item, str):
            raise ConfigError(
                f"must be a string, got {_type_name(item)}; quote it, e.g. '*.safetensors'",
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

    Every entry needs a ``mount_location``, and no two entries may share one
    (compared after normalizing trailing slashes).

    Args:
        data: the list as loaded from YAML.
        where: field path for error messages.

    Returns:
        The entries, in order.

    Raises:
        ConfigError: ``data`` is not a list, an entry is invalid, or two
            entries share a mount location.
    """
    if not isinstance(data, list | tuple):
        raise ConfigError(
            f"must be a list of entries, got {_type_name(data)}; start each entry with "
            "'- source: ...'",
            field=where,
        )
    entries = tuple(parse_entry(item, where=f"{where}[{index}]") for index, item in enumerate(data))
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.mount_location is None:  # Cannot happen: parse_entry requires it.
            continue
        first = seen.setdefault(entry.mount_location, index)
        if first != index:
            raise ConfigError(
                f"{entry.mount_location!r} is also the mount location of {where}[{first}]; "
                "give each entry its own directory",
                field=f"{where}[{index}].mount_location",
            )
    return entries


def load_config(path: str | Path | Mapping[str, Any]) -> tuple[WeightsEntry, ...]:
    """Read the ``weights:`` list of a Truss config.

    Args:
        path: a ``config.yaml`` path, or the already-loaded top-level mapping.
            Top-level keys other than ``weights`` are ignored.

    Returns:
        The validated entries.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML, is
            not a mapping, has no ``weights`` key, or an entry is invalid.
    """
    if isinstance(path, Mapping):
        data: object = path
        where = "config"
    else:
        where = str(path)
        data = _read_yaml(Path(path))
    if not isinstance(data, Mapping):
        got = "empty" if data is None else _type_name(data)
        raise ConfigError(
            f"is {got}, not a mapping; it needs a top-level 'weights:' list", field=where
        )
    if "weights" not in data:
        hint = (
            " (model_cache: is the older Truss key; move its entries to weights:)"
            if "model_cache" in data
            else ""
        )
        raise ConfigError(
            f"has no 'weights' key{hint}; add a top-level 'weights:' list of entries with "
            "source and mount_location",
            field=where,
        )
    return parse_weights(data["weights"])


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


# --------------------------------------------------------------------------- helpers


def _reject_unknown_keys(data: Mapping[Any, Any], valid: tuple[str, ...], where: str) -> None:
    unknown = [key for key in data if key not in valid]
    if not unknown:
        return
    names = ", ".join(repr(key) for key in unknown)
    close = difflib.get_close_matches(str(unknown[0]), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    plural = "s" if len(unknown) > 1 else ""
    raise ConfigError(
        f"unknown key{plural} {names}{hint}; valid keys are {', '.join(valid)}", field=where
    )


def _type_name(value: object) -> str:
    """A YAML-flavoured name for a value's type, for 'got ...' in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
