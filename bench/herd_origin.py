"""The counting origin of ``bdn bench herd``: nginx with an access log of bytes sent.

:class:`CountingOrigin` serves the bench's ``file://`` store and logs
``$bytes_sent`` for every request, so origin bytes are counted where they
leave the origin (:func:`tally_log` sums them). It runs on loopback or, for
the shaped run, in the origin namespace of :mod:`bench.netns`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.nginx import Nginx, free_port, static_config


@dataclass(frozen=True, slots=True)
class OriginTally:
    """What nginx's access log says it sent.

    Attributes:
        bytes_sent: every response byte, headers and manifests included.
        blob_body_bytes: body bytes of blob responses only.
        requests: requests logged.
        last_blob_end: when the last blob response ended (Unix time, nginx's
            ``$msec``); 0 when there was none.
    """

    bytes_sent: int = 0
    blob_body_bytes: int = 0
    requests: int = 0
    last_blob_end: float = 0.0


def origin_config(
    *, listen: Sequence[str], unix_socket: Path, root: Path, state_dir: Path, as_root: bool
) -> str:
    """nginx.conf serving ``root`` on ``listen`` (``host:port`` each) and a unix socket.

    Like :func:`bench.nginx.nginx_config`, everything nginx writes lives in
    ``state_dir``; unlike it, every request is logged with ``$bytes_sent``
    (what went onto the wire), ``$body_bytes_sent``, when it ended, how long it
    took and who asked (the last three to read a burst's timeline with --keep). The unix socket is
    how the bench checks nginx is up when it runs in another network namespace.
    """
    logging = [
        "log_format herd '$bytes_sent $body_bytes_sent $status $msec $request_time "
        "$remote_addr $request_uri';",
        f"access_log {state_dir / 'access.log'} herd;",
    ]
    return static_config(listen=[*listen, f"unix:{unix_socket}"], root=root,
                         state_dir=state_dir, as_root=as_root, logging=logging)


def tally_log(text: str) -> OriginTally:
    """Sum access-log lines in :func:`origin_config`'s format.

    >>> tally_log("1200 1000 206 1.5 0.2 10.213.1.2 /blobs/sha256/ab/ab\\n"
    ...           "300 100 200 1.6 0.001 10.213.2.2 /manifests/x.json\\n")
    OriginTally(bytes_sent=1500, blob_body_bytes=1000, requests=2, last_blob_end=1.5)
    """
    sent = blob = requests = 0
    last = 0.0
    for line in text.splitlines():
        parts = line.split(" ", 6)
        if len(parts) < 7 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        requests += 1
        sent += int(parts[0])
        if parts[6].startswith("/blobs/"):
            blob += int(parts[1])
            with contextlib.suppress(ValueError):
                last = max(last, float(parts[3]))
    return OriginTally(sent, blob, requests, last)


class CountingOrigin(Nginx):
    """nginx serving the store, logging every byte it sends; stops like :class:`Nginx`.

    Args:
        root: the ``file://`` store's directory.
        state_dir: config, logs and pid.
        unix_socket: a short path for the readiness probe.
        listen: addresses to serve on (``None``: 127.0.0.1 on a free port).
        argv_prefix: run nginx through this (``ip netns exec NS``).
    """

    def __init__(
        self,
        root: Path,
        state_dir: Path,
        *,
        unix_socket: Path,
        listen: Sequence[str] | None = None,
        argv_prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(root, state_dir)
        self.unix_socket = unix_socket
        self.listen = list(listen) if listen is not None else None
        self.argv_prefix = list(argv_prefix)
        self.access_log = state_dir / "access.log"

    def _start_attempts(self) -> int:
        # Fixed addresses (in namespaces) cannot be retried on another port.
        return 3 if self.listen is None else 1

    def _config(self) -> str:
        listen = self.listen or [f"127.0.0.1:{free_port()}"]
        self.port = int(listen[0].rpartition(":")[2])
        # An attempt that failed on its TCP port may have left the socket file.
        self.unix_socket.unlink(missing_ok=True)
        return origin_config(listen=listen, unix_socket=self.unix_socket, root=self.root,
                             state_dir=self.state_dir, as_root=os.geteuid() == 0)

    def _address(self) -> str:
        return str(self.unix_socket)

    def _answers(self) -> bool:
        """Whether nginx answers on the unix socket the tally reads through."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(str(self.unix_socket))
                sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
                return sock.recv(16).startswith(b"HTTP/")
        except OSError:
            return False

    def log_offset(self) -> int:
        """Where the next request's log line will start."""
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def tally_since(
        self, offset: int, *, settle_s: float = 0.3, limit_s: float = 10.0
    ) -> OriginTally:
        """Tally the log from ``offset``, once it stopped growing for ``settle_s``.

        nginx writes a request's line when the response ends; a connection the
        client just closed can still be finishing, so wait for the log to settle.
        """
        deadline = time.monotonic() + limit_s
        size = self.log_offset()
        while time.monotonic() < deadline:
            time.sleep(settle_s)
            now = self.log_offset()
            if now == size:
                break
            size = now
        if not self.access_log.exists():
            return OriginTally()
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            return tally_log(f.read().decode(errors="replace"))
