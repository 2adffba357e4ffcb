"""A throwaway nginx on loopback, serving a bench's data for the length of one run."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from bench.harness import BenchAbort


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if it is taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_config(*, port: int, root: Path, state_dir: Path, as_root: bool) -> str:
    """A minimal nginx.conf: static files from ``root`` on 127.0.0.1:``port``, no access log.

    Everything nginx writes (pid, error log, temp paths) lives in ``state_dir``,
    so it runs unprivileged, or as root without touching /var. As root the
    workers stay root: the data usually sits under a 0700 temp dir (or /root)
    that the default ``nobody`` worker could not read, and the server listens
    on loopback only, serving random bytes, for the length of one bench.
    """
    return static_config(listen=[f"127.0.0.1:{port}"], root=root, state_dir=state_dir,
                         as_root=as_root, logging=["access_log off;"])


def static_config(
    *, listen: Sequence[str], root: Path, state_dir: Path, as_root: bool, logging: Sequence[str]
) -> str:
    """nginx.conf serving static files from ``root`` on each ``listen`` address
    (``host:port`` or ``unix:PATH``), with the ``http``-level ``logging`` directives;
    state in ``state_dir`` as :func:`nginx_config` says. The one config of both
    the benches' nginx and the herd's counting origin."""
    temp = {name: state_dir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    lines = [
        "daemon off;",
        "worker_processes auto;",
        f"pid {state_dir / 'nginx.pid'};",
        f"error_log {state_dir / 'error.log'} warn;",
        *(["user root;"] if as_root else []),
        "events { worker_connections 4096; }",
        "http {",
        *(f"    {directive}" for directive in logging),
        "    sendfile on;",
        "    tcp_nopush on;",
        "    keepalive_requests 100000;",
        "    default_type application/octet-stream;",
        *(f"    {name}_temp_path {path};" for name, path in temp.items()),
        "    server {",
        *(f"        listen {address};" for address in listen),
        f"        root {root};",
        "        location / { }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


class Nginx:
    """A throwaway nginx serving ``root`` on loopback; a context manager that always stops it.

    ``nginx`` runs in the foreground (``daemon off``) in its own process group,
    so stopping it means signalling only the processes this object started.
    """

    START_TIMEOUT_S = 15.0
    STOP_TIMEOUT_S = 10.0

    def __init__(self, root: Path, state_dir: Path, *, binary: str = "nginx") -> None:
        self.root = root
        self.state_dir = state_dir
        self.binary = binary
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, relative: str) -> str:
        return f"http://127.0.0.1:{self.port}/{relative}"

    # Hooks a subclass (the herd's counting origin) varies; the start loop is shared.
    argv_prefix: Sequence[str] = ()

    def _start_attempts(self) -> int:
        # A port found free can be taken before nginx binds it; try a few.
        return 3

    def _config(self) -> str:
        """The config text of one start attempt; sets :attr:`port`."""
        self.port = free_port()
        return nginx_config(port=self.port, root=self.root, state_dir=self.state_dir,
                            as_root=os.geteuid() == 0)

    def __enter__(self) -> Self:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(self._start_attempts()):
            conf = self.state_dir / "nginx.conf"
            conf.write_text(self._config())
            argv = [*self.argv_prefix, self.binary, "-p", str(self.state_dir),
                    "-e", str(self.state_dir / "error.log"), "-c", str(conf)]
            # stderr goes to a file, not a pipe: nobody drains a pipe while the bench
            # runs, and a full one would stall nginx mid-measurement.
            with open(self.state_dir / "stderr.log", "wb") as stderr:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    process_group=0,
                )
            try:
                last_error = self._wait_ready()
            except BaseException:
                self.stop()
                raise
            if not last_error:
                return self
            self.stop()
        raise BenchAbort(f"nginx did not start: {last_error}", exit_code=1)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _exit_reason(self) -> str:
        """Why nginx exited while starting, from its logs."""
        assert self._proc is not None
        logs = [self.state_dir / "stderr.log", self.state_dir / "error.log"]
        text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
        lines = [line for line in text.strip().splitlines() if line]
        # The first [emerg] says why (e.g. bind() failed: address in use); later
        # lines are nginx giving up ("still could not bind()").
        emerg = [line for line in lines if "[emerg]" in line]
        if emerg or lines:
            return (emerg or lines)[0 if emerg else -1]
        return f"exited with status {self._proc.returncode}"

    def _wait_ready(self) -> str:
        """Poll until nginx answers; return ``""`` when ready, else why not."""
        assert self._proc is not None
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return self._exit_reason()
            if self._answers():
                return ""
            time.sleep(0.05)
        return f"no answer on {self._address()} within {self.START_TIMEOUT_S:.0f}s"

    def _address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        return answers_http(self.port)

    def stop(self) -> None:
        """Stop nginx (SIGTERM: fast shutdown), then SIGKILL its process group if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(self.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # The master is still unreaped, so its pid (our group id) cannot have
                # been reused: the group kill reaches only the nginx we started.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.STOP_TIMEOUT_S)


def answers_http(port: int) -> bool:
    """Whether a server on 127.0.0.1:``port`` answers HTTP now (any status counts:
    nginx answers 403 for a bare directory and still serves)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("HEAD", "/")
        conn.getresponse()
        return True
    except OSError:
        return False
    finally:
        conn.close()
