"""OIDC workload identity: the projected service-account token that both clouds take.

Truss's ``AWS_OIDC`` and ``GCP_OIDC`` auth methods store no secret: the pod
proves who it is with a short-lived OIDC token that Kubernetes projects into a
file, and the cloud's token service exchanges it for credentials. BDN does
that exchange with the clouds' own SDKs, each in its backend, and only when
such a file exists:

- the file is named by ``BDN_OIDC_TOKEN_FILE`` (read once at the entry point,
  see :func:`oidc_token_file`);
- ``AWS_OIDC``: STS ``AssumeRoleWithWebIdentity`` through boto3, renewed
  by botocore's refreshable credentials before the keys expire
  (:func:`bdn.backends.s3.creds.aws_oidc_credentials`);
- ``GCP_OIDC``: google-auth's identity-pool credentials with service-account
  impersonation, renewed by google-auth as the token nears expiry
  (:func:`bdn.backends.gcs.creds.gcp_oidc_credentials`).

Both read the token file afresh at every exchange, never once at start-up:
the kubelet rotates it, and after an hour only the rotated token is accepted.

This module holds only what both share, so it imports neither SDK.

Without a token file nothing is pretended: :func:`read_oidc_token` raises a
one-line :class:`~bdn.errors.AuthError` that names the variable and says that
``CUSTOM_SECRET`` works meanwhile. No message here contains a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bdn.errors import AuthError

__all__ = [
    "OIDC_TOKEN_FILE_ENV",
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
