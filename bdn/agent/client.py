"""The client of the node agent's pod-facing API (``bdn pull --agent``, ``BDN_AGENT``).

>>> AgentClient("unix:///var/lib/bdn/agent.sock").address
'unix:///var/lib/bdn/agent.sock'
>>> AgentClient("tcp://x")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
bdn.errors.ConfigError: BDN_AGENT: 'tcp://x' is not an agent address; ...

:meth:`AgentClient.pull` posts a request and polls its progress until the
agent reports the tree done, then returns the agent's final JSON (a
:class:`~bdn.agent.protocol.PullStatus` body). A failed pull raises the bdn
error the agent reported, with the agent's message; an agent that is not there
raises one line naming the address and the fix. Paths, bodies and error names
are those of :mod:`bdn.agent.protocol`, which the agent's server uses too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from bdn.agent.protocol import (
    HEALTH_PATH,
    PULLS_PATH,
    PullStatus,
    error_for_status,
    error_of,
    pull_path,
    request_for,
)
from bdn.errors import BdnError, ConfigError, TransferError
from bdn.http import redact_url
from bdn.pull import PullResult

__all__ = ["AgentClient", "request_for", "to_pull_result"]

DEFAULT_POLL_INTERVAL = 0.15
"""Seconds between progress polls: a warm pull ends in well under a second."""

_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)


class AgentClient:
    """Talks to one agent at ``unix:///path.sock`` or ``http://host:port``.

    Coroutine-safe; each :meth:`pull` opens and closes its own connection pool,
    so the client may be used from several event loops in turn.

    Args:
        address: the agent (``--agent`` / ``BDN_AGENT``).
        token: bearer token, for an agent reached over TCP (its peer port
            guards the pull API with the peers' token); unused over the socket.
        poll_interval: seconds between progress polls (0.1-0.25 is sensible).

    Raises:
        ConfigError: ``address`` is neither form.
    """

    def __init__(
        self, address: str, *, token: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self.address = address.strip()
        self.poll_interval = poll_interval
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.address.startswith("unix://"):
            self._socket: str | None = self.address[len("unix://"):]
            self._base = "http://bdn-agent"
            if not self._socket.startswith("/"):
                raise _bad_address(address)
        elif self.address.startswith(("http://", "https://")):
            self._socket = None
            self._base = self.address.rstrip("/")
        else:
            raise _bad_address(address)

    async def pull(
        self,
        request: Mapping[str, Any],
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Have the agent materialize a tree; block until it is done.

        Args:
            request: the ``POST /v1/pulls`` body (see :func:`request_for`).
            on_progress: called with ``(bytes_done, bytes_total)`` of what the
                agent has to fetch, after each poll.

        Returns:
            The agent's final progress object (``state == "succeeded"``).

        Raises:
            The bdn error the agent reports (``ConfigError`` for a bad request,
            ``RefNotFound`` for a source never mirrored, ``MountConflict``,
            ``TransferError``...), with its message; ``TransferError`` naming
            the address when no agent answers there.
        """
        async with self._session() as session:
            started = await self._call(session, "POST", PULLS_PATH, dict(request))
            pull_id = str(started["id"])
            while True:
                status = await self._call(session, "GET", pull_path(pull_id))
                if on_progress is not None:
                    on_progress(int(status.get("bytes_done") or 0),
                                int(status.get("bytes_total") or 0))
                if status.get("state") == "succeeded":
                    return status
                if status.get("state") == "failed":
                    raise error_of(status.get("error_type"),
                                   f"agent {self.address}: {status.get('error')}")
                await asyncio.sleep(self.poll_interval)

    async def health(self) -> dict[str, Any] | None:
        """The agent's ``/healthz`` body, or ``None`` while it is not (yet) answering."""
        try:
            async with self._session() as session:
                return await self._call(session, "GET", HEALTH_PATH)
        except BdnError:
            return None

    def _session(self) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector
        if self._socket is not None:
            # bdn.http builds TCP sessions only; the pod socket needs its own connector.
            connector = aiohttp.UnixConnector(path=self._socket)
        else:
            connector = aiohttp.TCPConnector(limit=2)
        return aiohttp.ClientSession(connector=connector, timeout=_REQUEST_TIMEOUT,
                                     headers=self._headers)

    async def _call(
        self, session: aiohttp.ClientSession, method: str, path: str,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            async with session.request(method, self._base + path, json=body) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise self._unreachable(err) from None
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            data = {"error": text.strip()[:200]}
        if not isinstance(data, dict):
            data = {"error": str(data)[:200]}
        if status < 300:
            return data
        message = f"agent {self.address}: {data.get('error') or f'HTTP {status}'}"
        raise error_for_status(status, message)

    def _unreachable(self, err: BaseException) -> TransferError:
        if self._socket is not None and not Path(self._socket).exists():
            why = "the socket does not exist"
        else:
            why = str(err) or type(err).__name__
        where = self.address if self._socket is not None else redact_url(self.address)
        return TransferError(
            f"no node agent answers at {where} ({why}); start it with "
            "`bdn agent`, or drop --agent / unset BDN_AGENT to pull in-process",
            url=where,
        )


def _bad_address(address: str) -> ConfigError:
    return ConfigError(
        f"{address!r} is not an agent address; use unix:///path/agent.sock or "
        "http://host:port",
        field="BDN_AGENT",
    )


def to_pull_result(status: Mapping[str, Any]) -> PullResult:
    """A :class:`~bdn.pull.PullResult` from the agent's final progress object."""
    s = PullStatus.from_dict(status)
    return PullResult(
        manifest_id=s.manifest_id or "",
        path=Path(s.mount_location),
        files=s.files or 0,
        total_bytes=s.tree_bytes or 0,
        bytes_from_node_cache=s.bytes_from_node_cache,
        bytes_from_peers=s.bytes_from_peers,
        bytes_from_origin=s.bytes_from_origin,
        bytes_proven=s.bytes_proven,
        seconds=s.seconds,
        materialized=s.materialized or "",
    )
