"""Listen and peer addresses of BDN's daemons: ``host:port`` parsed and written one way.

Shared by the node agent (``--listen``, ``--advertise``, ``--peers``) and the
mirror service (``--listen``), so both accept the same forms, bracket IPv6 the
same way, and judge "loopback" (where no token is needed) alike.

>>> parse_hostport("127.0.0.1:7070", field="--listen")
('127.0.0.1', 7070)
>>> parse_hostport("[::1]:7070", field="--listen")
('::1', 7070)
>>> format_hostport("::1", 7070)
'[::1]:7070'
>>> is_loopback("localhost"), is_loopback("10.0.0.3"), is_loopback("0.0.0.0")
(True, False, False)
>>> is_wildcard("0.0.0.0"), is_wildcard("::"), is_wildcard("node-1")
(True, True, False)
"""

from __future__ import annotations

import ipaddress

from bdn.errors import ConfigError

__all__ = ["format_hostport", "is_loopback", "is_wildcard", "parse_hostport"]


def parse_hostport(text: str, *, field: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and check the port.

    Raises:
        ConfigError: no port, a port outside 1-65535, or an empty host.
    """
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{text!r} is not HOST:PORT; e.g. 127.0.0.1:7070", field=field)
    return host, int(port_text)


def format_hostport(host: str, port: int) -> str:
    """``host:port``, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; any other name is not trusted to be."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """True for the unspecified addresses (``0.0.0.0``, ``::``): listenable, not connectable."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
