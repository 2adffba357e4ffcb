"""A Hugging Face Hub repository at a revision as a weights source: ``hf://owner/repo@main``.

The revision is resolved to a commit SHA once (:mod:`bdn.backends.hf.client`,
which also maps the Hub's errors), and everything after that (the file list,
every byte, read by :mod:`bdn.backends.hf.reader`) is read at that commit, so a
branch that moves during a mirror cannot mix two commits. LFS files carry
their published SHA-256, so the mirror decides dedup before any byte moves.
"""

from __future__ import annotations

import asyncio
import builtins
from urllib.parse import quote

from bdn.backends.base import SourceObject
from bdn.backends.hf.client import (
    DEFAULT_HF_ENDPOINT,
    DEFAULT_HF_SECRET_NAME,
    HubClient,
    HubFile,
)
from bdn.backends.hf.reader import HfFileReader
from bdn.config.auth import AuthConfig
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.errors import ConfigError, ManifestInvalid, SecretError, SourceError
from bdn.http import HttpClient, redact_url
from bdn.manifest import validate_path

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "DEFAULT_HF_SECRET_NAME",
    "HfFileReader",
    "HfSource",
    "hf_source_from_entry",
]


class HfSource:
    """Every file of a Hub model repo at one commit.

    Args:
        hub: the Hub's metadata API for the repo at the revision, with the
            token (or ``None`` for public access), endpoint, secret name and
            retry policy; :meth:`resolve` pins its revision to a commit.
        http: shared client for the data reads (not owned, not closed here).

    Coroutine-safe; :meth:`close` is idempotent; nothing raised or logged
    contains the token.
    """

    kind = "hf"

    def __init__(self, hub: HubClient, *, http: HttpClient) -> None:
        self._hub = hub
        self.repo_id = hub.repo_id
        self.revision = hub.revision
        self.uri = hub.uri
        self.endpoint = hub.endpoint
        self._http = http
        self._listed: builtins.list[HubFile] | None = None
        self._resolve_lock = asyncio.Lock()

    def __repr__(self) -> str:
        token = "set" if self._hub.token else None
        return f"HfSource({self.uri!r}, endpoint={self.endpoint!r}, token={token})"

    @property
    def commit(self) -> str | None:
        """The commit SHA :meth:`resolve` pinned, or ``None`` before it ran."""
        return self._hub.commit

    async def resolve(self) -> str | None:
        """Pin the revision: return the commit SHA it points at now (called once; cached).

        Raises:
            SourceNotFound: the repo or the revision does not exist (or is private).
            AuthError: the token is rejected, or the repo is gated and not granted.
            TransferError: the Hub could not be reached after retries.
        """
        async with self._resolve_lock:
            if self._hub.commit is None:
                self._listed = await self._hub.pin()
        return self._hub.commit

    async def list(self) -> builtins.list[SourceObject]:
        """Every file of the pinned commit (resolving first if needed), sorted by path.

        LFS files carry ``sha256`` (and ``etag`` = that sha256); other files
        carry the git blob id as ``etag`` and in ``identity``. Falls back to the
        recursive tree listing at the commit when the revision info lacks
        per-file metadata.

        Raises:
            SourceNotFound / AuthError / TransferError: as :meth:`resolve`.
            SourceError: a path is not a valid manifest path, or the Hub's
                metadata is inconsistent.
        """
        commit = await self.resolve()
        assert commit is not None
        listed = self._listed
        if listed is None:
            listed = await self._hub.list_tree(commit)
        return sorted((self._object(f) for f in listed), key=lambda o: o.path)

    def reader(self, obj: SourceObject) -> HfFileReader:
        """A reader of ``obj`` at the pinned commit; :meth:`resolve` must have run."""
        commit = self._hub.commit
        if commit is None:
            raise RuntimeError("HfSource.reader() before resolve(): the commit is not pinned")
        url = f"{self.endpoint}/{self.repo_id}/resolve/{commit}/{quote(obj.path)}"
        return HfFileReader(self._hub, self._http, url, obj.path, obj.size)

    async def close(self) -> None:
        """Nothing to release (the HTTP client is the caller's); idempotent."""

    def _object(self, f: HubFile) -> SourceObject:
        try:
            validate_path(f.path)
        except ManifestInvalid as err:
            raise SourceError(
                f"cannot mirror {f.path!r} from {self.uri}: {err}; narrow the source with "
                "ignore_patterns"
            ) from None
        where = redact_url(self.endpoint)
        return SourceObject(
            path=f.path,
            size=f.size,
            # The git blob id is derived from the content (of the LFS pointer,
            # which names the sha256), so it changes whenever the file does.
            identity=f"hf:{where}:{self.repo_id}:{f.oid}",
            etag=f.sha256 or f.oid,
            sha256=f.sha256,
        )


def hf_source_from_entry(
    entry: WeightsEntry,
    *,
    secrets: SecretResolver,
    endpoint: str,
    http: HttpClient,
) -> HfSource:
    """Build the :class:`HfSource` of an ``hf://owner/repo@revision`` weights entry.

    ``auth: {auth_method: CUSTOM_SECRET, auth_secret_name: NAME}`` reads the token
    (plain text, surrounding whitespace stripped) from secret ``NAME``; no
    ``auth`` means public access.

    Args:
        entry: the weights entry; its source must be ``hf://``.
        secrets: resolves the secret name.
        endpoint: the Hub's base URL (the caller resolves ``HF_ENDPOINT``;
            :data:`DEFAULT_HF_ENDPOINT` otherwise).
        http: shared HTTP client for the data reads.

    Raises:
        ConfigError: the source is not ``hf://``, or the auth method is not
            ``CUSTOM_SECRET`` or names no secret.
        SecretError: the secret is missing, unreadable or empty.
    """
    parsed = entry.parsed_source
    if parsed.kind != "hf" or parsed.repo_id is None or parsed.revision is None:
        raise ConfigError(f"{entry.source!r} is not an hf://owner/repo source", field="source")
    auth = entry.auth
    token, secret_name = _token(auth, secrets) if auth is not None else (None, None)
    hub = HubClient(parsed.repo_id, parsed.revision, token=token,
                    endpoint=endpoint or DEFAULT_HF_ENDPOINT, secret_name=secret_name)
    return HfSource(hub, http=http)


def _token(auth: AuthConfig, secrets: SecretResolver) -> tuple[str, str]:
    """The Hub token an ``auth`` block names, and the name of its secret."""
    if auth.auth_method != "CUSTOM_SECRET":
        raise ConfigError(
            f"{auth.auth_method} cannot authenticate to the Hugging Face Hub; use "
            f"auth_method: CUSTOM_SECRET with auth_secret_name: {DEFAULT_HF_SECRET_NAME}",
            field="auth.auth_method",
        )
    if not auth.auth_secret_name:
        raise ConfigError(
            "secret_id is required: name the secret that holds the Hugging Face token, "
            f"e.g. auth_secret_name: {DEFAULT_HF_SECRET_NAME}",
            field="auth.auth_secret_name",
        )
    secret_name = auth.auth_secret_name
    token = secrets.get(secret_name).strip()
    if not token:
        raise SecretError(
            f"secret {secret_name!r} is empty or only whitespace; write the Hugging Face "
            "token (hf_...) into it",
            secret_name=secret_name,
        )
    return token, secret_name
