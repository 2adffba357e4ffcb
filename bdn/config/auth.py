"""The ``auth:`` mapping of a weights entry: which method, and the fields it needs.

:func:`parse_auth` validates a Truss ``auth:`` mapping into an
:class:`AuthConfig`; :func:`check_auth_fits_source` refuses a method that
cannot authenticate the entry's kind of source. Errors are one-line
:class:`~bdn.errors.ConfigError` values that name the expected shape and an
example. ``bdn.config.weights`` re-exports the public names; import them from there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from bdn.config.secrets import is_valid_secret_name
from bdn.config.uri import SCHEME_KINDS, ParsedSource, SourceKind
from bdn.config.validate import reject_unknown_keys, type_name
from bdn.errors import ConfigError

__all__ = [
    "AUTH_METHODS",
    "AuthConfig",
    "AuthMethod",
    "check_auth_fits_source",
    "parse_auth",
]

AuthMethod = Literal["CUSTOM_SECRET", "AWS_OIDC", "GCP_OIDC"]

#: Valid ``auth.auth_method`` values, in the order error messages list them.
AUTH_METHODS: tuple[str, ...] = get_args(AuthMethod)

_AUTH_KEYS = (
    "auth_method",
    "auth_secret_name",
    "aws_oidc_role_arn",
    "aws_oidc_region",
    "gcp_oidc_service_account",
    "gcp_oidc_workload_id_provider",
)

_ROLE_ARN_RE = re.compile(r"arn:aws(?:-cn|-us-gov)?:iam::\d{12}:role/[\w+=,.@/-]+")
_AWS_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_WIF_PROVIDER_RE = re.compile(
    r"projects/\d+/locations/global/workloadIdentityPools/[^/\s]+/providers/[^/\s]+"
)


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
            f"must be a mapping, got {type_name(data)}; use e.g. "
            "{auth_method: CUSTOM_SECRET, auth_secret_name: hf_access_token}",
            field=where,
        )
    reject_unknown_keys(data, _AUTH_KEYS, where)
    values = {key: data[key] for key in _AUTH_KEYS if data.get(key) not in (None, "")}
    method = _auth_method(values.get("auth_method"), where)
    rules = _AUTH_RULES[method]
    _reject_other_methods_fields(values, method, rules, where)
    for rule in rules:
        _check_rule(rule, values.get(rule.key), method, where)
    return AuthConfig(**values)


def _auth_method(method: object, where: str) -> str:
    """The ``auth_method`` value, which must name a known method (case matters)."""
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
    return method


def _reject_other_methods_fields(
    values: Mapping[str, object], method: str, rules: tuple[_AuthRule, ...], where: str
) -> None:
    """Refuse a field that belongs to another method, naming the method that uses it."""
    needed = {rule.key for rule in rules}
    for key in values:
        if key != "auth_method" and key not in needed:
            owner = next(m for m, rs in _AUTH_RULES.items() if any(r.key == key for r in rs))
            raise ConfigError(
                f"is not used by auth_method {method} (only by {owner}); remove it "
                f"or set auth_method: {owner}",
                field=f"{where}.{key}",
            )


def _check_rule(rule: _AuthRule, value: object, method: str, where: str) -> None:
    """Require one field of ``method`` and check its shape against ``rule``."""
    field = f"{where}.{rule.key}"
    if value is None:
        raise ConfigError(
            f"is required when auth_method is {method}; add {rule.key}: {rule.example}",
            field=field,
        )
    if not isinstance(value, str) or not rule.valid(value):
        shown = repr(value) if isinstance(value, str) else type_name(value)
        raise ConfigError(
            f"{shown} does not look like {rule.shape}; use e.g. {rule.example}"
            + _provider_hint(rule.key, value),
            field=field,
        )


def _provider_hint(key: str, value: object) -> str:
    """A hint for pasting the ``//iam.googleapis.com/`` audience instead of the provider name."""
    if key == "gcp_oidc_workload_id_provider" and isinstance(value, str) and value.startswith("//"):
        return " (drop the //iam.googleapis.com/ prefix)"
    return ""


def check_auth_fits_source(auth: AuthConfig, parsed: ParsedSource, field: str) -> None:
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
