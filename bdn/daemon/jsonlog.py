"""JSON logs for BDN's daemons (``bdn agent``, ``bdn mirror-server``): one object per line.

Every record becomes ``{"ts", "level", "logger", "msg", ...}`` plus its
``extra`` fields (``pull_id``, ``job_id``, ``manifest_id``, ...) and the
fields bound to the current context with :func:`log_context` (a request's
``request_id``, set once by a server middleware and carried into everything
the handler logs). Context fields travel with :mod:`contextvars`, so they
follow ``await`` and tasks created inside the context, and never leak between
concurrent requests.

A record's ``extra`` wins over a context field of the same name.

>>> import io
>>> handler = logging.StreamHandler(io.StringIO())
>>> handler.setFormatter(JsonFormatter())
>>> demo = logging.getLogger("bdn.doctest.logging")
>>> demo.addHandler(handler); demo.propagate = False
>>> with log_context(request_id="r-1"):
...     demo.warning("hello %s", "there", extra={"job_id": "mj-1"})
>>> line = json.loads(handler.stream.getvalue())
>>> line["msg"], line["request_id"], line["job_id"], line["level"]
('hello there', 'r-1', 'mj-1', 'warning')
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["QUIET_LOGGERS", "JsonFormatter", "bind_log_context", "log_context",
           "reset_log_context", "setup_json_logging"]

QUIET_LOGGERS: Mapping[str, int] = {
    # aiohttp logs every client that hangs up early at INFO; that is normal for
    # peers and pollers.
    "aiohttp": logging.WARNING,
    # At DEBUG, botocore and urllib3 log request headers, which carry session
    # tokens (X-Amz-Security-Token): never let -v turn them on.
    "botocore": logging.WARNING,
    "boto3": logging.WARNING,
    "s3transfer": logging.WARNING,
    "urllib3": logging.WARNING,
    "google": logging.WARNING,
    "huggingface_hub": logging.WARNING,
}
"""Third-party loggers held at a level whatever ``verbose`` says (a table, not branches)."""

# An immutable default: every bind makes a new mapping, so contexts never share one.
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "bdn_log_context", default=MappingProxyType({})
)
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def bind_log_context(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add ``fields`` to every record logged in the current context; returns the
    token for :func:`reset_log_context` (for middlewares that cannot use ``with``)."""
    return _CONTEXT.set({**_CONTEXT.get(), **fields})


def reset_log_context(token: contextvars.Token[Mapping[str, Any]]) -> None:
    """Undo the :func:`bind_log_context` call that returned ``token``."""
    _CONTEXT.reset(token)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within the block, every record logged in this context carries ``fields``."""
    token = bind_log_context(**fields)
    try:
        yield
    finally:
        reset_log_context(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, the context's
    fields and every ``extra`` field, so logs can be filtered per request, pull or job."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_CONTEXT.get())
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_json_logging(verbose: bool = False) -> None:
    """Route every log record to stderr as JSON lines (INFO, or DEBUG with ``verbose``);
    the :data:`QUIET_LOGGERS` stay at their own level either way."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler],
                        force=True)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
