"""Revision mapping: which mirrored files a Hub request for (repo, revision) sees.

The mirror records, for every hf:// weights entry it mirrors, the manifest
under the revision it was asked for and under the commit it pinned
(``Store.put_hub_revision``). A branch or tag therefore answers the commit
last mirrored for it; a commit SHA answers only if it was mirrored. The files
of a revision are the union of every manifest mirrored at that commit (a repo
mirrored once with ``*.json`` and once with ``*.safetensors`` serves both).

Access: a revision any of whose manifests was mirrored with an auth secret is
private here. It is served only to a caller whose bearer token equals the
value of one of those secrets, as this process resolves them
(``BDN_SECRETS_DIR``, ``BDN_SECRET_*``); the answer otherwise is the Hub's
for a private repo (401 anonymous, 404 with a wrong token), so a caller
without the token cannot tell it from a repo never mirrored.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from bdn.backends.base import BlobStore
from bdn.config.secrets import SecretResolver
from bdn.errors import BdnError
from bdn.hub.answers import MIRROR_HINT, HubError
from bdn.manifest import FileEntry, Manifest
from bdn.store import HubRevision, Store

log = logging.getLogger(__name__)

_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
MANIFESTS_KEPT = 256
"""Manifests kept in memory (they are immutable, named by their hash), and revision records."""
RECORD_TTL = 2.0
"""Seconds a revision record read from the store answers requests (a branch re-mirrored
meanwhile is served at its new commit at most this much later)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A repo at one revision as mirrored: its commit and its files.

    ``files`` maps each path to its entry and the manifest it came from (whose
    chunk size and store a fill of that blob uses).
    """

    repo: str
    revision: str
    commit: str
    private: bool
    files: Mapping[str, tuple[FileEntry, Manifest]]

    def entry(self, path: str) -> tuple[FileEntry, Manifest]:
        """The file at ``path``; HubError 404 ``EntryNotFound`` when it was not mirrored."""
        found = self.files.get(path)
        if found is None:
            raise HubError(
                404, "EntryNotFound",
                f"{path} is not in the mirror of {self.repo}@{self.revision} "
                f"(commit {self.commit}): it does not exist upstream, or the mirror's "
                f"allow_patterns/ignore_patterns left it out; mirror it with "
                f"bdn mirror hf://{self.repo}@{self.revision} --allow '{path}'",
                {"X-Repo-Commit": self.commit})
        return found


class Revisions:
    """Finds the :class:`Snapshot` a request may see. Coroutine-safe; reads the store only."""

    def __init__(self, store: BlobStore, secrets: SecretResolver) -> None:
        self._layout = Store(store)
        self._secrets = secrets
        self._manifests: dict[str, Manifest] = {}
        self._records: dict[tuple[str, str], tuple[float, HubRevision]] = {}

    async def snapshot(self, repo: str, revision: str, token: str | None) -> Snapshot:
        """The files of ``repo`` at ``revision`` that a caller with ``token`` may read.

        Raises:
            HubError: ``RepoNotFound`` (401 without a token, 404 with one, as the
                Hub) for a repo never mirrored or private to another token;
                ``RevisionNotFound`` (404) for a revision never mirrored.
        """
        if not _REPO.fullmatch(repo) or ".." in repo:
            raise _repo_not_found(repo, revision, token)
        found = await self._record(repo, revision)
        if found is None or not found.manifests:
            if not await self._layout.hub_revisions(repo):
                raise _repo_not_found(repo, revision, token, unmirrored=True)
            raise HubError(404, "RevisionNotFound",
                           f"revision {revision!r} of {repo} is not mirrored in this store; "
                           + MIRROR_HINT.format(repo=repo, revision=revision), unmirrored=True)
        if found.commit != revision:
            # A branch or tag: the files are everything mirrored at its commit.
            found = await self._record(repo, found.commit) or found
        secrets = {a for _, a in found.manifests.values() if a}
        if secrets and not self._may_read(secrets, token):
            raise _repo_not_found(repo, revision, token)
        files: dict[str, tuple[FileEntry, Manifest]] = {}
        for manifest_id, _ in found.manifests.values():
            manifest = await self._manifest(manifest_id, found)
            if manifest.source.revision != found.commit:
                continue  # Recorded for another commit: never mix two commits.
            for entry in manifest.files:
                files.setdefault(entry.path, (entry, manifest))
        return Snapshot(repo, revision, found.commit, bool(secrets), files)

    async def _record(self, repo: str, revision: str) -> HubRevision | None:
        """The store's record of ``repo@revision``, kept :data:`RECORD_TTL` seconds when
        found (a miss is never kept, so a new mirror is seen at once)."""
        now = time.monotonic()
        kept = self._records.get((repo, revision))
        if kept is not None and now - kept[0] < RECORD_TTL:
            return kept[1]
        found = await self._layout.get_hub_revision(repo, revision)
        if found is not None:
            if len(self._records) >= MANIFESTS_KEPT:
                self._records.clear()
            self._records[(repo, revision)] = (now, found)
        return found

    def _may_read(self, secrets: set[str], token: str | None) -> bool:
        """True when ``token`` is the value of one of ``secrets`` (compared in constant time)."""
        if not token:
            return False
        for name in sorted(secrets):
            try:
                value = self._secrets.get(name).strip()
            except BdnError as err:
                # Fail closed: a secret this process cannot read admits nobody.
                log.warning("cannot check tokens for a private repo: %s", err)
                continue
            if value and hmac.compare_digest(value.encode(), token.encode()):
                return True
        return False

    async def _manifest(self, manifest_id: str, found: HubRevision) -> Manifest:
        cached = self._manifests.get(manifest_id)
        if cached is not None:
            return cached
        try:
            manifest = await self._layout.get_manifest(manifest_id)
        except BdnError as err:
            raise HubError(
                500, None,
                f"the mirror of {found.repo}@{found.revision} names manifest {manifest_id}, "
                f"which cannot be read ({err}); mirror it again or run `bdn store check`",
            ) from err
        if len(self._manifests) >= MANIFESTS_KEPT:
            self._manifests.pop(next(iter(self._manifests)))
        self._manifests[manifest_id] = manifest
        return manifest


def _repo_not_found(repo: str, revision: str, token: str | None, *,
                    unmirrored: bool = False) -> HubError:
    """The Hub's answer for a missing or private repo: 401 anonymous, 404 with a token."""
    return HubError(
        401 if token is None else 404, "RepoNotFound",
        f"repository {repo} is not mirrored in this store, or it is private and needs the "
        "token its mirror used (send it as HF_TOKEN); "
        + MIRROR_HINT.format(repo=repo, revision=revision), unmirrored=unmirrored)
