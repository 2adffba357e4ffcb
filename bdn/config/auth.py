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
    "LEGACY_SECRET_KEY",
    "AuthConfig",
    "AuthMethod",
    "check_auth_fits_source",
    "parse_auth",
    "parse_entry_auth",
]

AuthMethod = Literal["CUSTOM_SECRET", "AWS_OIDC", "GCP_OIDC"]

#: Valid ``auth.auth_method`` values, in the order error messages list them.
AUTH_METHODS: tuple[str, ...] = get_args(AuthMethod)

#: The older spelling of a CUSTOM_SECRET: ``auth_secret_name`` beside ``source``
#: in the entry itself rather than inside ``auth:``. Truss still accepts it.
LEGACY_SECRET_KEY = "auth_secret_name"

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
    "CUSTOM_SECRET": frozenset({"hf", "s3", "gcs", "r2", "azure", "cw", "https"}),
    "AWS_OIDC": frozenset({"s3"}),
    "GCP_OIDC": frozenset({"gcs"}),
}


def parse_auth(data: object, *, where: str = "auth") -> AuthConfig:
    """Validate a Truss ``auth:`` mapping.

    Keys whose value is null or ``""`` count as absent, since a serializer
    may write every field (Truss treats them so too). ``auth_method`` is
    case-insensitive, as in Truss, and stored upper-cased. An
    :class:`AuthConfig` is accepted too (and re-validated), for Python
    callers that built one.

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
        raise ConfigError(_not_a_mapping(data), field=where)
    reject_unknown_keys(data, _AUTH_KEYS, where)
    values = {key: data[key] for key in _AUTH_KEYS if data.get(key) not in (None, "")}
    method = values["auth_method"] = _auth_method(values.get("auth_method"), where)
    rules = _AUTH_RULES[method]
    _reject_other_methods_fields(values, method, rules, where)
    for rule in rules:
        _check_rule(rule, values.get(rule.key), method, where)
    return AuthConfig(**values)


def _not_a_mapping(data: object) -> str:
    """The message for an ``auth`` that is not a mapping, showing the mapping to write.

    A bare string is most likely a method's name or the secret's name (a Python
    caller writing ``auth="hf_access_token"``), so it is placed in the example.
    """
    method, name = "CUSTOM_SECRET", "hf_access_token"
    fix = "write auth as such a mapping"
    if isinstance(data, str) and data.upper() in _AUTH_RULES:
        method, fix = data.upper(), "name the secret in auth_secret_name"
    elif isinstance(data, str) and data:
        name, fix = data, "put the secret's name in auth_secret_name"
    got = f"the string {data!r}" if isinstance(data, str) else type_name(data)
    return (
        f'must be a mapping like {{"auth_method": "{method}", "auth_secret_name": "{name}"}}, '
        f"got {got}; {fix}"
    )


def _auth_method(method: object, where: str) -> str:
    """The ``auth_method`` value in its canonical upper case.

    Truss upper-cases the method before checking it, so ``custom_secret`` is
    ``CUSTOM_SECRET``; storing the canonical form keeps the config hash of
    either spelling the same.
    """
    if method is None:
        raise ConfigError(
            f"auth_method is missing; set it to one of {', '.join(AUTH_METHODS)}", field=where
        )
    if not isinstance(method, str) or method.upper() not in _AUTH_RULES:
        raise ConfigError(
            f"unknown auth_method {method!r}; use one of {', '.join(AUTH_METHODS)}",
            field=f"{where}.auth_method",
        )
    return method.upper()


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


def parse_entry_auth(
    entry: Mapping[object, object], parsed: ParsedSource, where: str
) -> AuthConfig | None:
    """The auth of one weights entry: its ``auth:`` block or its older top-level secret name.

    Truss still reads ``auth_secret_name`` written beside ``source`` as a
    CUSTOM_SECRET with that name, and refuses an entry that names a secret in
    both places. The older form is folded into the ``auth:`` form here, so both
    spellings give one :class:`AuthConfig` and one config hash. Unlike Truss,
    a top-level secret name next to an OIDC ``auth:`` block is refused: the
    OIDC methods read no secret, so the name would be silently ignored.

    Args:
        entry: the entry mapping as loaded from YAML.
        parsed: the entry's validated source, which the method must fit.
        where: field path of the entry, e.g. ``weights[0]``.

    Raises:
        ConfigError: the ``auth:`` block is invalid, the top-level name is
            malformed or clashes with ``auth:``, or the method cannot
            authenticate this kind of source.
    """
    legacy = entry.get(LEGACY_SECRET_KEY)
    block = entry.get("auth")
    if legacy in (None, ""):
        if block is None:
            return None
        auth = parse_auth(block, where=f"{where}.auth")
        check_auth_fits_source(auth, parsed, f"{where}.auth.auth_method")
        return auth
    if block is None:
        rule = _AUTH_RULES["CUSTOM_SECRET"][0]
        _check_rule(rule, legacy, "CUSTOM_SECRET", where)
        auth = AuthConfig("CUSTOM_SECRET", auth_secret_name=str(legacy))
        check_auth_fits_source(auth, parsed, f"{where}.{LEGACY_SECRET_KEY}")
        return auth
    auth = parse_auth(block, where=f"{where}.auth")
    if auth.auth_secret_name is not None:
        problem = "names a secret, and auth.auth_secret_name names one too"
        fix = "keep only auth.auth_secret_name"
    else:
        problem = f"names a secret, but auth.auth_method {auth.auth_method} reads none"
        fix = "remove it, or set auth_method: CUSTOM_SECRET with auth.auth_secret_name"
    raise ConfigError(f"{problem}; {fix}", field=f"{where}.{LEGACY_SECRET_KEY}")
