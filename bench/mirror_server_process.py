"""A real ``bdn mirror-server`` subprocess for the mirror-server bench and the e2e tests.

:func:`start_mirror_server` starts one on loopback with a ``file://`` store;
:class:`MirrorServerProcess` waits for it, submits jobs, reads its metrics
(:func:`parse_metrics`) and stops it.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

_STARTED = re.compile(r'"listen": "(http://[^"]+)"')


# -- a mirror-server process and a client for it ------------------------------------------


@dataclass
class MirrorServerProcess:
    """One ``bdn mirror-server`` subprocess (its logs in ``log``) and a JSON client for it.

    The server listens on ``127.0.0.1:0``; :meth:`wait_ready` learns the port
    from its "started" log line, so no port is ever guessed.
    """

    proc: subprocess.Popen[bytes]
    log: Path
    state_dir: Path
    token: str | None
    log_offset: int = 0
    url: str = ""
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    def logs(self) -> str:
        """This process's log lines (a restarted server appends to the same file)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    async def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the server to answer ``/healthz``.

        Raises:
            RuntimeError: it exited or did not come up in time (with its log's tail).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mirror-server exited {self.proc.returncode}:\n"
                                   + self.logs()[-3000:])
            found = _STARTED.search(self.logs())
            if found:
                self.url = found.group(1)
                code, _ = await self.request("GET", "/healthz", token=None)
                if code == 200:
                    return
            await asyncio.sleep(0.02)
        raise RuntimeError("mirror-server did not become ready:\n" + self.logs()[-3000:])

    async def request(self, method: str, path: str, body: Any = None, *,
                      token: str | bool | None = True) -> tuple[int, Any]:
        """One request: (status, decoded JSON or text). ``token=True`` sends the
        server's token, ``None`` none, a string that string."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        bearer = self.token if token is True else token
        headers = {"Authorization": f"Bearer {bearer}"} if isinstance(bearer, str) else {}
        try:
            async with self._session.request(method, self.url + path, json=body,
                                             headers=headers) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, OSError) as err:
            return 0, str(err)
        try:
            return resp.status, json.loads(text)
        except json.JSONDecodeError:
            return resp.status, text

    async def submit(self, weights: list[dict[str, Any]], *, force: bool = False) -> str:
        """POST a weights list; returns the job id.

        Raises:
            RuntimeError: the server did not accept it.
        """
        code, body = await self.request("POST", "/v1/mirrors" + ("?force=1" if force else ""),
                                        {"weights": weights})
        if code not in (200, 202):
            raise RuntimeError(f"POST /v1/mirrors answered {code}: {body}")
        return str(body["id"])

    async def wait_jobs(self, ids: Sequence[str], *, timeout: float = 600,
                        interval: float = 0.01) -> dict[str, dict[str, Any]]:
        """Poll until every job has ended; returns the final bodies by id.

        Raises:
            RuntimeError: a job is unknown, or they did not all end in time.
        """
        pending, done = set(ids), {}
        deadline = time.monotonic() + timeout
        while pending:
            for jid in sorted(pending):
                code, body = await self.request("GET", f"/v1/mirrors/{jid}")
                if code != 200:
                    raise RuntimeError(f"GET /v1/mirrors/{jid} answered {code}: {body}")
                if body["state"] in ("succeeded", "failed"):
                    done[jid] = body
                    pending.discard(jid)
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jobs still unfinished: {sorted(pending)}")
                await asyncio.sleep(interval)
        return done

    async def metrics(self) -> dict[str, float]:
        code, text = await self.request("GET", "/metrics")
        if code != 200:
            raise RuntimeError(f"GET /metrics answered {code}")
        return parse_metrics(text)

    async def close(self) -> None:
        """Close the client session (not the server)."""
        if self._session is not None:
            await self._session.close()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, wait; returns the exit status (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def start_mirror_server(
    root: Path,
    *,
    store: str,
    env: Mapping[str, str],
    token: str | None = None,
    extra: Sequence[str] = (),
    log_name: str = "mirror-server.log",
    verbose: bool = False,
    allow: Sequence[str] = (),
) -> MirrorServerProcess:
    """Start ``python -m bdn mirror-server`` on ``127.0.0.1:0`` with its state in
    ``root/state``; not ready until :meth:`MirrorServerProcess.wait_ready`.

    ``token`` None means ``--insecure-no-token``; ``verbose`` logs at DEBUG (``bdn
    -v``); ``allow`` are its ``--allow-source`` rules (none: every submission is
    refused). The log is appended to, so a restarted server keeps one log.
    """
    root.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "bdn", *(["-v"] if verbose else []), "mirror-server",
            "--listen", "127.0.0.1:0",
            "--store", store, "--state-dir", str(root / "state"),
            *(a for rule in allow for a in ("--allow-source", rule)), *extra]
    if token is None:
        args.append("--insecure-no-token")
    else:
        token_file = root / "token"
        token_file.write_text(token + "\n")
        args += ["--token-file", str(token_file)]
    log = root / log_name
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as sink:
        # Started in a new session: a ^C in the caller must not drain it first.
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=dict(env),
                                start_new_session=True)
    return MirrorServerProcess(proc, log, root / "state", token, log_offset=offset)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text into ``{'name{a="b"}': value}`` (labels sorted)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
