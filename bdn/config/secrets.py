"""Named secrets, resolved the way Kubernetes mounts them, and their formats.

A weights entry names its secret (``auth_secret_name``); :class:`SecretResolver`
turns the name into a value, from a file in the secrets directory
(``BDN_SECRETS_DIR``, one file per key as a mounted Kubernetes Secret) or from
``BDN_SECRET_<NAME>``. :func:`json_object_secret` and :func:`secret_string` read
the JSON credential secrets whose formats each backend defines (S3 keys in
:mod:`bdn.backends.s3.creds`, GCP keys in :mod:`bdn.backends.gcs.creds`).
Secret values never appear in an error message or a ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from bdn.errors import SecretError

__all__ = [
    "SECRETS_DIR_ENV",
    "SECRET_ENV_PREFIX",
    "SecretResolver",
    "is_valid_secret_name",
    "json_object_secret",
    "secret_env_name",
    "secret_string",
]

#: Environment variable naming the directory that holds one file per secret.
SECRETS_DIR_ENV = "BDN_SECRETS_DIR"
#: Prefix of the environment variable that carries a secret when no file does.
SECRET_ENV_PREFIX = "BDN_SECRET_"


def is_valid_secret_name(name: str) -> bool:
    """Return whether ``name`` can name a secret: one plain file name, no ``/`` or ``..``.

    The name becomes a file name inside the secrets directory, so anything that
    could walk out of it is refused.
    """
    return (
        isinstance(name, str)
        and bool(name)
        and name != "."
        and "/" not in name
        and ".." not in name
        and "\x00" not in name
    )


def secret_env_name(name: str) -> str:
    """Return the environment variable that carries secret ``name``.

    Upper-cased, with every character outside ``[A-Z0-9]`` turned into ``_``,
    so names such as ``hf-access.token`` still map to a valid variable name.

    >>> secret_env_name("hf_access_token")
    'BDN_SECRET_HF_ACCESS_TOKEN'
    >>> secret_env_name("my-s3.creds")
    'BDN_SECRET_MY_S3_CREDS'
    """
    upper = name.upper()
    return SECRET_ENV_PREFIX + "".join(
        c if ("A" <= c <= "Z" or "0" <= c <= "9") else "_" for c in upper
    )


class SecretResolver:
    """Looks secrets up by name: a file in ``secrets_dir`` first, then ``BDN_SECRET_<NAME>``.

    The file layout is the one Kubernetes uses when it mounts a Secret as a
    volume: one file per key, named after the key. The environment is passed
    in, resolved once at the entry point, so nothing here reads ``os.environ``
    and tests need no monkeypatching.

    No error this class raises contains a secret's value.
    """

    __slots__ = ("_environ", "_secrets_dir")

    def __init__(self, secrets_dir: Path | None, environ: Mapping[str, str]) -> None:
        """Create a resolver.

        Args:
            secrets_dir: directory holding one file per secret, or None to use
                the environment only.
            environ: the environment to read ``BDN_SECRET_<NAME>`` from.
        """
        self._secrets_dir = secrets_dir
        self._environ = environ

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SecretResolver:
        """Build a resolver from ``BDN_SECRETS_DIR`` (unset or empty: environment only)."""
        directory = environ.get(SECRETS_DIR_ENV) or None
        return cls(Path(directory) if directory else None, environ)

    @property
    def secrets_dir(self) -> Path | None:
        """The directory looked in, or None when only the environment is used."""
        return self._secrets_dir

    def __repr__(self) -> str:
        # Never show the environment: it holds the secrets themselves.
        return f"SecretResolver(secrets_dir={self._secrets_dir!r})"

    def get(self, name: str) -> str:
        """Return the value of secret ``name``.

        A file ``secrets_dir/<name>`` wins, with one trailing newline removed
        (``echo`` and most editors add one); otherwise ``BDN_SECRET_<NAME>``.
        An empty environment variable counts as unset.

        Raises:
            SecretError: the name is not a plain file name; the file exists but
                cannot be read, is not UTF-8 or is empty; or the secret is found
                in neither place. The message names the secret, the directory
                and the variable, never the value.
        """
        if not is_valid_secret_name(name):
            raise SecretError(
                f"invalid secret name {name!r}: a secret name is a single file name "
                "without '/' or '..'; use the key name of the secret, e.g. hf_access_token",
                secret_name=name if isinstance(name, str) else None,
            )
        env_name = secret_env_name(name)
        if self._secrets_dir is not None:
            value = self._read_file(name, self._secrets_dir / name)
            if value is not None:
                return value
        value = self._environ.get(env_name)
        if value:
            return value
        raise SecretError(self._missing_message(name, env_name), secret_name=name)

    def _read_file(self, name: str, path: Path) -> str | None:
        """Return the secret file's text, None if there is no such file."""
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError as err:
            raise SecretError(
                f"secret {name!r}: {path} is a directory, not a file; "
                "mount the secret so each key is one file",
                secret_name=name,
            ) from err
        except OSError as err:
            # OSError carries only the errno text and the path, never file content.
            reason = err.strerror or type(err).__name__
            raise SecretError(
                f"secret {name!r}: {path} could not be read ({reason}); "
                "make it readable by the user running bdn",
                secret_name=name,
            ) from err
        try:
            text: str | None = data.decode("utf-8")
        except UnicodeDecodeError:
            # Raised outside this block on purpose: a UnicodeDecodeError holds the
            # secret's bytes, and even "from None" would keep it as __context__.
            text = None
        if text is None:
            raise SecretError(
                f"secret {name!r}: {path} is not UTF-8 text; store the secret as text",
                secret_name=name,
            )
        text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
        if not text:
            raise SecretError(
                f"secret {name!r}: {path} is empty; write the secret's value into it",
                secret_name=name,
            )
        return text

    def _missing_message(self, name: str, env_name: str) -> str:
        if self._secrets_dir is None:
            return (
                f"secret {name!r} not found: no secrets directory is configured "
                f"({SECRETS_DIR_ENV} is not set) and {env_name} is not set; "
                f"set {env_name}, or set {SECRETS_DIR_ENV} to a directory "
                f"with a file named {name!r}"
            )
        where = self._secrets_dir / name
        missing_dir = "" if self._secrets_dir.is_dir() else " (that directory does not exist)"
        return (
            f"secret {name!r} not found: no file {where}{missing_dir} and {env_name} is not set; "
            f"create {where} (e.g. a Kubernetes Secret key named {name!r} mounted at "
            f"{self._secrets_dir}) or set {env_name}"
        )


def json_object_secret(resolver: SecretResolver, name: str) -> dict[str, object] | None:
    """Secret ``name`` parsed as a JSON object, or ``None`` when it is not one.

    Credential secrets (S3 keys, GCP service-account keys) are JSON objects;
    each format says in its own words what a malformed one should look like.

    Raises:
        SecretError: the secret is missing or unreadable (see :meth:`SecretResolver.get`).
    """
    raw = resolver.get(name)
    try:
        data = json.loads(raw)
    except ValueError:
        # The decode error is dropped rather than chained: a JSONDecodeError keeps
        # the whole document (the secret) in ``.doc``, where a traceback printer or
        # an error reporter could find it.
        data = None
    return data if isinstance(data, dict) else None


def secret_string(data: Mapping[str, object], key: str, name: str) -> str | None:
    """Return ``data[key]`` stripped, None when absent, null or empty; reject other types.

    Raises:
        SecretError: the value is not a JSON string (the message names its type only).
    """
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SecretError(
            f"secret {name!r}: {key} must be a JSON string, got {type(value).__name__}; "
            "quote the value",
            secret_name=name,
        )
    return value.strip() or None
