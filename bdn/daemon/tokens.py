"""Bearer tokens on BDN's HTTP servers: reading the token file, checking requests, answering 401.

Shared by the agent's peer port and the mirror service. A token is compared
with :func:`hmac.compare_digest`, so the time a check takes does not tell an
attacker how much of a guess matched. Nothing here logs or echoes a token.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from aiohttp import web

from bdn.errors import ConfigError

__all__ = ["authorized", "json_error", "read_token_file", "unauthorized"]


def authorized(request: web.Request, token: str | None) -> bool:
    """Whether ``request`` carries ``Authorization: Bearer <token>``; ``token=None``
    means the server runs without a token and every request passes."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def json_error(status: int, message: str) -> web.Response:
    """``{"error": message}`` with ``status``; the message is kept to one line."""
    return web.json_response({"error": message.replace("\n", " ")}, status=status)


def unauthorized(message: str) -> web.Response:
    """A 401 saying ``message`` (which names the fix), with a ``WWW-Authenticate`` challenge."""
    resp = json_error(401, message)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="bdn"'
    return resp


def read_token_file(path: Path, *, field: str, purpose: str) -> str:
    """The token in ``path``, stripped of surrounding whitespace.

    Args:
        path: the file (a mounted Kubernetes Secret key, typically).
        field: the flag that named it, for the error message (``--token-file``).
        purpose: what the token guards, for the error message ("the peer token").

    Raises:
        ConfigError: the file cannot be read, is not UTF-8, or is empty.
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise ConfigError(f"cannot read {purpose} from {path}: {reason}", field=field) from None
    if not token:
        raise ConfigError(f"{path} is empty; put a random secret in it (e.g. `openssl rand "
                          f"-hex 32`) to serve as {purpose}", field=field)
    return token
