"""The mirror service (``bdn mirror-server``): weights lists submitted over HTTP, mirrored as jobs.

The daemon around the library's :func:`bdn.mirror.run_mirror`: job records
(:mod:`~bdn.mirror.service.jobs`) kept in a state dir
(:mod:`~bdn.mirror.service.state`), a scheduler that coalesces identical
submissions and bounds jobs and bytes in flight
(:mod:`~bdn.mirror.service.scheduler`), the HTTP API
(:mod:`~bdn.mirror.service.server`), its metrics, and the wiring and
lifecycle (:mod:`~bdn.mirror.service.main`).
"""

from bdn.mirror.service.main import (
    DEFAULT_MIRROR_LISTEN,
    MirrorService,
    MirrorServiceConfig,
    run,
    serve,
)
from bdn.mirror.service.scheduler import DEFAULT_JOB_LIMITS, JobLimits

__all__ = [
    "DEFAULT_JOB_LIMITS",
    "DEFAULT_MIRROR_LISTEN",
    "JobLimits",
    "MirrorService",
    "MirrorServiceConfig",
    "run",
    "serve",
]
