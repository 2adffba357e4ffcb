"""S3 credentials: Baseten's JSON secret format, and ``AWS_OIDC`` workload identity.

:func:`load_s3_credentials` parses the ``aws_credentials`` secret (also the
``r2_credentials`` one: R2 speaks S3). :func:`aws_oidc_credentials` trades the
projected service-account token (:mod:`bdn.backends.oidc`) for temporary keys
with STS ``AssumeRoleWithWebIdentity``, through boto3, and hands them to
botocore's refreshable credentials, which repeat the exchange (with the token
file read afresh) before the keys expire. :func:`s3_credentials_for` picks
between them from a weights entry's ``auth``. No message or ``repr`` here
contains a secret, a key or a token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import boto3
import botocore.exceptions as bce
import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials

from bdn.backends.oidc import read_oidc_token
from bdn.config.auth import AuthConfig
from bdn.config.secrets import SecretResolver, json_object_secret, secret_string
from bdn.errors import AuthError, ConfigError, SecretError

__all__ = [
    "AwsOidcCredentials",
    "S3Auth",
    "S3Credentials",
    "aws_oidc_credentials",
    "load_s3_credentials",
    "s3_credentials_for",
]


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """AWS-style credentials from a Baseten-format JSON secret.

    ``repr`` hides the secret parts so a credentials object can never leak
    through a log line or a traceback.
    """

    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str | None = None
    session_token: str | None = field(default=None, repr=False)


_S3_FORMAT_HINT = (
    "S3 credentials must be a JSON object with aws_access_key_id and aws_secret_access_key"
)
# Baseten's own wording for this mistake, kept verbatim so users searching for
# it find the same fix in both products' docs.
_S3_REQUIRED_MESSAGE = "aws_access_key_id and aws_secret_access_key are required in S3 credentials"

_SECRET_REQUIRED = (
    "secret_id is required: name a secret with the bucket's credentials, "
    "e.g. `auth: {auth_method: CUSTOM_SECRET, auth_secret_name: aws_credentials}` "
    "or `--auth-secret aws_credentials`"
)


def load_s3_credentials(resolver: SecretResolver, name: str) -> S3Credentials:
    """Read secret ``name`` as Baseten-format S3 credentials.

    The value is a JSON object::

        {"aws_access_key_id": "...", "aws_secret_access_key": "...",
         "aws_region": "us-east-1", "aws_session_token": "..."}

    ``aws_region`` and ``aws_session_token`` are optional; surrounding
    whitespace is stripped and empty strings count as missing.

    Args:
        resolver: where to look the secret up.
        name: the secret's name (e.g. the ``auth_secret_name`` of a weights entry).

    Returns:
        The credentials; their ``repr`` hides the secret parts.

    Raises:
        SecretError: the secret is missing, is not a JSON object, lacks either
            key, or has a non-string value. No message contains the value.
    """
    data = json_object_secret(resolver, name)
    if data is None:
        raise SecretError(f"secret {name!r} is not valid JSON: {_S3_FORMAT_HINT}", secret_name=name)
    access_key_id = secret_string(data, "aws_access_key_id", name)
    secret_access_key = secret_string(data, "aws_secret_access_key", name)
    if access_key_id is None or secret_access_key is None:
        raise SecretError(
            f"{_S3_REQUIRED_MESSAGE} (secret {name!r}); store a JSON object with the keys "
            "aws_access_key_id and aws_secret_access_key (exactly these names), "
            "optionally aws_region and aws_session_token",
            secret_name=name,
        )
    return S3Credentials(
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        region=secret_string(data, "aws_region", name),
        session_token=secret_string(data, "aws_session_token", name),
    )


def custom_secret_keys(auth: AuthConfig | None, resolver: SecretResolver, *, keys_of: str,
                       secret: str, no_oidc: str) -> S3Credentials:
    """The S3 keys of a source that only a ``CUSTOM_SECRET`` can authenticate (``r2://``,
    ``cw://``: no OIDC federation), so both refuse a missing or wrong ``auth`` alike.

    Args:
        auth: the entry's ``auth`` block.
        keys_of: what the secret holds, in the hint (e.g. "the R2 API token's S3 keys").
        secret: the usual secret name, in the hint (e.g. ``r2_credentials``).
        no_oidc: why another method fails and what to do, after its name.

    Raises:
        ConfigError: no ``auth`` or no secret name (``secret_id is required``, then
            the fix), or another method than ``CUSTOM_SECRET``.
        SecretError: the secret is missing or not in the S3 JSON format.
    """
    if auth is None or (auth.auth_method == "CUSTOM_SECRET" and not auth.auth_secret_name):
        raise ConfigError(
            f"secret_id is required: name a secret with {keys_of}, e.g. "
            f"`auth: {{auth_method: CUSTOM_SECRET, auth_secret_name: {secret}}}` with "
            '{"aws_access_key_id": "...", "aws_secret_access_key": "..."} in that secret',
            field="auth",
        )
    if auth.auth_method != "CUSTOM_SECRET":
        raise ConfigError(f"{auth.auth_method} {no_oidc}", field="auth.auth_method")
    assert auth.auth_secret_name is not None
    return load_s3_credentials(resolver, auth.auth_secret_name)


def s3_credentials_for(
    auth: AuthConfig | None, *, secrets: SecretResolver, token_file: Path | None
) -> S3Auth:
    """The credentials an ``s3://`` source's ``auth`` asks for: ``AWS_OIDC``
    exchanges the token in ``token_file``, anything else names a secret.

    Raises:
        ConfigError: no ``auth``, or ``CUSTOM_SECRET`` without a secret name.
        SecretError: the named secret is missing or malformed.
        AuthError: ``AWS_OIDC`` without a usable token file, or refused by STS.
    """
    if auth is None or (auth.auth_method == "CUSTOM_SECRET" and not auth.auth_secret_name):
        raise ConfigError(_SECRET_REQUIRED, field="auth")
    if auth.auth_method == "AWS_OIDC":
        return aws_oidc_credentials(auth, token_file=token_file)
    assert auth.auth_secret_name is not None
    return load_s3_credentials(secrets, auth.auth_secret_name)


def aws_oidc_credentials(
    auth: AuthConfig,
    *,
    token_file: Path | None,
    sts_endpoint_url: str | None = None,
    session_name: str = "bdn",
    duration_s: int | None = None,
    advisory_refresh_s: int | None = None,
    mandatory_refresh_s: int | None = None,
    time_fetcher: Callable[[], datetime] | None = None,
) -> AwsOidcCredentials:
    """Assume ``auth.aws_oidc_role_arn`` with the token in ``token_file`` (STS
    ``AssumeRoleWithWebIdentity``, an unsigned call), and keep the keys fresh.

    The first exchange happens here, so a refused token or role fails at once
    and plainly. Later ones are botocore's: its refreshable credentials call
    the exchange again (re-reading ``token_file``, which the kubelet rotates)
    once the keys are within ``advisory_refresh_s`` of expiry, and block every
    signer once within ``mandatory_refresh_s``; see :class:`AwsOidcCredentials`.

    Blocking (one STS round trip): call it from a worker thread on an event loop.

    Args:
        auth: an ``AWS_OIDC`` auth block (role ARN and region are required).
        token_file: the projected token (see :func:`bdn.backends.oidc.oidc_token_file`).
        sts_endpoint_url: STS endpoint; ``None`` is AWS's regional endpoint
            for ``aws_oidc_region`` (tests point it at moto).
        session_name: ``RoleSessionName``, shown in CloudTrail.
        duration_s: requested lifetime; ``None`` takes the role's default.
        advisory_refresh_s: renew this long before expiry without blocking
            (``None``: botocore's 15 minutes).
        mandatory_refresh_s: renew this long before expiry, blocking every
            request meanwhile (``None``: botocore's 10 minutes).
        time_fetcher: botocore's clock for judging expiry (aware datetimes;
            ``None``: the real one); tests move it instead of sleeping.

    Raises:
        ConfigError: ``auth`` is not a complete ``AWS_OIDC`` block.
        AuthError: no usable token file (see :func:`bdn.backends.oidc.read_oidc_token`),
            STS refused the token or the role, or STS could not be reached.
    """
    role, region = auth.aws_oidc_role_arn, auth.aws_oidc_region
    if auth.auth_method != "AWS_OIDC" or not role or not region:
        raise ConfigError(
            "AWS OIDC needs auth_method: AWS_OIDC with aws_oidc_role_arn and aws_oidc_region",
            field="auth",
        )
    exchange = _WebIdentityExchange(role=role, region=region, token_file=token_file,
                                    sts_endpoint_url=sts_endpoint_url,
                                    session_name=session_name, duration_s=duration_s)
    first = exchange.keys()
    timing: dict[str, Any] = {"advisory_timeout": advisory_refresh_s,
                              "mandatory_timeout": mandatory_refresh_s}
    if time_fetcher is not None:
        timing["time_fetcher"] = time_fetcher
    live = RefreshableCredentials(
        access_key=first["access_key"], secret_key=first["secret_key"], token=first["token"],
        expiry_time=first["expiry"], refresh_using=exchange.metadata,
        method=_OIDC_METHOD, **timing,
    )
    return AwsOidcCredentials(role_arn=role, region=region, live=live)


_OIDC_METHOD = "bdn-aws-oidc"


class AwsOidcCredentials:
    """``AWS_OIDC`` keys that renew themselves: botocore's :class:`RefreshableCredentials`
    over an STS ``AssumeRoleWithWebIdentity`` exchange (:func:`aws_oidc_credentials`).

    Every boto3 client built from this (:meth:`botocore_session`) shares the one
    credentials object, and botocore asks it for the current keys each time it
    signs, whether a request or a presigned URL; so the control plane and the
    presigned data plane both move to new keys once the old ones near expiry,
    with one STS call however many clients there are. ``repr`` shows the role
    and region only.
    """

    def __init__(self, *, role_arn: str, region: str, live: RefreshableCredentials) -> None:
        self.role_arn = role_arn
        self.region = region
        self.live = live

    def __repr__(self) -> str:
        return f"AwsOidcCredentials(role_arn={self.role_arn!r}, region={self.region!r})"

    def current(self) -> S3Credentials:
        """The keys in force now, renewed first if due (blocking: maybe one STS call)."""
        keys = self.live.get_frozen_credentials()
        return S3Credentials(access_key_id=str(keys.access_key),
                             secret_access_key=str(keys.secret_key),
                             region=self.region, session_token=keys.token)

    def botocore_session(self) -> botocore.session.Session:
        """A botocore session whose only credential source is this object (no
        ambient AWS credentials are looked for)."""
        session = botocore.session.get_session()
        session.register_component("credential_provider",
                                   CredentialResolver([_FixedProvider(self.live)]))
        return session


S3Auth: TypeAlias = S3Credentials | AwsOidcCredentials
"""What an S3 client can be given: fixed keys, or self-renewing ``AWS_OIDC`` keys."""


class _FixedProvider(CredentialProvider):
    """A botocore credential provider that hands out one existing credentials object."""

    METHOD = _OIDC_METHOD
    CANONICAL_NAME = "BdnAwsOidc"

    def __init__(self, live: RefreshableCredentials) -> None:
        super().__init__()
        self._live = live

    def load(self) -> RefreshableCredentials:
        return self._live


@dataclass(frozen=True, slots=True)
class _WebIdentityExchange:
    """One ``AssumeRoleWithWebIdentity`` call, repeatable: the token file is read
    afresh each time, since the kubelet rotates it (a rotated token is the only
    one STS still accepts once the first has expired)."""

    role: str
    region: str
    token_file: Path | None
    sts_endpoint_url: str | None
    session_name: str
    duration_s: int | None

    def keys(self) -> dict[str, Any]:
        """Fresh keys: ``access_key``, ``secret_key``, ``token`` and ``expiry`` (a datetime)."""
        params: dict[str, Any] = {"RoleArn": self.role, "RoleSessionName": self.session_name,
                                  "WebIdentityToken": read_oidc_token(self.token_file, "AWS_OIDC")}
        if self.duration_s is not None:
            params["DurationSeconds"] = self.duration_s
        answer = _assume_role_with_web_identity(params, region=self.region,
                                                token_file=self.token_file,
                                                sts_endpoint_url=self.sts_endpoint_url)
        return {"access_key": str(answer["AccessKeyId"]),
                "secret_key": str(answer["SecretAccessKey"]),
                "token": str(answer["SessionToken"]), "expiry": answer["Expiration"]}

    def metadata(self) -> dict[str, Any]:
        """:meth:`keys` in the shape botocore's refresh callback returns (expiry as ISO text)."""
        keys = self.keys()
        expiry = keys.pop("expiry")
        keys["expiry_time"] = expiry.isoformat() if isinstance(expiry, datetime) else str(expiry)
        return keys


def _assume_role_with_web_identity(params: dict[str, Any], *, region: str,
                                   token_file: Path | None,
                                   sts_endpoint_url: str | None) -> dict[str, Any]:
    """The ``Credentials`` STS answers for ``params``; its errors become ``AuthError``."""
    client = boto3.session.Session().client(
        "sts", region_name=region, endpoint_url=sts_endpoint_url,
        # The token is the proof of identity: the call is unsigned, so no
        # ambient AWS credentials are looked for or used.
        config=Config(signature_version=UNSIGNED, retries={"mode": "standard", "max_attempts": 4},
                      connect_timeout=10, read_timeout=30),
    )
    role = params["RoleArn"]
    where = sts_endpoint_url or f"AWS STS ({region})"
    try:
        answer = client.assume_role_with_web_identity(**params)
    except bce.ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", "")) or "an error"
        raise AuthError(
            f"AWS_OIDC: {where} refused to assume {role} with the token from {token_file} "
            f"({code}); check the role's trust policy (OIDC provider, audience and subject) "
            "and that the token has not expired",
            url=sts_endpoint_url, status=err.response.get("ResponseMetadata", {})
            .get("HTTPStatusCode"),
        ) from err
    except bce.BotoCoreError as err:
        raise AuthError(
            f"AWS_OIDC: cannot exchange the token for {role} at {where} "
            f"({type(err).__name__}); check the network and aws_oidc_region",
            url=sts_endpoint_url,
        ) from None  # A local botocore error may quote request parameters: the token.
    finally:
        client.close()
    keys: dict[str, Any] = answer["Credentials"]
    return keys
