"""The mirror service's Prometheus metrics, in a registry of their own.

As for the agent, the registry is the service's own
(:class:`~bdn.daemon.metrics.DaemonMetrics` says why), so several services in
one process (tests, benches) stay apart.

Where the numbers come from:

- submissions, mirror runs, bytes and job durations: the job manager
  (:mod:`bdn.mirror.service.scheduler`) reports each event as it happens;
- jobs by state and planned bytes in flight: read from the manager at scrape
  time (:meth:`MirrorMetrics.watch_jobs`), so they can never drift from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bdn.daemon.metrics import CONTENT_TYPE, DaemonMetrics
from bdn.mirror.run import MirrorResult

__all__ = ["CONTENT_TYPE", "JOB_BUCKETS", "JobGauges", "MirrorMetrics"]

JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
"""Jobs span an unchanged re-mirror (sub-second) to a cold 700 GB model (hours)."""

JobGauges = Callable[[], tuple[Mapping[str, int], int]]
"""Returns ``(jobs by state, planned bytes of running jobs)``."""


class MirrorMetrics(DaemonMetrics):
    """Every collector of one mirror service. Call from the event loop thread only."""

    def __init__(self) -> None:
        super().__init__()
        self.submissions = self._counter(
            "bdn_mirror_submissions",
            "POST /v1/mirrors answered, by outcome: new, coalesced (joined a queued or "
            "running job), succeeded (identical to a finished job; nothing re-mirrored), "
            "retried (a failed job queued again), forced (?force=1).",
            "outcome",
        )
        self.runs = self._counter(
            "bdn_mirror_runs",
            "Executions of the mirror of one weights entry, by outcome: succeeded, failed, "
            "deferred (planned bytes did not fit --max-bytes-in-flight; queued again "
            "before any byte moved), interrupted (shutdown; resumed at the next start).",
            "outcome",
        )
        self.bytes = self._counter(
            "bdn_mirror_bytes",
            "Bytes of finished entry mirrors, by kind: read (from sources, retries "
            "included), stored (new blobs), deduplicated (already held by the store).",
            "kind",
        )
        self.job_seconds = self._histogram(
            "bdn_mirror_job_duration_seconds",
            "Wall time of finished jobs from their start to their end, by outcome.",
            "outcome",
            buckets=JOB_BUCKETS,
        )
        self.pruned = self._counter(
            "bdn_mirror_jobs_pruned",
            "Finished jobs forgotten (record deleted) after --job-retention.",
        )
        self.draining = self._gauge(
            "bdn_mirror_draining", "1 while the service drains for shutdown."
        )

    def watch_jobs(self, gauges: JobGauges) -> None:
        """Export jobs by state and planned bytes in flight, read from ``gauges()`` per scrape."""
        self.registry.register(_JobCollector(gauges))

    def observe_result(self, result: MirrorResult) -> None:
        """Count the bytes of one finished entry mirror."""
        self.bytes.labels("read").inc(result.bytes_transferred)
        self.bytes.labels("stored").inc(result.bytes_stored)
        self.bytes.labels("deduplicated").inc(result.bytes_deduplicated)


class _JobCollector(Collector):
    def __init__(self, gauges: JobGauges) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state, in_flight = self._gauges()
        jobs = GaugeMetricFamily("bdn_mirror_jobs", "Jobs known to the service, by state.",
                                 labels=["state"])
        for state, count in by_state.items():
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily(
            "bdn_mirror_bytes_in_flight",
            "Planned transfer bytes of the entries running now (what --max-bytes-in-flight "
            "bounds).",
            value=in_flight,
        )
