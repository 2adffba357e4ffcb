"""GCS credentials: service-account key secrets, and ``GCP_OIDC`` workload identity.

Credentials, by case:

- a service-account key secret: :func:`load_gcp_service_account` checks its
  shape, :func:`service_account_credentials` hands it to google-auth;
- ``GCP_OIDC``: :func:`gcp_oidc_credentials` (identity pool + impersonation),
  with the projected token of :mod:`bdn.backends.oidc`;
- an emulator (``STORAGE_EMULATOR_HOST``, passed in, never read here):
  anonymous, whatever else was configured (see
  :class:`bdn.backends.gcs.client.GcsBucket`);
- ``None`` for a store: Application Default Credentials, resolved by
  google-auth when the client is first built.

No message here contains a key or a token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import google.auth.exceptions as gae
from google.auth import identity_pool
from google.auth.credentials import Credentials
from google.oauth2 import service_account

from bdn.backends.oidc import read_oidc_token
from bdn.config.auth import AuthConfig
from bdn.config.secrets import SecretResolver, json_object_secret, secret_string
from bdn.errors import ConfigError, SecretError

__all__ = [
    "GCP_SERVICE_ACCOUNT_KEYS",
    "SCOPE_READ_ONLY",
    "SCOPE_READ_WRITE",
    "GcpServiceAccount",
    "gcp_oidc_credentials",
    "gcs_credentials_from_secret",
    "gcs_source_credentials",
    "load_gcp_service_account",
    "service_account_credentials",
]

SCOPE_READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
SCOPE_READ_WRITE = "https://www.googleapis.com/auth/devstorage.read_write"
STS_TOKEN_URL = "https://sts.googleapis.com/v1/token"
IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com/v1"
_JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"

# Baseten's wording for a gs:// source without auth, kept verbatim so users
# searching for it find the same fix in both products' docs.
NO_CREDENTIALS_MESSAGE = "no credentials configured: need either OIDC config or secret_id"


# --------------------------------------------------------------------------- key secrets


@dataclass(frozen=True, slots=True)
class GcpServiceAccount:
    """A GCP service-account key (the JSON file the Cloud console downloads).

    ``info`` is the whole JSON object, handed to google-auth as is; it holds
    the private key, so it is left out of ``repr``.
    """

    client_email: str
    project_id: str | None
    info: Mapping[str, object] = field(repr=False)


#: Keys a service-account key must have for google-auth to sign token requests.
GCP_SERVICE_ACCOUNT_KEYS: tuple[str, ...] = ("type", "client_email", "private_key", "token_uri")

_GCP_FORMAT_HINT = (
    "store the service account's JSON key file as downloaded from the Google Cloud console "
    "(IAM > Service accounts > Keys > Add key > JSON); it has the keys type, project_id, "
    "private_key_id, private_key, client_email and token_uri"
)


def _plain_word(text: str | None) -> bool:
    """True for a short ``[a-z_]`` word (a credential type), safe to quote in a message."""
    return bool(text) and len(str(text)) <= 40 and all(c.islower() or c == "_" for c in str(text))


def load_gcp_service_account(resolver: SecretResolver, name: str) -> GcpServiceAccount:
    """Read secret ``name`` as a GCP service-account key (JSON).

    Only the shape is checked here (a JSON object of type ``service_account``
    with :data:`GCP_SERVICE_ACCOUNT_KEYS` as non-empty strings and a PEM
    private key); whether the key is genuine is for Google to say.

    Args:
        resolver: where to look the secret up.
        name: the secret's name (the ``auth_secret_name`` of a ``gs://`` entry).

    Returns:
        The key; its ``repr`` shows only the account's email and project.

    Raises:
        SecretError: the secret is missing, is not a JSON object, is another
            kind of credential, or lacks keys (all missing keys are named in
            one line). No message contains a value other than ``type``.
    """
    data = json_object_secret(resolver, name)
    if data is None:
        raise SecretError(
            f"secret {name!r} is not valid JSON: a GCP service-account key must be a JSON "
            f"object; {_GCP_FORMAT_HINT}",
            secret_name=name,
        )
    values = {key: secret_string(data, key, name) for key in GCP_SERVICE_ACCOUNT_KEYS}
    _check_key_shape(values, name)
    email = values["client_email"]
    assert email is not None  # Checked with the other required keys.
    return GcpServiceAccount(
        client_email=email, project_id=secret_string(data, "project_id", name), info=data
    )


def _check_key_shape(values: Mapping[str, str | None], name: str) -> None:
    """Refuse a key with missing fields, of another credential type, or without a PEM key."""
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise SecretError(
            f"secret {name!r} is not a GCP service-account key: missing "
            f"{', '.join(missing)}; {_GCP_FORMAT_HINT}",
            secret_name=name,
        )
    kind = values["type"]
    if kind != "service_account":
        shown = repr(kind) if _plain_word(kind) else "another type"
        raise SecretError(
            f"secret {name!r} is a GCP credential of type {shown}, not 'service_account'; "
            f"{_GCP_FORMAT_HINT}",
            secret_name=name,
        )
    if "PRIVATE KEY-----" not in str(values["private_key"]):
        raise SecretError(
            f"secret {name!r}: private_key is not a PEM private key (it should start with "
            "-----BEGIN PRIVATE KEY-----, with line breaks written as \\n in the JSON); "
            f"{_GCP_FORMAT_HINT}",
            secret_name=name,
        )


def service_account_credentials(
    account: GcpServiceAccount,
    *,
    scopes: Sequence[str] = (SCOPE_READ_ONLY,),
    secret_name: str | None = None,
) -> Credentials:
    """google-auth credentials for a service-account key (no network yet).

    Raises:
        SecretError: google-auth cannot use the key (e.g. the PEM does not
            parse); the message names the account and ``secret_name``, never
            the key.
    """
    try:
        return service_account.Credentials.from_service_account_info(
            dict(account.info), scopes=list(scopes))
    except (ValueError, TypeError, KeyError, gae.GoogleAuthError):
        # Raised below, outside the handler, so the parser's error is neither
        # chained nor kept as context: it may quote parts of the key.
        pass
    where = f"secret {secret_name!r}: " if secret_name else ""
    raise SecretError(
        f"{where}the service-account key of {account.client_email} cannot be used: its "
        "private_key does not parse; download a fresh JSON key from the Google Cloud console",
        secret_name=secret_name,
    )


def gcs_credentials_from_secret(
    secrets: SecretResolver, name: str, *, scopes: Sequence[str] = (SCOPE_READ_ONLY,)
) -> Credentials:
    """Load secret ``name`` as a service-account key and build credentials from it.

    Raises:
        SecretError: the secret is missing or malformed (one line, naming the
            missing keys; never a value).
    """
    return service_account_credentials(load_gcp_service_account(secrets, name), scopes=scopes,
                                       secret_name=name)


# --------------------------------------------------------------------------- OIDC


def gcp_oidc_credentials(
    auth: AuthConfig,
    *,
    token_file: Path | None,
    scopes: Sequence[str] = (SCOPE_READ_ONLY,),
    sts_url: str = STS_TOKEN_URL,
    iam_url: str = IAM_CREDENTIALS_URL,
) -> Credentials:
    """``GCP_OIDC`` credentials: workload identity federation with the token in ``token_file``.

    google-auth's identity-pool credentials take the token from the file (read
    afresh at each exchange), exchange it at STS for a federated token
    (audience: the workload identity provider), and trade that for an access
    token of ``gcp_oidc_service_account`` (``generateAccessToken``). Nothing is
    contacted here: the exchange happens on first use and again whenever the
    token nears expiry.

    Args:
        auth: a ``GCP_OIDC`` auth block.
        token_file: the projected token (``BDN_OIDC_TOKEN_FILE``).
        scopes: OAuth scopes of the impersonated access token.
        sts_url: STS token endpoint (tests point it at a local server).
        iam_url: IAM Credentials API base URL (likewise).

    Raises:
        ConfigError: ``auth`` is not a complete ``GCP_OIDC`` block.
        AuthError: no usable token file: OIDC needs one, and says so.
    """
    account, provider = auth.gcp_oidc_service_account, auth.gcp_oidc_workload_id_provider
    if auth.auth_method != "GCP_OIDC" or not account or not provider:
        raise ConfigError(
            "GCP OIDC needs auth_method: GCP_OIDC with gcp_oidc_service_account and "
            "gcp_oidc_workload_id_provider",
            field="auth",
        )
    read_oidc_token(token_file, "GCP_OIDC")  # Fail now, plainly, if there is none.
    assert token_file is not None  # read_oidc_token refuses None.
    return identity_pool.Credentials(
        audience=f"//iam.googleapis.com/{provider}",
        subject_token_type=_JWT_TOKEN_TYPE,
        token_url=sts_url,
        subject_token_supplier=_TokenFileSupplier(token_file),
        service_account_impersonation_url=(
            f"{iam_url.rstrip('/')}/projects/-/serviceAccounts/{account}:generateAccessToken"),
        scopes=list(scopes),
    )


class _TokenFileSupplier(identity_pool.SubjectTokenSupplier):
    """Reads the projected token afresh at every exchange (the kubelet rotates it).

    google-auth's own file source would send the file verbatim, trailing
    newline included; this one strips it, and a token file that vanished
    later fails with the same plain :class:`AuthError` as a missing one.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def get_subject_token(self, context: object, request: object) -> str:
        return read_oidc_token(self._path, "GCP_OIDC")


