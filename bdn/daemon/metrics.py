"""Prometheus metrics of one daemon, in a registry of its own.

Both daemons (the node agent and the mirror service) keep their collectors in a
dedicated :class:`~prometheus_client.CollectorRegistry`, not the global default:
several daemons in one process (tests, ``bdn demo``, benches) stay apart, and the
client library's process collectors, whose numbers would describe the test runner
rather than the daemon, are left out.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "DaemonMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""``Content-Type`` of :meth:`DaemonMetrics.render`."""


class DaemonMetrics:
    """A registry of one daemon's collectors, the helpers that add to it and its
    text exposition. Subclasses add their metrics in ``__init__``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str) -> Gauge:
        return Gauge(name, doc, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, *labels: str, buckets: tuple[float, ...]
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (see :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
