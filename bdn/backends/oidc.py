"""OIDC workload identity: trade a projected service-account token for cloud credentials.

Truss's ``AWS_OIDC`` and ``GCP_OIDC`` auth methods store no secret: the pod
proves who it is with a short-lived OIDC token that Kubernetes projects into a
file, and the cloud's token service exchanges it for credentials. BDN does
that exchange with the clouds' own SDKs, and only when such a file exists:

- the file is named by ``BDN_OIDC_TOKEN_FILE`` (read once at the entry point,
  see :func:`oidc_token_file`);
- ``AWS_OIDC``: STS ``AssumeRoleWithWebIdentity`` through boto3
  (:func:`aws_oidc_credentials`);
- ``GCP_OIDC``: google-auth's identity-pool credentials with service-account
  impersonation (:func:`bdn.backends.gcs.client.gcp_oidc_credentials`).

Without a token file nothing is pretended: :func:`read_oidc_token` raises a
one-line :class:`~bdn.errors.AuthError` that names the variable and says that
``CUSTOM_SECRET`` works meanwhile. No message here contains a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bce
from botocore import UNSIGNED
from botocore.config import Config

from bdn.config.auth import AuthConfig
from bdn.config.secrets import S3Credentials
from bdn.errors import AuthError, ConfigError

__all__ = [
    "OIDC_TOKEN_FILE_ENV",
    "aws_oidc_credentials",
    "oidc_token_file",
    "read_oidc_token",
]

#: Environment variable naming the projected service-account token file.
OIDC_TOKEN_FILE_ENV = "BDN_OIDC_TOKEN_FILE"

# What to mount, per method: the audience each token service expects.
_AUDIENCE = {
    "AWS_OIDC": "audience sts.amazonaws.com",
    "GCP_OIDC": "the audience the workload identity provider accepts",
}
_FALLBACK = {
    "AWS_OIDC": "an aws_credentials secret",
    "GCP_OIDC": "a service-account key secret",
}


def oidc_token_file(environ: Mapping[str, str]) -> Path | None:
    """The token file that ``BDN_OIDC_TOKEN_FILE`` names in ``environ`` (unset or empty: None).

    >>> oidc_token_file({"BDN_OIDC_TOKEN_FILE": "/var/run/secrets/tokens/bdn"})
    PosixPath('/var/run/secrets/tokens/bdn')
    >>> oidc_token_file({}) is None
    True
    """
    value = environ.get(OIDC_TOKEN_FILE_ENV, "").strip()
    return Path(value) if value else None


def read_oidc_token(token_file: Path | None, method: str) -> str:
    """Read the OIDC token for ``method`` (``AWS_OIDC``/``GCP_OIDC``) from ``token_file``.

    Raises:
        AuthError: no token file is configured, or it is missing, unreadable or
            empty. The one-line message says that OIDC needs a projected token
            file, which variable names it, and that ``CUSTOM_SECRET`` works
            meanwhile; it never contains the token.
    """
    if token_file is None:
        raise AuthError(_no_token_message(method, f"{OIDC_TOKEN_FILE_ENV} is not set"))
    try:
        data = token_file.read_bytes()
    except FileNotFoundError:
        raise AuthError(_no_token_message(
            method, f"{OIDC_TOKEN_FILE_ENV} names {token_file}, which does not exist")) from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise AuthError(_no_token_message(
            method, f"{OIDC_TOKEN_FILE_ENV} names {token_file}, which cannot be read ({reason})"
        )) from None
    # Decoded outside any handler: a UnicodeDecodeError would carry the bytes.
    token = data.decode("utf-8", errors="replace").strip()
    if not token:
        raise AuthError(_no_token_message(
            method, f"{OIDC_TOKEN_FILE_ENV} names {token_file}, which is empty"))
    return token


def _no_token_message(method: str, problem: str) -> str:
    return (
        f"{method} needs a projected service-account token file to exchange for credentials, "
        f"and {problem}; mount a Kubernetes serviceAccountToken volume with "
        f"{_AUDIENCE.get(method, 'the audience the token service expects')} and set "
        f"{OIDC_TOKEN_FILE_ENV} to its path, or use auth_method: CUSTOM_SECRET with "
        f"{_FALLBACK.get(method, 'a credentials secret')} meanwhile"
    )


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
        token_file: the projected token (see :func:`oidc_token_file`).
        sts_endpoint_url: STS endpoint; ``None`` is AWS's regional endpoint
            for ``aws_oidc_region`` (tests point it at moto).
        session_name: ``RoleSessionName``, shown in CloudTrail.
        duration_s: requested lifetime; ``None`` takes the role's default.

    Returns:
        Credentials with a session token, region ``aws_oidc_region``.

    Raises:
        ConfigError: ``auth`` is not a complete ``AWS_OIDC`` block.
        AuthError: no usable token file (see :func:`read_oidc_token`), STS
            refused the token or the role, or STS could not be reached.
    """
    role, region = auth.aws_oidc_role_arn, auth.aws_oidc_region
    if auth.auth_method != "AWS_OIDC" or not role or not region:
        raise ConfigError(
            "AWS OIDC needs auth_method: AWS_OIDC with aws_oidc_role_arn and aws_oidc_region",
            field="auth",
        )
    token = read_oidc_token(token_file, "AWS_OIDC")
    client = boto3.session.Session().client(
        "sts", region_name=region, endpoint_url=sts_endpoint_url,
        # The token is the proof of identity: the call is unsigned, so no
        # ambient AWS credentials are looked for or used.
        config=Config(signature_version=UNSIGNED, retries={"mode": "standard", "max_attempts": 4},
                      connect_timeout=10, read_timeout=30),
    )
    where = sts_endpoint_url or f"AWS STS ({region})"
    params: dict[str, Any] = {"RoleArn": role, "RoleSessionName": session_name,
                              "WebIdentityToken": token}
    if duration_s is not None:
        params["DurationSeconds"] = duration_s
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
    keys = answer["Credentials"]
    return S3Credentials(
        access_key_id=str(keys["AccessKeyId"]),
        secret_access_key=str(keys["SecretAccessKey"]),
        region=region,
        session_token=str(keys["SessionToken"]),
    )
