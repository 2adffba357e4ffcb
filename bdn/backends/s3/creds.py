"""S3 credentials: Baseten's JSON secret format, and ``AWS_OIDC`` workload identity.

:func:`load_s3_credentials` parses the ``aws_credentials`` secret (also the
``r2_credentials`` one: R2 speaks S3). :func:`aws_oidc_credentials` trades the
projected service-account token (:mod:`bdn.backends.oidc`) for temporary keys
with STS ``AssumeRoleWithWebIdentity``, through boto3. :func:`s3_credentials_for`
picks between them from a weights entry's ``auth``. No message here contains a
secret or a token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bce
from botocore import UNSIGNED
from botocore.config import Config

from bdn.backends.oidc import read_oidc_token
from bdn.config.auth import AuthConfig
from bdn.config.secrets import SecretResolver, json_object_secret, secret_string
from bdn.errors import AuthError, ConfigError, SecretError

__all__ = ["S3Credentials", "aws_oidc_credentials", "load_s3_credentials", "s3_credentials_for"]


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


def s3_credentials_for(
    auth: AuthConfig | None, *, secrets: SecretResolver, token_file: Path | None
) -> S3Credentials:
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
) -> S3Credentials:
    """Assume ``auth.aws_oidc_role_arn`` with the token in ``token_file`` (STS
    ``AssumeRoleWithWebIdentity``, an unsigned call) and return the temporary keys.

    Blocking: one STS round trip; call it from a worker thread on an event loop.
    The keys expire (after ``duration_s``, default the role's one hour) and are
    not renewed: a mirror that outlives them fails with an ``AuthError``.

    Args:
        auth: an ``AWS_OIDC`` auth block (role ARN and region are required).
        token_file: the projected token (see :func:`bdn.backends.oidc.oidc_token_file`).
        sts_endpoint_url: STS endpoint; ``None`` is AWS's regional endpoint
            for ``aws_oidc_region`` (tests point it at moto).
        session_name: ``RoleSessionName``, shown in CloudTrail.
        duration_s: requested lifetime; ``None`` takes the role's default.

    Returns:
        Credentials with a session token, region ``aws_oidc_region``.

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
    params: dict[str, Any] = {"RoleArn": role, "RoleSessionName": session_name,
                              "WebIdentityToken": read_oidc_token(token_file, "AWS_OIDC")}
    if duration_s is not None:
        params["DurationSeconds"] = duration_s
    keys = _assume_role_with_web_identity(params, region=region, token_file=token_file,
                                          sts_endpoint_url=sts_endpoint_url)
    return S3Credentials(
        access_key_id=str(keys["AccessKeyId"]),
        secret_access_key=str(keys["SecretAccessKey"]),
        region=region,
        session_token=str(keys["SessionToken"]),
    )


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
        ) from err
    finally:
        client.close()
    keys: dict[str, Any] = answer["Credentials"]
    return keys
