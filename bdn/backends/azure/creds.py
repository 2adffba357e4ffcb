"""Azure Blob Storage credentials: the storage account key from a named secret.

The secret format is Baseten's (truss-transfer reads the same one): a JSON
object ``{"account_key": "..."}``. The account name comes from the source URI
(``azure://account/container/prefix``), so the secret holds the key alone. An
entry with no ``auth`` reads a public container anonymously. No message or
``repr`` here contains the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bdn.config.auth import AuthConfig
from bdn.config.secrets import SecretResolver, json_object_secret, secret_string
from bdn.errors import ConfigError, SecretError

__all__ = ["AZURE_SECRET_EXAMPLE", "AzureCredentials", "azure_credentials_for",
           "load_azure_credentials"]

AZURE_SECRET_EXAMPLE = '{"account_key": "<the storage account access key>"}'
"""The secret's format, as messages quote it."""


@dataclass(frozen=True, slots=True)
class AzureCredentials:
    """A storage account and its shared key; ``repr`` hides the key."""

    account_name: str
    account_key: str = field(repr=False)

    def sdk_credential(self) -> dict[str, str]:
        """The credential the Azure SDK clients take (a named key)."""
        return {"account_name": self.account_name, "account_key": self.account_key}


def load_azure_credentials(resolver: SecretResolver, name: str, account: str) -> AzureCredentials:
    """Read secret ``name`` (``{"account_key": "..."}``) as the key of storage ``account``.

    Raises:
        SecretError: the secret is missing, not a JSON object, or lacks
            ``account_key``. No message contains the value.
    """
    data = json_object_secret(resolver, name)
    if data is None:
        raise SecretError(
            f"secret {name!r} is not valid JSON: Azure credentials must be a JSON object "
            f"{AZURE_SECRET_EXAMPLE}", secret_name=name)
    key = secret_string(data, "account_key", name)
    if key is None:
        raise SecretError(
            f"account_key is required in Azure credentials (secret {name!r}); store "
            f"{AZURE_SECRET_EXAMPLE}, the key from the storage account's Access keys page",
            secret_name=name)
    return AzureCredentials(account_name=account, account_key=key)


def azure_credentials_for(auth: AuthConfig | None, *, secrets: SecretResolver,
                          account: str) -> AzureCredentials | None:
    """The credentials an ``azure://`` entry's ``auth`` names; ``None`` (anonymous) without auth.

    Raises:
        ConfigError: an OIDC method, or ``CUSTOM_SECRET`` without a secret name.
        SecretError: the secret is missing or malformed.
    """
    if auth is None:
        return None
    if auth.auth_method != "CUSTOM_SECRET":
        raise ConfigError(
            f"{auth.auth_method} cannot authenticate an azure:// source; use auth_method: "
            "CUSTOM_SECRET with a secret holding " + AZURE_SECRET_EXAMPLE,
            field="auth.auth_method")
    if not auth.auth_secret_name:
        raise ConfigError(
            "secret_id is required: name a secret with the storage account key, e.g. "
            "`auth: {auth_method: CUSTOM_SECRET, auth_secret_name: azure_credentials}` with "
            f"{AZURE_SECRET_EXAMPLE} in that secret", field="auth")
    return load_azure_credentials(secrets, auth.auth_secret_name, account)