# --------------------------------------------------------------------------- weights entries


def gcs_source_credentials(
    auth: AuthConfig | None,
    *,
    secrets: SecretResolver,
    emulator_host: str | None,
    token_file: Path | None,
) -> Credentials | None:
    """The read-only credentials a ``gs://`` source's ``auth`` asks for.

    - ``CUSTOM_SECRET``: the secret is a service-account key (JSON);
    - ``GCP_OIDC``: workload identity federation with the projected token in
      ``token_file``;
    - no ``auth``: ``None`` against an emulator (which checks nothing),
      refused otherwise.

    Raises:
        ConfigError: no auth (Baseten's ``no credentials configured: need
            either OIDC config or secret_id``, then the fix) without an
            emulator, or an auth method that cannot authenticate GCS.
        SecretError: the service-account secret is missing or malformed.
        AuthError: ``GCP_OIDC`` without a usable token file.
    """
    if auth is None or (auth.auth_method == "CUSTOM_SECRET" and not auth.auth_secret_name):
        if not emulator_host:
            raise ConfigError(
                f"{NO_CREDENTIALS_MESSAGE}; put the service account's JSON key in a secret and "
                "name it, e.g. `auth: {auth_method: CUSTOM_SECRET, auth_secret_name: "
                "gcs_service_account}`, or use `auth: {auth_method: GCP_OIDC, "
                "gcp_oidc_service_account: ..., gcp_oidc_workload_id_provider: ...}`",
                field="auth",
            )
        return None
    if auth.auth_method == "CUSTOM_SECRET":
        assert auth.auth_secret_name is not None
        return gcs_credentials_from_secret(secrets, auth.auth_secret_name,
                                           scopes=(SCOPE_READ_ONLY,))
    if auth.auth_method == "GCP_OIDC":
        return gcp_oidc_credentials(auth, token_file=token_file, scopes=(SCOPE_READ_ONLY,))
    raise ConfigError(
        f"{auth.auth_method} cannot authenticate a gs:// source; use GCP_OIDC, or "
        "CUSTOM_SECRET with a service-account key secret",
        field="auth.auth_method",
    )
