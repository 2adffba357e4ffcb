"""Pull-through (``--hf-upstream``): a request for an unmirrored public revision mirrors it once.

Off by default. When on, a request whose repo or revision was never mirrored
into the store (not one that is mirrored but private to another token) runs
:func:`bdn.mirror.run_mirror` for ``hf://REPO@REVISION`` against the upstream
Hub into the endpoint's own store, then is answered from the mirror as if it
had been there all along. The store must be writable (checked at start).

Single flight, at two levels:

- **in one process**, concurrent requests for one revision share one task;
- **across the cluster** (every agent, and ``bdn serve``, over one store),
  endpoints elect one mirrorer through claims in the store
  (:meth:`bdn.store.Store.put_hub_pull`): list the claims; if a live one
  exists, wait for its outcome; else write our own, wait :data:`SETTLE`
  seconds, list again, and the smallest holder id among the live claims
  mirrors while the others wait. Two claimants that both saw no claim wrote
  theirs within :data:`SETTLE` of each other's first look, so both see both
  and pick the same winner (we withdraw and start over if our own write took
  longer than that). This needs only read-after-write consistency of the
  store (file://, S3, GCS and Azure have it), no conditional writes. The
  winner refreshes its claim every :data:`HEARTBEAT` seconds; a claim not
  refreshed for :data:`STALE` seconds is dead (its holder crashed) and ignored.
  A failed mirror leaves its claim with the error for :data:`FAILURE_TTL`
  seconds, so the waiters (and the next requests) answer that error instead
  of asking upstream again.

Access: the mirror runs **anonymously**, so a private or gated repo is never
pulled through on its own. With a configured token secret
(``--hf-upstream-token-secret``), a caller presenting exactly that token may
pull such a repo through; it is mirrored with the secret, so the endpoint
serves it only to callers with the same token (:mod:`bdn.hub.revisions`).
The caller's own token is never sent upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field, replace

from bdn.backends.base import BlobStore
from bdn.config.auth import AuthConfig
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.errors import AuthError, BdnError, ConfigError, NotFound
from bdn.hub.answers import MIRROR_HINT, HubError
from bdn.mirror import MirrorOptions, run_mirror
from bdn.store import Store

log = logging.getLogger(__name__)

DEFAULT_UPSTREAM = "https://huggingface.co"
"""The upstream Hub when ``--hf-upstream`` is given without a URL."""
SETTLE = 0.5
"""Seconds between writing a claim and reading every claim back (see the module doc)."""
HEARTBEAT = 5.0
"""Seconds between refreshes of the mirrorer's claim."""
STALE = 30.0
"""A claim not refreshed for this long is dead (its holder crashed or lost the store)."""
FAILURE_TTL = 30.0
"""Seconds a failed pull-through answers its error before upstream is asked again."""
POLL = 0.2
"""Seconds between looks at the store while another endpoint mirrors."""


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Pull-through settings: the upstream Hub and the secret holding its token, if any."""

    endpoint: str = DEFAULT_UPSTREAM
    token_secret: str | None = None
    mirror: MirrorOptions = field(default_factory=MirrorOptions)


def new_holder_id() -> str:
    """A claimant id unique across the cluster (host and pid only help a reader of the store)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class PullThrough:
    """Mirrors unmirrored revisions on demand, once per cluster. Use from one event loop.

    Args:
        config: the upstream and its token secret.
        store: the endpoint's store (writable).
        secrets: resolves ``config.token_secret``.
        holder: this endpoint's claimant id (:func:`new_holder_id`).
    """

    def __init__(self, config: UpstreamConfig, store: BlobStore, secrets: SecretResolver,
                 holder: str | None = None) -> None:
        if store.read_only:
            raise ConfigError(
                f"--hf-upstream mirrors into the endpoint's store, and {store.uri} is read-only; "
                "point --store at a writable store (file://, s3://, gs://, az://) or drop "
                "--hf-upstream")
        self.config = config
        self._store = store
        self._layout = Store(store)
        self._secrets = secrets
        self.holder = holder or new_holder_id()
        self._flights: dict[tuple[str, str, bool], asyncio.Task[None]] = {}

    async def pull(self, repo: str, revision: str, token: str | None) -> None:
        """Make ``repo@revision`` mirrored, by this endpoint or another; returns when it is.

        Raises:
            HubError: the Hub's answer when upstream refuses (401/404 ``RepoNotFound``
                for a private, gated or missing repo; 404 ``RevisionNotFound``), or 502
                when the mirror fails otherwise, saying what to do.
        """
        authed = self._may_use_token(token)
        key = (repo, revision, authed)
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.create_task(self._elect_and_pull(repo, revision, authed),
                                         name=f"bdn-hub-pull-{repo}@{revision}")
            self._flights[key] = flight
            flight.add_done_callback(lambda _t: self._flights.pop(key, None))
        try:
            # Shielded: a client that hangs up does not cancel the mirror others wait on.
            await asyncio.shield(flight)
        except (BdnError, OSError) as err:  # The store's claims could not be read or written.
            raise HubError(
                502, None,
                f"pulling {repo}@{revision} through needs to write claims into {self._store.uri} "
                f"and could not: {err}; make the store writable, or "
                + MIRROR_HINT.format(repo=repo, revision=revision)) from err

    async def close(self) -> None:
        """Cancel pull-throughs still running (their claims go stale and are ignored)."""
        flights = list(self._flights.values())
        for task in flights:
            task.cancel()
        for task in flights:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    def _may_use_token(self, token: str | None) -> bool:
        """True when the caller presented the configured upstream token."""
        if self.config.token_secret is None or not token:
            return False
        try:
            value = self._secrets.get(self.config.token_secret).strip()
        except BdnError as err:
            log.warning("cannot read the --hf-upstream-token-secret: %s", err)
            return False
        return bool(value) and hmac.compare_digest(value.encode(), token.encode())

    async def _elect_and_pull(self, repo: str, revision: str, authed: bool) -> None:
        while True:
            if await self._mirrored(repo, revision):
                return
            looked = time.monotonic()
            claims = _live(await self._layout.hub_pulls(repo, revision), authed)
            if claims:
                await self._wait_for(repo, revision, claims, authed)
                continue
            await self._claim(repo, revision, {})
            if time.monotonic() - looked >= SETTLE:
                # Our claim may have landed after a rival's second look: not safe to elect.
                await self._layout.drop_hub_pull(repo, revision, self.holder)
                continue
            await asyncio.sleep(SETTLE)
            claims = _live(await self._layout.hub_pulls(repo, revision), authed)
            winner = min((h for h, d in claims.items() if "error" not in d),
                         default=self.holder)
            if winner == self.holder:
                await self._mirror(repo, revision, authed)
                return
            await self._layout.drop_hub_pull(repo, revision, self.holder)

    async def _wait_for(self, repo: str, revision: str, claims: dict[str, dict[str, object]],
                        authed: bool) -> None:
        """Wait while another endpoint mirrors: until the revision appears, the claims end
        (then the caller elects again), or one of them records an error (raised)."""
        while True:
            for doc in claims.values():
                if "error" in doc:
                    raise _answer(doc)
            if await self._mirrored(repo, revision):
                return
            await asyncio.sleep(POLL)
            claims = _live(await self._layout.hub_pulls(repo, revision), authed)
            if not claims:
                return

    async def _mirror(self, repo: str, revision: str, authed: bool) -> None:
        """Mirror ``repo@revision`` under our claim, refreshed meanwhile; a failure is
        recorded in the claim, a success removes it."""
        beat = asyncio.create_task(self._heartbeat(repo, revision))
        try:
            await self._run_mirror(repo, revision, authed)
        except HubError as err:
            beat.cancel()
            await self._claim(repo, revision, {"error": err.message, "status": err.status,
                                                "code": err.code or "", "authed": authed})
            raise
        except BaseException:
            beat.cancel()
            with contextlib.suppress(BdnError, OSError):
                await self._layout.drop_hub_pull(repo, revision, self.holder)
            raise
        beat.cancel()
        await self._layout.drop_hub_pull(repo, revision, self.holder)

    async def _run_mirror(self, repo: str, revision: str, authed: bool) -> None:
        auth = (AuthConfig(auth_method="CUSTOM_SECRET",
                           auth_secret_name=self.config.token_secret) if authed else None)
        entry = WeightsEntry(source=f"hf://{repo}@{revision}", auth=auth)
        options = _with_endpoint(self.config.mirror, self.config.endpoint)
        log.info("pulling hf://%s@%s through from %s", repo, revision, self.config.endpoint)
        try:
            result = await run_mirror(entry, store=self._store, secrets=self._secrets,
                                      options=options)
        except (AuthError, NotFound) as err:
            hint = ("" if authed or self.config.token_secret is None else
                    "; a private or gated repo is pulled through only for callers that send "
                    "the endpoint's configured upstream token")
            raise HubError(
                404 if isinstance(err, NotFound) else 401,
                "RevisionNotFound" if _revision_missing(err) else "RepoNotFound",
                f"{repo}@{revision} could not be pulled through from {self.config.endpoint}: "
                f"{err}{hint}; " + MIRROR_HINT.format(repo=repo, revision=revision)) from None
        except BdnError as err:
            raise HubError(
                502, None,
                f"pulling {repo}@{revision} through from {self.config.endpoint} into "
                f"{self._store.uri} failed: {err}; the store must be writable, or "
                + MIRROR_HINT.format(repo=repo, revision=revision)) from err
        log.info("pulled hf://%s@%s through: manifest %s, %d bytes", repo, revision,
                 result.manifest_id, result.total_bytes)

    async def _heartbeat(self, repo: str, revision: str) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            with contextlib.suppress(BdnError, OSError):
                await self._claim(repo, revision, {})

    async def _claim(self, repo: str, revision: str, extra: dict[str, object]) -> None:
        await self._layout.put_hub_pull(repo, revision, self.holder,
                                        {"at": time.time(), **extra})

    async def _mirrored(self, repo: str, revision: str) -> bool:
        found = await self._layout.get_hub_revision(repo, revision)
        return found is not None and bool(found.manifests)

def _live(claims: dict[str, dict[str, object]], authed: bool) -> dict[str, dict[str, object]]:
    """The claims that count: in flight and refreshed within :data:`STALE`, or failed within
    :data:`FAILURE_TTL` for the same kind of caller (an anonymous failure does not answer a
    caller with the configured token)."""
    now = time.time()

    def age(doc: dict[str, object]) -> float:
        at = doc.get("at")
        return now - at if isinstance(at, int | float) else float("inf")

    return {h: d for h, d in claims.items()
            if (age(d) < STALE if "error" not in d
                else age(d) < FAILURE_TTL and d.get("authed") == authed)}


def _answer(doc: dict[str, object]) -> HubError:
    """The error another endpoint's failed pull-through recorded, as our answer."""
    status = doc.get("status")
    code = doc.get("code")
    return HubError(status if isinstance(status, int) else 502,
                    str(code) if code else None, str(doc.get("error")))


def _revision_missing(err: BdnError) -> bool:
    return "revision" in str(err).lower() and isinstance(err, NotFound)


def _with_endpoint(options: MirrorOptions, endpoint: str) -> MirrorOptions:
    return replace(options, hf_endpoint=endpoint.rstrip("/"))

