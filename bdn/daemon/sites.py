"""Opening a daemon's TCP listener: one way to bind, to report a busy port, to learn the port.

Shared by ``bdn serve`` (:mod:`bdn.hub.serve`) and the mirror service, so a
port that cannot be bound fails the same way in both (a :class:`ConfigError`
naming the flag to change, not an ``OSError`` traceback), and port 0 yields
the port the kernel picked, for the "started" log line.
"""

from __future__ import annotations

from aiohttp import web

from bdn.daemon.address import format_hostport
from bdn.errors import ConfigError

__all__ = ["listen_tcp"]


async def listen_tcp(runner: web.AppRunner, listen: tuple[str, int], *,
                     flag: str = "--listen") -> int:
    """Serve ``runner`` (already set up) on ``listen``; returns the bound port.

    Raises:
        ConfigError: the address cannot be bound (in use, not local, no permission);
            the message names ``flag`` as the fix.
    """
    host, port = listen
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as err:
        raise ConfigError(f"cannot listen on {format_hostport(host, port)}: "
                          f"{err.strerror or err}; pass another {flag}", field=flag) from err
    for addr in runner.addresses:  # The bound port, when asked for port 0.
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return port
