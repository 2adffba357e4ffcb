"""The mirror service (``bdn mirror-server``): weights lists submitted over HTTP, mirrored as jobs.

The daemon around the library's :func:`bdn.mirror.run_mirror`: job records
(:mod:`~bdn.mirror.service.jobs`) kept in a state dir
(:mod:`~bdn.mirror.service.state`), a scheduler that coalesces identical
submissions and bounds jobs and bytes in flight
(:mod:`~bdn.mirror.service.scheduler`), the HTTP API
(:mod:`~bdn.mirror.service.server`), its metrics, and the wiring and
lifecycle (:mod:`~bdn.mirror.service.main`). What it may read is bounded by
the operator's allowlist (:mod:`~bdn.mirror.service.sources`), and finished
jobs are forgotten after a retention.
"""

from bdn.mirror.service.main import (
    DEFAULT_MIRROR_LISTEN,
    MirrorService,
    MirrorServiceConfig,
    run,
    serve,
)
from bdn.mirror.service.scheduler import DEFAULT_JOB_LIMITS, DEFAULT_JOB_RETENTION, JobLimits
from bdn.mirror.service.sources import SourcePolicy

__all__ = [
    "DEFAULT_JOB_LIMITS",
    "DEFAULT_JOB_RETENTION",
    "DEFAULT_MIRROR_LISTEN",
    "JobLimits",
    "MirrorService",
    "MirrorServiceConfig",
    "SourcePolicy",
    "run",
    "serve",
]
